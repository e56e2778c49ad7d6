"""The gateway's view of execution environments.

The gateway routes an invocation to "an environment of function F" without knowing whether that is a
local process (local mode) or a pod behind a Service (cluster). Both implementations satisfy
`EnvironmentPool`; the gateway depends only on this module.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from lamina_runtime.environment import ACCOUNT_ID, installation_region
from lamina_runtime.protocol import InvocationRequest, InvocationResult

if TYPE_CHECKING:
    from lamina.api import AsyncConfig, Function, LoggingConfig
    from lamina.api.versions import Route

LATEST = "$LATEST"


@dataclass(slots=True)
class FunctionConfig:
    """Everything needed to run and route one function, resolved from its manifest."""

    name: str
    namespace: str = "default"
    handler: str = "index.handler"
    runtime: str = "python3.12"
    memory_mb: int = 128
    timeout_seconds: int = 3
    reserved_concurrency: int | None = None
    provisioned_concurrency: int = 0
    idle_timeout_seconds: float = 300.0
    environment: dict[str, str] = field(default_factory=dict)
    code_dir: str | None = None  # local mode: directory holding the function's code
    layer_dirs: list[str] = field(default_factory=list)  # local mode: extracted layers, in order
    async_config: AsyncConfig | None = None  # retries, max age, destinations of Event invocations
    logging: LoggingConfig | None = None  # log format and levels (spec.logging)
    revision: str = ""  # changes when code, layers or configuration change
    http_format: str = "2.0"  # spec.http.payloadFormat: "2.0", "1.0" or "alb"
    http_multi_value: bool = False  # alb: multi-value headers on
    code_sha256: str = ""  # digest of the code alone (GetFunction's CodeSha256)
    #: spec.serviceAccountName: the function's execution identity (None: the namespace's "default").
    service_account: str | None = None
    version: str = LATEST  # "$LATEST", or the number of a published version
    #: False for a published version that no alias (nor provisioned concurrency) sends traffic to: its
    #: idle environments are retired at once instead of after the keep-alive.
    routed: bool = True
    #: On the $LATEST config only: the published versions that exist and each alias's routing.
    versions: dict[str, FunctionConfig] = field(default_factory=dict)
    routes: dict[str, Route] = field(default_factory=dict)
    #: The warm pool its cold starts claim pods from (``python3.12-128``), or None: its Deployment.
    pool: str | None = None
    uid: str = ""  # the Function object's (claimed pool pods are owned by it)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def arn(self) -> str:
        return function_arn(self.name)

    @property
    def execution_account(self) -> str:
        """The ServiceAccount the function acts as (its calls, its async destinations): its own, or
        the namespace's ``default``, as a pod without serviceAccountName runs as ``default``."""
        return self.service_account or "default"

    @property
    def pool_key(self) -> str:
        """Which environments may serve it: each version has its own (``ns/name`` or ``ns/name:7``)."""
        return self.key if self.version == LATEST else f"{self.key}:{self.version}"

    def with_versions(self) -> list[FunctionConfig]:
        """This config and those of its published versions (everything that has environments)."""
        return [self, *self.versions.values()]


def function_config(fn: Function, **where: Any) -> FunctionConfig:
    """A Function object's routing and sizing; `where` adds what the caller resolved (code_dir,
    layer_dirs, environment, revision)."""
    spec = fn.spec
    return FunctionConfig(
        name=fn.name,
        namespace=fn.metadata.namespace,
        handler=spec.handler,
        runtime=spec.runtime,
        memory_mb=spec.memory_mb,
        timeout_seconds=spec.timeout_seconds,
        reserved_concurrency=spec.reserved_concurrency,
        provisioned_concurrency=spec.provisioned_concurrency,
        idle_timeout_seconds=float(spec.idle_timeout_seconds),
        async_config=spec.async_,
        logging=spec.logging,
        http_format=spec.http.payload_format,
        http_multi_value=spec.http.multi_value_headers,
        uid=fn.metadata.uid or "",
        service_account=spec.service_account_name,
        **where,
    )


def version_of(latest: FunctionConfig, doc: Mapping[str, Any], **where: Any) -> FunctionConfig:
    """A published version's config: the function's identity and limits from ``latest``, the version's
    make-up from ``doc`` (a version summary as ``status.versions`` lists it, or local mode's record:
    version, handler, runtime, memoryMB, timeoutSeconds, payloadFormat, multiValueHeaders, digest,
    codeSha256); ``where`` adds what the caller resolved (code_dir, environment, provisioning)."""
    fields: dict[str, Any] = dict(
        version=str(doc["version"]),
        handler=doc.get("handler") or latest.handler,
        runtime=doc.get("runtime") or latest.runtime,
        memory_mb=int(doc.get("memoryMB", latest.memory_mb)),
        timeout_seconds=int(doc.get("timeoutSeconds", latest.timeout_seconds)),
        http_format=doc.get("payloadFormat", "2.0"),
        http_multi_value=bool(doc.get("multiValueHeaders")),
        revision=str(doc.get("digest", ""))[:16],
        code_sha256=str(doc.get("codeSha256", "")),
        provisioned_concurrency=0,
        routed=False,
        versions={},
        routes={},
        pool=None,  # a published version starts on its own Deployment
    )
    fields.update(where)
    return replace(latest, **fields)


E = TypeVar("E")


class NoEnvironment(Exception):
    """No environment of the function became ready within the cold-start limit (the platform's fault
    as far as the caller can tell: Lambda's ServiceException)."""


class EnvironmentFailed(Exception):
    """Environments of the function cannot start (an image that cannot be pulled, a failed init
    container, a crash at start): the caller is told why at once (Lambda's ResourceNotReadyException)
    rather than held until the cold-start limit."""

    def __init__(self, function: str, reason: str, message: str) -> None:
        super().__init__(f"function {function} cannot start an execution environment ({reason}): {message}")
        self.function = function
        self.reason = reason
        self.detail = message


def hand_over(environment: E, waiters: deque[asyncio.Future[E]], busy: set[E], idle: list[E]) -> None:
    """Give a free environment to the oldest request still waiting for one (marked busy for it), or
    park it idle. Both pools hand environments over this way, so a held request never waits behind
    a newer one."""
    while waiters:
        waiter = waiters.popleft()
        if not waiter.done():
            busy.add(environment)
            waiter.set_result(environment)
            return
    idle.append(environment)


def function_arn(name: str, qualifier: str | None = None) -> str:
    """The function's ARN in the installation's one region (the region of AWS_REGION too)."""
    arn = f"arn:aws:lambda:{installation_region()}:{ACCOUNT_ID}:function:{name}"
    return f"{arn}:{qualifier}" if qualifier else arn


class EnvironmentPool(Protocol):
    """Execution environments of many functions; one environment runs one invocation at a time."""

    async def start(self) -> None:
        """Initialise provisioned environments before traffic is accepted."""

    async def invoke(self, fn: FunctionConfig, request: InvocationRequest) -> InvocationResult:
        """Run one invocation on an idle environment, starting one (a cold start) if none is idle."""

    async def update(self, functions: list[FunctionConfig]) -> None:
        """Adopt a new set of function configurations (retire environments of changed revisions)."""

    def in_flight(self, fn: FunctionConfig) -> int: ...

    def environments(self, fn: FunctionConfig) -> int:
        """Environments that exist (busy or idle) for the function."""

    async def close(self) -> None: ...

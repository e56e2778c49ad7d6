"""`lamina local`: the cluster's moving parts on one machine, from the same manifests.

Gateway + local process pool + async queue (embedded sqlite) + event source mappings + schedules.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from aiohttp import web

from lamina.api import ManifestError, load_manifests
from lamina.api.manifests import Manifests
from lamina.environments.base import FunctionConfig
from lamina.environments.local_pool import LocalProcessPool
from lamina.gateway.app import build_app
from lamina.gateway.concurrency import ConcurrencyLimiter
from lamina.gateway.drain import Drain, drain_and_stop
from lamina.gateway.front import FrontSite
from lamina.gateway.registry import FunctionRegistry
from lamina.gateway.service import InvocationService
from lamina.local.access import AuthSetupError, local_auth
from lamina.local.artifacts import ArtifactBuilder
from lamina.local.components import Component, build_components
from lamina.local.interpreters import Interpreters
from lamina.local.sdk import SdkUnavailable, sdk_dir
from lamina.local.versions import LocalVersions


class StateDirInUse(Exception):
    """Another `lamina local` owns the state directory."""


@dataclass
class LocalOptions:
    paths: list[str]
    host: str = "127.0.0.1"
    port: int = 9000
    state_dir: Path = Path(".lamina-state")
    max_environments: int = 64
    handler_output: IO[Any] | int | None = None
    quiet: bool = False
    async_retry_base_seconds: float = 60.0
    allow_local_urls: bool = False
    auth: bool = False
    keys_file: Path | None = None
    #: On SIGTERM/SIGINT, how long calls, async events and mapping batches in flight may still run.
    drain_seconds: float = 20.0
    extra: dict[str, Any] = field(default_factory=dict)


def build_functions(
    manifests: Manifests,
    state_dir: Path,
    allow_local_urls: bool = False,
    interpreters: Interpreters | None = None,
) -> list[FunctionConfig]:
    """Every Function's code and layers on disk, its versions published and collected (see
    :mod:`lamina.local.versions`); all problems reported together. With ``interpreters``, a function
    (or a published version) whose Python version has no interpreter here is refused."""
    find = interpreters.find if interpreters is not None else None
    builder = ArtifactBuilder(manifests, state_dir, allow_local_urls=allow_local_urls, interpreters=find)
    versions = LocalVersions(state_dir, builder.environment_from)
    configs, problems = [], []
    for fn in manifests.functions.values():
        try:
            config, digest = builder.build(fn)
            configs.append(versions.attach(fn, config, digest))
            for number, version in config.versions.items():
                builder.python_for(version.runtime, f"Function {fn.name} version {number}")
        except ManifestError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ManifestError(problems)
    return configs


def lock_state_dir(state_dir: Path) -> IO[str]:
    """One owner per state directory (`lamina local` or a `lamina invoke --local`): its queue, tick
    stores and published versions assume a single writer. The lock lasts as long as the file is open."""
    import fcntl

    state_dir.mkdir(parents=True, exist_ok=True)
    lock = (state_dir / "lock").open("w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise StateDirInUse(
            f"state directory {state_dir} is used by another lamina local; stop it or pass --state-dir"
        ) from None
    return lock


def runtime_packages() -> list[str]:
    """The runtime's boto3 (lamina_runtime.sdk, installed once into the cache) for every function;
    none, said loudly, when it cannot be installed (no network to PyPI, say)."""
    try:
        return [str(sdk_dir())]
    except SdkUnavailable as exc:
        print(f"lamina local: functions get no boto3 ({exc}); `import boto3` will fail", flush=True)
        return []


def connect_host(host: str) -> str:
    """An address functions on this machine can reach the gateway at (not 0.0.0.0 or ::)."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


class LocalStack:
    """Owns every component of local mode; `start` returns once the port is open."""

    def __init__(self, options: LocalOptions) -> None:
        self.options = options
        self.manifests: Manifests | None = None
        self.functions: list[FunctionConfig] = []
        self.pool: LocalProcessPool | None = None
        self.service: InvocationService | None = None
        self._runner: web.AppRunner | None = None
        self._components: list[Component] = []  # the async queue, then the mappings
        self.drain = Drain()
        self.access = local_auth(options.auth, options.keys_file, account=self._account)
        self.auth, self.auth_line = self.access.auth, self.access.line

    def _account(self, namespace: str, name: str) -> str | None:
        """The execution account of a function this stack serves (None: no such function)."""
        for fn in self.functions:
            if fn.namespace == namespace and fn.name == name:
                return fn.execution_account
        return None

    def _lock_state_dir(self) -> None:
        self._lock = lock_state_dir(self.options.state_dir)

    async def start(self) -> None:
        opts = self.options
        self._lock_state_dir()
        self.manifests = await asyncio.to_thread(load_manifests, opts.paths)
        interpreters = Interpreters()
        self.functions = await asyncio.to_thread(
            build_functions, self.manifests, opts.state_dir, opts.allow_local_urls, interpreters
        )
        self.pool = LocalProcessPool(
            [c for f in self.functions for c in f.with_versions()],
            max_environments=opts.max_environments,
            handler_output=opts.handler_output,
            interpreters=interpreters,
            runtime_packages=await asyncio.to_thread(runtime_packages),
            gateway_url=f"http://{connect_host(opts.host)}:{opts.port}",
            credentials=self.access.credentials,
        )
        registry = FunctionRegistry(self.functions)
        self.service = InvocationService(
            registry,
            self.pool,
            limiter=ConcurrencyLimiter(opts.max_environments),
            log_invocations=not opts.quiet,
        )
        await self.pool.start()  # provisioned environments are warm before the port opens
        components = build_components(
            self.service, self.manifests, opts.state_dir, opts.async_retry_base_seconds
        )
        for component in components:
            await component.start()
            self._components.append(component)
        app = build_app(self.service, self.auth, self.drain)
        app.router.add_get("/lamina/status", self._status)
        # The drain answers every call before the runner's cleanup: what that still waits for is stuck.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await FrontSite(self._runner, opts.host, opts.port).start()

    async def _status(self, request: web.Request) -> web.Response:
        """What `lamina local` runs right now: environments per function and each mapping's state."""
        assert self.pool is not None
        doc: dict[str, Any] = {"environments": self.pool.describe()}
        for component in self._components:
            doc.update(await component.status())
        return web.json_response(doc)

    async def stop(self, grace_seconds: float = 0.0) -> None:
        """Stop as the cluster's gateway does (lamina.gateway.drain): listen no more and refuse what
        still arrives on an open connection; calls, async events and mapping batches in flight get
        ``grace_seconds`` to finish (calls still running then are answered ServiceException, events
        go back to the queue, unacknowledged records stay with their broker); then every
        environment's process group is killed, so nothing outlives `lamina local`."""
        if self._runner is not None:
            await drain_and_stop(self._runner, self.drain, grace_seconds, beside=[self._stop_components])
        else:
            await self._stop_components(grace_seconds)
        if self.pool is not None:
            await self.pool.close()
        if self.service is not None:
            self.service.tracer.shutdown()  # flush the spans still batched

    async def _stop_components(self, grace_seconds: float) -> None:
        """The mappings first (they enqueue into the async queue), the queue last; all within the one
        grace."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_seconds
        for component in reversed(self._components):
            try:
                await component.stop(max(deadline - loop.time(), 0.0))
            except Exception as exc:  # the others still stop
                print(f"lamina local: stopping {type(component).__name__} failed: {exc}", flush=True)

    def describe(self) -> str:
        opts = self.options
        base = f"http://{opts.host}:{opts.port}"
        lines = [f"lamina local: serving {len(self.functions)} function(s) at {base}"]
        for fn in self.functions:
            caps = []
            if fn.reserved_concurrency is not None:
                caps.append(f"reserved {fn.reserved_concurrency}")
            if fn.provisioned_concurrency:
                caps.append(f"provisioned {fn.provisioned_concurrency}")
            extra = f" ({', '.join(caps)})" if caps else ""
            lines.append(
                f"  {fn.name:24} {fn.handler:24} {fn.memory_mb} MB {fn.timeout_seconds}s{extra}  "
                f"{base}/url/{fn.name}/"
            )
            if fn.versions:
                lines.append(f"    versions: {', '.join(fn.versions)}")
            for alias, route in sorted(fn.routes.items()):
                split = f" + {route.additional} ({route.weight:.0%})" if route.additional else ""
                lines.append(f"    alias {alias} -> {route.primary}{split}")
        for component in self._components:
            lines.extend(component.describe())
        lines.append(self.auth_line)
        lines.append(f"  invoke: aws lambda invoke --endpoint-url {base} --function-name NAME out.json")
        return "\n".join(lines)


async def serve(options: LocalOptions) -> int:
    try:
        stack = LocalStack(options)
    except AuthSetupError as exc:
        print(f"lamina local: {exc}", file=sys.stderr)
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stack.start()
    except ManifestError as exc:
        await stack.stop()
        print(f"lamina local: refusing the manifests:\n{exc}", file=sys.stderr)
        return 2
    except StateDirInUse as exc:
        print(f"lamina local: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        await stack.stop()
        print(f"lamina local: cannot serve on {options.host}:{options.port}: {exc}", file=sys.stderr)
        return 1
    print(stack.describe(), flush=True)
    await stop.wait()
    print(
        f"lamina local: stopping; calls in flight get up to {options.drain_seconds:g} s to finish",
        flush=True,
    )
    await stack.stop(options.drain_seconds)
    print("lamina local: stopped", flush=True)
    return 0

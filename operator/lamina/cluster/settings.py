"""Every knob of the cluster's two processes, one typed object each, read once at start.

``lamina gateway`` takes its settings from its command line (the chart passes them as arguments);
``lamina worker esm`` from the environment the operator gives its pod
(:mod:`lamina.resources.eventsourcemapping`). Nothing below reads ``os.environ`` or ``argv`` again:
each part gets the fields it uses. Credentials are the one exception by design: the Kubernetes client
finds them itself (:func:`lamina.kubeapi.load_configuration`), in the same order for every process.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lamina.asyncinvoke.store import MAX_QUEUED_PER_FUNCTION
from lamina.invocation.reservations import DEFAULT_MIN_UNRESERVED
from lamina.resources.settings import DEFAULT_GATEWAY_PORT, DEFAULT_GATEWAY_URL

log = logging.getLogger(__name__)


def _option(default: Any, help: str, **argparse_options: Any) -> Any:
    """A field that is also a command-line option; ``help`` documents both."""
    return dataclasses.field(default=default, metadata={"help": help, **argparse_options})


@dataclass(frozen=True)
class GatewaySettings:
    """``lamina gateway``: the Invoke API in a cluster."""

    host: str = _option("0.0.0.0", "address to listen on")
    port: int = _option(DEFAULT_GATEWAY_PORT, "port to listen on (the chart's Service targets it)")
    namespace: tuple[str, ...] | None = _option(
        None, "watch this namespace (repeatable; default: the whole cluster)", action="append"
    )
    default_namespace: str = _option(
        "default",
        "namespace of plain function names (others are addressed as namespace.name); unset: the one "
        "--namespace watches, else default",
    )
    redis_url: str | None = _option(
        None, "Redis of the durable queue of Event invocations (without it they are refused)"
    )
    concurrency_limit: int = _option(1000, "concurrent invocations of all functions together")
    min_unreserved: int = _option(
        DEFAULT_MIN_UNRESERVED,
        "smallest unreserved pool: a reservedConcurrency leaving less is refused (served unreserved)",
    )
    cold_start_timeout: float = _option(120.0, "seconds a request waits for a new environment")
    kubeconfig: str | None = _option(None, "kubeconfig file (default: in-cluster, then $KUBECONFIG)")
    advertise: str | None = _option(
        None,
        "host:port at which the other gateway replicas reach this one; with $LAMINA_GATEWAY_PEER_TOKEN "
        "it makes this a replica among several (each function served by one, named by a Lease)",
    )
    async_lease_seconds: float = _option(
        60.0, "an Event invocation's lease while it runs (after a replica is lost, its events come back then)"
    )
    drain_seconds: float = _option(
        20.0,
        "on SIGTERM, how long calls in flight may still run; those left then get ServiceException (keep "
        "it under the pod's terminationGracePeriodSeconds: the chart adds 10 s)",
    )
    lease_seconds: float = _option(
        15.0, "duration of a function's Lease (a lost replica's functions move after it)"
    )
    pool_holds: int = _option(
        1,
        "idle warm pool pods this replica holds ahead, per pool it cold-starts from, so a cold start "
        "there needs only the pod's hand-over (0: each claims with an API round trip beside it)",
    )
    async_queue_limit: int = _option(
        MAX_QUEUED_PER_FUNCTION, "Event invocations one function may have queued (0: no limit)"
    )
    auth: bool = _option(
        False, "authenticate (SigV4, bearer tokens) and authorize (RBAC) every call", action="store_true"
    )
    region: str = _option(
        "us-east-1",
        "the installation's region: SigV4 scope of the Invoke API, AWS_REGION of functions started from "
        "warm pool pods (default: $LAMINA_REGION)",
    )
    token_audience: str = _option("lamina", "audience bearer tokens must have been minted for")
    access_key_namespace: str = _option(
        "lamina-system", "namespace of the Secrets of type lamina.dev/access-key"
    )
    cache_allowed_seconds: float = _option(10.0, "seconds an allowed RBAC decision is reused")
    cache_denied_seconds: float = _option(2.0, "seconds a denied RBAC decision is reused")
    #: From the environment only (the chart's Secrets, never the command line, which other users of the
    #: node can read): the installation key, Redis's password, and ``LAMINA_GATEWAY_PEER_TOKEN``, what
    #: replicas show each other when they forward calls.
    auth_key: bytes | None = dataclasses.field(default=None, repr=False, metadata={"env": "LAMINA_AUTH_KEY"})
    redis_password: str | None = dataclasses.field(
        default=None, repr=False, metadata={"env": "LAMINA_REDIS_PASSWORD"}
    )
    peer_token: str | None = dataclasses.field(
        default=None, repr=False, metadata={"env": "LAMINA_GATEWAY_PEER_TOKEN"}
    )

    @property
    def replicated(self) -> bool:
        return bool(self.advertise and self.peer_token)

    @classmethod
    def parser(cls) -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(prog="lamina gateway", description="the Invoke API in a cluster")
        for f in dataclasses.fields(cls):
            if "help" not in f.metadata:
                continue
            options = {k: v for k, v in f.metadata.items() if k != "help"}
            if "action" not in options:
                kind = f.type if f.type in ("int", "float") else "str"
                options["type"] = {"int": int, "float": float, "str": str}[kind]
            parser.add_argument(
                f"--{f.name.replace('_', '-')}", default=f.default, help=f.metadata["help"], **options
            )
        return parser

    @classmethod
    def from_args(cls, argv: Sequence[str], environ: Mapping[str, str] | None = None) -> GatewaySettings:
        environ = os.environ if environ is None else environ
        parser = cls.parser()
        parser.set_defaults(default_namespace=None)
        values = vars(parser.parse_args(list(argv)))
        namespaces = tuple(values["namespace"] or ())
        values["namespace"] = namespaces or None
        # A gateway of one namespace (the chart's, with one watched namespace) serves its functions by
        # their plain names, as Lambda does in an account.
        one = namespaces[0] if len(namespaces) == 1 else None
        values["default_namespace"] = values["default_namespace"] or one or "default"
        if "--region" not in argv and environ.get("LAMINA_REGION"):
            values["region"] = environ["LAMINA_REGION"]
        key = environ.get("LAMINA_AUTH_KEY")
        values["auth_key"] = key.encode() if key else None
        values["redis_password"] = environ.get("LAMINA_REDIS_PASSWORD") or None
        values["peer_token"] = environ.get("LAMINA_GATEWAY_PEER_TOKEN") or None
        if not values["redis_url"] and environ.get("LAMINA_REDIS_URL"):
            values["redis_url"] = environ["LAMINA_REDIS_URL"]
        return cls(**values)


#: Seconds between the worker's writes of its mapping's status when LAMINA_STATUS_INTERVAL is unset.
DEFAULT_STATUS_INTERVAL = 5.0


@dataclass(frozen=True)
class WorkerSettings:
    """``lamina worker esm``: one mapping's consumer or schedule, configured by its pod's environment."""

    #: ``LAMINA_ESM``: the mapping as JSON (apiVersion, kind, metadata, spec).
    mapping: str | None = None
    #: ``LAMINA_GATEWAY_URL``: where functions are invoked (throttling and accounting are the gateway's).
    gateway_url: str = DEFAULT_GATEWAY_URL
    #: ``LAMINA_REDIS_URL``: where schedule ticks are claimed, so two replicas never both fire one.
    redis_url: str | None = None
    #: ``LAMINA_SECRET_<hash>``: the Secret keys the spec reads (``urlFrom`` URLs, Kafka and SQS
    #: credentials), put there by the kubelet from optional secretKeyRefs
    #: (:func:`lamina.api.common.secret_env_name`); a missing one is absent.
    secrets: Mapping[str, str] = field(default_factory=dict)
    #: ``LAMINA_STATUS_INTERVAL``: seconds between writes of the mapping's status (0 or less: off).
    status_interval: float = DEFAULT_STATUS_INTERVAL
    #: ``TMPDIR``: where schedule ticks are claimed without Redis.
    tmpdir: str = "/tmp"
    #: ``KUBECONFIG``: credentials outside a pod (a pod uses its own token): the status writes, and
    #: a Kubernetes source's watch.
    kubeconfig: str | None = None
    #: ``LAMINA_STATUS_TOKEN_DIR``: a Kubernetes source's pod runs as the ServiceAccount its mapping
    #: names; it writes its status with its own account's token, mounted here (``token``, ``ca.crt``).
    status_token_dir: str | None = None
    #: ``LAMINA_STATUS_KUBECONFIG``: outside a pod (tests), a kubeconfig for the status writes alone.
    status_kubeconfig: str | None = None
    #: ``LAMINA_GATEWAY_TOKEN_FILE``: the mapping's token for the gateway's audience (its identity there).
    gateway_token_file: str | None = None
    #: ``LAMINA_REDIS_USERNAME`` / ``LAMINA_REDIS_PASSWORD``: the chart's Redis "ticks" user, from the
    #: mapping's own Secret.
    redis_username: str | None = None
    redis_password: str | None = dataclasses.field(default=None, repr=False)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> WorkerSettings:
        return cls(
            mapping=environ.get("LAMINA_ESM") or None,
            gateway_url=environ.get("LAMINA_GATEWAY_URL") or DEFAULT_GATEWAY_URL,
            redis_url=environ.get("LAMINA_REDIS_URL") or None,
            secrets={k: v for k, v in environ.items() if k.startswith("LAMINA_SECRET_")},
            status_interval=status_interval(environ),
            tmpdir=environ.get("TMPDIR") or "/tmp",
            kubeconfig=environ.get("KUBECONFIG") or None,
            status_token_dir=environ.get("LAMINA_STATUS_TOKEN_DIR") or None,
            status_kubeconfig=environ.get("LAMINA_STATUS_KUBECONFIG") or None,
            gateway_token_file=environ.get("LAMINA_GATEWAY_TOKEN_FILE") or None,
            redis_username=environ.get("LAMINA_REDIS_USERNAME") or None,
            redis_password=environ.get("LAMINA_REDIS_PASSWORD") or None,
        )


def status_interval(environ: Mapping[str, str]) -> float:
    """Seconds between status writes from ``LAMINA_STATUS_INTERVAL`` (default 5; 0 or less: off)."""
    raw = environ.get("LAMINA_STATUS_INTERVAL", "").strip()
    if not raw:
        return DEFAULT_STATUS_INTERVAL
    try:
        return float(raw)
    except ValueError:
        log.warning("LAMINA_STATUS_INTERVAL=%r is not a number; using %ss", raw, DEFAULT_STATUS_INTERVAL)
        return DEFAULT_STATUS_INTERVAL

"""Every knob of ``lamina operator``, one typed object read once at start (as kopf's own
``OperatorSettings``): its command line, and the environment the chart gives it.

The builders' part (images, the gateway's address, Redis, region) is :class:`lamina.resources.Settings`,
held here as ``builders``; the reconcilers get it through their ``Context``. Nothing else in the
operator reads ``os.environ``. Credentials are found by :func:`lamina.kubeapi.load_configuration`, for
the reconcilers' ``Kube`` and kopf's own watches alike (see :func:`connection_info`).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import kopf
from kubernetes import client

from lamina.resources import Settings

#: Seconds between re-reconciles of everything (picks up what nothing watches, e.g. a ConfigMap a
#: Function reads its code from); 0 or less turns it off.
DEFAULT_RESYNC_SECONDS = 600.0
#: Threads kopf runs the (blocking) handlers on.
DEFAULT_WORKERS = 16


@dataclass(frozen=True)
class OperatorSettings:
    """``lamina operator``'s settings."""

    #: ``--namespace`` (repeatable): watch only these; empty: the whole cluster.
    namespaces: tuple[str, ...] = ()
    #: ``--kubeconfig``: used before the pod's service account and ``$KUBECONFIG``.
    kubeconfig: str | None = None
    #: ``--peering NAME``: join kopf peering instead of running standalone; ``--priority`` in it.
    peering: str | None = None
    priority: int = 0
    #: ``--liveness URL``: serve a liveness probe, e.g. http://0.0.0.0:8081/healthz.
    liveness: str | None = None
    #: ``--metrics-port`` / ``--metrics-address``: serve Prometheus metrics (default: off).
    metrics_port: int | None = None
    metrics_address: str = "0.0.0.0"
    #: ``--log-format`` (plain, full, json), ``-v`` / ``-q``.
    log_format: str = "full"
    verbose: bool = False
    quiet: bool = False
    #: ``LAMINA_OPERATOR_WORKERS``: kopf's handler threads.
    workers: int = DEFAULT_WORKERS
    #: ``LAMINA_RESYNC_SECONDS``: see :data:`DEFAULT_RESYNC_SECONDS`.
    resync_seconds: float = DEFAULT_RESYNC_SECONDS
    #: ``LAMINA_RUNTIME_IMAGE``, ``LAMINA_GATEWAY_URL``...: what the builders need.
    builders: Settings = field(default_factory=Settings)

    @classmethod
    def read(cls, argv: Sequence[str], environ: Mapping[str, str]) -> OperatorSettings:
        args = build_parser().parse_args(list(argv))
        return cls(
            namespaces=tuple(args.namespace),
            kubeconfig=args.kubeconfig,
            peering=args.peering,
            priority=args.priority,
            liveness=args.liveness,
            metrics_port=args.metrics_port,
            metrics_address=args.metrics_address,
            log_format=args.log_format,
            verbose=args.verbose,
            quiet=args.quiet,
            workers=int(environ.get("LAMINA_OPERATOR_WORKERS") or DEFAULT_WORKERS),
            resync_seconds=float(environ.get("LAMINA_RESYNC_SECONDS") or DEFAULT_RESYNC_SECONDS),
            builders=Settings.from_env(environ),
        )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lamina operator", description="Run the lamina operator (kopf).")
    p.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="watch only this namespace (repeatable; default: the whole cluster)",
    )
    p.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then $KUBECONFIG)")
    p.add_argument(
        "--peering",
        metavar="NAME",
        help="join kopf peering NAME instead of running standalone (needs the kopf peering CRDs)",
    )
    p.add_argument("--priority", type=int, default=0, help="peering priority")
    p.add_argument(
        "--liveness", metavar="URL", help="serve a liveness probe, e.g. http://0.0.0.0:8081/healthz"
    )
    p.add_argument(
        "--metrics-port", type=int, help="serve Prometheus metrics on this port (/metrics; default: off)"
    )
    p.add_argument("--metrics-address", default="0.0.0.0", help="address for --metrics-port")
    p.add_argument("--log-format", choices=["plain", "full", "json"], default="full")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true")
    return p


def connection_info(configuration: client.Configuration, trust_env: bool) -> kopf.ConnectionInfo:
    """kopf's credentials from the client configuration lamina's loader made, so kopf's watches and
    the reconcilers' calls use the same cluster and identity (what ``kopf.login_via_client`` does with
    the client's global default, which would pick in-cluster over an explicit ``--kubeconfig``)."""
    header = configuration.get_api_key_with_prefix("BearerToken") or configuration.get_api_key_with_prefix(
        "authorization"
    )
    parts = header.split(" ", 1) if header else []
    scheme, token = (
        (None, None) if not parts else (None, parts[0]) if len(parts) == 1 else (parts[0], parts[1])
    )
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        username=configuration.username or None,
        password=configuration.password or None,
        scheme=scheme,
        token=token,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
        trust_env=trust_env,
    )

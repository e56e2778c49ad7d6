"""The `lamina` command: one entry point for every component."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _local(args: argparse.Namespace) -> int:
    from lamina.gateway.loop import run_async
    from lamina.local.runner import LocalOptions, serve

    options = LocalOptions(
        paths=args.paths,
        host=args.host,
        port=args.port,
        state_dir=Path(args.state_dir),
        max_environments=args.max_environments,
        quiet=args.quiet,
        async_retry_base_seconds=args.async_retry_base_seconds,
        allow_local_urls=args.allow_local_urls,
        auth=args.auth,
        keys_file=Path(args.keys_file) if args.keys_file else None,
        drain_seconds=args.drain_seconds,
    )
    return run_async(serve(options))


def _crds(args: argparse.Namespace) -> int:
    from lamina.crdgen import main as crdgen_main

    return int(crdgen_main(args.rest) or 0)


def _operator(args: argparse.Namespace) -> int:
    from lamina.reconcilers.main import run_operator

    return int(run_operator(args.rest) or 0)


def _gateway(args: argparse.Namespace) -> int:
    from lamina.cluster.gateway import run_gateway

    return run_gateway(args.rest)


def _worker(args: argparse.Namespace) -> int:
    from lamina.cluster.worker import run_worker

    return run_worker(args.rest)


def _invoke(args: argparse.Namespace) -> int:
    from lamina.invoke import run_invoke

    return run_invoke(args.rest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lamina", description="AWS Lambda semantics on Kubernetes")
    sub = parser.add_subparsers(dest="command", required=True)

    local = sub.add_parser("local", help="serve functions from manifests on this machine, no cluster")
    local.add_argument("paths", nargs="+", help="manifest files or folders (the ones kubectl apply takes)")
    local.add_argument("--host", default="127.0.0.1")
    local.add_argument("--port", type=int, default=9000)
    local.add_argument(
        "--state-dir",
        default=".lamina-state",
        help="where code, layers and the async event queue are kept (default .lamina-state)",
    )
    local.add_argument(
        "--max-environments",
        type=int,
        default=64,
        help="concurrency limit shared by functions without reserved concurrency",
    )
    local.add_argument(
        "--async-retry-base-seconds",
        type=float,
        default=60.0,
        help="first retry delay of a failed async event (Lambda: about 60 s)",
    )
    local.add_argument("--quiet", action="store_true", help="no line per invocation")
    local.add_argument(
        "--drain-seconds",
        type=float,
        default=20.0,
        help="on SIGTERM or Ctrl-C, how long calls, async events and mapping batches in flight may "
        "still run (default 20); calls left then get ServiceException, events stay queued",
    )
    local.add_argument(
        "--auth",
        action="store_true",
        help="require SigV4-signed calls (keys: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY of this "
        "environment, with full access, and --keys-file); off by default",
    )
    local.add_argument(
        "--keys-file",
        default=None,
        help="YAML with more access keys, each limited to the functions it lists (needs --auth)",
    )
    local.add_argument(
        "--allow-local-urls",
        action="store_true",
        help="let code and layer urls be file:// or reach loopback addresses (refused by default: a "
        "manifest could otherwise read this machine's files or probe its local services)",
    )
    local.set_defaults(run=_local)

    crds = sub.add_parser("crds", help="write crds/*.yaml from the API models (--check to detect drift)")
    crds.add_argument("rest", nargs=argparse.REMAINDER)
    crds.set_defaults(run=_crds)

    operator = sub.add_parser("operator", help="run the Kubernetes operator (kopf)")
    operator.add_argument("rest", nargs=argparse.REMAINDER)
    operator.set_defaults(run=_operator)

    gateway = sub.add_parser("gateway", help="run the cluster gateway (Invoke API, URL trigger, async queue)")
    gateway.add_argument("rest", nargs=argparse.REMAINDER)
    gateway.set_defaults(run=_gateway)

    worker = sub.add_parser("worker", help="run an EventSourceMapping worker (`lamina worker esm`)")
    worker.add_argument("rest", nargs=argparse.REMAINDER)
    worker.set_defaults(run=_worker)

    invoke = sub.add_parser(
        "invoke", help="invoke a function (lamina local or a gateway) and print the result"
    )
    invoke.add_argument("rest", nargs=argparse.REMAINDER)
    invoke.set_defaults(run=_invoke)
    return parser


#: Subcommands that parse their own arguments (argparse.REMAINDER cannot start with an option).
PASSTHROUGH = {
    "crds": _crds,
    "operator": _operator,
    "gateway": _gateway,
    "worker": _worker,
    "invoke": _invoke,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in PASSTHROUGH:
        return int(PASSTHROUGH[argv[0]](argparse.Namespace(rest=argv[1:])))
    args = build_parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())

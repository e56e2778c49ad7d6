"""`python -m lamina_runtime serve|fetch`: the runtime image's entrypoint and its init-container job."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lamina_runtime")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run one execution environment behind HTTP")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument(
        "--pool",
        action="store_true",
        help="a generic pool environment: wait for POST /specialize (LAMINA_POOL=1)",
    )
    fetch = commands.add_parser("fetch", help="download a zip, check its sha256, extract it (init container)")
    fetch.add_argument("url")
    fetch.add_argument("sha256")
    fetch.add_argument("dest")
    fetch_s3 = commands.add_parser(
        "fetch-s3", help="get a zip from S3-compatible storage, check its sha256, extract it (init container)"
    )
    fetch_s3.add_argument("--endpoint", default=None, help="an S3-compatible server (path-style URLs)")
    fetch_s3.add_argument("--region", default="us-east-1")
    fetch_s3.add_argument("--version-id", default=None, help="the object version to fetch")
    fetch_s3.add_argument("bucket")
    fetch_s3.add_argument("key")
    fetch_s3.add_argument("sha256")
    fetch_s3.add_argument("dest")
    args = parser.parse_args(argv)
    if args.command == "fetch-s3":
        from .fetch import main_s3
        from .s3 import S3Object

        obj = S3Object(args.bucket, args.key, args.version_id, args.endpoint, args.region)
        return main_s3(obj, args.sha256, args.dest)
    if args.command == "fetch":
        from .fetch import main as fetch_main

        return fetch_main(args.url, args.sha256, args.dest)
    import os

    if args.pool:
        os.environ["LAMINA_POOL"] = "1"
    run_server(args.host, args.port, pool=os.environ.get("LAMINA_POOL", "") in ("1", "true"))
    return 0


def run_server(host: str, port: int, pool: bool) -> None:
    """Run the pod server. A function's pod server never speaks TLS (plain HTTP with the gateway, a
    socketpair with the worker), but asyncio imports ``ssl`` to offer it, and with it OpenSSL's
    libraries: ~7 % of the server's start-up CPU, which every cold start waits for. So ``ssl`` is kept
    out while asyncio loads (and importable again afterwards); the function's worker is another
    process, untouched. A pool pod keeps it: its hand-over may fetch code over HTTPS in this process."""
    blocked = not pool and "ssl" not in sys.modules
    if blocked:
        sys.modules["ssl"] = None  # type: ignore[assignment]  # `import ssl` raises ImportError
    try:
        import asyncio

        from .server import serve as run
    finally:
        if blocked:
            del sys.modules["ssl"]
    asyncio.run(run(host, port))


if __name__ == "__main__":
    sys.exit(main())

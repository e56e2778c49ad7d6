"""`python -m lamina_runtime serve|fetch`: the runtime image's entrypoint and its init-container job."""

from __future__ import annotations

import argparse
import asyncio
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

    from .server import POOL_ENV
    from .server import serve as run

    if args.pool:
        os.environ[POOL_ENV] = "1"
    asyncio.run(run(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Synchronous invocations per second of a no-op function with 4 warm environments.

Load comes from an async HTTP client (aiohttp, keep-alive) on the same machine, with as many callers
as environments, so the figure includes the load generator's own CPU: 2 cores serve everything.

Usage: python benchmarks/throughput.py [--seconds 10] [--environments 4] [--callers 4]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import aiohttp
from _common import free_port, function_manifest, start_local

NOOP = "def handler(event, context):\n    return None\n"


async def caller(session: aiohttp.ClientSession, url: str, stop_at: float, counts: dict[str, int]) -> None:
    while time.perf_counter() < stop_at:
        async with session.post(url, data=b"{}") as response:
            await response.read()
            counts[str(response.status)] = counts.get(str(response.status), 0) + 1


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--environments", type=int, default=4)
    parser.add_argument("--callers", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "m").mkdir()
        n = args.environments
        (root / "m" / "noop.yaml").write_text(
            function_manifest("noop", NOOP, provisionedConcurrency=n, reservedConcurrency=n)
        )
        port = free_port()
        server = start_local(root / "m", root / "state", port)
        url = f"http://127.0.0.1:{port}/2015-03-31/functions/noop/invocations"
        try:
            connector = aiohttp.TCPConnector(limit=args.callers)
            async with aiohttp.ClientSession(connector=connector) as session:
                warm: dict[str, int] = {}
                await asyncio.gather(
                    *(caller(session, url, time.perf_counter() + 1, warm) for _ in range(args.callers))
                )
                counts: dict[str, int] = {}
                started = time.perf_counter()
                await asyncio.gather(
                    *(caller(session, url, started + args.seconds, counts) for _ in range(args.callers))
                )
                elapsed = time.perf_counter() - started
        finally:
            server.terminate()
            server.wait()
    ok = counts.get("200", 0)
    print(
        f"{args.environments} warm environments, {args.callers} callers, {elapsed:.1f} s: "
        f"{ok / elapsed:,.0f} invocations/s (200: {ok}, other: "
        f"{ {k: v for k, v in counts.items() if k != '200'} })"
    )


if __name__ == "__main__":
    asyncio.run(main())

"""Synchronous invocations per second of a no-op function with 4 warm environments.

Load comes from the same machine, with as many concurrent callers as environments, so the figure
includes the load generator's own CPU: 2 cores serve everything. Two generators: `wrk` (C, from
Debian's package, with a Lua script for the POST) when it is installed, and an async Python client
(aiohttp, keep-alive) always; both are printed.

Usage: python benchmarks/throughput.py [--seconds 10] [--environments 4] [--callers 4]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
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


WRK_SCRIPT = 'wrk.method = "POST"\nwrk.body = "{}"\n'


def run_wrk(url: str, seconds: float, callers: int, workdir: Path) -> str | None:
    """Requests/s and non-2xx count reported by wrk, or None when wrk is not installed."""
    if shutil.which("wrk") is None:
        return None
    script = workdir / "post.lua"
    script.write_text(WRK_SCRIPT)
    out = subprocess.run(
        ["wrk", "-t1", f"-c{callers}", f"-d{int(seconds)}s", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    non_2xx = errors.group(1) if errors else 0
    return f"{float(rate.group(1)) if rate else 0:,.0f} invocations/s (non-2xx: {non_2xx})"


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
            wrk = await asyncio.to_thread(run_wrk, url, args.seconds, args.callers, root)
        finally:
            server.terminate()
            server.wait()
    ok = counts.get("200", 0)
    other = {k: v for k, v in counts.items() if k != "200"}
    label = f"{args.environments} warm environments, {args.callers} callers, {args.seconds:.0f} s"
    print(f"{label}, aiohttp client: {ok / elapsed:,.0f} invocations/s (200: {ok}, other: {other})")
    if wrk is not None:
        print(f"{label}, wrk: {wrk}")


if __name__ == "__main__":
    asyncio.run(main())

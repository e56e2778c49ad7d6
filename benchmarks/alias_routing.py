"""What routing through an alias costs over calling $LATEST, and how close a weighted alias's split is
to its weights.

One `lamina local` (uvloop) serves a no-op function with two published versions and two aliases:
``one`` -> version 1 and ``split`` -> version 1 with 25 % to version 2. The same run times calls to
``$LATEST`` and to ``one``, interleaved one by one so that drift hits both alike (each path has its own
warm environment), then makes N calls to ``split`` and counts X-Amz-Executed-Version.

    .venv/bin/python benchmarks/alias_routing.py --calls 5000 --split-calls 10000
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp
from _common import free_port, percentile, start_local, summary

CODE = "def handler(event, context):\n    return {tag!r}\n"


def manifest(tag: str, aliases: str) -> str:
    return (
        "apiVersion: lamina.dev/v1alpha1\nkind: Function\nmetadata:\n  name: bench\nspec:\n"
        "  handler: index.handler\n  publishVersions: true\n"
        f"  aliases: {aliases}\n  code:\n    inline: |\n      "
        + CODE.format(tag=tag).replace("\n", "\n      ")
    )


async def interleaved(base: str, calls: int) -> tuple[list[float], list[float]]:
    latest, alias = [], []
    urls = [
        (f"{base}/2015-03-31/functions/bench/invocations", latest),
        (f"{base}/2015-03-31/functions/bench/invocations?Qualifier=one", alias),
    ]
    async with aiohttp.ClientSession() as session:
        for i in range(calls + 200):
            for url, samples in urls if i % 2 else reversed(urls):
                started = time.perf_counter()
                async with session.post(url, data=b"{}") as response:
                    await response.read()
                    assert response.status == 200, response.status
                if i >= 200:
                    samples.append((time.perf_counter() - started) * 1000)
    return latest, alias


async def split(base: str, calls: int) -> Counter[str]:
    seen: Counter[str] = Counter()
    url = f"{base}/2015-03-31/functions/bench:split/invocations"
    async with aiohttp.ClientSession() as session:
        for _ in range(calls):
            async with session.post(url, data=b"{}") as response:
                await response.read()
                seen[response.headers["X-Amz-Executed-Version"]] += 1
    return seen


def resolution_cost(calls: int = 200_000) -> None:
    """The gateway's own work for the qualifier, in process: FunctionRegistry.route per call."""
    from lamina.api.versions import Route
    from lamina.environments.base import FunctionConfig
    from lamina.gateway.registry import FunctionRegistry

    latest = FunctionConfig(name="bench")
    latest.versions = {v: FunctionConfig(name="bench", version=v) for v in ("1", "2")}
    latest.routes = {"one": Route("1"), "split": Route("1", "2", 0.25)}
    registry = FunctionRegistry([latest])
    for label, name, qualifier in (
        ("route: $LATEST", "bench", None),
        ("route: alias one", "bench", "one"),
        ("route: weighted alias split", "bench", "split"),
    ):
        started = time.perf_counter()
        for _ in range(calls):
            registry.route(name, qualifier)
        print(f"{label:44} {(time.perf_counter() - started) / calls * 1e6:7.2f} us per call (in process)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--split-calls", type=int, default=10000)
    parser.add_argument("--weight", type=float, default=0.25)
    args = parser.parse_args()
    resolution_cost()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        state, manifests = root / "state", root / "manifests"
        manifests.mkdir()
        (manifests / "bench.yaml").write_text(manifest("one", "{}"))
        port = free_port()
        proc = start_local(manifests, state, port)  # publishes version 1
        proc.terminate()
        proc.wait()
        split_alias = f"{{functionVersion: '1', additionalVersionWeights: {{'2': {args.weight}}}}}"
        aliases = f"{{one: {{functionVersion: '1'}}, split: {split_alias}}}"
        (manifests / "bench.yaml").write_text(manifest("two", aliases))
        port = free_port()
        proc = start_local(manifests, state, port)  # publishes version 2
        try:
            base = f"http://127.0.0.1:{port}"
            latest, alias = asyncio.run(interleaved(base, args.calls))
            print(summary("$LATEST (unqualified)", latest))
            print(summary("alias one -> version 1", alias))
            added = percentile(alias, 50) - percentile(latest, 50)
            print(f"{'added by alias routing at p50':44} {added:+.3f} ms")
            seen = asyncio.run(split(base, args.split_calls))
            share = seen["2"] / sum(seen.values())
            print(
                f"{'split alias, ' + str(args.split_calls) + ' calls':44} version 1: {seen['1']}, "
                f"version 2: {seen['2']} -> {share:.2%} (configured {args.weight:.0%}, "
                f"off by {abs(share - args.weight) * 100:.2f} percentage points)"
            )
        finally:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()

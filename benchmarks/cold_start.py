"""Request-to-response time of a cold start: no warm environment exists when the call arrives.

Twenty copies of each function are declared; each copy's first call is a cold start (a new
`python -m lamina_runtime.worker` process, INIT, then the invocation). Two variants: `hello` (inline
code) and `layered` (imports a module from a Layer).

Usage: python benchmarks/cold_start.py [--starts 20]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import aiohttp
from _common import free_port, function_manifest, start_local, summary

HELLO = "def handler(event, context):\n    return {'message': 'Hello, world!'}\n"
LAYERED = "import shared\n\ndef handler(event, context):\n    return shared.greet('world')\n"
LAYER = """apiVersion: v1
kind: ConfigMap
metadata:
  name: shared-layer
data:
  shared.py: |
    import json, decimal, datetime
    def greet(name):
        return {"message": f"Hello, {name}!"}
---
apiVersion: lamina.dev/v1alpha1
kind: Layer
metadata:
  name: shared
spec:
  configMap:
    name: shared-layer
"""


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--starts", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        m = root / "m"
        m.mkdir()
        (m / "layer.yaml").write_text(LAYER)
        for i in range(args.starts):
            (m / f"hello-{i}.yaml").write_text(function_manifest(f"hello-{i}", HELLO))
            (m / f"layered-{i}.yaml").write_text(
                function_manifest(f"layered-{i}", LAYERED, layers="[shared]")
            )
        port = free_port()
        server = start_local(m, root / "state", port)
        results: dict[str, list[float]] = {"hello": [], "layered": []}
        try:
            async with aiohttp.ClientSession() as session:
                for i in range(args.starts):
                    for kind in results:
                        url = f"http://127.0.0.1:{port}/2015-03-31/functions/{kind}-{i}/invocations"
                        started = time.perf_counter()
                        async with session.post(url, data=b"{}") as response:
                            await response.read()
                            assert response.status == 200
                        results[kind].append((time.perf_counter() - started) * 1000)
                        await asyncio.sleep(0.05)
        finally:
            server.terminate()
            server.wait()
    for kind, samples in results.items():
        print(summary(f"cold start, {kind}, request to response", samples))


if __name__ == "__main__":
    asyncio.run(main())

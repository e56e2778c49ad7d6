"""Request-to-response time of a cold start: no warm environment exists when the call arrives.

Twenty copies of each function are declared; each copy's first call is a cold start (a new
`python -m lamina_runtime.worker` process, INIT, then the invocation). Variants: `hello` (inline
code, python3.12), `layered` (imports a module from a Layer), `hello-3.11` (hello on python3.11, the
interpreter lamina's own venv runs) and `boto3` (hello that imports boto3 at module level: what a
function pays when it does use the runtime's SDK; the others must not pay for it).

Usage: python benchmarks/cold_start.py [--starts 20] [--only hello,layered]
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
BOTO3 = "import boto3\n\n" + HELLO
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
    parser.add_argument("--only", default="hello,layered,hello-3.11,boto3", help="variants, comma-separated")
    args = parser.parse_args()
    kinds = [k for k in args.only.split(",") if k]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        m = root / "m"
        m.mkdir()
        (m / "layer.yaml").write_text(LAYER)
        variants = {
            "hello": (HELLO, {}),
            "layered": (LAYERED, {"layers": "[shared]"}),
            "hello-3.11": (HELLO, {"runtime": "python3.11"}),
            "boto3": (BOTO3, {}),
        }
        for i in range(args.starts):
            for kind in kinds:
                code, spec = variants[kind]
                name = f"{kind.replace('.', '')}-{i}"
                (m / f"{name}.yaml").write_text(function_manifest(name, code, **spec))
        port = free_port()
        server = start_local(m, root / "state", port)
        results: dict[str, list[float]] = {kind: [] for kind in kinds}
        try:
            async with aiohttp.ClientSession() as session:
                for i in range(args.starts):
                    for kind in results:
                        name = f"{kind.replace('.', '')}-{i}"
                        url = f"http://127.0.0.1:{port}/2015-03-31/functions/{name}/invocations"
                        started = time.perf_counter()
                        async with session.post(url, data=b"{}") as response:
                            body = await response.read()
                            assert response.status == 200
                            assert "X-Amz-Function-Error" not in response.headers, body
                        results[kind].append((time.perf_counter() - started) * 1000)
                        await asyncio.sleep(0.05)
        finally:
            server.terminate()
            server.wait()
    for kind, samples in results.items():
        print(summary(f"cold start, {kind}, request to response", samples))


if __name__ == "__main__":
    asyncio.run(main())

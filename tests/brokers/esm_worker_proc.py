"""A mapping worker in its own process, for tests that SIGKILL it in the middle of a batch.

    python esm_worker_proc.py KIND URL SOURCE ESM MARKER

Its function writes the bodies of the batch it got to MARKER (JSON list) and then never answers.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lamina.eventsources.config import MappingConfig
from lamina.eventsources.factory import make_source
from lamina.eventsources.mapping import MappingWorker
from lamina.eventsources.timing import Timing
from tests.support.brokers import endpoint_of, normalized_records


def _announce(marker: str, bodies: list[str]) -> None:
    tmp = Path(marker + ".tmp")
    tmp.write_text(json.dumps(bodies))
    tmp.rename(marker)


async def main(kind: str, url: str, source: str, esm: str, marker: str) -> None:
    async def hang(function_name: str, payload: bytes, request_id: str | None = None):
        bodies = [r["body"] for r in normalized_records(payload)]
        _announce(marker, bodies)
        await asyncio.Event().wait()

    options = {"ack_wait_seconds": 3.0} if kind == "nats" else {}
    src = make_source(endpoint_of(kind, url, source), url, esm_name=esm, batch_size=5, **options)
    worker = MappingWorker(
        MappingConfig(name=esm, function_name="fn", batch_size=5), src, hang, timing=Timing(0.2)
    )
    await worker.run()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))

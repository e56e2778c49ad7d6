"""Fixtures for runtime tests: handler code written into tmp_path, real worker subprocesses."""

from __future__ import annotations

import json
import subprocess
import textwrap
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from lamina_runtime.host import HostedEnvironment
from lamina_runtime.process import WorkerProcess
from lamina_runtime.protocol import InvocationRequest, InvocationResult


@pytest.fixture
def write_code(tmp_path: Path) -> Callable[..., str]:
    """write_code(source, name="index.py", root="code") -> the directory holding the file."""

    def write(source: str, name: str = "index.py", root: str = "code") -> str:
        path = tmp_path / root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
        return str(tmp_path / root)

    return write


@pytest.fixture
async def make_worker() -> AsyncIterator[Callable[..., HostedEnvironment]]:
    """make_worker(code_dir, handler="index.handler", kind=WorkerProcess, **options); stopped after."""
    workers: list[HostedEnvironment] = []

    def make(
        code_dir: str,
        handler: str = "index.handler",
        kind: type[HostedEnvironment] = WorkerProcess,
        **kwargs: object,
    ) -> HostedEnvironment:
        kwargs.setdefault("stdout", subprocess.DEVNULL)
        worker = kind(handler, code_dir, **kwargs)  # type: ignore[arg-type]
        workers.append(worker)
        return worker

    yield make
    for worker in workers:
        await worker.stop()


async def call(
    worker: HostedEnvironment, event: object = None, *, raw: bytes | None = None, **fields: object
) -> tuple[InvocationResult, object]:
    """Invoke with a JSON event; returns the result and its decoded payload."""
    payload = raw if raw is not None else json.dumps({} if event is None else event).encode()
    request = InvocationRequest(request_id=str(uuid.uuid4()), payload=payload, **fields)  # type: ignore[arg-type]
    result = await worker.invoke(request)
    return result, json.loads(result.payload)

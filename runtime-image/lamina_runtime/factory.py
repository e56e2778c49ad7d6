"""Which kind of execution environment a function's runtime needs.

One place decides it, so that local mode (the pool) and the pod server (``serve``) never disagree:
``provided*`` runtimes bring their own ``bootstrap`` (Runtime API over HTTP), the ``python*`` ones run
lamina's own worker.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .host import HostedEnvironment
from .process import WorkerProcess

CUSTOM_RUNTIME_PREFIX = "provided"


def is_custom_runtime(runtime: str | None) -> bool:
    return bool(runtime) and str(runtime).startswith(CUSTOM_RUNTIME_PREFIX)


def python_version(runtime: str | None) -> tuple[int, int] | None:
    """(3, 12) for ``python3.12``; None for a custom runtime or anything else."""
    if not runtime or not runtime.startswith("python"):
        return None
    major, _, minor = runtime[len("python") :].partition(".")
    if not (major.isdigit() and minor.isdigit()):
        return None
    return int(major), int(minor)


def environment_for(
    runtime: str | None,
    handler: str,
    code_dir: str,
    layers: Iterable[str] = (),
    env: Mapping[str, str] | None = None,
    **options: Any,
) -> HostedEnvironment:
    """A RuntimeApiProcess for ``provided*`` runtimes, else a WorkerProcess (an unknown or missing
    runtime is a Python one, as before runtimes were told apart); ``options`` as WorkerProcess takes."""
    kind: type[HostedEnvironment] = WorkerProcess
    if is_custom_runtime(runtime):
        # Only a custom runtime's pod loads the Runtime API server: a Python function's cold start
        # does not wait for it (its module and what it imports are ~5 % of the pod server's start).
        from .runtime_api import RuntimeApiProcess

        kind = RuntimeApiProcess
    return kind(handler, code_dir, layers, env, runtime=runtime, **options)

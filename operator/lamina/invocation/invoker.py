"""The one shape of "run this function" inside lamina.

The async dispatcher, the mapping workers and the schedules invoke functions through an
:class:`Invoker`, whoever provides it: the gateway's :class:`~lamina.gateway.service.InvocationService`
(in the gateway process and in local mode) or the cluster worker's HTTP client of the gateway.
"""

from __future__ import annotations

from typing import Protocol

from lamina_runtime.protocol import InvocationResult


class Invoker(Protocol):
    """Run a function synchronously by its key ``namespace/name``.

    ``request_id`` names the invocation (an async event's id, so that its retries and its record share
    it); None lets the invoker make one. Raises :class:`~lamina.invocation.errors.ThrottledError` over
    the function's concurrency and :class:`~lamina.invocation.errors.FunctionNotFound` for an unknown
    function; any other exception means the platform failed before the handler answered. A function
    error is a result (``function_error`` set), not an exception.
    """

    async def __call__(
        self, function_key: str, payload: bytes, /, request_id: str | None = None
    ) -> InvocationResult: ...


class Enqueue(Protocol):
    """Queue an Event invocation of ``namespace/name`` durably; ``request_id`` makes it idempotent (an
    event with the id of one already queued is stored once)."""

    async def __call__(self, function_key: str, payload: bytes, /, request_id: str | None = None) -> None: ...

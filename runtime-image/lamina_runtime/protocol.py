"""Types exchanged between a host (gateway, pod server) and an execution environment.

Kept in the runtime package so both sides share one definition without the runtime importing lamina.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class InvocationRequest:
    request_id: str
    payload: bytes
    client_context: str | None = None  # base64 JSON, as X-Amz-Client-Context carries it
    invoked_function_arn: str | None = None
    version: str = "$LATEST"


@dataclass(slots=True)
class InvocationResult:
    request_id: str
    payload: bytes  # the function's JSON result, or Lambda's error object when function_error is set
    function_error: str | None = None  # "Unhandled" on any function/runtime error
    error_type: str | None = None  # errorType of the error body (e.g. "Sandbox.Timedout")
    log: str = ""  # this invocation's log (START..REPORT), for X-Amz-Log-Result
    duration_ms: float = 0.0
    init_duration_ms: float | None = None  # set on the first invocation of a cold environment
    max_memory_mb: int = 0
    extra: dict[str, str] = field(default_factory=dict)

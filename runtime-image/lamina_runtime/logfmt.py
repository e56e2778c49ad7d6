"""The platform lines of an invocation log (START / END / REPORT), written the way Lambda writes them.

Shared by the worker (normal invocations) and the host (timeouts and crashes, where the worker cannot
write its own lines any more).
"""

from __future__ import annotations

import time


def start_line(request_id: str, version: str = "$LATEST") -> str:
    return f"START RequestId: {request_id} Version: {version}\n"


def end_line(request_id: str) -> str:
    return f"END RequestId: {request_id}\n"


def report_line(
    request_id: str,
    duration_ms: float,
    memory_mb: int | str,
    max_memory_mb: int,
    init_duration_ms: float | None = None,
    status: str | None = None,
) -> str:
    billed = max(1, -int(-duration_ms // 1))  # whole ms, rounded up
    fields = [
        f"REPORT RequestId: {request_id}",
        f"Duration: {duration_ms:.2f} ms",
        f"Billed Duration: {billed} ms",
        f"Memory Size: {memory_mb} MB",
        f"Max Memory Used: {max_memory_mb} MB",
    ]
    if init_duration_ms is not None:
        fields.append(f"Init Duration: {init_duration_ms:.2f} ms")
    if status is not None:
        fields.append(f"Status: {status}")
    return "\t".join(fields) + "\n"


def iso_now() -> str:
    """UTC timestamp with milliseconds, as CloudWatch prints it (2024-01-31T12:00:00.123Z)."""
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


def timeout_message(request_id: str, timeout_s: float) -> str:
    return f"RequestId: {request_id} Error: Task timed out after {timeout_s:.2f} seconds"


def timeout_line(request_id: str, timeout_s: float) -> str:
    return f"{iso_now()} {request_id} Task timed out after {timeout_s:.2f} seconds\n"


def error_lines(error_type: str, message: str, stack: list[str] | None = None) -> str:
    """The `[ERROR]` block the Python runtime prints for an unhandled error."""
    text = f"[ERROR] {error_type}: {message}\n"
    if stack:
        text += "Traceback (most recent call last):\n" + "".join(
            line if line.endswith("\n") else line + "\n" for line in stack
        )
    return text

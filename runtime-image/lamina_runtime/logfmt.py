"""The platform lines of an execution environment's log, written the way Lambda writes them.

INIT_START, INIT_REPORT, START, END, REPORT and the timeout line, as plain text (Lambda's default log
format) or as the JSON records Lambda writes with ``LoggingConfig.LogFormat: JSON``
(``{"time", "type": "platform.start", "record"}``). Every platform record is INFO, so a system log
level of WARN drops them all, as on Lambda. Shared by the worker (INIT and normal invocations) and the
host (timeouts, crashes, failed INITs: the lines the runtime cannot write any more).
"""

from __future__ import annotations

import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at cold start
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

#: Log levels by name, as Lambda's LoggingConfig spells them (TRACE is DEBUG to Python's logging).
LEVELS = {"TRACE": 5, "DEBUG": 10, "INFO": 20, "WARN": 30, "WARNING": 30, "ERROR": 40, "FATAL": 50}
INFO = 20
#: Error lines of the Python runtime indent traceback lines with NO-BREAK SPACE, as CloudWatch shows.
TRACE_INDENT = "\u00a0"


def start_line(request_id: str, version: str = "$LATEST") -> str:
    return f"START RequestId: {request_id} Version: {version}\n"


def end_line(request_id: str) -> str:
    return f"END RequestId: {request_id}\n"


def billed_ms(duration_ms: float) -> int:
    return max(1, -int(-duration_ms // 1))  # whole ms, rounded up


def report_line(
    request_id: str,
    duration_ms: float,
    memory_mb: int | str,
    max_memory_mb: int,
    init_duration_ms: float | None = None,
    status: str | None = None,
    error_type: str | None = None,
) -> str:
    """Lambda's REPORT line. ``status`` (``timeout``, ``error``) and ``error_type`` appear only when
    the runtime failed (timeout, crash, memory, failed INIT); an error raised by the handler is an
    ordinary invocation to the platform."""
    fields = [
        f"REPORT RequestId: {request_id}",
        f"Duration: {duration_ms:.2f} ms",
        f"Billed Duration: {billed_ms(duration_ms)} ms",
        f"Memory Size: {memory_mb} MB",
        f"Max Memory Used: {max_memory_mb} MB",
    ]
    if init_duration_ms is not None:
        fields.append(f"Init Duration: {init_duration_ms:.2f} ms")
    if status is not None:
        fields.append(f"Status: {status}")
    if error_type:
        fields.append(f"Error Type: {error_type}")
    return "\t".join(fields) + "\n"


def iso_now() -> str:
    """UTC timestamp with milliseconds, as CloudWatch prints it (2024-01-31T12:00:00.123Z)."""
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


def timeout_message(request_id: str, timeout_s: float) -> str:
    return f"RequestId: {request_id} Error: Task timed out after {timeout_s:.2f} seconds"


def timeout_line(request_id: str, timeout_s: float) -> str:
    return f"{iso_now()} {request_id} Task timed out after {timeout_s:.2f} seconds\n"


def indent_trace(line: str) -> str:
    """A traceback line with its leading spaces as NO-BREAK SPACEs (the Python runtime's error block)."""
    stripped = line.lstrip(" ")
    return TRACE_INDENT * (len(line) - len(stripped)) + stripped


def error_lines(error_type: str, message: str, stack: list[str] | None = None) -> str:
    """The `[ERROR]` block the Python runtime prints for an unhandled error (Text format)."""
    head = "[ERROR]"
    if error_type:
        head += f" {error_type}" + (":" if message else "")
    if message:
        head += f" {message}"
    # The runtime always adds the Traceback line, even with no frames (Runtime.ImportModuleError).
    lines = [head, "Traceback (most recent call last):"]
    for element in stack or ():
        lines.extend(indent_trace(line) for line in element.splitlines())
    return "\n".join(lines) + "\n"


class PlatformLog:
    """How this environment writes platform lines: ``json_format`` (LogFormat JSON) and whether they
    are written at all (``system_level`` above INFO drops them)."""

    __slots__ = ("enabled", "json_format")

    def __init__(self, json_format: bool = False, system_level: str = "INFO") -> None:
        self.json_format = json_format
        self.enabled = LEVELS.get(system_level.upper(), INFO) <= INFO

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> PlatformLog:
        """From AWS_LAMBDA_LOG_FORMAT (what the function sees too) and LAMINA_SYSTEM_LOG_LEVEL."""
        get = env.get
        return cls(
            (get("AWS_LAMBDA_LOG_FORMAT") or "").upper() == "JSON", get("LAMINA_SYSTEM_LOG_LEVEL") or "INFO"
        )

    def _record(self, kind: str, record: dict[str, Any]) -> str:
        import json

        return json.dumps({"time": iso_now(), "type": kind, "record": record}) + "\n"

    def init_start(self, runtime_version: str, version_arn: str, init_type: str = "on-demand") -> str:
        if not self.enabled:
            return ""
        if self.json_format:
            record = {
                "initializationType": init_type,
                "phase": "init",
                "runtimeVersion": runtime_version,
                "runtimeVersionArn": version_arn,
            }
            return self._record("platform.initStart", record)
        return f"INIT_START Runtime Version: {runtime_version}\tRuntime Version ARN: {version_arn}\n"

    def init_report(self, duration_ms: float, phase: str, status: str, error_type: str | None = None) -> str:
        """INIT_REPORT: Lambda prints it when an INIT did not succeed (error or timeout)."""
        if not self.enabled:
            return ""
        if self.json_format:
            record: dict[str, Any] = {
                "initializationType": "on-demand",
                "phase": phase,
                "status": status,
                "metrics": {"durationMs": round(duration_ms, 3)},
            }
            if error_type:
                record["errorType"] = error_type
            return self._record("platform.initReport", record)
        line = f"INIT_REPORT Init Duration: {duration_ms:.2f} ms\tPhase: {phase}\tStatus: {status}"
        return line + (f"\tError Type: {error_type}" if error_type else "") + "\n"

    def start(self, request_id: str, version: str) -> str:
        if not self.enabled:
            return ""
        if self.json_format:
            return self._record("platform.start", {"requestId": request_id, "version": version})
        return start_line(request_id, version)

    def end(self, request_id: str, status: str = "success", duration_ms: float | None = None) -> str:
        if not self.enabled:
            return ""
        if self.json_format:
            record: dict[str, Any] = {"requestId": request_id, "status": status}
            if duration_ms is not None:
                record["metrics"] = {"durationMs": round(duration_ms, 3)}
            return self._record("platform.runtimeDone", record)
        return end_line(request_id)

    def report(
        self,
        request_id: str,
        duration_ms: float,
        memory_mb: int | str,
        max_memory_mb: int,
        init_duration_ms: float | None = None,
        status: str | None = None,
        error_type: str | None = None,
        function_error: bool = False,
    ) -> str:
        """``function_error``: the handler raised; Text says nothing more, JSON's status is failure."""
        if not self.enabled:
            return ""
        if self.json_format:
            metrics: dict[str, Any] = {
                "durationMs": round(duration_ms, 3),
                "billedDurationMs": billed_ms(duration_ms),
                "memorySizeMB": int(memory_mb),
                "maxMemoryUsedMB": max_memory_mb,
            }
            if init_duration_ms is not None:
                metrics["initDurationMs"] = round(init_duration_ms, 3)
            status = status or ("failure" if function_error else "success")
            record: dict[str, Any] = {"requestId": request_id, "metrics": metrics, "status": status}
            if error_type:
                record["errorType"] = error_type
            return self._record("platform.report", record)
        return report_line(
            request_id, duration_ms, memory_mb, max_memory_mb, init_duration_ms, status, error_type
        )

    def timeout(self, request_id: str, timeout_s: float) -> str:
        """The classic "Task timed out" line (Text); in JSON the report's status says it."""
        if not self.enabled or self.json_format:
            return ""
        return timeout_line(request_id, timeout_s)

    def is_start(self, line: str, request_id: str) -> bool:
        return self._is(line, request_id, "START RequestId: ", "platform.start")

    def is_end(self, line: str, request_id: str) -> bool:
        return self._is(line, request_id, "END RequestId: ", "platform.runtimeDone")

    def _is(self, line: str, request_id: str, text_prefix: str, kind: str) -> bool:
        if line.startswith(text_prefix + request_id):
            return True
        if not line.startswith('{"time"'):
            return False
        import json

        try:
            record = json.loads(line)
        except ValueError:
            return False
        return record.get("type") == kind and (record.get("record") or {}).get("requestId") == request_id


TEXT = PlatformLog()

"""One execution environment's handler process: INIT once, then one invocation at a time.

Run as `python -m lamina_runtime.worker` with the control socket's fd in LAMINA_CONTROL_FD. Imports are
kept to what INIT needs (json, struct, os, sys, time); everything else is imported on first use, so the
runtime adds little to a cold start.
"""

from __future__ import annotations

import _signal  # not `signal`: it imports enum, a third of the worker's start-up
import json
import os
import sys
import time

from . import capture, logfmt, logsetup
from .context import LambdaContext, decode_client_context, decode_identity
from .environment import apply_defaults, runtime_version, runtime_version_arn
from .errors import InitError, from_exception, show_code_at
from .framing import FLUSH_LOG_SIGNAL, PRESPAWNED_ENV, FrameBuffer, read_frame_fd, write_frame_fd
from .loader import load_handler
from .paths import layer_import_paths, split_layers

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at cold start
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

MAX_RESPONSE_BYTES = 6291556  # what Lambda's Runtime API accepts (6 MB + 100 B)
#: Lambda's runtime escapes non-ASCII characters of results up to python3.11, and no longer from 3.12.
ENSURE_ASCII = sys.version_info < (3, 12)


def _json_default(obj: object) -> object:
    if type(obj).__name__ == "Decimal" and type(obj).__module__ == "decimal":
        return int(obj) if obj == int(obj) else float(obj)  # type: ignore[call-overload,arg-type]
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


_status_fd = -1  # /proc/self/status, opened once: re-read from offset 0 it is generated afresh


def _max_memory_mb() -> int:
    """Peak RSS so far. /proc's VmHWM first: getrusage's maxrss survives exec, so it would report the
    host process's peak from before the fork. The file is kept open and read with one ``pread``: an
    open, a read and a close per invocation cost three times as much."""
    global _status_fd
    try:
        if _status_fd < 0:
            _status_fd = os.open("/proc/self/status", os.O_RDONLY | os.O_CLOEXEC)
        data = os.pread(_status_fd, 4096, 0)
        at = data.index(b"VmHWM:")
        return int(data[at + 6 : data.index(b"kB", at)]) // 1024
    except (OSError, ValueError):
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024  # KiB on Linux


def setup_import_path(task_root: str, layers: list[str], runtime_packages: list[str] = ()) -> None:  # type: ignore[assignment]
    """Task root first, then layers (later layer first), then the runtime's own packages (boto3), ahead
    of the runtime and the standard library; drop the cwd entry. So the function or a layer can bring
    its own boto3, as on Lambda."""
    if sys.path and sys.path[0] in ("", os.getcwd()):
        del sys.path[0]
    sys.path[:0] = [task_root, *layer_import_paths(layers), *runtime_packages]


class Worker:
    def __init__(self, fd: int, platform: logfmt.PlatformLog = logfmt.TEXT) -> None:
        self.fd = fd
        self.platform = platform
        self.log = capture.LogBuffer()
        self.handler: Callable[..., Any] | None = None
        self.init_duration_ms = 0.0
        # A provisioned environment was initialised ahead of any request: as on Lambda, no invocation
        # pays for that INIT, so no REPORT carries Init Duration.
        self.first = os.environ.get("AWS_LAMBDA_INITIALIZATION_TYPE") != "provisioned-concurrency"
        self.payload = b""
        self.memory_mb = os.environ["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"]

    def init(self) -> dict[str, Any]:
        """Run INIT and describe its outcome in the `ready` frame.

        Init Duration counts from the host's spawn (LAMINA_SPAWNED_AT) when given, so that it covers
        interpreter and runtime startup as well as the module's top-level code, as Lambda's does.
        """
        started = time.perf_counter()
        env = os.environ
        spawned_at = float(env.pop("LAMINA_SPAWNED_AT", "0") or 0)
        version = runtime_version()
        sys.stdout.write(
            self.platform.init_start(
                version,
                runtime_version_arn(env.get("AWS_REGION", ""), version),
                env.get("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand"),
            )
        )
        error = None
        try:
            self.handler = load_handler(env.get("_HANDLER", ""))
        except InitError as exc:
            error = exc.as_object()
            sys.stdout.write(self.error_block(error))
        if spawned_at:
            self.init_duration_ms = max(0.0, time.time() - spawned_at) * 1000
        else:
            self.init_duration_ms = (time.perf_counter() - started) * 1000
        return {
            "type": "ready",
            "pid": os.getpid(),
            "init_duration_ms": self.init_duration_ms,
            "init_error": error,
            "init_log": self.log.take(),
        }

    def error_block(self, error: dict[str, Any], request_id: str = "") -> str:
        """How the runtime logs an unhandled error: the [ERROR] block, or one JSON line."""
        if not self.platform.json_format:
            return logfmt.error_lines(error["errorType"], error["errorMessage"], error.get("stackTrace"))
        line = {
            "timestamp": time.strftime(logsetup.JSON_DATE_FORMAT, time.gmtime()),
            "level": "ERROR",
            "errorMessage": error["errorMessage"],
            "errorType": error["errorType"],
            "requestId": request_id,
            "stackTrace": error.get("stackTrace") or [],
        }
        return json.dumps(line, ensure_ascii=False) + "\n"

    def begin(self, header: dict[str, Any]) -> None:
        """Per-invocation state the function's code sees: the request id of its log records, and
        the trace context in _X_AMZN_TRACE_ID (botocore forwards it on calls the function makes,
        which carries the recursion guard's depth) and in TRACEPARENT / TRACESTATE."""
        logsetup.current.request_id = header["request_id"]
        env = os.environ
        for name, value in (
            ("_X_AMZN_TRACE_ID", header.get("trace_id")),
            ("TRACEPARENT", header.get("traceparent")),
            ("TRACESTATE", header.get("tracestate")),
        ):
            if value:
                env[name] = value
            elif name in env:
                del env[name]

    def invoke(self, header: dict[str, Any], body: bytes) -> tuple[dict[str, Any], bytes]:
        """Run one invocation: its reply frame (header, payload).

        START, END and REPORT go into the invocation's log only. The host writes them to the
        container log (containerlog.py): it reads this process's stdout and stderr, so it places
        START before everything the handler and its subprocesses write, and END and REPORT (the
        reply's ``platform_end``) after it, without a write of this process on the answer's path.
        START is the host's own line (``start`` in the header), so both logs carry the same one."""
        request_id = header["request_id"]
        self.begin(header)
        platform = self.platform
        log = self.log
        log.add(header.get("start") or platform.start(request_id, header.get("version") or "$LATEST"))
        started = time.perf_counter()
        error = self._run(header, body)
        duration_ms = (time.perf_counter() - started) * 1000
        if error is not None:
            sys.stdout.write(self.error_block(error, request_id))
            error["requestId"] = request_id
            payload = json.dumps(error, ensure_ascii=ENSURE_ASCII).encode()
        else:
            payload = self.payload
        max_memory = _max_memory_mb()
        init_ms = self.init_duration_ms if self.first else None
        self.first = False
        tail = platform.end(request_id, "failure" if error is not None else "success", duration_ms)
        tail += platform.report(
            request_id, duration_ms, self.memory_mb, max_memory, init_ms, function_error=error is not None
        )
        log.add(tail)
        reply = {
            "type": "result",
            "request_id": request_id,
            "function_error": "Unhandled" if error is not None else None,
            "error_type": error["errorType"] if error is not None else None,
            "duration_ms": duration_ms,
            "init_duration_ms": init_ms,
            "max_memory_mb": max_memory,
            "log": log.take(),
            "platform_end": tail,
        }
        return reply, payload

    def _run(self, header: dict[str, Any], body: bytes) -> dict[str, Any] | None:
        """Call the handler; on success leave the JSON result in self.payload, else return an error object."""
        self.payload = b""
        try:
            event = json.loads(body) if body.strip() else {}
        except (ValueError, RecursionError) as exc:  # nesting past Python's recursion: refused, not a crash
            return {
                "errorMessage": f"Unable to unmarshal input: {exc}",
                "errorType": "Runtime.UnmarshalError",
                "stackTrace": [],
            }
        client_context, w3c = decode_client_context(header.get("client_context"))
        for key in ("traceparent", "tracestate"):
            if header.get(key):
                w3c[key] = header[key]
        context = LambdaContext(
            header["request_id"],
            int(header.get("deadline_ms") or (time.time() + 900) * 1000),
            header.get("invoked_function_arn") or "",
            client_context,
            decode_identity(header.get("cognito_identity")),
            w3c,
        )
        try:
            result = self.handler(event, context)  # type: ignore[misc]
        except Exception as exc:
            return from_exception(exc)
        if isinstance(result, bytes):
            # As Lambda's runtime: bytes are the response as they are, not JSON.
            payload = result
        else:
            try:
                payload = json.dumps(result, default=_json_default, ensure_ascii=ENSURE_ASCII).encode()
            except (TypeError, ValueError, OverflowError, RecursionError) as exc:
                return {
                    "errorMessage": f"Unable to marshal response: {exc}",
                    "errorType": "Runtime.MarshalError",
                    "stackTrace": [],
                }
        if len(payload) > MAX_RESPONSE_BYTES:
            return {
                "errorMessage": f"Response payload size ({len(payload)} bytes) exceeded maximum allowed "
                f"payload size ({MAX_RESPONSE_BYTES} bytes).",
                "errorType": "Function.ResponseSizeTooLarge",
                "stackTrace": [],
            }
        self.payload = payload
        return None

    def flush_log(self, signum: int, frame: object) -> None:
        """SIGUSR1 from the host after a timeout: hand over what the invocation printed so far, so
        that its log (and Tail) shows it before "Task timed out". The host kills the environment
        next, so writing between frames of an unfinished reply cannot confuse a later invocation."""
        try:
            write_frame_fd(self.fd, {"type": "log", "log": self.log.take()})
        except OSError:
            pass

    def serve(self) -> int:
        ready = self.init()
        _signal.signal(FLUSH_LOG_SIGNAL, self.flush_log)
        write_frame_fd(self.fd, ready)
        if ready["init_error"] is not None:
            return 1  # as in Lambda, a failed INIT ends the environment; the host reports it on invoke
        frames = FrameBuffer()  # read ahead: one read per invocation
        while True:
            frame = read_frame_fd(self.fd, frames)
            if frame is None:
                return 0
            header, body = frame
            if header.get("type") == "invoke":
                reply, payload = self.invoke(header, body)
                write_frame_fd(self.fd, reply, payload)


def take_handover(fd: int) -> bool:
    """A pre-spawned worker becomes the function's: wait for the host's "handover" frame, then take its
    environment (exactly: nothing of the pool pod's stays for the handler or its subprocesses), its
    directory, and the import path a spawn with that environment would have started with. False when
    the host closed the channel first (the pool pod ended without a function)."""
    frame = read_frame_fd(fd)
    if frame is None:
        return False
    header, _ = frame
    env = os.environ
    old_path = split_layers(env.get("PYTHONPATH"))
    if sys.path and sys.path[0] in ("", os.getcwd()):
        del sys.path[0]  # `-m` put the start directory first; the spawn would have had the task root's
    env.clear()
    env.update(header["environ"])
    time.tzset()
    # PYTHONPATH entries are read at start-up: the function's own come after the runtime's, as a spawn's.
    extra = [p for p in split_layers(env.get("PYTHONPATH")) if p not in old_path]
    at = max((sys.path.index(p) + 1 for p in old_path if p in sys.path), default=0)
    sys.path[at:at] = extra
    os.chdir(header["cwd"])
    sys.path.insert(0, os.getcwd())  # as `-m` in the task root: setup_import_path drops it again
    return True


def main() -> int:
    env = os.environ
    fd_text = env.pop("LAMINA_CONTROL_FD", None)
    if fd_text is None:
        sys.stderr.write("lamina_runtime.worker: LAMINA_CONTROL_FD is not set (started outside a host?)\n")
        return 2
    fd = int(fd_text)
    os.set_inheritable(fd, False)  # the handler's own subprocesses must not hold the control channel
    if env.pop(PRESPAWNED_ENV, None) and not take_handover(fd):
        return 0
    apply_defaults(env)
    layers = split_layers(env.pop("LAMINA_LAYERS", None))
    task_root = env["LAMBDA_TASK_ROOT"]
    setup_import_path(task_root, layers, split_layers(env.pop("LAMINA_RUNTIME_PACKAGES", None)))
    show_code_at(task_root, layers)
    platform = logfmt.PlatformLog.from_env(env)
    env.pop("LAMINA_SYSTEM_LOG_LEVEL", None)
    worker = Worker(fd, platform)
    capture.install(worker.log)
    # Lambda's log handler is in place before the handler module is imported (set up on `import logging`).
    logsetup.install(platform.json_format, logsetup.level_from_env(env.get("AWS_LAMBDA_LOG_LEVEL")))
    return worker.serve()


if __name__ == "__main__":
    sys.exit(main())

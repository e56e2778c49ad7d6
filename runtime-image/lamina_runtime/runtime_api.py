"""RuntimeApiProcess: a custom runtime (`provided.*`) as an execution environment.

The function ships an executable ``bootstrap`` that speaks Lambda's Runtime API (2018-06-01) over HTTP,
in a loop: ``GET /runtime/invocation/next``, run the event, ``POST .../{id}/response`` (or ``/error``).
Each environment gets its own tiny HTTP server on 127.0.0.1 (ephemeral port, http11.py), and the host
keeps everything Lambda's platform does around the runtime: INIT ends at the first ``/next``, the
timeout and memory limit kill the process group, and the START / END / REPORT lines are written here,
around what the bootstrap printed (its stdout and stderr are read through one pipe).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import fcntl
import json
import os
import signal
import termios
import time
from dataclasses import dataclass, field
from typing import Any

from .host import PROVISIONED, HostedEnvironment, OutOfMemory, kill_group, peak_memory_mb
from .http11 import BadRequest, Request, serve_connection
from .protocol import InvocationRequest, InvocationResult

API_VERSION = "2018-06-01"
PREFIX = f"/{API_VERSION}/runtime/"
MAX_RESPONSE_BYTES = 6291556  # what Lambda's Runtime API accepts (6 MB + 100 B)
MAX_BODY_BYTES = 4 * MAX_RESPONSE_BYTES  # read (and refuse) bodies up to this; close on larger ones
OPT = "/opt"  # where Lambda's layers are extracted; shown in the "no bootstrap" error
DRAIN_ROUNDS = 50  # loop turns spent collecting output the bootstrap wrote before it answered


class _Exited(Exception):
    def __init__(self, returncode: int) -> None:
        super().__init__(f"exit {returncode}")
        self.returncode = returncode


@dataclass(eq=False)
class _Invocation:
    """One invocation handed to the bootstrap; ``reply`` gets (kind, body, headers) of its answer."""

    req: InvocationRequest
    deadline_ms: int
    function_arn: str
    reply: asyncio.Future[tuple[str, bytes, dict[str, str]]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    def headers(self) -> dict[str, str]:
        req = self.req
        headers = {
            "Content-Type": "application/json",
            "Lambda-Runtime-Aws-Request-Id": req.request_id,
            "Lambda-Runtime-Deadline-Ms": str(self.deadline_ms),
            "Lambda-Runtime-Invoked-Function-Arn": req.invoked_function_arn or self.function_arn,
            "Lambda-Runtime-Trace-Id": req.trace_id or trace_id(),
        }
        context = client_context_json(req.client_context, w3c_fields(req))
        if context:
            headers["Lambda-Runtime-Client-Context"] = context
        return headers


def w3c_fields(req: InvocationRequest) -> dict[str, str]:
    """The caller's W3C trace context, which Lambda passes in the client context under ``w3c``."""
    return {k: v for k, v in (("traceparent", req.traceparent), ("tracestate", req.tracestate)) if v}


def trace_id() -> str:
    """An X-Ray style trace header (not sampled): runtimes pass it on as _X_AMZN_TRACE_ID."""
    return f"Root=1-{int(time.time()):08x}-{os.urandom(12).hex()};Parent={os.urandom(8).hex()};Sampled=0"


def client_context_json(encoded: str | None, w3c: dict[str, str] | None = None) -> str | None:
    """The invoke API carries ClientContext as base64 JSON; the Runtime API header carries the JSON,
    with the W3C trace context added under ``w3c`` (as Lambda's runtime client reads it)."""
    data: object = None
    if encoded:
        try:
            text = base64.b64decode(encoded, validate=True).decode()
            data = json.loads(text)
        except (binascii.Error, ValueError):
            data = None
        if not w3c:
            return text if data is not None else None
    if not w3c:
        return None
    merged = dict(data) if isinstance(data, dict) else {}
    merged["w3c"] = w3c
    return json.dumps(merged)


def bootstrap_candidates(task_root: str, layers: list[str]) -> list[str]:
    """Where Lambda looks for the runtime: the task root, then /opt, where a later layer's file
    replaces an earlier one's (each layer keeps its own directory here, so the later layer is first)."""
    return [os.path.join(task_root, "bootstrap"), *(os.path.join(d, "bootstrap") for d in reversed(layers))]


def find_bootstrap(task_root: str, layers: list[str]) -> str | None:
    return next((p for p in bootstrap_candidates(task_root, layers) if os.path.isfile(p)), None)


def bootstrap_command(path: str) -> list[str] | None:
    """How to run ``path``: itself when executable; else, for a script, the interpreter its ``#!``
    line names, as the kernel would (a ConfigMap or an extracted zip does not carry the exec bit);
    None when it is neither."""
    if os.access(path, os.X_OK):
        return [path]
    try:
        with open(path, "rb") as f:
            first = f.readline(256)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    parts = first[2:].decode(errors="replace").strip().split(None, 1)
    return [*parts, path] if parts else None


def locate_bootstrap(task_root: str, layers: list[str]) -> tuple[str | None, list[str] | None]:
    """The bootstrap's path and the command that runs it (file system work: off the event loop)."""
    path = find_bootstrap(task_root, layers)
    return path, bootstrap_command(path) if path else None


def _pending_bytes(fd: int) -> int:
    """Bytes written into the pipe that the loop has not read yet."""
    buf = bytearray(4)
    try:
        fcntl.ioctl(fd, termios.FIONREAD, buf)
    except OSError:
        return 0
    return int.from_bytes(buf, "little")


class _OutputPipe(asyncio.Protocol):
    """The bootstrap's stdout and stderr: each line is echoed to the container log at once and kept
    for the invocation log."""

    def __init__(self, owner: RuntimeApiProcess) -> None:
        self.owner = owner
        self.partial = b""

    def data_received(self, data: bytes) -> None:
        text, newline, self.partial = (self.partial + data).rpartition(b"\n")
        if newline:
            self.owner._output(text.decode(errors="replace") + "\n")

    def flush(self) -> None:
        if self.partial:
            chunk, self.partial = self.partial, b""
            self.owner._output(chunk.decode(errors="replace") + "\n")

    def eof_received(self) -> bool | None:
        self.flush()
        return None


class RuntimeApiProcess(HostedEnvironment):
    """A custom runtime's ``bootstrap``, driven through the Runtime API (same interface as
    process.WorkerProcess, so pools and the pod server use either)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._server: asyncio.Server | None = None
        self._port = 0
        self._connections: set[asyncio.Task[None]] = set()
        self._work: asyncio.Queue[_Invocation] = asyncio.Queue()
        self._current: _Invocation | None = None
        self._ready: asyncio.Future[str] | None = None  # "next" | "error" once INIT is over
        self._init_error: dict[str, Any] | None = None
        self._exited: asyncio.Future[int] | None = None
        self._pipe: asyncio.ReadTransport | None = None
        self._pipe_fd = -1
        self._protocol: _OutputPipe | None = None
        self._log: list[str] = []

    @property
    def runtime_api(self) -> str:
        """``host:port`` of this environment's Runtime API (AWS_LAMBDA_RUNTIME_API)."""
        return f"127.0.0.1:{self._port}"

    def bootstrap_env(self) -> dict[str, str]:
        """Lambda's variables for a custom runtime: no AWS_EXECUTION_ENV, and the API's address."""
        env = self.base_env()
        env.pop("AWS_EXECUTION_ENV", None)
        env.setdefault("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand")
        env["AWS_LAMBDA_RUNTIME_API"] = self.runtime_api
        return env

    # --- lifecycle ---

    async def _start(self) -> float:
        await self._shutdown(grace_s=0)
        if self._server is None:
            self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0, limit=64 * 1024)
            self._port = self._server.sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()
        self._init_failure, self._init_log, self._cold = None, "", True
        self._init_error, self._log = None, []
        self._work = asyncio.Queue()
        self._ready = loop.create_future()
        self._output(self._init_start_line())
        path, command = await asyncio.to_thread(locate_bootstrap, self.code_dir, self.layers)
        if command is None:
            self.init_duration_ms = 0.0
            self._init_failure = ("error", self._invalid_entrypoint(path))
            return self.init_duration_ms
        read_fd, write_fd = os.pipe()
        started = time.perf_counter()
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *command,
                env=self.bootstrap_env(),
                cwd=self.code_dir,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=write_fd,
                stderr=write_fd,
                start_new_session=True,  # its own process group: a kill takes the handler's children too
            )
        except OSError as exc:
            os.close(read_fd)
            self.init_duration_ms = (time.perf_counter() - started) * 1000
            self._init_failure = ("error", self._invalid_entrypoint(path, exc))
            return self.init_duration_ms
        finally:
            os.close(write_fd)
        protocol = self._protocol = _OutputPipe(self)
        transport, _ = await loop.connect_read_pipe(lambda: protocol, os.fdopen(read_fd, "rb", 0))
        self._pipe, self._pipe_fd = transport, read_fd
        self._exited = asyncio.ensure_future(self._proc.wait())
        try:
            either: set[asyncio.Future[Any]] = {self._ready, self._exited}
            done, _ = await asyncio.wait(either, timeout=self.init_timeout_s, return_when="FIRST_COMPLETED")
        except BaseException:
            await self._kill()
            raise
        self.init_duration_ms = (time.perf_counter() - started) * 1000
        if self._ready.done():
            if self._ready.result() == "error":
                await self._drain_output()
                self._init_log = self._take_log()
                self._init_failure = ("error", self._init_error)
            return self.init_duration_ms
        if not done:
            await self._drain_output()
            await self._kill()
            self.init_duration_ms = self.init_timeout_s * 1000
            self._init_failure = ("timeout", self.init_timeout_s)
        else:
            await self._drain_output()
            returncode = await self._reap()
            self._init_failure = ("exit", returncode)
        self._init_log = self._take_log()
        return self.init_duration_ms

    def _init_start_line(self) -> str:
        """INIT_START of a custom runtime: Lambda names the OS-only runtime (provided:al2023...)."""
        from .environment import runtime_version_arn

        version = (self.runtime or "provided.al2023").replace(".", ":", 1)
        init_type = self.user_env.get("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand")
        return self.platform.init_start(version, runtime_version_arn(self.region, version), init_type)

    def _invalid_entrypoint(self, path: str | None, exc: OSError | None = None) -> dict[str, Any]:
        if path is None:
            shown = [os.path.join(self.code_dir, "bootstrap"), os.path.join(OPT, "bootstrap")]
            message = f"Couldn't find valid bootstrap(s): [{' '.join(shown)}]"
        elif exc is not None:
            message = f"fork/exec {path}: {exc.strerror or exc}"
        else:
            message = f"fork/exec {path}: permission denied (not executable and no #! line)"
        return {"errorMessage": message, "errorType": "Runtime.InvalidEntrypoint"}

    async def stop(self) -> None:
        await super().stop()
        if self._server is not None:
            self._server.close()
            self._server = None

    def _close_channel(self) -> None:
        """SIGTERM, as Lambda's Shutdown phase sends the runtime; SIGKILL follows after the grace."""
        if self._proc is not None and self._proc.returncode is None:
            kill_group(self._proc.pid, signal.SIGTERM, leader_reaped=False)

    def _on_killed(self) -> None:
        """Drop every connection of the dead bootstrap (a parked /next must never get new work)."""
        for task in self._connections:
            task.cancel()
        self._connections.clear()
        self._work = asyncio.Queue()
        if self._pipe is not None:
            if self._protocol is not None:
                self._protocol.flush()
            self._pipe.close()
            self._pipe, self._pipe_fd = None, -1

    # --- output ---

    def _output(self, text: str) -> None:
        self._log.append(text)
        self._echo(text)

    def _take_log(self) -> str:
        if self._protocol is not None:
            self._protocol.flush()
        text, self._log = "".join(self._log), []
        return text

    async def _drain_output(self) -> None:
        """Let the loop read what the bootstrap wrote before it answered: its answer can arrive on the
        socket before its last lines are read from the pipe."""
        for _ in range(DRAIN_ROUNDS):
            if self._pipe_fd < 0 or _pending_bytes(self._pipe_fd) == 0:
                break
            await asyncio.sleep(0)
        await asyncio.sleep(0)

    # --- invocations ---

    async def _invoke(self, req: InvocationRequest) -> InvocationResult:
        assert self._proc is not None and self._exited is not None
        rid = req.request_id
        cold, self._cold = self._cold, False
        report_init = cold and self.user_env.get("AWS_LAMBDA_INITIALIZATION_TYPE") != PROVISIONED
        init_ms = self.init_duration_ms if report_init else None
        prefix = self._take_log()  # INIT's output on a cold start, else what came between invocations
        start = self.platform.start(rid, req.version or self.version)
        self._echo(start)
        started = time.perf_counter()
        invocation = _Invocation(req, int((time.time() + self.timeout_s) * 1000), self.function_arn)
        self._current = invocation
        self._work.put_nowait(invocation)
        try:
            kind, body, headers = await self._watch(self._answer(invocation), started)
        except TimeoutError:
            memory = peak_memory_mb(self._proc.pid)
            await self._drain_output()
            await self._kill()
            return self._timeout_result(req, init_ms, memory, prefix, self._take_log())
        except OutOfMemory as oom:
            await self._drain_output()
            await self._kill()
            duration = (time.perf_counter() - started) * 1000
            return self._oom_result(req, duration, init_ms, oom.memory_mb, prefix, self._take_log())
        except _Exited:
            await self._drain_output()
            returncode = await self._reap()
            duration = (time.perf_counter() - started) * 1000
            output = self._take_log()
            return self._exit_result(
                req, returncode, duration, init_ms, prefix, output=output, runtime_wrote_start=True
            )
        finally:
            self._current = None
        duration = (time.perf_counter() - started) * 1000
        memory = peak_memory_mb(self._proc.pid)
        await self._drain_output()
        output = self._take_log()
        if memory > self.memory_mb:
            await self._kill()
            return self._oom_result(req, duration, init_ms, memory, prefix, output)
        if kind == "response":
            payload, error_type = body, None
        elif kind == "too-large":
            error = {
                "errorMessage": "Response payload size exceeded maximum allowed payload size "
                f"({MAX_RESPONSE_BYTES} bytes).",
                "errorType": "Function.ResponseSizeTooLarge",
            }
            payload, error_type = json.dumps(error).encode(), error["errorType"]
        else:
            error = runtime_error(body, headers)
            payload, error_type = json.dumps(error).encode(), str(error["errorType"])
        status = "failure" if error_type else "success"
        rest = self.platform.end(rid, status, duration)
        rest += self.platform.report(
            rid, duration, self.memory_mb, memory, init_ms, function_error=error_type is not None
        )
        self._echo(rest)
        return InvocationResult(
            request_id=rid,
            payload=payload,
            function_error="Unhandled" if error_type else None,
            error_type=error_type,
            log=prefix + start + output + rest,
            duration_ms=duration,
            init_duration_ms=init_ms,
            max_memory_mb=memory,
        )

    async def _answer(self, invocation: _Invocation) -> tuple[str, bytes, dict[str, str]]:
        """The bootstrap's answer, or _Exited when it ends first."""
        assert self._exited is not None
        answered: set[asyncio.Future[Any]] = {invocation.reply, self._exited}
        await asyncio.wait(answered, return_when="FIRST_COMPLETED")
        if invocation.reply.done():
            return invocation.reply.result()
        raise _Exited(self._exited.result())

    # --- the Runtime API ---

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await serve_connection(reader, writer, self._route, MAX_BODY_BYTES, self._refuse)
        except asyncio.CancelledError:
            # _on_killed ends the connections of a dead bootstrap; asyncio's server would log a
            # handler task that ends cancelled, so this one ends normally.
            return
        finally:
            self._connections.discard(task)

    def _refuse(self, exc: BadRequest) -> tuple[int, bytes, dict[str, str]]:
        if exc.status == 413:  # a response far over the limit: the invocation fails all the same
            self._answered("too-large")
        return _error(exc.status, "InvalidRequest", str(exc))

    async def _route(self, request: Request) -> tuple[int, bytes, dict[str, str]]:
        path = request.path.split("?", 1)[0]
        if not path.startswith(PREFIX):
            return _error(404, "InvalidRequest", f"no route for {request.method} {path}")
        parts = path[len(PREFIX) :].split("/")
        if parts == ["invocation", "next"] and request.method == "GET":
            return await self._next()
        if len(parts) == 3 and parts[0] == "invocation" and parts[2] in ("response", "error"):
            if request.method != "POST":
                return _error(405, "InvalidRequest", f"use POST {path}")
            return self._post_result(parts[1], parts[2], request)
        if parts == ["init", "error"] and request.method == "POST":
            return self._post_init_error(request)
        return _error(404, "InvalidRequest", f"no route for {request.method} {path}")

    async def _next(self) -> tuple[int, bytes, dict[str, str]]:
        """Long-poll: the first call ends INIT; each returns the next invocation when there is one."""
        if self._ready is not None and not self._ready.done():
            self._ready.set_result("next")
        if self._init_error is not None:
            return _error(403, "Runtime.InvalidState", "the runtime reported an init error")
        invocation = await self._work.get()
        return 200, invocation.req.payload, invocation.headers()

    def _post_result(self, request_id: str, kind: str, request: Request) -> tuple[int, bytes, dict[str, str]]:
        current = self._current
        if current is None or current.req.request_id != request_id or current.reply.done():
            return _error(400, "InvalidRequestID", f"unknown or finished request id {request_id}")
        if kind == "response" and len(request.body) > MAX_RESPONSE_BYTES:
            self._answered("too-large")
            return _error(
                413,
                "RequestEntityTooLarge",
                f"Exceeded maximum allowed payload size ({MAX_RESPONSE_BYTES} bytes).",
            )
        headers = {"error-type": request.headers.get("lambda-runtime-function-error-type", "")}
        current.reply.set_result((kind, request.body, headers))
        return 202, b'{"status":"OK"}', {"Content-Type": "application/json"}

    def _post_init_error(self, request: Request) -> tuple[int, bytes, dict[str, str]]:
        if self._ready is None or self._ready.done():
            return _error(403, "Runtime.InvalidState", "init/error is only accepted during INIT")
        header = request.headers.get("lambda-runtime-function-error-type", "")
        self._init_error = runtime_error(request.body, {"error-type": header})
        self._ready.set_result("error")
        return 202, b'{"status":"OK"}', {"Content-Type": "application/json"}

    def _answered(self, kind: str) -> None:
        current = self._current
        if current is not None and not current.reply.done():
            current.reply.set_result((kind, b"", {}))


def runtime_error(body: bytes, headers: dict[str, str]) -> dict[str, Any]:
    """The error object of an /error or /init/error call: the body when it is a JSON object, else
    one built from the Lambda-Runtime-Function-Error-Type header."""
    try:
        error = json.loads(body) if body.strip() else None
    except ValueError:
        error = None
    if isinstance(error, dict):
        error.setdefault("errorType", headers.get("error-type") or "Runtime.UnknownReason")
        error.setdefault("errorMessage", "")
        return error
    message = body.decode(errors="replace")[:1024]
    return {"errorMessage": message, "errorType": headers.get("error-type") or "Runtime.UnknownReason"}


def _error(status: int, error_type: str, message: str) -> tuple[int, bytes, dict[str, str]]:
    body = json.dumps({"errorMessage": message, "errorType": error_type}).encode()
    return status, body, {"Content-Type": "application/json"}

"""WorkerProcess: the host's handle on one execution environment (one worker subprocess).

The timeout is enforced here and not in the worker: a handler stuck in C code or a busy loop cannot be
interrupted from inside, so the host kills the whole process group and starts a fresh environment on
next use, which is Lambda's "reset" (the next invocation pays a new INIT).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Iterable, Mapping
from typing import IO

from . import logfmt
from .framing import FLUSH_LOG_SIGNAL, FrameError, encode, read_frame
from .paths import layer_dirs
from .protocol import InvocationRequest, InvocationResult

RUNTIME_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
STOP_GRACE_S = 2.0  # Lambda's Shutdown phase is capped at 2 s before SIGKILL
PARTIAL_LOG_WAIT_S = 0.25  # how long a timed-out worker gets to hand over its log
MEMORY_POLL_S = 0.1  # how often a running invocation's memory is checked


class WorkerBusy(RuntimeError):
    """An execution environment serves one invocation at a time."""


class OutOfMemory(Exception):
    """The worker's resident memory passed the function's memory size."""

    def __init__(self, memory_mb: int) -> None:
        super().__init__(f"{memory_mb} MB resident")
        self.memory_mb = memory_mb


def exit_description(returncode: int) -> str:
    """How Lambda words a runtime's exit: `exit status 1`, or `signal: segmentation fault`."""
    if returncode < 0:
        name = signal.strsignal(-returncode) or f"signal {-returncode}"
        return f"signal: {name.lower()}"
    return f"exit status {returncode}"


def resident_memory_mb(pid: int) -> int:
    """Current RSS (VmRSS) of a live process in MB; 0 if unknown."""
    return _proc_status_mb(pid, "VmRSS:")


def peak_memory_mb(pid: int) -> int:
    """Peak RSS (VmHWM) of a live process, for the REPORT line of a timeout; 0 if unknown."""
    return _proc_status_mb(pid, "VmHWM:")


def _proc_status_mb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError):
        pass
    return 0


class WorkerProcess:
    def __init__(
        self,
        handler: str,
        code_dir: str,
        layers: Iterable[str] = (),
        env: Mapping[str, str] | None = None,
        *,
        function_name: str = "function",
        memory_mb: int = 128,
        timeout_s: float = 3.0,
        python: str = sys.executable,
        stdout: int | IO | None = None,
        init_timeout_s: float | None = None,
        site_packages: bool = False,
        version: str = "$LATEST",
        account_id: str = "000000000000",
    ) -> None:
        self.handler = handler
        self.code_dir = os.path.abspath(code_dir)
        self.layers = [os.path.abspath(p) for p in layers]
        self.user_env = dict(env or {})
        self.function_name = function_name
        self.memory_mb = memory_mb
        self.timeout_s = timeout_s
        self.python = python
        self.stdout = stdout
        self.init_timeout_s = init_timeout_s if init_timeout_s is not None else max(10.0, timeout_s)
        self.site_packages = site_packages
        self.version = version
        self.account_id = account_id

        self.init_duration_ms: float | None = None
        self.invocations = 0
        self.last_used = time.monotonic()
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._busy = False
        self._init_failure: tuple[str, object] | None = None  # ("error", obj) | ("exit", rc) | ("timeout", s)
        self._init_log = ""
        self._cold = False  # the next invocation is the first after an INIT

    # --- state the pool reads ---

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def busy(self) -> bool:
        return self._busy

    @property
    def needs_restart(self) -> bool:
        """True when the next invocation must pay a new INIT (never started, reset, crashed)."""
        return self._init_failure is not None or not self.alive

    @property
    def region(self) -> str:
        env = self.user_env
        return env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"

    @property
    def function_arn(self) -> str:
        return f"arn:aws:lambda:{self.region}:{self.account_id}:function:{self.function_name}"

    # --- lifecycle ---

    def worker_env(self, control_fd: int) -> dict[str, str]:
        """The worker's environment: the function's variables, then the reserved ones on top."""
        env = dict(self.user_env)
        base_path = env.get("PATH") or os.environ.get("PATH") or DEFAULT_PATH
        env["PATH"] = os.pathsep.join([base_path, *layer_dirs(self.layers, "bin")])
        libs = layer_dirs(self.layers, "lib")
        if libs:
            env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [env.get("LD_LIBRARY_PATH"), *libs]))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [RUNTIME_ROOT, env.get("PYTHONPATH")]))
        day = time.strftime("%Y/%m/%d", time.gmtime())
        env.update(
            {
                "_HANDLER": self.handler,
                "LAMBDA_TASK_ROOT": self.code_dir,
                "LAMINA_LAYERS": os.pathsep.join(self.layers),
                "LAMINA_CONTROL_FD": str(control_fd),
                "AWS_LAMBDA_FUNCTION_NAME": self.function_name,
                "AWS_LAMBDA_FUNCTION_VERSION": self.version,
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(self.memory_mb),
                "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{self.function_name}",
                "AWS_LAMBDA_LOG_STREAM_NAME": f"{day}/[{self.version}]{os.urandom(16).hex()}",
                "AWS_REGION": self.region,
                "AWS_DEFAULT_REGION": env.get("AWS_DEFAULT_REGION", self.region),
                "TZ": "UTC",
                "LAMINA_SPAWNED_AT": f"{time.time():.6f}",
            }
        )
        env.setdefault("LANG", "en_US.UTF-8")
        return env

    async def start(self) -> float:
        """Spawn the worker and run INIT; returns the init duration in ms.

        An INIT that fails is not raised here: as in Lambda, it is the first invocation's result.
        """
        if self._busy:
            raise WorkerBusy(f"{self.function_name}: environment is busy")
        self._busy = True
        try:
            return await self._start()
        finally:
            self._busy = False

    async def _start(self) -> float:
        await self._shutdown(grace_s=0)
        parent, child = socket.socketpair()
        flags = [] if self.site_packages else ["-S"]
        started = time.perf_counter()
        try:
            self._proc = await asyncio.create_subprocess_exec(
                self.python,
                *flags,
                "-m",
                "lamina_runtime.worker",
                pass_fds=(child.fileno(),),
                env=self.worker_env(child.fileno()),
                cwd=self.code_dir,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=self.stdout,
                stderr=asyncio.subprocess.STDOUT if self.stdout is not None else None,
                start_new_session=True,  # its own process group: a kill takes the handler's children too
            )
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        self._reader, self._writer = await asyncio.open_connection(sock=parent)
        self._init_failure, self._init_log, self._cold = None, "", True
        try:
            header, _ = await asyncio.wait_for(read_frame(self._reader), self.init_timeout_s)
        except TimeoutError:
            await self._kill()
            self.init_duration_ms = self.init_timeout_s * 1000
            self._init_failure = ("timeout", self.init_timeout_s)
            return self.init_duration_ms
        except (asyncio.IncompleteReadError, FrameError, ConnectionError):
            returncode = await self._reap()
            self.init_duration_ms = (time.perf_counter() - started) * 1000
            self._init_failure = ("exit", returncode)
            return self.init_duration_ms
        self.init_duration_ms = float(header.get("init_duration_ms") or 0.0)
        self._init_log = header.get("init_log") or ""
        if header.get("init_error"):
            self._init_failure = ("error", header["init_error"])
        return self.init_duration_ms

    async def stop(self) -> None:
        """Shut the environment down: EOF on the control channel, then SIGKILL whatever is left."""
        await self._shutdown(grace_s=STOP_GRACE_S)

    async def _shutdown(self, grace_s: float) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._proc is not None and self._proc.returncode is None and grace_s > 0:
            try:
                await asyncio.wait_for(self._proc.wait(), grace_s)
            except TimeoutError:
                pass
        await self._kill()
        self._proc = None

    async def _kill(self) -> None:
        """SIGKILL the worker's process group (handler subprocesses included) and reap it."""
        proc = self._proc
        if proc is None:
            return
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        await proc.wait()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    async def _reap(self) -> int:
        """The worker closed the channel: wait for its exit status, then clear its process group."""
        assert self._proc is not None
        try:
            returncode = await asyncio.wait_for(self._proc.wait(), STOP_GRACE_S)
        except TimeoutError:
            returncode = -signal.SIGKILL
        await self._kill()
        return returncode if returncode is not None else -signal.SIGKILL

    # --- invocations ---

    async def invoke(self, req: InvocationRequest) -> InvocationResult:
        """Run one invocation; starts (cold) or restarts the worker first if needed."""
        if self._busy:
            raise WorkerBusy(f"{self.function_name}: environment is busy")
        self._busy = True
        try:
            if self.needs_restart and self._init_failure is None:
                await self._start()
            if self._init_failure is not None:
                return await self._init_failure_result(req)
            return await self._invoke(req)
        finally:
            self._busy = False
            self.invocations += 1
            self.last_used = time.monotonic()

    async def _invoke(self, req: InvocationRequest) -> InvocationResult:
        assert self._reader is not None and self._writer is not None and self._proc is not None
        header = {
            "type": "invoke",
            "request_id": req.request_id,
            "deadline_ms": int((time.time() + self.timeout_s) * 1000),
            "client_context": req.client_context,
            "invoked_function_arn": req.invoked_function_arn or self.function_arn,
            "version": req.version or self.version,
        }
        cold, self._cold = self._cold, False
        init_ms = self.init_duration_ms if cold else None
        started = time.perf_counter()
        prefix = self._init_log if cold else ""
        try:
            self._writer.write(encode(header, req.payload))
            await self._writer.drain()
            reply, payload = await self._await_reply(started)
        except TimeoutError:
            memory = peak_memory_mb(self._proc.pid)
            partial = await self._partial_log()
            await self._kill()
            return self._timeout_result(req, init_ms, memory, prefix, partial)
        except OutOfMemory as oom:
            partial = await self._partial_log()
            await self._kill()
            duration = (time.perf_counter() - started) * 1000
            return self._oom_result(req, duration, init_ms, oom.memory_mb, prefix, partial)
        except (asyncio.IncompleteReadError, FrameError, ConnectionError):
            returncode = await self._reap()
            duration = (time.perf_counter() - started) * 1000
            return self._exit_result(req, returncode, duration, init_ms, prefix, worker_wrote_start=True)
        peak = int(reply.get("max_memory_mb") or 0)
        if peak > self.memory_mb:
            # Lambda would have killed it on the way up: never let a local run pass that fails there.
            await self._kill()
            own = str(reply.get("log") or "")
            cut = own.find(logfmt.end_line(req.request_id))
            duration = float(reply.get("duration_ms") or 0.0)
            return self._oom_result(
                req, duration, init_ms, peak, prefix, own[:cut] if cut >= 0 else own, worker_reported=True
            )
        return InvocationResult(
            request_id=req.request_id,
            payload=payload,
            function_error=reply.get("function_error"),
            error_type=reply.get("error_type"),
            log=(self._init_log if cold else "") + (reply.get("log") or ""),
            duration_ms=float(reply.get("duration_ms") or 0.0),
            init_duration_ms=reply.get("init_duration_ms"),
            max_memory_mb=int(reply.get("max_memory_mb") or 0),
        )

    async def _await_reply(self, started: float) -> tuple[dict, bytes]:
        """The worker's reply; TimeoutError past the timeout, OutOfMemory as soon as the worker's
        resident memory passes the function's memory size (checked every MEMORY_POLL_S)."""
        assert self._reader is not None and self._proc is not None
        deadline = started + self.timeout_s
        reading = asyncio.ensure_future(read_frame(self._reader))
        try:
            while True:
                left = deadline - time.perf_counter()
                if left <= 0:
                    raise TimeoutError
                done, _ = await asyncio.wait({reading}, timeout=min(MEMORY_POLL_S, left))
                if done:
                    return reading.result()
                rss = resident_memory_mb(self._proc.pid)
                if rss > self.memory_mb:
                    raise OutOfMemory(rss)
        finally:
            if not reading.done():
                reading.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await reading

    async def _partial_log(self) -> str | None:
        """What a timed-out invocation printed, asked of the worker before it is killed; None when
        it does not answer in time (stuck in native code that never yields to the signal handler).
        The timed-out read consumed nothing unless a reply was arriving, which shows as garbage here
        and is given up on like silence."""
        assert self._proc is not None and self._reader is not None
        try:
            os.kill(self._proc.pid, FLUSH_LOG_SIGNAL)
            deadline = time.monotonic() + PARTIAL_LOG_WAIT_S
            while (left := deadline - time.monotonic()) > 0:
                header, _ = await asyncio.wait_for(read_frame(self._reader), left)
                if header.get("type") in ("log", "result"):
                    return str(header.get("log") or "")
        except (TimeoutError, ProcessLookupError, asyncio.IncompleteReadError, FrameError, ConnectionError):
            pass
        except ValueError:  # a header that is not JSON: the stream was mid-frame
            pass
        return None

    def _error_result(
        self,
        req: InvocationRequest,
        error: dict,
        body_log: str,
        duration_ms: float,
        init_ms: float | None,
        memory: int,
        status: str,
        prefix_log: str = "",
        *,
        worker_wrote_start: bool = False,
        echo: bool = True,
    ) -> InvocationResult:
        """A result the host writes itself because the worker cannot (timeout, crash, failed INIT)."""
        import json

        rid = req.request_id
        start = logfmt.start_line(rid, req.version or self.version)
        rest = body_log + logfmt.end_line(rid)
        rest += logfmt.report_line(rid, duration_ms, self.memory_mb, memory, init_ms, status)
        # The worker already echoed its INIT output, and its START line if it got the invocation.
        if echo:
            self._echo(rest if worker_wrote_start else start + rest)
        log = prefix_log + start + rest
        return InvocationResult(
            request_id=rid,
            payload=json.dumps(error).encode(),
            function_error="Unhandled",
            error_type=error["errorType"],
            log=log,
            duration_ms=duration_ms,
            init_duration_ms=init_ms,
            max_memory_mb=memory,
        )

    def _timeout_result(
        self,
        req: InvocationRequest,
        init_ms: float | None,
        memory: int,
        prefix: str,
        partial: str | None = None,
    ) -> InvocationResult:
        """``partial``: the invocation's own log so far (from its START line), when the worker gave it."""
        error = {
            "errorType": "Sandbox.Timedout",
            "errorMessage": logfmt.timeout_message(req.request_id, self.timeout_s),
        }
        line = logfmt.timeout_line(req.request_id, self.timeout_s)
        result = self._error_result(
            req,
            error,
            line,
            self.timeout_s * 1000,
            init_ms,
            memory,
            "timeout",
            prefix,
            worker_wrote_start=True,
        )
        if partial:
            # The worker's START line and prints replace the START line the host wrote.
            start = logfmt.start_line(req.request_id, req.version or self.version)
            own = result.log[len(prefix) :]
            if own.startswith(start) and partial.startswith(start):
                result.log = prefix + partial + own[len(start) :]
        return result

    def _oom_result(
        self,
        req: InvocationRequest,
        duration_ms: float,
        init_ms: float | None,
        memory: int,
        prefix: str,
        partial: str | None,
        *,
        worker_reported: bool = False,
    ) -> InvocationResult:
        """Lambda's answer when a function outgrows its memory: the environment is killed and the
        error is ``Runtime.OutOfMemory``. ``partial``: the invocation's log up to then.
        ``worker_reported``: the worker finished and already wrote its END and REPORT lines to the
        container log, so only the error is added there."""
        rid = req.request_id
        message = f"RequestId: {rid} Error: Runtime exited with error: signal: killed"
        error = {"errorType": "Runtime.OutOfMemory", "errorMessage": message}
        body = f"{message}\nRuntime.OutOfMemory\n"
        result = self._error_result(
            req,
            error,
            body,
            duration_ms,
            init_ms,
            memory,
            "error",
            prefix,
            worker_wrote_start=True,
            echo=not worker_reported,
        )
        if worker_reported:
            self._echo(body)
        start = logfmt.start_line(rid, req.version or self.version)
        own = result.log[len(prefix) :]
        if partial and partial.startswith(start) and own.startswith(start):
            result.log = prefix + partial + own[len(start) :]
        return result

    def _exit_result(
        self,
        req: InvocationRequest,
        returncode: int,
        duration_ms: float,
        init_ms: float | None,
        prefix: str,
        *,
        worker_wrote_start: bool = False,
    ) -> InvocationResult:
        message = (
            f"RequestId: {req.request_id} Error: Runtime exited with error: {exit_description(returncode)}"
        )
        error = {"errorType": "Runtime.ExitError", "errorMessage": message}
        body = f"{message}\nRuntime.ExitError\n"
        return self._error_result(
            req, error, body, duration_ms, init_ms, 0, "error", prefix, worker_wrote_start=worker_wrote_start
        )

    async def _init_failure_result(self, req: InvocationRequest) -> InvocationResult:
        """Report a failed INIT on this invocation, then leave the environment to be started afresh."""
        assert self._init_failure is not None
        kind, detail = self._init_failure
        self._init_failure = None
        self._cold = False
        await self._shutdown(grace_s=STOP_GRACE_S)
        init_ms = self.init_duration_ms
        if kind == "exit":
            return self._exit_result(req, int(detail), 0.0, init_ms, self._init_log)  # type: ignore[call-overload]
        if kind == "timeout":
            message = f"RequestId: {req.request_id} Error: Init timed out after {detail:.2f} seconds"
            error = {"errorType": "Sandbox.Timedout", "errorMessage": message}
            return self._error_result(req, error, "", 0.0, init_ms, 0, "timeout", self._init_log)
        error = dict(detail)  # type: ignore[call-overload]
        error["requestId"] = req.request_id
        return self._error_result(req, error, "", 0.0, init_ms, 0, "error", self._init_log)

    def _echo(self, text: str) -> None:
        """Platform lines the host wrote also go where the worker's output goes (the container log)."""
        target = self.stdout
        try:
            if target is None:
                sys.stdout.write(text)
                sys.stdout.flush()
            elif isinstance(target, int):
                if target >= 0:
                    os.write(target, text.encode())
            else:
                target.write(text.encode() if "b" in getattr(target, "mode", "") else text)  # type: ignore[arg-type]
                target.flush()
        except (OSError, ValueError):
            pass

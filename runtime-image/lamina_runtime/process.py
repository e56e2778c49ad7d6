"""WorkerProcess: the host's handle on one Python execution environment (one worker subprocess).

The timeout is enforced here and not in the worker: a handler stuck in C code or a busy loop cannot be
interrupted from inside, so the host kills the whole process group and starts a fresh environment on
next use, which is Lambda's "reset" (the next invocation pays a new INIT). The lifecycle and the results
the host writes itself are shared with custom runtimes (host.HostedEnvironment).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from .containerlog import ContainerLog, PipeReader
from .framing import FLUSH_LOG_SIGNAL, PRESPAWNED_ENV, FrameBuffer, FrameError, encode
from .host import DEFAULT_LANG, DEFAULT_PATH, HostedEnvironment, OutOfMemory, kill_group, peak_memory_mb
from .prompt import PromptFuture
from .protocol import InvocationRequest, InvocationResult

RUNTIME_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARTIAL_LOG_WAIT_S = 0.25  # how long a timed-out worker gets to hand over its log
RECV_BYTES = 256 * 1024  # what one read of the control socket takes at most


Frame = tuple[dict[str, Any], bytes]


class _Channel(asyncio.BufferedProtocol):
    """The host's end of the control socket. Frames are cut out as the bytes arrive and handed to the
    one waiting in :meth:`next_frame`: a reply costs one wake-up of the invocation, where a stream
    reader and a task reading the frame's three parts took four turns of the event loop. Bytes are
    received into one buffer kept for the channel (a plain protocol's ``recv`` allocates 256 KiB, and
    maps and unmaps it, on every read)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._buffer = memoryview(bytearray(RECV_BYTES))
        self._frames = FrameBuffer()
        self._ready: deque[Frame] = deque()
        self._waiter: PromptFuture[Frame] | None = None
        self._error: Exception | None = None  # the channel is done: closed, or not frames

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._loop = asyncio.get_running_loop()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        if self._error is not None:
            return
        self._frames.feed(self._buffer[:nbytes])
        try:
            while (frame := self._frames.next()) is not None:
                self._ready.append(frame)
        except ValueError as exc:  # a header that is not JSON (FrameError: not a frame at all)
            self._error = exc if isinstance(exc, FrameError) else FrameError(f"frame header: {exc}")
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._error is None:
            self._error = FrameError(f"control channel closed ({exc or 'EOF'})")
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is None or (not self._ready and self._error is None):
            return
        self._waiter = None
        if not waiter.done():
            self._settle(waiter)

    def _settle(self, future: PromptFuture[Frame]) -> None:
        if self._ready:
            future.settle(self._ready.popleft(), None)
        else:
            assert self._error is not None
            future.settle(None, self._error)

    def next_frame(self) -> asyncio.Future[Frame]:
        """The next frame from the worker; FrameError once the channel closed or carries garbage.
        The task that awaits it resumes in the turn of the loop that read the frame (``prompt``)."""
        assert self._loop is not None
        future: PromptFuture[Frame] = PromptFuture(loop=self._loop)
        if self._ready or self._error is not None:
            self._settle(future)
        else:
            self._waiter = future
        return future

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def _spawn_worker(
    python: str, site_packages: bool, env: dict[str, str], cwd: str, output: PipeReader | None
) -> tuple[asyncio.subprocess.Process, socket.socket]:
    """A `python -m lamina_runtime.worker` in its own session, and the host's end of its control
    socket. Its stdout and stderr are ``output``'s pipe, one pipe for both so that the host reads
    them in the order they were written (None: /dev/null)."""
    parent, child = socket.socketpair()
    try:
        proc = await asyncio.create_subprocess_exec(
            python,
            *([] if site_packages else ["-S"]),
            "-m",
            "lamina_runtime.worker",
            pass_fds=(child.fileno(),),
            env={**env, "LAMINA_CONTROL_FD": str(child.fileno())},
            cwd=cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=output.child_fd if output is not None else asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # its own process group: a kill takes the handler's children too
        )
    except BaseException:
        parent.close()
        if output is not None:
            output.close()
        raise
    finally:
        child.close()
        if output is not None:
            output.spawned()
    return proc, parent


def _startup_env(env: Mapping[str, str]) -> dict[str, str]:
    """The variables an interpreter reads only as it starts (the dynamic loader's, the locale, the
    interpreter's own options but the import path): a worker started with other values cannot take
    them on later, so a function that sets them gets a worker of its own."""
    return {
        k: v
        for k, v in env.items()
        if (k.startswith(("LD_", "LC_", "PYTHON")) and k != "PYTHONPATH") or k == "LANG"
    }


class Prespawned:
    """A worker started ahead of any function (a generic pool pod's): interpreter up, runtime imported,
    blocked on its control socket until a hand-over frame gives it a function's environment. It holds
    nothing of any function and no credentials until then."""

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        sock: socket.socket,
        python: str,
        env: dict[str, str],
        log: ContainerLog,
        output: PipeReader | None,
    ) -> None:
        self.proc, self.sock, self.python, self.env = proc, sock, python, env
        self.log, self.output = log, output

    @classmethod
    async def start(
        cls, pod_environ: Mapping[str, str], log: ContainerLog, python: str = sys.executable
    ) -> Prespawned:
        """Spawn it with the pod's variables an interpreter reads as it starts (locale, PYTHON*
        options: the function inherits them from the pod) and nothing else of the pod's."""
        env = {
            "PATH": pod_environ.get("PATH") or DEFAULT_PATH,
            "PYTHONPATH": RUNTIME_ROOT,
            "TZ": "UTC",
            **_startup_env(pod_environ),
            PRESPAWNED_ENV: "1",
        }
        env.setdefault("LANG", DEFAULT_LANG)
        output = log.pipe()
        proc, sock = await _spawn_worker(python, False, env, "/", output)
        return cls(proc, sock, python, env, log, output)

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    def fits(self, python: str, site_packages: bool, env: dict[str, str], log: ContainerLog) -> bool:
        """Whether this worker can become the environment a fresh spawn with these would have been."""
        return (
            self.alive
            and python == self.python
            and not site_packages
            and log is self.log
            and _startup_env(env) == _startup_env(self.env)
        )

    async def discard(self) -> None:
        """Kill it (its whole session) and reap it: it was not used."""
        self.sock.close()
        kill_group(self.proc.pid, signal.SIGKILL, leader_reaped=self.proc.returncode is not None)
        await self.proc.wait()
        if self.output is not None:
            self.output.close()


class WorkerProcess(HostedEnvironment):
    """A `python -m lamina_runtime.worker` process, driven over a socketpair with framing.py frames."""

    _channel: _Channel | None = None
    #: The read end of the worker's stdout and stderr (None: they go to /dev/null).
    _stdio: PipeReader | None = None
    #: A pre-spawned worker the next start hands the function to instead of spawning (once).
    _prespawned: Prespawned | None = None

    def worker_env(self) -> dict[str, str]:
        """The worker's environment: the function's variables, then the reserved ones on top."""
        env = self.base_env()
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [RUNTIME_ROOT, self.user_env.get("PYTHONPATH")]))
        env.update(
            {
                "LAMINA_LAYERS": os.pathsep.join(self.layers),
                "LAMINA_RUNTIME_PACKAGES": os.pathsep.join(self.runtime_packages),
                "LAMINA_SYSTEM_LOG_LEVEL": self.system_log_level,
                "LAMINA_SPAWNED_AT": f"{time.time():.6f}",
            }
        )
        return env

    def adopt(self, prespawned: Prespawned) -> bool:
        """The next start hands the function to ``prespawned`` instead of spawning a worker."""
        self._prespawned = prespawned
        return True

    async def stop(self) -> None:
        prespawned, self._prespawned = self._prespawned, None
        if prespawned is not None:
            await prespawned.discard()
        await super().stop()

    async def _start(self) -> float:
        await self._shutdown(grace_s=0)
        started = time.perf_counter()
        env = self.worker_env()
        prespawned, self._prespawned = self._prespawned, None
        log = self.container_log
        if prespawned is not None and prespawned.fits(self.python, self.site_packages, env, log):
            # The hand-over: the worker takes the function's environment, directory and import path
            # from one frame, then runs INIT as a spawned one does. A worker that died since gives
            # the exit a spawned one would. Every later start spawns.
            self._proc, parent, self._stdio = prespawned.proc, prespawned.sock, prespawned.output
        else:
            if prespawned is not None:  # it died, or the function needs another interpreter
                await prespawned.discard()
            prespawned = None
            self._stdio = log.pipe()
            self._proc, parent = await _spawn_worker(
                self.python, self.site_packages, env, self.code_dir, self._stdio
            )
        _, self._channel = await asyncio.get_running_loop().create_connection(_Channel, sock=parent)
        if prespawned is not None:
            self._channel.send(encode({"type": "handover", "environ": env, "cwd": self.code_dir}))
        self._init_failure, self._init_log, self._cold = None, "", True
        try:
            header, _ = await asyncio.wait_for(self._channel.next_frame(), self.init_timeout_s)
        except TimeoutError:
            await self._kill()
            self.init_duration_ms = self.init_timeout_s * 1000
            self._init_failure = ("timeout", self.init_timeout_s)
            return self.init_duration_ms
        except (FrameError, ConnectionError):
            returncode = await self._reap()
            self.init_duration_ms = (time.perf_counter() - started) * 1000
            self._init_failure = ("exit", returncode)
            return self.init_duration_ms
        self.init_duration_ms = float(header.get("init_duration_ms") or 0.0)
        self._init_log = header.get("init_log") or ""
        if header.get("init_error"):
            self._init_failure = ("error", header["init_error"])
        return self.init_duration_ms

    def _close_channel(self) -> None:
        """EOF on the control channel: the worker's loop ends and it exits."""
        self._on_killed()

    def _on_killed(self) -> None:
        """The worker's process group is dead: read the rest of its output, and close both ends."""
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self._stdio is not None:
            self._stdio.close()
            self._stdio = None

    def _drain(self) -> None:
        if self._stdio is not None:
            self._stdio.drain()

    # --- invocations ---

    async def _invoke(self, req: InvocationRequest) -> InvocationResult:
        channel = self._channel
        assert channel is not None and self._proc is not None
        header = {
            "type": "invoke",
            "request_id": req.request_id,
            "deadline_ms": int((time.time() + self.timeout_s) * 1000),
            "client_context": req.client_context,
            "invoked_function_arn": req.invoked_function_arn or self.function_arn,
            "version": req.version or self.version,
            "trace_id": req.trace_id,
            "traceparent": req.traceparent,
            "tracestate": req.tracestate,
        }
        cold, self._cold = self._cold, False
        init_ms = self.init_duration_ms if cold else None
        # START in the container log ahead of anything the handler writes (its output reaches the
        # log through the pipe, after this); the worker puts the same line in the invocation's log.
        header["start"] = start = self.platform.start(req.request_id, req.version or self.version)
        self._echo(start)
        started = time.perf_counter()
        prefix = self._init_log if cold else ""
        try:
            # No drain: the reply is awaited next, and the transport sends a large event meanwhile.
            channel.send(encode(header, req.payload))
            reply, payload = await self._watch(channel.next_frame(), started)
        except TimeoutError:
            memory = peak_memory_mb(self._proc.pid)
            partial = await self._partial_log()
            await self._kill()
            return self._timeout_result(req, init_ms, memory, prefix, self._after_start(req, partial))
        except OutOfMemory as oom:
            partial = await self._partial_log()
            await self._kill()
            duration = (time.perf_counter() - started) * 1000
            output = self._after_start(req, partial)
            return self._oom_result(req, duration, init_ms, oom.memory_mb, prefix, output)
        except (FrameError, ConnectionError):
            returncode = await self._reap()
            duration = (time.perf_counter() - started) * 1000
            return self._exit_result(req, returncode, duration, init_ms, prefix, runtime_wrote_start=True)
        if reply.get("type") != "result" or reply.get("request_id") != req.request_id:
            return await self._stray_reply(req, reply, started, init_ms, prefix)
        peak = int(reply.get("max_memory_mb") or 0)
        if peak > self.memory_mb:
            # Lambda would have killed it on the way up: never let a local run pass that fails there.
            await self._kill()
            own = str(reply.get("log") or "").splitlines(keepends=True)
            end = next((i for i, line in enumerate(own) if self.platform.is_end(line, req.request_id)), None)
            duration = float(reply.get("duration_ms") or 0.0)
            output = self._after_start(req, "".join(own[:end]))
            return self._oom_result(req, duration, init_ms, peak, prefix, output)
        # END and REPORT after what the handler wrote (drained from the pipe first), in the buffer:
        # the answer goes out before they are written (containerlog.py).
        self._echo(str(reply.get("platform_end") or ""))
        return InvocationResult(
            request_id=req.request_id,
            payload=payload,
            function_error=reply.get("function_error"),
            error_type=reply.get("error_type"),
            log=prefix + (reply.get("log") or ""),
            duration_ms=float(reply.get("duration_ms") or 0.0),
            init_duration_ms=reply.get("init_duration_ms"),
            max_memory_mb=int(reply.get("max_memory_mb") or 0),
        )

    async def _stray_reply(
        self,
        req: InvocationRequest,
        reply: dict[str, Any],
        started: float,
        init_ms: float | None,
        prefix: str,
    ) -> InvocationResult:
        """The worker answered with a frame that is not this request's result (another request's, or
        no result at all): it is never passed on as this one's. The channel can no longer be trusted
        to pair replies with requests, so the environment is reset, and this invocation fails as one
        whose runtime went away (the handler may have run)."""
        why = (
            f"the worker answered request {req.request_id} with a {reply.get('type')!r} frame of "
            f"request {reply.get('request_id')!r}; the environment is reset"
        )
        print(f"lamina_runtime: {why}", file=sys.stderr, flush=True)
        await self._kill()
        duration = (time.perf_counter() - started) * 1000
        return self._exit_result(
            req, -signal.SIGKILL, duration, init_ms, prefix, output=f"{why}\n", runtime_wrote_start=True
        )

    def _after_start(self, req: InvocationRequest, log: str | None) -> str:
        """The worker's log of an invocation without the START line it begins with (the host's
        result writes its own); empty when the worker gave nothing usable. With the platform's
        lines switched off (system log level WARN) there is no START line to look for."""
        if not log:
            return ""
        if not self.platform.enabled:
            return log
        first, _, rest = log.partition("\n")
        return rest if self.platform.is_start(first, req.request_id) else ""

    async def _partial_log(self) -> str | None:
        """What a timed-out invocation printed, asked of the worker before it is killed; None when
        it does not answer in time (stuck in native code that never yields to the signal handler).
        A reply that was arriving as the time ran out is complete by now or soon, and serves too."""
        assert self._proc is not None and self._channel is not None
        try:
            os.kill(self._proc.pid, FLUSH_LOG_SIGNAL)
            deadline = time.monotonic() + PARTIAL_LOG_WAIT_S
            while (left := deadline - time.monotonic()) > 0:
                header, _ = await asyncio.wait_for(self._channel.next_frame(), left)
                if header.get("type") in ("log", "result"):
                    return str(header.get("log") or "")
        except (TimeoutError, ProcessLookupError, FrameError, ConnectionError):
            pass
        return None

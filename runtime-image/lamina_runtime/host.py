"""What every kind of execution environment shares on the host side.

An environment is one process group the host spawns, feeds one invocation at a time and resets (kills)
on a timeout, a crash or memory past ``memoryMB``. How the invocation travels differs: the Python worker
speaks length-prefixed frames over a socketpair (process.WorkerProcess), a custom runtime speaks the
Lambda Runtime API over HTTP (runtime_api.RuntimeApiProcess). Everything else, the lifecycle, the
limits and the results the host has to write itself because the runtime cannot, lives here once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from typing import IO, Any, TypeVar

from . import logfmt
from .containerlog import ContainerLog
from .environment import ACCOUNT_ID, installation_region
from .paths import layer_dirs
from .protocol import InvocationRequest, InvocationResult

T = TypeVar("T")

DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
DEFAULT_LANG = "en_US.UTF-8"  # what a function gets unless it or its pod sets LANG
STOP_GRACE_S = 2.0  # Lambda's Shutdown phase is capped at 2 s before SIGKILL
MEMORY_POLL_S = 0.1  # how often a running invocation's memory is checked
PROVISIONED = "provisioned-concurrency"  # AWS_LAMBDA_INITIALIZATION_TYPE of a pre-initialised environment
#: Where the kernel counts the OOM kills in the memory cgroup the runtime lives in (cgroup v2, then v1).
#: In a pod that is the container's own cgroup, whose limit is memoryMB plus the server's headroom.
OOM_KILL_COUNTERS = ("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control")


class WorkerBusy(RuntimeError):
    """An execution environment serves one invocation at a time."""


class OutOfMemory(Exception):
    """The environment's resident memory passed the function's memory size."""

    def __init__(self, memory_mb: int) -> None:
        super().__init__(f"{memory_mb} MB resident")
        self.memory_mb = memory_mb


def kill_group(pgid: int, sig: int, *, leader_reaped: bool) -> None:
    """Signal the process group an environment leads (the handler's own subprocesses included).

    Once the leader has been reaped its id is free, and the kernel may hand it to a new process that
    leads its own group (anything started in a new session: a broker, another environment). Linux does
    not reuse an id while orphans of ours still carry it as their group, so an id that names a live
    process again is not ours any more, and that group is left alone.
    """
    if leader_reaped and os.path.exists(f"/proc/{pgid}"):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def exit_description(returncode: int) -> str:
    """How Lambda words a runtime's exit: `exit status 1`, or `signal: segmentation fault`."""
    if returncode < 0:
        name = signal.strsignal(-returncode) or f"signal {-returncode}"
        return f"signal: {name.lower()}"
    return f"exit status {returncode}"


def exit_message(returncode: int) -> str:
    """Lambda's error message for a runtime that ended: an exit with status 0 gives no reason."""
    if returncode == 0:
        return "Runtime exited without providing a reason"
    return f"Runtime exited with error: {exit_description(returncode)}"


def resident_memory_mb(pid: int) -> int:
    """Current RSS (VmRSS) of a live process in MB; 0 if unknown."""
    return _proc_status_mb(pid, "VmRSS:")


def peak_memory_mb(pid: int) -> int:
    """Peak RSS (VmHWM) of a live process, for the REPORT line of a timeout; 0 if unknown."""
    return _proc_status_mb(pid, "VmHWM:")


def oom_kill_count() -> int:
    """The kernel's count of OOM kills in this process's memory cgroup; 0 where none is readable
    (no memory controller, the host's root cgroup of a local run)."""
    for path in OOM_KILL_COUNTERS:
        try:
            with open(path) as f:
                for line in f:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except (OSError, ValueError):
            continue
    return 0


def _proc_status_mb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError):
        pass
    return 0


class HostedEnvironment:
    """The host's handle on one execution environment; subclasses say how to spawn and talk to it
    (``_start``, ``_invoke``, ``_close_channel``, ``_on_killed``)."""

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
        stdout: int | IO[Any] | None = None,
        init_timeout_s: float | None = None,
        site_packages: bool = False,
        version: str = "$LATEST",
        account_id: str = ACCOUNT_ID,
        runtime_packages: Sequence[str] = (),
        system_log_level: str = "INFO",
        runtime: str | None = None,
        container_log: ContainerLog | None = None,
    ) -> None:
        """``stdout``: where the environment's output and the platform's lines go (None: this
        process's stdout; an fd; a file object; DEVNULL), unless ``container_log`` is given: the
        pod server's one log, which its own lines share."""
        self.handler = handler
        self.code_dir = os.path.abspath(code_dir)
        self.layers = [os.path.abspath(p) for p in layers]
        self.user_env = dict(env or {})
        self.function_name = function_name
        self.memory_mb = memory_mb
        self.timeout_s = timeout_s
        self.python = python
        self.stdout = stdout
        self.container_log = container_log if container_log is not None else ContainerLog(stdout)
        self.init_timeout_s = init_timeout_s if init_timeout_s is not None else max(10.0, timeout_s)
        self.site_packages = site_packages
        self.version = version
        self.account_id = account_id
        #: Directories of the runtime's own packages (boto3), on the import path after code and layers.
        self.runtime_packages = list(runtime_packages)
        self.system_log_level = system_log_level
        self.runtime = runtime
        self.platform = logfmt.PlatformLog(
            self.user_env.get("AWS_LAMBDA_LOG_FORMAT", "").upper() == "JSON", system_log_level
        )

        self.init_duration_ms: float | None = None
        self.invocations = 0
        self.last_used = time.monotonic()
        self._proc: asyncio.subprocess.Process | None = None
        self._busy = False
        self._init_failure: tuple[str, object] | None = None  # ("error", obj) | ("exit", rc) | ("timeout", s)
        self._init_log = ""
        self._cold = False  # the next invocation is the first after an INIT
        self._init_phase = "init"  # "invoke" when an invocation had to (re)start the environment
        self._oom_kills = oom_kill_count()  # the cgroup's count when last looked at

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
    def init_failure(self) -> str | None:
        """Why the last INIT failed, in one line (``errorType: errorMessage``, an exit, a timeout), or
        None when it did not (or its failure was already the answer to an invocation)."""
        if self._init_failure is None:
            return None
        kind, detail = self._init_failure
        if kind == "exit":
            return f"Runtime.ExitError: {exit_message(int(detail))}"  # type: ignore[call-overload]
        if kind == "timeout":
            return f"Sandbox.Timedout: INIT timed out after {detail:.2f} seconds"
        error = dict(detail)  # type: ignore[call-overload]
        return f"{error.get('errorType', 'Runtime.Unknown')}: {error.get('errorMessage', '')}"

    @property
    def needs_restart(self) -> bool:
        """True when the next invocation must pay a new INIT (never started, reset, crashed)."""
        return self._init_failure is not None or not self.alive

    @property
    def region(self) -> str:
        env = self.user_env
        return env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or installation_region()

    @property
    def function_arn(self) -> str:
        return f"arn:aws:lambda:{self.region}:{self.account_id}:function:{self.function_name}"

    def base_env(self) -> dict[str, str]:
        """The function's variables, then the reserved ones every runtime gets on top."""
        env = dict(self.user_env)
        base_path = env.get("PATH") or os.environ.get("PATH") or DEFAULT_PATH
        env["PATH"] = os.pathsep.join([base_path, *layer_dirs(self.layers, "bin")])
        libs = layer_dirs(self.layers, "lib")
        if libs:
            env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [env.get("LD_LIBRARY_PATH"), *libs]))
        day = time.strftime("%Y/%m/%d", time.gmtime())
        env.update(
            {
                "_HANDLER": self.handler,
                "LAMBDA_TASK_ROOT": self.code_dir,
                "AWS_LAMBDA_FUNCTION_NAME": self.function_name,
                "AWS_LAMBDA_FUNCTION_VERSION": self.version,
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(self.memory_mb),
                # spec.logging.logGroup, else Lambda's default group
                "AWS_LAMBDA_LOG_GROUP_NAME": env.get("AWS_LAMBDA_LOG_GROUP_NAME")
                or f"/aws/lambda/{self.function_name}",
                "AWS_LAMBDA_LOG_STREAM_NAME": f"{day}/[{self.version}]{os.urandom(16).hex()}",
                "AWS_REGION": self.region,
                "AWS_DEFAULT_REGION": env.get("AWS_DEFAULT_REGION", self.region),
                "TZ": "UTC",
            }
        )
        env.setdefault("LANG", DEFAULT_LANG)
        return env

    # --- lifecycle ---

    def adopt(self, prespawned: Any) -> bool:
        """Take a generic pool pod's pre-spawned worker (process.Prespawned) for the first start
        instead of spawning one; False when this kind of environment cannot use it (a custom runtime
        starts its own bootstrap), and the caller discards it."""
        return False

    async def start(self) -> float:
        """Spawn the environment and run INIT; returns the init duration in ms.

        An INIT that fails is not raised here: as in Lambda, it is the first invocation's result.
        """
        if self._busy:
            raise WorkerBusy(f"{self.function_name}: environment is busy")
        self._busy = True
        try:
            return await self._start()
        finally:
            self._busy = False
            self._init_written()

    async def _start(self) -> float:
        raise NotImplementedError

    async def stop(self) -> None:
        """Shut the environment down: ask it to end (``_close_channel``), then SIGKILL what is left;
        return once everything it wrote is in the container log."""
        await self._shutdown(grace_s=STOP_GRACE_S)
        await self.container_log.flushed()

    def _close_channel(self) -> None:
        """Tell the runtime to finish (EOF, a signal); the grace period runs after this."""

    def _on_killed(self) -> None:
        """Forget the channel to a process group that is gone."""

    async def _shutdown(self, grace_s: float) -> None:
        self._close_channel()
        if self._proc is not None and self._proc.returncode is None and grace_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._proc.wait(), grace_s)
        await self._kill()
        self._proc = None

    async def _kill(self) -> None:
        """SIGKILL the environment's process group (the handler's subprocesses too) and reap it."""
        proc = self._proc
        if proc is None:
            return
        kill_group(proc.pid, signal.SIGKILL, leader_reaped=proc.returncode is not None)
        await proc.wait()
        self._on_killed()

    async def _reap(self) -> int:
        """The runtime went away: wait for its exit status, then clear its process group."""
        assert self._proc is not None
        try:
            returncode = await asyncio.wait_for(self._proc.wait(), STOP_GRACE_S)
        except TimeoutError:
            returncode = -signal.SIGKILL
        await self._kill()
        return returncode if returncode is not None else -signal.SIGKILL

    # --- invocations ---

    async def invoke(self, req: InvocationRequest) -> InvocationResult:
        """Run one invocation; starts (cold) or restarts the environment first if needed."""
        if self._busy:
            raise WorkerBusy(f"{self.function_name}: environment is busy")
        self._busy = True
        try:
            if self.needs_restart and self._init_failure is None:
                self._init_phase = "invoke"
                try:
                    await self._start()
                finally:
                    self._init_written()
            if self._init_failure is not None:
                return await self._init_failure_result(req)
            return await self._invoke(req)
        finally:
            self._busy = False
            self.invocations += 1
            self.last_used = time.monotonic()

    async def _invoke(self, req: InvocationRequest) -> InvocationResult:
        raise NotImplementedError

    def _init_written(self) -> None:
        """INIT is over: what it wrote goes to the container log now (a reader waits for it)."""
        self._drain()
        self.container_log.flush()

    async def _watch(self, waiting: Awaitable[T], started: float) -> T:
        """``waiting``'s result; TimeoutError past the timeout, OutOfMemory as soon as the runtime's
        resident memory passes the function's memory size (checked every MEMORY_POLL_S).

        The checks run from one timer beside the wait, which they cancel when they fail: an invocation
        that ends before the first check costs one timer and one wake-up (a future is awaited as it
        is; a coroutine gets a task)."""
        assert self._proc is not None
        pid = self._proc.pid
        future = asyncio.ensure_future(waiting)
        loop = future.get_loop()
        deadline = started + self.timeout_s
        failed: list[Exception] = []
        timer: asyncio.TimerHandle | None = None

        def check() -> None:
            nonlocal timer
            if future.done():
                return
            left = deadline - time.perf_counter()
            if left <= 0:
                failed.append(TimeoutError())
            elif (rss := resident_memory_mb(pid)) > self.memory_mb:
                failed.append(OutOfMemory(rss))
            else:
                timer = loop.call_later(min(MEMORY_POLL_S, left), check)
                return
            future.cancel()

        timer = loop.call_later(max(min(MEMORY_POLL_S, deadline - time.perf_counter()), 0), check)
        try:
            return await future
        except asyncio.CancelledError:
            if failed:  # cancelled by a check, not by our caller
                raise failed[0] from None
            raise
        finally:
            timer.cancel()
            if not future.done():
                future.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await future

    # --- results the host writes itself ---

    def _error_result(
        self,
        req: InvocationRequest,
        error: dict[str, Any],
        body_log: str,
        duration_ms: float,
        init_ms: float | None,
        memory: int,
        status: str,
        prefix_log: str = "",
        *,
        output: str = "",
        runtime_wrote_start: bool = False,
    ) -> InvocationResult:
        """A result the host writes because the runtime cannot (timeout, crash, failed INIT).

        ``output``: what the invocation printed after its START line (already echoed by whoever
        read it). ``runtime_wrote_start``: START already went to the container log. REPORT carries
        ``status`` and, unless it is a timeout, the error's type."""
        rid = req.request_id
        platform = self.platform
        start = platform.start(rid, req.version or self.version)
        error_type = None if status == "timeout" else error.get("errorType")
        rest = body_log + platform.end(rid, status, duration_ms)
        rest += platform.report(rid, duration_ms, self.memory_mb, memory, init_ms, status, error_type)
        self._echo(rest if runtime_wrote_start else start + rest)
        # The environment failed (or is being reset): its lines are written now, not in a while.
        self.container_log.flush()
        return InvocationResult(
            request_id=rid,
            payload=json.dumps(error).encode(),
            function_error="Unhandled",
            error_type=error["errorType"],
            log=prefix_log + start + output + rest,
            duration_ms=duration_ms,
            init_duration_ms=init_ms,
            max_memory_mb=memory,
        )

    def _timeout_result(
        self, req: InvocationRequest, init_ms: float | None, memory: int, prefix: str, output: str = ""
    ) -> InvocationResult:
        error = {
            "errorType": "Sandbox.Timedout",
            "errorMessage": logfmt.timeout_message(req.request_id, self.timeout_s),
        }
        line = self.platform.timeout(req.request_id, self.timeout_s)
        return self._error_result(
            req,
            error,
            line,
            self.timeout_s * 1000,
            init_ms,
            memory,
            "timeout",
            prefix,
            output=output,
            runtime_wrote_start=True,
        )

    def _oom_result(
        self,
        req: InvocationRequest,
        duration_ms: float,
        init_ms: float | None,
        memory: int,
        prefix: str,
        output: str = "",
    ) -> InvocationResult:
        """Lambda's answer when a function outgrows its memory: the environment is killed and the
        error is ``Runtime.OutOfMemory``. The END and REPORT of the container log are the host's
        (``Status: error``), also when the runtime finished and sent its own."""
        message = f"RequestId: {req.request_id} Error: Runtime exited with error: signal: killed"
        error = {"errorType": "Runtime.OutOfMemory", "errorMessage": message}
        body = f"{message}\nRuntime.OutOfMemory\n"
        return self._error_result(
            req,
            error,
            body,
            duration_ms,
            init_ms,
            memory,
            "error",
            prefix,
            output=output,
            runtime_wrote_start=True,
        )

    def _killed_by_the_kernel_for_memory(self, returncode: int) -> bool:
        """The kernel's OOM killer took the runtime before the watcher saw its memory: an allocation
        past the container's limit in less than MEMORY_POLL_S. Its SIGKILL comes with a rise of the
        cgroup's OOM kill count."""
        if returncode != -signal.SIGKILL:
            return False
        count = oom_kill_count()
        rose, self._oom_kills = count > self._oom_kills, count
        return rose

    def _exit_result(
        self,
        req: InvocationRequest,
        returncode: int,
        duration_ms: float,
        init_ms: float | None,
        prefix: str,
        *,
        output: str = "",
        runtime_wrote_start: bool = False,
    ) -> InvocationResult:
        """The runtime ended during an invocation (or its INIT): Runtime.ExitError, or, when the
        kernel killed it for its memory, Runtime.OutOfMemory as Lambda says."""
        killed_for_memory = self._killed_by_the_kernel_for_memory(returncode)
        if killed_for_memory and runtime_wrote_start:
            return self._oom_result(req, duration_ms, init_ms, self.memory_mb, prefix, output)
        message = f"RequestId: {req.request_id} Error: {exit_message(returncode)}"
        error = {"errorType": "Runtime.ExitError", "errorMessage": message}
        body = f"{message}\nRuntime.ExitError\n"
        return self._error_result(
            req,
            error,
            body,
            duration_ms,
            init_ms,
            0,
            "error",
            prefix,
            output=output,
            runtime_wrote_start=runtime_wrote_start,
        )

    async def _init_failure_result(self, req: InvocationRequest) -> InvocationResult:
        """Report a failed INIT on this invocation, then leave the environment to be started afresh."""
        assert self._init_failure is not None
        kind, detail = self._init_failure
        self._init_failure = None
        self._cold = False
        phase, self._init_phase = self._init_phase, "init"
        await self._shutdown(grace_s=STOP_GRACE_S)
        init_ms = self.init_duration_ms
        if kind == "exit":
            report = self.platform.init_report(init_ms or 0.0, phase, "error", "Runtime.ExitError")
            self._echo(report)
            return self._exit_result(req, int(detail), 0.0, init_ms, self._init_log + report)  # type: ignore[call-overload]
        if kind == "timeout":
            report = self.platform.init_report(init_ms or 0.0, phase, "timeout")
            self._echo(report)
            message = f"RequestId: {req.request_id} Error: Init timed out after {detail:.2f} seconds"
            error = {"errorType": "Sandbox.Timedout", "errorMessage": message}
            return self._error_result(req, error, "", 0.0, init_ms, 0, "timeout", self._init_log + report)
        error = dict(detail)  # type: ignore[call-overload]
        error["requestId"] = req.request_id
        report = self.platform.init_report(init_ms or 0.0, phase, "error", error.get("errorType"))
        self._echo(report)
        return self._error_result(req, error, "", 0.0, init_ms, 0, "error", self._init_log + report)

    def _echo(self, text: str) -> None:
        """Platform lines the host writes go into the container log, after everything the runtime's
        processes wrote before them (``_drain``)."""
        self._drain()
        self.container_log.write(text)

    def _drain(self) -> None:
        """Move what the runtime's processes have written so far into the container log (for a
        runtime whose output the host reads through a pipe on its loop)."""

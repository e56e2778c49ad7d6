"""The container log, written by the host process alone, in few writes.

Every write to a pod's stdout wakes containerd's shim, which copies it to containerd, which writes the
CRI log file: ~150 µs of the node's CPU a write, whatever its size. When the worker wrote its own lines
(START before the handler, END and REPORT after the reply), a warm call cost two such writes, the first
on the answer's path. So the worker's stdout and stderr (fd 1 and 2, its subprocesses' too) are a pipe
that the host reads on its event loop (:class:`PipeReader`), and the host writes the container log from
one buffer (:class:`ContainerLog`): the platform lines it writes itself (START, END, REPORT, the
error lines of a timeout, a crash or the memory limit) and everything the worker's processes wrote, in
the order it was written. Lambda's order holds because the host reads the pipe dry (``drain``) before
it writes START, and again before END: what the handler and its subprocesses wrote before the reply is
in the pipe by the time the reply is read.

The buffer is written out at most ``FLUSH_AFTER_S`` after its first byte, or at once when it holds
``FLUSH_BYTES``, and at once where nothing may wait (the host calls :meth:`ContainerLog.flush`): the end
of an INIT, a timeout, a crash, the memory limit, a shutdown (:meth:`ContainerLog.flushed` waits until
it is written). The write itself runs in a thread (the loop's default executor): the container's stdout
is a pipe that may be full while containerd is slow, and the loop must not wait on it. (Making fd 1
non-blocking instead would change the flags of an open file that a terminal shares with its shell, and
a pod's pipe cannot be reopened privately: it belongs to root, the server runs as uid 1000. The thread
costs ~2 ms once, at the first write, and a hand-over per write, which the window makes rare.) Until
that write is done the buffer keeps filling, and past ``PAUSE_BYTES`` not yet written the host stops
reading the workers' pipes, so a handler that prints faster than the node takes its log blocks on its
own write, as it did when it wrote to the container's stdout itself. Nothing accepted is dropped.

What changes for a reader of the container log: lines reach it up to ``FLUSH_AFTER_S`` later than
they were written (the CRI log's timestamps with them), and the worker's stderr is in the container's
stdout stream (one pipe for both keeps their order; CloudWatch has no such distinction either).
"""

from __future__ import annotations

import asyncio
import os
from typing import IO, Any

#: The longest a line waits in the buffer. A person reading ``kubectl logs -f`` cannot tell 10 ms; the
#: CRI log's timestamps (taken by containerd as it reads) are late by as much. At the rate of warm calls
#: one after another (~1-2 ms each) it gathers 5-10 calls' lines in one write, and past that each ms
#: more saves less (the write's ~150 µs is already spread over the calls). A pod server killed without
#: warning (SIGKILL: never before SIGTERM from the kubelet, which flushes) loses at most that much.
FLUSH_AFTER_S = 0.010
#: Written at once from this size: the capacity of a Linux pipe (containerd's shim reads the container's
#: stdout through one), so a write this large goes through in one piece while containerd keeps up.
FLUSH_BYTES = 64 * 1024
#: Bytes accepted but not yet written past which the workers' pipes are no longer read, until half of
#: it is written: the pod's memory stays bounded however much a handler prints.
PAUSE_BYTES = 1 << 20
#: What one read of a worker's pipe takes at most (its capacity).
READ_BYTES = 64 * 1024
#: The reads of one drain: a pipe holds 64 KiB, so a drain reads what was written before it was called
#: and cannot be kept reading forever by a writer that does not stop.
DRAIN_READS = 32
DEVNULL = asyncio.subprocess.DEVNULL


class ContainerLog:
    """The host process's stdout (or ``target``: an fd, a binary or text file object; ``DEVNULL``
    discards), buffered and written out in as few writes as the bounds above allow.

    Only the event loop's thread calls it; the write runs in an executor thread, one at a time and in
    order."""

    def __init__(
        self,
        target: int | IO[Any] | None = None,
        *,
        flush_after_s: float = FLUSH_AFTER_S,
        flush_bytes: int = FLUSH_BYTES,
        pause_bytes: int = PAUSE_BYTES,
    ) -> None:
        self.target: int | IO[Any] = 1 if target is None else target
        self.flush_after_s = flush_after_s
        self.flush_bytes = flush_bytes
        self.pause_bytes = pause_bytes
        #: Nothing is written (the workers are given /dev/null instead of a pipe).
        self.discards = isinstance(target, int) and target < 0
        #: Writes made to the target, for the tests and benchmarks that count them.
        self.writes = 0
        self._parts: list[bytes] = []
        self._size = 0  # bytes in _parts
        self._queued: list[bytes] = []  # flushed, waiting for the write in flight
        self._unwritten = 0  # accepted and not yet written: _parts, _queued and the write in flight
        self._timer: asyncio.TimerHandle | None = None
        self._writing: asyncio.Future[None] | None = None
        self._readers: set[PipeReader] = set()
        self._paused = False

    # --- what the host writes ---

    def write(self, data: str | bytes) -> None:
        """Add ``data`` to the log; it is written within ``flush_after_s``."""
        if self.discards or not data:
            return
        raw = data.encode(errors="backslashreplace") if isinstance(data, str) else data
        self._parts.append(raw)
        self._size += len(raw)
        self._unwritten += len(raw)
        if self._size >= self.flush_bytes:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (a caller outside asyncio): nothing can wait
                self.flush()
                return
            self._timer = loop.call_later(self.flush_after_s, self._due)
        if self._unwritten > self.pause_bytes and not self._paused:
            self._set_paused(True)

    def line(self, text: str) -> None:
        """One of the host's own lines (``lamina_runtime: ...``), written at once: they mark the
        server's progress (listening, ready), which a reader of the log waits for."""
        self.write(text if text.endswith("\n") else text + "\n")
        self.flush()

    def flush(self) -> None:
        """Start writing what the buffer holds now (behind any write in flight)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._parts:
            return
        chunk = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
        self._parts, self._size = [], 0
        self._queued.append(chunk)
        if self._writing is None:
            self._write_next()

    async def flushed(self) -> None:
        """Flush, and wait until everything accepted so far has been written."""
        self.flush()
        while self._writing is not None:
            writing = self._writing
            if writing.done():
                # Its done callback (_written, which clears _writing and starts the next write) is
                # scheduled but has not run: awaiting a done future does not yield to the loop, so
                # without this turn the loop would spin here for ever (seen: a local mode hung at
                # 100 % CPU in a timeout's stop).
                await asyncio.sleep(0)
            else:
                await asyncio.shield(writing)

    def _due(self) -> None:
        self._timer = None
        self.flush()

    def _write_next(self) -> None:
        chunk = self._queued[0] if len(self._queued) == 1 else b"".join(self._queued)
        self._queued.clear()
        target = self.target
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None and isinstance(target, int):
            try:
                self._writing = loop.run_in_executor(None, self._write_out, chunk)
            except RuntimeError:  # the loop's executor is shut down (the loop is closing)
                pass
            else:
                self._writing.add_done_callback(lambda _: self._written(len(chunk)))
                return
        # A file object of the caller's (local mode's stderr, a test's file), or no loop to wait
        # on: written in place, as the caller's own writes to it are.
        self._write_out(chunk)
        self._written_bytes(len(chunk))

    def _write_out(self, chunk: bytes) -> None:
        """Write all of ``chunk`` (in the executor's thread for an fd). A target that is gone (EPIPE:
        nobody reads the container's stdout any more) drops it: there is nowhere else to put it."""
        self.writes += 1
        target = self.target
        try:
            if isinstance(target, int):
                _write_all(target, chunk)
            else:
                target.write(chunk if "b" in getattr(target, "mode", "") else chunk.decode(errors="replace"))
                target.flush()
        except (OSError, ValueError):
            pass

    def _written(self, size: int) -> None:
        self._writing = None
        self._written_bytes(size)
        if self._queued:
            self._write_next()

    def _written_bytes(self, size: int) -> None:
        self._unwritten -= size
        if self._paused and self._unwritten <= self.pause_bytes // 2:
            self._set_paused(False)

    # --- what the workers write ---

    def pipe(self) -> PipeReader | None:
        """A pipe for a worker's stdout and stderr, read into this log from now on; None when this
        log discards (the worker gets /dev/null)."""
        if self.discards:
            return None
        read_fd, write_fd = os.pipe()
        return PipeReader(self, read_fd, write_fd)

    def _set_paused(self, paused: bool) -> None:
        self._paused = paused
        for reader in list(self._readers):
            reader.pause() if paused else reader.resume()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            done = os.write(fd, view)
        except InterruptedError:
            continue
        except BlockingIOError:  # an fd someone set non-blocking: wait until it takes more
            import select

            select.select([], [fd], [])
            continue
        view = view[done:]


class PipeReader:
    """The read end of one worker's stdout/stderr pipe, feeding its ContainerLog from the loop.

    ``child_fd`` is the write end, for the spawn (``stdout=`` and ``stderr=``); :meth:`spawned` closes
    the host's copy of it, so that the pipe ends (EOF) when the worker's processes are gone."""

    def __init__(self, log: ContainerLog, read_fd: int, write_fd: int) -> None:
        self._log = log
        self._fd = read_fd
        self.child_fd = write_fd
        os.set_blocking(read_fd, False)  # the read end only: the worker's end stays blocking
        self._loop = asyncio.get_running_loop()
        self._reading = False
        log._readers.add(self)
        if not log._paused:
            self.resume()

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def spawned(self) -> None:
        """The worker has its copy of the write end (or failed to start): close the host's."""
        if self.child_fd >= 0:
            os.close(self.child_fd)
            self.child_fd = -1

    def pause(self) -> None:
        if self._reading:
            self._loop.remove_reader(self._fd)
            self._reading = False

    def resume(self) -> None:
        if not self._reading and self._fd >= 0:
            self._loop.add_reader(self._fd, self._read)
            self._reading = True

    def _read_once(self) -> bytes | None:
        """One read: the bytes, b"" once every writer is gone, None while the pipe is empty."""
        try:
            return os.read(self._fd, READ_BYTES)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            return b""

    def _read(self) -> None:
        data = self._read_once()
        if data:
            self._log.write(data)
        elif data is not None:
            self.close()

    def drain(self) -> None:
        """Read what the worker's processes wrote so far into the log, now (they wrote it before
        the frame the host just read, or they are dead). Paused or not: this is what must come
        before the line the host writes next."""
        for _ in range(DRAIN_READS):
            if self._fd < 0:
                return
            data = self._read_once()
            if data is None:
                return
            if not data:
                self.close()
                return
            self._log.write(data)

    def close(self) -> None:
        """Read what is left, then stop reading and close the pipe (a process of the worker's that
        escaped its kill gets EPIPE from then on)."""
        self.spawned()
        if self._fd < 0:
            return
        self.pause()
        fd, self._fd = self._fd, -1
        for _ in range(DRAIN_READS):
            try:
                data = os.read(fd, READ_BYTES)
            except OSError:
                break
            if not data:
                break
            self._log.write(data)
        os.close(fd)
        self._log._readers.discard(self)

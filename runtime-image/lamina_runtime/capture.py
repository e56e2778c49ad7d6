"""Per-invocation log capture: what the handler prints or logs goes both to the process's real
stdout (the container log) and into the invocation's log (X-Amz-Log-Result)."""

from __future__ import annotations

import io
import sys


class LogBuffer:
    """The text of the current phase's log (INIT, or one invocation).

    Only the last `keep` characters are kept: the reply frame must stay bounded however much a handler
    prints, and callers want the tail (X-Amz-Log-Result is the last 4 KB). The full output still reaches
    the real stdout.
    """

    def __init__(self, keep: int = 1 << 20) -> None:
        self._parts: list[str] = []
        self._size = 0
        self._keep = keep
        self._dropped = False

    def add(self, text: str) -> None:
        self._parts.append(text)
        self._size += len(text)
        if self._size > 2 * self._keep:
            tail = "".join(self._parts)[-self._keep :]
            self._parts, self._size, self._dropped = [tail], len(tail), True

    def take(self) -> str:
        text = "".join(self._parts)
        if self._dropped or len(text) > self._keep:
            text = "[log truncated]\n" + text[-self._keep :]
        self._parts, self._size, self._dropped = [], 0, False
        return text


class Tee(io.TextIOBase):
    """A text stream that records every write in a LogBuffer and passes it through to `real`."""

    def __init__(self, real: io.TextIOWrapper, log: LogBuffer) -> None:
        super().__init__()
        self._real = real
        self._log = log

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self._log.add(text)
        self._real.write(text)
        self._real.flush()  # line-at-a-time visibility in `kubectl logs`, like an unbuffered Lambda runtime
        return len(text)

    def flush(self) -> None:
        self._real.flush()

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._real.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._real, "encoding", "utf-8")

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return getattr(self._real, "errors", "strict")

    @property
    def buffer(self):  # type: ignore[no-untyped-def]
        # Bytes written here bypass the capture, as bytes written to fd 1 would.
        return self._real.buffer


def install(log: LogBuffer) -> None:
    """Replace sys.stdout / sys.stderr with tees into `log`."""
    sys.stdout = Tee(sys.__stdout__, log)  # type: ignore[arg-type]
    sys.stderr = Tee(sys.__stderr__, log)  # type: ignore[arg-type]

"""Lambda's error object ({errorMessage, errorType, stackTrace, requestId}) from an exception.

traceback is imported only when an error happens: it is not needed for a cold start. Stack traces name
files where Lambda has them: the function's code under /var/task and layers under /opt, wherever
this environment really keeps them (local mode's state directory, the pod's per-layer mounts), so a
trace reads the same locally, in a cluster and on Lambda.
"""

from __future__ import annotations

import os
from types import TracebackType

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at cold start
if TYPE_CHECKING:
    from typing import Any

_RUNTIME_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
TASK_ROOT = "/var/task"
LAYER_ROOT = "/opt"

#: (real directory + "/", shown directory + "/"), longest first; set by the worker at start.
_shown: list[tuple[str, str]] = []


class InitError(Exception):
    """INIT failed; carries the error object that the first invocation will return."""

    def __init__(self, error_type: str, message: str, stack: list[str] | None = None) -> None:
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.message = message
        self.stack = stack or []

    def as_object(self) -> dict[str, Any]:
        return {"errorMessage": self.message, "errorType": self.error_type, "stackTrace": self.stack}


def show_code_at(task_root: str, layers: list[str]) -> None:
    """Name ``task_root`` /var/task and each layer directory /opt in stack traces from now on."""
    pairs = [(task_root, TASK_ROOT), *((layer, LAYER_ROOT) for layer in layers)]
    _shown[:] = sorted(
        ((os.path.abspath(real).rstrip(os.sep) + os.sep, shown + os.sep) for real, shown in pairs if real),
        key=lambda pair: -len(pair[0]),
    )
    _shown[:] = [(real, shown) for real, shown in _shown if real != shown]


def show_path(path: str) -> str:
    for real, shown in _shown:
        if path.startswith(real):
            return shown + path[len(real) :]
    return path


def show_paths(text: str) -> str:
    """``text`` (a formatted traceback) with every real code or layer directory shown as on Lambda."""
    for real, shown in _shown:
        text = text.replace(real, shown)
    return text


def _is_user_frame(filename: str) -> bool:
    return not (filename.startswith(_RUNTIME_DIR) or filename.startswith("<frozen importlib"))


def format_stack(tb: TracebackType | None) -> list[str]:
    """Stack lines of the user's frames only: the runtime's and importlib's frames are noise to them."""
    import traceback

    frames = [f for f in traceback.extract_tb(tb) if _is_user_frame(f.filename)]
    for frame in frames:
        _ = frame.line  # read the source line under the real name before the file is renamed
        frame.filename = show_path(frame.filename)
    return traceback.format_list(frames)


def from_exception(exc: BaseException) -> dict[str, Any]:
    """Error object for an exception raised by user code."""
    return {
        "errorMessage": str(exc),
        "errorType": type(exc).__name__,
        "stackTrace": format_stack(exc.__traceback__),
    }

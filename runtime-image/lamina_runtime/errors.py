"""Lambda's error object ({errorMessage, errorType, stackTrace, requestId}) from an exception.

traceback is imported only when an error happens: it is not needed for a cold start.
"""

from __future__ import annotations

import os
from types import TracebackType

_RUNTIME_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


class InitError(Exception):
    """INIT failed; carries the error object that the first invocation will return."""

    def __init__(self, error_type: str, message: str, stack: list[str] | None = None) -> None:
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.message = message
        self.stack = stack or []

    def as_object(self) -> dict:
        return {"errorMessage": self.message, "errorType": self.error_type, "stackTrace": self.stack}


def _is_user_frame(filename: str) -> bool:
    return not (filename.startswith(_RUNTIME_DIR) or filename.startswith("<frozen importlib"))


def format_stack(tb: TracebackType | None) -> list[str]:
    """Stack lines of the user's frames only: the runtime's and importlib's frames are noise to them."""
    import traceback

    frames = [f for f in traceback.extract_tb(tb) if _is_user_frame(f.filename)]
    return traceback.format_list(frames)


def from_exception(exc: BaseException) -> dict:
    """Error object for an exception raised by user code."""
    return {
        "errorMessage": str(exc),
        "errorType": type(exc).__name__,
        "stackTrace": format_stack(exc.__traceback__),
    }

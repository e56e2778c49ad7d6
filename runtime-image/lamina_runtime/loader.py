"""INIT: find and import the handler module, mapping failures to the Lambda runtime's error types."""

from __future__ import annotations

import sys

from .errors import InitError, format_stack, show_path

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at cold start
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


def load_handler(spec: str) -> Callable[..., Any]:
    """Import `module.function` (module may be `dir/mod` or `pkg.mod`) and return the function.

    The module's top-level code runs here, once: that is the function's cold start.
    """
    module_name, dot, func_name = spec.rpartition(".")
    if not dot:  # worded as Lambda's runtime words it (the error of its `rsplit(".", 1)` unpacking)
        raise InitError(
            "Runtime.MalformedHandlerName",
            f"Bad handler '{spec}': not enough values to unpack (expected 2, got 1)",
        )
    if not module_name or not func_name:
        raise InitError("Runtime.MalformedHandlerName", f"Bad handler '{spec}': expected 'module.function'")
    if module_name.split("/")[0].split(".")[0] in sys.builtin_module_names:
        raise InitError(
            "Runtime.BuiltInModuleConflict", f"Cannot use built-in module {module_name} as a handler module"
        )
    import importlib

    try:
        module = importlib.import_module(module_name.replace("/", "."))
    except ImportError as exc:
        raise InitError(
            "Runtime.ImportModuleError", f"Unable to import module '{module_name}': {exc}"
        ) from None
    except SyntaxError as exc:
        shown = show_path(exc.filename or "")
        where = f'  File "{shown}" Line {exc.lineno}\n    {(exc.text or "").strip()}\n'
        raise InitError(
            "Runtime.UserCodeSyntaxError", f"Syntax error in module '{module_name}': {exc}", [where]
        ) from None
    except Exception as exc:
        # Any other error in module top-level code is reported under its own type, as Lambda does.
        raise InitError(type(exc).__name__, str(exc), format_stack(exc.__traceback__)) from None
    handler: Callable[..., Any] | None = getattr(module, func_name, None)
    if handler is None:
        raise InitError("Runtime.HandlerNotFound", f"Handler '{func_name}' missing on module '{module_name}'")
    return handler

"""Lambda's logging configuration in the function's process, in place before the handler module runs.

Lambda's Python runtime gives the root logger its handler and line format before it imports the
handler module. Code that depends on that: ``logging.basicConfig()`` at import does nothing (the root
logger already has a handler), Powertools' ``Logger`` filters the root handler so that its lines are
printed once, and records carry the request id. Importing ``logging`` costs a cold start milliseconds,
so it is not imported here: a finder on ``sys.meta_path`` configures it the moment the function's
code (or a library it uses) first imports it. Code that never logs never pays for it.

Text format (Lambda's default): ``[LEVEL]\\t<UTC time>.<ms>Z\\t<request id>\\t<message>``. JSON format
(``AWS_LAMBDA_LOG_FORMAT=JSON``): one object per record with the keys Lambda's runtime writes
(timestamp, level, message, logger, requestId, and stackTrace/errorType/errorMessage/location for
exceptions, plus any ``extra`` fields). The level comes from ``AWS_LAMBDA_LOG_LEVEL``.
"""

from __future__ import annotations

import sys

from .errors import show_paths

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at cold start
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from importlib.abc import Loader
    from importlib.machinery import ModuleSpec
    from types import ModuleType

TEXT_FORMAT = "[%(levelname)s]\t%(asctime)s.%(msecs)03dZ\t%(aws_request_id)s\t%(message)s\n"
TEXT_DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"
JSON_DATE_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
#: LogRecord attributes that are not ``extra`` fields of a JSON line.
RESERVED_FIELDS = frozenset(
    (
        "name msg args levelname levelno pathname filename module exc_info exc_text stack_info lineno "
        "funcName created msecs relativeCreated thread threadName processName process taskName "
        "aws_request_id tenant_id message asctime"
    ).split()
)


class RequestState:
    """The invocation in progress, as the log records of this process see it."""

    request_id = ""
    tenant_id: str | None = None


current = RequestState()


def level_from_env(value: str | None) -> str:
    """AWS_LAMBDA_LOG_LEVEL as Python's logging names it (TRACE is DEBUG); '' when unset."""
    return {None: "", "TRACE": "DEBUG"}.get(value, value or "").upper()


def install(json_format: bool, level: str) -> None:
    """Configure logging now if it is imported already, else the moment it is first imported."""
    module = sys.modules.get("logging")
    if module is not None:
        configure(module, json_format, level)
        return
    sys.meta_path.insert(0, _AfterImport("logging", lambda m: configure(m, json_format, level)))


class _AfterImport:
    """A meta-path finder that lets the normal finders find ``name`` and runs ``then(module)`` right
    after the module's code ran, once; it removes itself at the first lookup."""

    def __init__(self, name: str, then: Callable[[ModuleType], None]) -> None:
        self.name = name
        self.then = then

    def find_spec(
        self, name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if name != self.name:
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            found = find(name, path, target) if find is not None else None
            if found is not None:
                spec: ModuleSpec = found
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _ThenLoader(spec.loader, self.then)  # type: ignore[assignment]
        return spec


class _ThenLoader:
    def __init__(self, loader: Loader, then: Callable[[ModuleType], None]) -> None:
        self._loader = loader
        self._then = then

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        module.__loader__ = self._loader  # the module keeps its real loader (get_source, resources)
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        try:
            self._then(module)
        except Exception as exc:  # a `logging` of the function's own, say: never break its import
            sys.stderr.write(f"lamina_runtime: could not configure logging: {exc!r}\n")

    def __getattr__(self, name: str) -> object:
        return getattr(self._loader, name)


def configure(logging: ModuleType, json_format: bool, level: str) -> None:
    """Give the root logger Lambda's handler, format and level."""
    import time

    logging.Formatter.converter = time.gmtime  # as Lambda's runtime does, for every formatter

    class LambdaLoggerHandler(logging.Handler):  # type: ignore[name-defined,misc]
        """Writes to whatever sys.stdout is at emit time, so records land in the invocation's log."""

        def emit(self, record: logging.LogRecord) -> None:  # type: ignore[name-defined]
            try:
                text = self.format(record)
                sys.stdout.write(text if text.endswith("\n") else text + "\n")
            except Exception:
                self.handleError(record)

    class LambdaLoggerFilter(logging.Filter):  # type: ignore[name-defined,misc]
        def filter(self, record: logging.LogRecord) -> bool:  # type: ignore[name-defined]
            record.aws_request_id = current.request_id
            record.tenant_id = current.tenant_id
            return True

    class TextFormatter(logging.Formatter):  # type: ignore[name-defined,misc]
        def formatException(self, ei: object) -> str:
            return show_paths(super().formatException(ei))

    handler = LambdaLoggerHandler()
    text = TextFormatter(TEXT_FORMAT, TEXT_DATE_FORMAT)
    handler.setFormatter(json_formatter(logging) if json_format else text)
    handler.addFilter(LambdaLoggerFilter())
    root = logging.getLogger()
    if level in logging._nameToLevel:
        root.setLevel(level)
    root.addHandler(handler)


def json_formatter(logging: ModuleType) -> object:
    """A formatter writing the JSON objects of Lambda's JSON log format."""
    import json

    encode = json.JSONEncoder(ensure_ascii=False, default=str).encode

    class JsonFormatter(logging.Formatter):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            super().__init__(datefmt=JSON_DATE_FORMAT)

        def format(self, record: logging.LogRecord) -> str:  # type: ignore[name-defined]
            record.levelno = min(50, max(0, record.levelno)) // 10 * 10
            record.levelname = logging.getLevelName(record.levelno)
            exc = record.exc_info
            where = f"{show_paths(record.pathname)}:{record.funcName}:{record.lineno}"
            result = {
                "timestamp": self.formatTime(record, self.datefmt),
                "level": record.levelname,
                "message": record.msg
                if isinstance(record.msg, dict) and not record.args
                else record.getMessage(),
                "logger": record.name,
                "stackTrace": _stack(exc[2]) if exc else None,
                "errorType": exc[0].__name__ if exc and exc[0] else None,
                "errorMessage": str(exc[1]) if exc else None,
                "requestId": getattr(record, "aws_request_id", None),
                "location": where if exc else None,
            }
            tenant = getattr(record, "tenant_id", None)
            if tenant is not None:
                result["tenantId"] = tenant
            result.update(
                (key, value)
                for key, value in record.__dict__.items()
                if key not in RESERVED_FIELDS and key not in result
            )
            return encode({k: v for k, v in result.items() if v is not None}) + "\n"

    return JsonFormatter()


def _stack(tb: object) -> list[str]:
    import traceback

    return [show_paths(line) for line in traceback.format_tb(tb)]  # type: ignore[arg-type]

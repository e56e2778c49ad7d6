"""Logging as Lambda's Python runtime sets it up: the root handler is in place before the handler module
is imported, its level comes from AWS_LAMBDA_LOG_LEVEL, records carry the request id, and the Text
and JSON formats are Lambda's. The platform's own lines follow the log format and the system log level.
"""

from __future__ import annotations

import json
import re

from .conftest import call

LOGS_AT_IMPORT = """
import logging, sys
logging.basicConfig(level=logging.DEBUG, format="BASIC %(message)s", force=False)  # a no-op on Lambda
log = logging.getLogger("app")
log.info("imported")
log.debug("debug at import")
HANDLERS_AT_IMPORT = len(logging.getLogger().handlers)

def handler(event, context):
    log.warning("handling %s", event.get("n"))
    if event.get("exc"):
        try:
            {}["missing"]
        except KeyError:
            log.exception("lookup failed", extra={"order": 7})
    return {"handlers": HANDLERS_AT_IMPORT, "level": logging.getLogger().level}
"""

TEXT_LINE = re.compile(r"^\[(\w+)\]\t(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)\t([^\t]*)\t(.*)$")


async def test_the_root_handler_is_there_before_the_module_runs(write_code, make_worker) -> None:
    worker = make_worker(write_code(LOGS_AT_IMPORT), env={"AWS_LAMBDA_LOG_LEVEL": "INFO"})
    result, body = await call(worker, {"n": 1})
    assert body == {"handlers": 1, "level": 20}  # Lambda's handler only: basicConfig did nothing
    lines = result.log.splitlines()
    imported = [TEXT_LINE.match(line) for line in lines if line.endswith("\timported")]
    assert len(imported) == 1 and imported[0] is not None
    assert imported[0].group(1) == "INFO" and imported[0].group(3) == ""  # INIT has no request id
    assert not any("BASIC" in line or "debug at import" in line for line in lines)  # level INFO
    handling = next(TEXT_LINE.match(line) for line in lines if line.endswith("handling 1"))
    assert handling is not None
    assert handling.group(1) == "WARNING" and handling.group(3) == result.request_id
    assert sum("handling 1" in line for line in lines) == 1


async def test_the_level_follows_aws_lambda_log_level(write_code, make_worker) -> None:
    worker = make_worker(write_code(LOGS_AT_IMPORT), env={"AWS_LAMBDA_LOG_LEVEL": "TRACE"})
    result, body = await call(worker, {"n": 1})
    assert body["level"] == 10  # TRACE is DEBUG to Python
    assert any(line.endswith("\tdebug at import") for line in result.log.splitlines())
    quiet = make_worker(write_code(LOGS_AT_IMPORT, root="quiet"), env={"AWS_LAMBDA_LOG_LEVEL": "ERROR"})
    result, body = await call(quiet, {"n": 1})
    assert body["level"] == 40 and "handling 1" not in result.log and "imported" not in result.log


async def test_exceptions_logged_by_the_handler_name_files_under_var_task(write_code, make_worker) -> None:
    worker = make_worker(write_code(LOGS_AT_IMPORT))
    result, _ = await call(worker, {"n": 2, "exc": True})
    assert 'File "/var/task/index.py", line ' in result.log
    assert worker.code_dir not in result.log


async def test_json_format_writes_lambdas_json_records(write_code, make_worker) -> None:
    env = {"AWS_LAMBDA_LOG_FORMAT": "JSON", "AWS_LAMBDA_LOG_LEVEL": "INFO"}
    worker = make_worker(write_code(LOGS_AT_IMPORT), env=env)
    result, _ = await call(worker, {"n": 3, "exc": True})
    records = [json.loads(line) for line in result.log.splitlines()]
    assert [r["type"] for r in records if "type" in r] == [
        "platform.initStart",
        "platform.start",
        "platform.runtimeDone",
        "platform.report",
    ]
    init = records[0]["record"]
    assert init["initializationType"] == "on-demand" and init["runtimeVersion"].startswith("python:3.")
    app = [r for r in records if "level" in r]
    assert app[0] == {
        "timestamp": app[0]["timestamp"],
        "level": "INFO",
        "message": "imported",
        "logger": "app",
        "requestId": "",
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", app[0]["timestamp"])
    failed = next(r for r in app if r["message"] == "lookup failed")
    assert failed["level"] == "ERROR" and failed["requestId"] == result.request_id
    assert failed["errorType"] == "KeyError" and failed["errorMessage"] == "'missing'"
    assert failed["location"].startswith("/var/task/index.py:handler:")
    assert failed["order"] == 7  # `extra` fields become keys
    assert any('File "/var/task/index.py"' in line for line in failed["stackTrace"])
    report = records[-1]["record"]
    assert report["requestId"] == result.request_id and report["status"] == "success"
    assert set(report["metrics"]) == {
        "durationMs",
        "billedDurationMs",
        "memorySizeMB",
        "maxMemoryUsedMB",
        "initDurationMs",
    }


async def test_a_handler_error_in_json_is_one_error_record(write_code, make_worker) -> None:
    worker = make_worker(
        write_code("def handler(e, c):\n    raise ValueError('no')\n"), env={"AWS_LAMBDA_LOG_FORMAT": "JSON"}
    )
    result, body = await call(worker)
    records = [json.loads(line) for line in result.log.splitlines()]
    error = next(r for r in records if r.get("level") == "ERROR")
    assert error["errorType"] == "ValueError" and error["errorMessage"] == "no"
    assert error["requestId"] == result.request_id and error["stackTrace"] == body["stackTrace"]
    assert records[-1]["record"]["status"] == "failure"


async def test_system_log_level_warn_drops_the_platform_lines(write_code, make_worker) -> None:
    worker = make_worker(
        write_code("def handler(e, c):\n    print('hello')\n    return 1\n"),
        env={"AWS_LAMBDA_LOG_FORMAT": "JSON"},
        system_log_level="WARN",
    )
    result, _ = await call(worker)
    assert result.log == "hello\n"


async def test_the_text_error_block_is_lambdas(write_code, make_worker) -> None:
    worker = make_worker(write_code("def handler(e, c):\n    raise KeyError('action')\n"))
    result, _ = await call(worker)
    lines = result.log.splitlines()
    at = lines.index("[ERROR] KeyError: 'action'")
    assert lines[at + 1] == "Traceback (most recent call last):"
    # Lambda's runtime indents the frames with NO-BREAK SPACE
    assert lines[at + 2] == '\u00a0\u00a0File "/var/task/index.py", line 2, in handler'

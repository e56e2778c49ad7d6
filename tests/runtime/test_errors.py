"""Error shapes: handler exceptions, INIT failures, results that cannot be returned."""

from __future__ import annotations

from .conftest import call


async def test_exception_shape(write_code, make_worker):
    code = write_code(
        """
        def helper(d):
            return d["action"]
        def handler(event, context):
            return helper(event)
        """
    )
    worker = make_worker(code)
    result, body = await call(worker, {})
    assert result.function_error == "Unhandled"
    assert result.error_type == "KeyError"
    assert body["errorType"] == "KeyError"
    assert body["errorMessage"] == "'action'"
    assert body["requestId"] == result.request_id
    trace = body["stackTrace"]
    assert len(trace) == 2  # handler and helper; no runtime frames
    assert 'index.py", line 5, in handler' in trace[0]
    assert "in helper" in trace[1]
    assert "[ERROR] KeyError: 'action'" in result.log
    # The environment survives a handled exception: same process, no new INIT.
    again, _ = await call(worker, {"action": 1})
    assert again.function_error is None and again.init_duration_ms is None


async def test_import_error(write_code, make_worker):
    worker = make_worker(write_code("import no_such_module_xyz\ndef handler(e, c):\n    return 1\n"))
    await worker.start()
    result, body = await call(worker)
    assert result.function_error == "Unhandled"
    assert body["errorType"] == "Runtime.ImportModuleError"
    assert body["errorMessage"] == "Unable to import module 'index': No module named 'no_such_module_xyz'"
    assert body["requestId"] == result.request_id
    assert result.init_duration_ms is not None
    assert "[ERROR] Runtime.ImportModuleError" in result.log
    assert f"START RequestId: {result.request_id}" in result.log


async def test_missing_module(write_code, make_worker):
    worker = make_worker(write_code("x = 1\n"), handler="nothere.handler")
    _, body = await call(worker)
    assert body["errorType"] == "Runtime.ImportModuleError"
    assert "Unable to import module 'nothere'" in body["errorMessage"]


async def test_handler_not_found(write_code, make_worker):
    worker = make_worker(write_code("def other(e, c):\n    return 1\n"))
    _, body = await call(worker)
    assert body["errorType"] == "Runtime.HandlerNotFound"
    assert body["errorMessage"] == "Handler 'handler' missing on module 'index'"


async def test_malformed_handler_name(write_code, make_worker):
    worker = make_worker(write_code("x = 1\n"), handler="index")
    _, body = await call(worker)
    assert body["errorType"] == "Runtime.MalformedHandlerName"


async def test_syntax_error(write_code, make_worker):
    worker = make_worker(write_code("def handler(e, c)\n    return 1\n"))
    _, body = await call(worker)
    assert body["errorType"] == "Runtime.UserCodeSyntaxError"
    assert body["errorMessage"].startswith("Syntax error in module 'index': ")
    assert "Line 1" in body["stackTrace"][0]


async def test_exception_in_module_code(write_code, make_worker):
    worker = make_worker(write_code("raise RuntimeError('bad config')\ndef handler(e, c):\n    return 1\n"))
    _, body = await call(worker)
    assert body["errorType"] == "RuntimeError"
    assert body["errorMessage"] == "bad config"
    assert any("index.py" in line for line in body["stackTrace"])


async def test_init_error_is_retried_on_next_invoke(write_code, make_worker, tmp_path):
    """A failed INIT ends that environment; the next invocation runs INIT again (and may succeed)."""
    flag = tmp_path / "fixed"
    code = write_code(
        f"""
        import os
        if not os.path.exists({str(flag)!r}):
            raise ImportError("dependency missing")
        def handler(e, c):
            return "ok"
        """
    )
    worker = make_worker(code)
    _, body = await call(worker)
    assert body["errorType"] == "Runtime.ImportModuleError"
    flag.write_text("")
    second, out = await call(worker)
    assert second.function_error is None and out == "ok"
    assert second.init_duration_ms is not None


async def test_dir_handler_path(write_code, make_worker):
    code = write_code("def handler(e, c):\n    return __name__\n", name="pkg/mod.py")
    worker = make_worker(code, handler="pkg/mod.handler")
    _, out = await call(worker)
    assert out == "pkg.mod"


async def test_marshal_error(write_code, make_worker):
    worker = make_worker(write_code("def handler(e, c):\n    return {'b': b'bytes'}\n"))
    result, body = await call(worker)
    assert result.function_error == "Unhandled"
    assert body["errorType"] == "Runtime.MarshalError"
    assert body["errorMessage"] == "Unable to marshal response: Object of type bytes is not JSON serializable"


async def test_response_too_large(write_code, make_worker):
    worker = make_worker(write_code("def handler(e, c):\n    return 'x' * (6 * 1024 * 1024 + 200)\n"))
    result, body = await call(worker)
    assert result.error_type == "Function.ResponseSizeTooLarge"
    assert "6291556" in body["errorMessage"]


async def test_unmarshal_error(write_code, make_worker):
    worker = make_worker(write_code("def handler(e, c):\n    return e\n"))
    _, body = await call(worker, raw=b"{not json")
    assert body["errorType"] == "Runtime.UnmarshalError"

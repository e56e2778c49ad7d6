"""HTTP trigger under `/url/{function}/...`: the request becomes the event of the function's
``spec.http.payloadFormat`` (see :mod:`http_formats`), and the result becomes the response."""

from __future__ import annotations

import json
import logging
import uuid

from aiohttp import web
from multidict import CIMultiDict

from lamina.gateway import tracing
from lamina.gateway.errors import SYNC_PAYLOAD_LIMIT
from lamina.gateway.http_formats import HttpRequest, HttpResponse, build_event, failed_response, map_response
from lamina.gateway.invoke_api import REQUEST_ID, SERVICE_KEY, read_body
from lamina.invocation.errors import LambdaServiceError, ThrottledError
from lamina_runtime.protocol import InvocationRequest

log = logging.getLogger(__name__)


def raw_tail(request: web.Request) -> str:
    """The path after ``/url/{function}`` exactly as the client sent it (still percent-encoded)."""
    raw = request.raw_path.split("?", 1)[0]
    parts = raw.split("/", 3)  # "", "url", function, rest
    return "/" + (parts[3] if len(parts) > 3 else "")


def http_request(request: web.Request, body: bytes) -> HttpRequest:
    return HttpRequest(
        method=request.method,
        path="/" + request.match_info.get("tail", ""),
        raw_query=request.raw_path.partition("?")[2],
        raw_path=raw_tail(request),
        headers=list(request.headers.items()),
        body=body,
        source_ip=request.remote or "127.0.0.1",
        host=request.host,
        protocol=f"HTTP/{request.version.major}.{request.version.minor}",
    )


def to_web(response: HttpResponse, request_id: str) -> web.Response:
    headers: CIMultiDict[str] = CIMultiDict(response.headers)
    headers["x-amzn-RequestId"] = request_id
    return web.Response(status=response.status, body=response.body, headers=headers)


def platform_failed(request: web.Request, reason: str = "") -> web.Response:
    """A function URL's answer when lamina failed (``reason`` is for the log, not the client)."""
    request_id = request.get(REQUEST_ID) or str(uuid.uuid4())
    return web.json_response(
        {"message": "Internal Server Error"}, status=500, headers={"x-amzn-RequestId": request_id}
    )


async def handle_url(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]
    request[REQUEST_ID] = request_id = str(uuid.uuid4())
    fmt = "2.0"
    try:
        # `/url/name:alias/...` reaches an alias, as a function URL with a Qualifier does.
        target = service.registry.route(request.match_info["function"])
        fn = target.config
        trace = tracing.incoming(request.headers, fn.key)
        fmt = fn.http_format
        body = await read_body(request, SYNC_PAYLOAD_LIMIT, "RequestResponse")
        event = build_event(fmt, http_request(request, body), fn.name, request_id, fn.http_multi_value)
        result = await service.invoke(
            fn,
            InvocationRequest(
                request_id=request_id,
                payload=json.dumps(event).encode(),
                invoked_function_arn=target.invoked_arn,
                trace_id=trace.trace_id,
                traceparent=trace.traceparent,
                tracestate=trace.tracestate,
            ),
        )
    except ThrottledError:
        return web.json_response(
            {"message": "Too Many Requests"}, status=429, headers={"x-amzn-RequestId": request_id}
        )
    except LambdaServiceError as exc:
        return web.json_response(
            {"message": exc.message}, status=exc.status, headers={"x-amzn-RequestId": request_id}
        )
    except Exception:  # the platform failed: the client sees a plain 500, the log has the cause
        log.exception("URL invocation %s failed in the platform", request_id)
        return platform_failed(request)
    if result.function_error:
        return to_web(failed_response(fmt), request_id)
    return to_web(map_response(fmt, result.payload, fn.http_multi_value), request_id)

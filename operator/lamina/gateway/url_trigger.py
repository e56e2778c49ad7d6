"""HTTP trigger under `/url/{function}/...`: API Gateway HTTP API payload 2.0 in and out."""

from __future__ import annotations

import base64
import json
import logging
import time
import uuid
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from lamina.gateway.errors import SYNC_PAYLOAD_LIMIT, LambdaServiceError, ThrottledError
from lamina.gateway.invoke_api import SERVICE_KEY, read_body
from lamina_runtime.protocol import InvocationRequest

log = logging.getLogger(__name__)
_TEXT_TYPES = (
    "text/",
    "application/json",
    "application/xml",
    "application/javascript",
    "application/x-www-form-urlencoded",
)


def build_event(request: web.Request, function: str, body: bytes, request_id: str) -> dict[str, Any]:
    path = "/" + request.match_info.get("tail", "")
    headers: dict[str, str] = {}
    for key in request.headers:
        lower = key.lower()
        if lower == "cookie":
            continue
        headers[lower] = ",".join(request.headers.getall(key)) if lower not in headers else headers[lower]
    cookies = [c.strip() for h in request.headers.getall("Cookie", []) for c in h.split(";") if c.strip()]
    query: dict[str, str] = {}
    for key in request.query:
        query.setdefault(key, ",".join(request.query.getall(key)))
    content_type = request.headers.get("Content-Type", "")
    is_text = not body or content_type.startswith(_TEXT_TYPES)
    now = time.time()
    peer = request.remote or "127.0.0.1"
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": request.query_string,
        "headers": headers,
        "requestContext": {
            "accountId": "000000000000",
            "apiId": function,
            "domainName": request.host,
            "domainPrefix": request.host.split(".")[0],
            "http": {
                "method": request.method,
                "path": path,
                "protocol": f"HTTP/{request.version.major}.{request.version.minor}",
                "sourceIp": peer,
                "userAgent": request.headers.get("User-Agent", ""),
            },
            "requestId": request_id,
            "routeKey": "$default",
            "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "timeEpoch": int(now * 1000),
        },
        "isBase64Encoded": not is_text,
    }
    if cookies:
        event["cookies"] = cookies
    if query:
        event["queryStringParameters"] = query
    if body:
        event["body"] = body.decode() if is_text else base64.b64encode(body).decode()
    return event


def build_response(payload: bytes) -> web.Response:
    """Map the function's result back: a payload-2.0 response object, or any value as a JSON body."""
    try:
        result = json.loads(payload) if payload else None
    except ValueError:
        return web.Response(
            status=502, body=b'{"message":"Internal Server Error"}', content_type="application/json"
        )
    if not (isinstance(result, dict) and "statusCode" in result):
        return web.Response(status=200, body=json.dumps(result).encode(), content_type="application/json")
    headers: CIMultiDict[str] = CIMultiDict()
    for key, value in (result.get("headers") or {}).items():
        headers[str(key)] = str(value)
    for cookie in result.get("cookies") or []:
        headers.add("Set-Cookie", str(cookie))
    body = result.get("body")
    if body is None:
        data = b""
    elif result.get("isBase64Encoded"):
        data = base64.b64decode(body)
    else:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    if "content-type" not in {k.lower() for k in headers}:
        headers["Content-Type"] = "application/json"
    return web.Response(status=int(result["statusCode"]), body=data, headers=headers)


async def handle_url(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]
    request_id = str(uuid.uuid4())
    try:
        fn = service.registry.resolve(request.match_info["function"])
        body = await read_body(request, SYNC_PAYLOAD_LIMIT, "RequestResponse")
        event = build_event(request, fn.name, body, request_id)
        result = await service.invoke(
            fn, InvocationRequest(request_id=request_id, payload=json.dumps(event).encode())
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
        return web.json_response(
            {"message": "Internal Server Error"}, status=500, headers={"x-amzn-RequestId": request_id}
        )
    if result.function_error:
        return web.json_response(
            {"message": "Internal Server Error"}, status=502, headers={"x-amzn-RequestId": request_id}
        )
    response = build_response(result.payload)
    response.headers["x-amzn-RequestId"] = request_id
    return response

"""`POST /2015-03-31/functions/{name}/invocations`: the Invoke API as boto3 and the AWS CLI speak it."""

from __future__ import annotations

import base64
import binascii
import logging
import os
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from lamina.gateway import tracing
from lamina.gateway.errors import (
    ASYNC_PAYLOAD_LIMIT,
    SYNC_PAYLOAD_LIMIT,
    InvalidParameterValue,
    InvalidRequestContent,
    RequestTooLarge,
    ServiceError,
)
from lamina.gateway.service import InvocationService
from lamina.gateway.strict_json import parse_json
from lamina.invocation.errors import LambdaServiceError
from lamina_runtime.protocol import LOG_TAIL_BYTES, InvocationRequest

log = logging.getLogger(__name__)
INVOCATION_TYPES = ("RequestResponse", "Event", "DryRun")
SERVICE_KEY = web.AppKey("invocation_service", InvocationService)
#: Where a handler keeps the request id it answers with (a call cut by lamina.gateway.drain keeps it).
REQUEST_ID = web.RequestKey("request_id", str)


_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def new_request_id() -> str:
    """A random (version 4) UUID as text, as ``str(uuid.uuid4())`` gives it, for a quarter of its cost
    (one per invocation)."""
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


def error_response(exc: LambdaServiceError, request_id: str) -> web.Response:
    status, headers, body = error_answer(exc, request_id)
    return web.Response(status=status, body=body, headers=headers)


MAX_CLIENT_CONTEXT = 3583  # bytes of base64, Lambda's limit on X-Amz-Client-Context
BAD_CLIENT_CONTEXT = "Client context must be a valid Base64-encoded JSON object."


def check_json(payload: bytes) -> bytes:
    """Lambda refuses a body that is not JSON before anything runs; an empty body means `{}`."""
    if not payload.strip():
        return b"{}"
    try:
        parse_json(payload)
    except ValueError as exc:
        raise InvalidRequestContent(f"Could not parse request body into json: {exc}") from None
    return payload


def check_client_context(value: str | None) -> str | None:
    """X-Amz-Client-Context as Lambda takes it: at most 3,583 bytes of base64 of a JSON object."""
    if not value:
        return None
    if len(value) > MAX_CLIENT_CONTEXT:
        raise InvalidRequestContent(
            f"{BAD_CLIENT_CONTEXT} It may be at most {MAX_CLIENT_CONTEXT} bytes (got {len(value)})."
        )
    try:
        doc = parse_json(base64.b64decode(value, validate=True))
    except (binascii.Error, ValueError):
        raise InvalidRequestContent(BAD_CLIENT_CONTEXT) from None
    if not isinstance(doc, dict):
        raise InvalidRequestContent(BAD_CLIENT_CONTEXT)
    return value


def log_tail(log: str) -> str:
    data = log.encode()[-LOG_TAIL_BYTES:]
    return base64.b64encode(data).decode()


async def read_body(request: web.Request, limit: int, invocation_type: str) -> bytes:
    length = request.content_length
    if length is not None and length > limit:
        raise too_large(length, limit, invocation_type)
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise too_large(None, limit, invocation_type) from None
    if len(body) > limit:
        raise too_large(len(body), limit, invocation_type)
    return body


def too_large(size: int | None, limit: int, invocation_type: str) -> RequestTooLarge:
    if invocation_type == "Event":
        shown = size if size is not None else "The"
        return RequestTooLarge(
            f"{shown} byte payload is too large for the Event invocation type (limit {limit} bytes)"
        )
    return RequestTooLarge(f"Request must be smaller than {limit} bytes for the InvokeFunction operation")


#: An answer as the front door writes it: status, headers, body.
Answer = tuple[int, dict[str, str], bytes]
#: Reads the request's body, refusing one over ``limit`` bytes (``RequestTooLarge``) for its type.
BodyReader = Callable[[int, str], Awaitable[bytes]]


def error_answer(exc: LambdaServiceError, request_id: str) -> Answer:
    return exc.status, {**exc.headers(), "x-amzn-RequestId": request_id}, exc.body()


async def handle_invoke(request: web.Request) -> web.Response:
    request[REQUEST_ID] = request_id = new_request_id()
    status, headers, body = await invoke(
        request.app[SERVICE_KEY],
        request.match_info["name"],
        request.query.get("Qualifier"),
        request.headers,
        lambda limit, invocation_type: read_body(request, limit, invocation_type),
        request_id,
    )
    return web.Response(status=status, body=body or None, headers=headers)


async def invoke(
    service: InvocationService,
    raw_name: str,
    qualifier: str | None,
    request_headers: Mapping[str, str],
    read: BodyReader,
    request_id: str,
) -> Answer:
    """The Invoke API's answer to one request, whichever server received it (aiohttp's, or the
    front door's lean path for this route, lamina.gateway.front): ``request_headers`` are matched
    without regard to case, ``read`` gives the body."""
    try:
        invocation_type = request_headers.get("X-Amz-Invocation-Type", "RequestResponse")
        if invocation_type not in INVOCATION_TYPES:
            raise InvalidParameterValue(
                f"Invalid invocation type: {invocation_type!r}; expected one of "
                + ", ".join(INVOCATION_TYPES)
            )
        target = service.registry.route(raw_name, qualifier)
        fn = target.config
        trace = tracing.incoming(request_headers, fn.key)  # RecursiveInvocationException past 16
        client_context = check_client_context(request_headers.get("X-Amz-Client-Context"))
        limit = ASYNC_PAYLOAD_LIMIT if invocation_type == "Event" else SYNC_PAYLOAD_LIMIT
        payload = check_json(await read(limit, invocation_type))
        if invocation_type == "DryRun":
            return 204, {"x-amzn-RequestId": request_id}, b""
        if invocation_type == "Event":
            qualifier = target.alias or (None if fn.version == "$LATEST" else fn.version)
            request_id = await service.enqueue(fn, payload, qualifier, trace)
            return 202, {"x-amzn-RequestId": request_id}, b""
        result = await service.invoke(
            fn,
            InvocationRequest(
                request_id=request_id,
                payload=payload,
                client_context=client_context,
                invoked_function_arn=target.invoked_arn,
                trace_id=trace.trace_id,
                traceparent=trace.traceparent,
                tracestate=trace.tracestate,
            ),
        )
    except LambdaServiceError as exc:
        return error_answer(exc, request_id)
    except Exception as exc:  # the platform failed (no environment came up, a pod vanished): Lambda's 500
        log.exception("invocation %s failed in the platform", request_id)
        return error_answer(ServiceError(f"{type(exc).__name__}: {exc}"), request_id)
    headers = {
        "x-amzn-RequestId": request_id,
        "X-Amz-Executed-Version": fn.version,
        "Content-Type": "application/json",
    }
    if result.function_error:
        headers["X-Amz-Function-Error"] = result.function_error
    if request_headers.get("X-Amz-Log-Type") == "Tail":
        headers["X-Amz-Log-Result"] = log_tail(result.log)
    return 200, headers, result.payload

"""What a host (gateway, pod server) and an execution environment exchange, defined once.

The types, and their wire form between the gateway's HTTP pool and a pod's server
(``POST /invoke``): the request's fields travel in ``Lamina-*`` request headers, the result's in
``Lamina-*`` response headers, the payloads as the bodies. Both sides encode and decode through the
functions below, so a field cannot be sent by one and missed by the other. Kept in the runtime
package so both share one definition without the runtime importing lamina.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field


@dataclass(slots=True)
class InvocationRequest:
    request_id: str
    payload: bytes
    client_context: str | None = None  # base64 JSON, as X-Amz-Client-Context carries it
    invoked_function_arn: str | None = None
    version: str = "$LATEST"
    #: X-Ray trace header (Root=...;Parent=...;Sampled=...;Lineage=...): the function's _X_AMZN_TRACE_ID
    trace_id: str | None = None
    #: W3C trace context of the caller (or of the gateway's span): the function's context.w3c()
    traceparent: str | None = None
    tracestate: str | None = None


@dataclass(slots=True)
class InvocationResult:
    request_id: str
    payload: bytes  # the function's JSON result, or Lambda's error object when function_error is set
    function_error: str | None = None  # "Unhandled" on any function/runtime error
    error_type: str | None = None  # errorType of the error body (e.g. "Sandbox.Timedout")
    log: str = ""  # this invocation's log (START..REPORT), for X-Amz-Log-Result
    duration_ms: float = 0.0
    init_duration_ms: float | None = None  # set on the first invocation of a cold environment
    max_memory_mb: int = 0
    extra: dict[str, str] = field(default_factory=dict)


# -- the wire form of POST /invoke -------------------------------------------------------------------
REQUEST_ID = "Lamina-Request-Id"
CLIENT_CONTEXT = "Lamina-Client-Context"
INVOKED_FUNCTION_ARN = "Lamina-Invoked-Function-Arn"
VERSION = "Lamina-Version"
TRACE_ID = "Lamina-Trace-Id"
TRACEPARENT = "Lamina-Traceparent"
TRACESTATE = "Lamina-Tracestate"
FUNCTION_ERROR = "Lamina-Function-Error"
ERROR_TYPE = "Lamina-Error-Type"
DURATION_MS = "Lamina-Duration-Ms"
INIT_DURATION_MS = "Lamina-Init-Duration-Ms"
MAX_MEMORY_MB = "Lamina-Max-Memory-Mb"
LOG_RESULT = "Lamina-Log-Result"
#: The log travels base64-encoded and cut to its last 4 KB, as X-Amz-Log-Result carries it.
LOG_TAIL_BYTES = 4096

# -- the pod's readiness: GET /healthz ------------------------------------------------------------------
#: ``GET /healthz?wait=S``: the pod holds its answer while INIT runs (at most S seconds), so the gateway
#: learns the moment a starting environment can serve, without polling it while INIT takes the CPU.
HEALTH_WAIT_PARAM = "wait"
#: Header of a /healthz 503 after a failed INIT: the environment is not Ready (the kubelet's probe and
#: a provisioned environment's count see that), but an on-demand invocation may take it and gets the
#: INIT error as its answer, as Lambda answers a failed cold start (the next one runs INIT again).
INIT_FAILED_HEADER = "Lamina-Init-Failed"
#: Exit status of the server of a provisioned environment whose INIT failed: Lambda fails such an
#: environment instead of serving with it. Its reason is the container's termination message, which
#: the operator puts into the Function's status. (A crash of the server itself exits with 1.)
INIT_FAILED_EXIT_CODE = 70

#: Header the gateway sends with every /invoke to a pod; the pod refuses /invoke without it when it was
#: given a secret (LAMINA_INVOKE_SECRET). See lamina.auth.credentials.invoke_secret.
INVOKE_SECRET_HEADER = "Lamina-Invoke-Secret"

#: Header the gateway sends with every /invoke: the function it means (its name). A pod of another
#: function refuses the call with MISDIRECTED and runs nothing: an address the gateway still knows for
#: a function may already belong to another function's pod (a pod's IP is given to the next pod once
#: it is gone, and the gateway learns of the change only through its watch).
FUNCTION_HEADER = "Lamina-Function"
#: HTTP 421 Misdirected Request: this environment serves another function (see FUNCTION_HEADER).
MISDIRECTED = 421


class ReplyMismatch(ValueError):
    """A 200 answer to ``POST /invoke`` that is not the result of the request sent: it names another
    request (or none). It is never taken as the invocation's result."""


def header_value(text: str) -> str:
    """Arbitrary text (an error type a function chose) as a header value that cannot split a
    response: percent-encoded UTF-8, printable ASCII only. :func:`from_header_value` reverses it."""
    from urllib.parse import quote  # only for error results: a pod's start-up does not wait for it

    return quote(text, safe=" !#$&'()*+,-./:;<=>?@[]^_`{|}~")


def from_header_value(value: str) -> str:
    from urllib.parse import unquote

    return unquote(value, errors="replace")


# The names as HTTP parsers give them (the pod server's and the pool's lower-case them): decoding
# looks each up once, with no copy of the headers per call.
_REQUEST_ID, _CLIENT_CONTEXT, _INVOKED_FUNCTION_ARN, _VERSION = (
    name.lower() for name in (REQUEST_ID, CLIENT_CONTEXT, INVOKED_FUNCTION_ARN, VERSION)
)
_TRACE_ID, _TRACEPARENT, _TRACESTATE = (name.lower() for name in (TRACE_ID, TRACEPARENT, TRACESTATE))
_FUNCTION_ERROR, _ERROR_TYPE, _LOG_RESULT = (
    name.lower() for name in (FUNCTION_ERROR, ERROR_TYPE, LOG_RESULT)
)
_DURATION_MS, _INIT_DURATION_MS, _MAX_MEMORY_MB = (
    name.lower() for name in (DURATION_MS, INIT_DURATION_MS, MAX_MEMORY_MB)
)


def encode_request(request: InvocationRequest) -> dict[str, str]:
    """The request headers of ``POST /invoke`` (the payload is the body)."""
    headers = {REQUEST_ID: request.request_id, VERSION: request.version}
    if request.client_context:
        headers[CLIENT_CONTEXT] = request.client_context
    if request.invoked_function_arn:
        headers[INVOKED_FUNCTION_ARN] = request.invoked_function_arn
    for name, value in (
        (TRACE_ID, request.trace_id),
        (TRACEPARENT, request.traceparent),
        (TRACESTATE, request.tracestate),
    ):
        if value:
            headers[name] = value
    return headers


def decode_request(
    headers: Mapping[str, str], payload: bytes, new_request_id: Callable[[], str]
) -> InvocationRequest:
    """The request a pod's server received; ``new_request_id()`` names it when the caller did not.

    ``headers``: names in lower case (as HTTP parsers give them) or a case-insensitive mapping."""
    get = headers.get
    return InvocationRequest(
        request_id=get(_REQUEST_ID) or new_request_id(),
        payload=payload,
        client_context=get(_CLIENT_CONTEXT) or None,
        invoked_function_arn=get(_INVOKED_FUNCTION_ARN) or None,
        version=get(_VERSION) or "$LATEST",
        trace_id=get(_TRACE_ID) or None,
        traceparent=get(_TRACEPARENT) or None,
        tracestate=get(_TRACESTATE) or None,
    )


def encode_result(result: InvocationResult) -> dict[str, str]:
    """The response headers of ``POST /invoke`` (the payload is the body)."""
    tail = result.log.encode()[-LOG_TAIL_BYTES:]
    headers = {
        REQUEST_ID: result.request_id,
        DURATION_MS: f"{result.duration_ms:.2f}",
        MAX_MEMORY_MB: str(result.max_memory_mb),
        LOG_RESULT: base64.b64encode(tail).decode(),
    }
    if result.function_error:
        headers[FUNCTION_ERROR] = result.function_error
    if result.error_type:
        # A function chooses its error type's name: it may hold CR/LF or any Unicode.
        headers[ERROR_TYPE] = header_value(result.error_type)
    if result.init_duration_ms is not None:
        headers[INIT_DURATION_MS] = f"{result.init_duration_ms:.2f}"
    return headers


def decode_result(request_id: str, headers: Mapping[str, str], payload: bytes) -> InvocationResult:
    """The result of the invocation ``request_id`` as the pod's server answered it (``headers`` as
    for :func:`decode_request`). ReplyMismatch when the answer names another request or none: a result
    always carries its request's id (:func:`encode_result`), so an answer without it is something else
    (a health answer, a proxy's page, another server's reply) and is never passed on as a payload."""
    get = headers.get
    answered = get(_REQUEST_ID)
    if answered != request_id:
        raise ReplyMismatch(f"the answer to request {request_id} names request {answered!r}")
    init, error_type = get(_INIT_DURATION_MS), get(_ERROR_TYPE)
    return InvocationResult(
        request_id=request_id,
        payload=payload,
        function_error=get(_FUNCTION_ERROR),
        error_type=from_header_value(error_type) if error_type is not None else None,
        log=base64.b64decode(get(_LOG_RESULT) or "").decode(errors="replace"),
        duration_ms=float(get(_DURATION_MS) or 0),
        init_duration_ms=float(init) if init else None,
        max_memory_mb=int(get(_MAX_MEMORY_MB) or 0),
    )

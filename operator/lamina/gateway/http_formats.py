"""The event shapes an HTTP trigger sends, and how each maps the function's result back.

Three formats, as a Function chooses with ``spec.http.payloadFormat``:

- ``"2.0"``: API Gateway HTTP API payload 2.0 (also Lambda function URLs). Repeated headers and query
  parameters are comma-joined, cookies travel apart; a result without ``statusCode`` is sent as a JSON
  200.
- ``"1.0"``: API Gateway REST API / HTTP API payload 1.0 (Lambda proxy integration): ``headers`` and
  ``queryStringParameters`` hold the last value, ``multiValueHeaders`` and
  ``multiValueQueryStringParameters`` every value. The result must be a response object (``statusCode``,
  ``headers`` and/or ``multiValueHeaders``, string ``body``); anything else is API Gateway's 502
  "Internal server error".
- ``"alb"``: an Application Load Balancer target group event. With multi-value headers on, the event
  carries only ``multiValueHeaders`` / ``multiValueQueryStringParameters`` and the response's
  ``multiValueHeaders`` are used; off, only the single-valued maps. Query values are passed as sent
  (ALB does not decode them). A malformed result is the load balancer's 502 Bad Gateway.

Everything here is pure: a :class:`HttpRequest` in, a dict out; a payload in, an :class:`HttpResponse`
out. The aiohttp handler lives in :mod:`url_trigger`.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from lamina.gateway.strict_json import parse_json
from lamina_runtime.environment import ACCOUNT_ID, installation_region
from lamina_runtime.http11 import check_header

FORMATS = ("2.0", "1.0", "alb")
ACCOUNT = ACCOUNT_ID
_TEXT_TYPES = (
    "text/",
    "application/json",
    "application/xml",
    "application/javascript",
    "application/x-www-form-urlencoded",
)
_API_GATEWAY_ERROR = b'{"message":"Internal server error"}'
#: Headers a function may not set on the HTTP response: the gateway frames the response itself, and
#: hop-by-hop headers describe a connection, not a response (RFC 9110 7.6.1). A function's
#: Transfer-Encoding or Content-Length would otherwise desynchronise a keep-alive connection.
DROPPED_RESPONSE_HEADERS = frozenset(
    {
        "connection",
        "content-length",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)


@dataclass
class HttpRequest:
    """What the trigger received, independent of the web framework."""

    method: str
    path: str  # percent-decoded
    raw_query: str = ""  # as sent
    raw_path: str = ""  # as sent (still percent-encoded); empty: the same as path
    headers: list[tuple[str, str]] = field(default_factory=list)  # in arrival order, original case
    body: bytes = b""
    source_ip: str = "127.0.0.1"
    host: str = "localhost"
    protocol: str = "HTTP/1.1"

    def header(self, name: str, default: str = "") -> str:
        lower = name.lower()
        return next((v for k, v in self.headers if k.lower() == lower), default)

    @property
    def is_text(self) -> bool:
        """A text content type whose body really is UTF-8 (one that is not travels as base64)."""
        if not self.body:
            return True
        if not self.header("Content-Type").startswith(_TEXT_TYPES):
            return False
        try:
            self.body.decode()
        except UnicodeDecodeError:
            return False
        return True

    def encoded_body(self) -> str:
        if self.is_text:
            return self.body.decode()
        return base64.b64encode(self.body).decode()

    def query_pairs(self, decode: bool = True) -> list[tuple[str, str]]:
        if not self.raw_query:
            return []
        if decode:
            return urllib.parse.parse_qsl(self.raw_query, keep_blank_values=True)
        pairs = []
        for part in self.raw_query.split("&"):
            if part:
                key, _, value = part.partition("=")
                pairs.append((key, value))
        return pairs


@dataclass
class HttpResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


def _multi(pairs: list[tuple[str, str]], lower: bool = False) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key, value in pairs:
        out.setdefault(key.lower() if lower else key, []).append(value)
    return out


def _last(multi: dict[str, list[str]]) -> dict[str, str]:
    return {k: v[-1] for k, v in multi.items()}


def _time(now: float) -> str:
    return time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now))


# ------------------------------------------------------------------------------------------ events


def build_event(
    fmt: str, req: HttpRequest, function: str, request_id: str, multi_value: bool = False
) -> dict[str, Any]:
    """The event ``fmt`` sends for ``req`` (``function`` names the API / target group)."""
    if fmt == "1.0":
        return _event_v1(req, function, request_id)
    if fmt == "alb":
        return _event_alb(req, function, multi_value)
    return _event_v2(req, function, request_id)


def _event_v2(req: HttpRequest, function: str, request_id: str) -> dict[str, Any]:
    headers: dict[str, str] = {}
    for key, values in _multi([(k, v) for k, v in req.headers if k.lower() != "cookie"], lower=True).items():
        headers[key] = ",".join(values)
    cookies = [c.strip() for k, v in req.headers if k.lower() == "cookie" for c in v.split(";") if c.strip()]
    query = {k: ",".join(v) for k, v in _multi(req.query_pairs()).items()}
    now = time.time()
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": req.raw_path or req.path,
        "rawQueryString": req.raw_query,
        "headers": headers,
        "requestContext": {
            "accountId": ACCOUNT,
            "apiId": function,
            "domainName": req.host,
            "domainPrefix": req.host.split(".")[0],
            "http": {
                "method": req.method,
                "path": req.path,
                "protocol": req.protocol,
                "sourceIp": req.source_ip,
                "userAgent": req.header("User-Agent"),
            },
            "requestId": request_id,
            "routeKey": "$default",
            "stage": "$default",
            "time": _time(now),
            "timeEpoch": int(now * 1000),
        },
        "isBase64Encoded": not req.is_text,
    }
    if cookies:
        event["cookies"] = cookies
    if query:
        event["queryStringParameters"] = query
    if req.body:
        event["body"] = req.encoded_body()
    return event


def _event_v1(req: HttpRequest, function: str, request_id: str) -> dict[str, Any]:
    multi_headers = _multi(req.headers)
    multi_query = _multi(req.query_pairs())
    now = time.time()
    proxy = req.path.lstrip("/")
    return {
        "version": "1.0",
        "resource": "/{proxy+}",
        "path": req.path,
        "httpMethod": req.method,
        "headers": _last(multi_headers),
        "multiValueHeaders": multi_headers,
        "queryStringParameters": _last(multi_query) or None,
        "multiValueQueryStringParameters": multi_query or None,
        "requestContext": {
            "accountId": ACCOUNT,
            "apiId": function,
            "domainName": req.host,
            "domainPrefix": req.host.split(".")[0],
            "extendedRequestId": request_id,
            "httpMethod": req.method,
            "identity": {
                "accessKey": None,
                "accountId": None,
                "caller": None,
                "cognitoIdentityId": None,
                "cognitoIdentityPoolId": None,
                "principalOrgId": None,
                "sourceIp": req.source_ip,
                "user": None,
                "userAgent": req.header("User-Agent"),
                "userArn": None,
            },
            "path": req.path,
            "protocol": req.protocol,
            "requestId": request_id,
            "requestTime": _time(now),
            "requestTimeEpoch": int(now * 1000),
            "resourceId": None,
            "resourcePath": "/{proxy+}",
            "stage": "$default",
        },
        "pathParameters": {"proxy": proxy} if proxy else None,
        "stageVariables": None,
        "body": req.encoded_body() if req.body else None,
        "isBase64Encoded": not req.is_text,
    }


def _event_alb(req: HttpRequest, function: str, multi_value: bool) -> dict[str, Any]:
    headers = _multi(req.headers, lower=True)
    query = _multi(req.query_pairs(decode=False))
    arn = f"arn:aws:elasticloadbalancing:{installation_region()}:{ACCOUNT}:targetgroup/{function}/lamina"
    event: dict[str, Any] = {
        "requestContext": {"elb": {"targetGroupArn": arn}},
        "httpMethod": req.method,
        "path": req.path,
    }
    if multi_value:
        event["multiValueQueryStringParameters"] = query
        event["multiValueHeaders"] = headers
    else:
        event["queryStringParameters"] = _last(query)
        event["headers"] = _last(headers)
    event["body"] = req.encoded_body()
    event["isBase64Encoded"] = not req.is_text
    return event


# --------------------------------------------------------------------------------------- responses


def map_response(fmt: str, payload: bytes, multi_value: bool = False) -> HttpResponse:
    """The HTTP response for a function's result under ``fmt``'s rules. Whatever the function sets,
    the response is well-formed: framing and hop-by-hop headers are dropped, and a header that could
    split the response (CR/LF, a name that is no token, non-Latin-1 text), a status outside 100-599
    or a body that is not the base64 it claims makes the format's 502."""
    try:
        result = parse_json(payload) if payload else None
    except ValueError:
        return failed_response(fmt)
    if not (fmt == "2.0" or (isinstance(result, dict) and _status_code(result) is not None)):
        return failed_response(fmt)  # 1.0 and ALB need a response object
    try:
        if fmt == "2.0":
            return _response_v2(result)
        assert isinstance(result, dict)  # checked above: 1.0 and ALB answered with an object
        if fmt == "alb":
            return _response_object(result, use_multi=multi_value, use_single=not multi_value)
        return _response_object(result, use_multi=True, use_single=True)
    except (TypeError, ValueError, AttributeError, RecursionError):  # UnsafeHeader is a ValueError
        return failed_response(fmt)


def failed_response(fmt: str) -> HttpResponse:
    """What the caller gets when the function failed or answered something unusable."""
    if fmt == "alb":
        return HttpResponse(
            502, [("Content-Type", "text/html")], b"<html><body><h1>502 Bad Gateway</h1></body></html>"
        )
    if fmt == "1.0":
        return HttpResponse(502, [("Content-Type", "application/json")], _API_GATEWAY_ERROR)
    return HttpResponse(502, [("Content-Type", "application/json")], b'{"message":"Internal Server Error"}')


def _status_code(result: dict[str, Any]) -> int | None:
    code = result.get("statusCode")
    if isinstance(code, bool):
        return None
    if isinstance(code, str) and code.isascii() and code.isdigit() and len(code) <= 3:
        code = int(code)
    if isinstance(code, int) and 100 <= code <= 599:
        return code
    return None


def _headers_out(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The function's headers as they may be sent (UnsafeHeader, a ValueError, when one cannot)."""
    out = []
    for name, value in pairs:
        check_header(name, value)
        if name.lower() not in DROPPED_RESPONSE_HEADERS:
            out.append((name, value))
    return out


def _text(value: Any) -> str:
    if isinstance(value, dict | list):
        raise TypeError("a header value must be text")
    return json.dumps(value) if isinstance(value, bool) else str(value)


def _body(result: dict[str, Any], *, lenient: bool) -> bytes:
    body = result.get("body")
    if body is None:
        return b""
    if result.get("isBase64Encoded"):
        if not isinstance(body, str):
            raise TypeError("a base64 body must be a string")
        return base64.b64decode(body, validate=True)
    if isinstance(body, str):
        return body.encode()
    if lenient:
        return json.dumps(body).encode()
    raise TypeError("body must be a string")


def _response_v2(result: Any) -> HttpResponse:
    if not (isinstance(result, dict) and "statusCode" in result):
        # Payload 2.0 infers a response: any JSON value is sent as a 200 JSON body.
        return HttpResponse(200, [("Content-Type", "application/json")], json.dumps(result).encode())
    try:
        code = _status_code(result)
        if code is None:
            return failed_response("2.0")
        cookies = result.get("cookies") or []
        if not isinstance(cookies, list):
            raise TypeError("cookies must be a list")
        headers = [(str(k), _text(v)) for k, v in (result.get("headers") or {}).items()]
        headers = _headers_out(headers + [("Set-Cookie", _text(c)) for c in cookies])
        data = _body(result, lenient=True)
    except (TypeError, ValueError, AttributeError):
        return failed_response("2.0")
    if "content-type" not in {k.lower() for k, _ in headers}:
        headers.append(("Content-Type", "application/json"))
    return HttpResponse(code, headers, data)


def _response_object(result: dict[str, Any], *, use_multi: bool, use_single: bool) -> HttpResponse:
    code = _status_code(result)
    assert code is not None
    multi: dict[str, list[str]] = {}
    if use_single:
        for key, value in (result.get("headers") or {}).items():
            multi[str(key)] = [_text(value)]
    if use_multi:
        for key, values in (result.get("multiValueHeaders") or {}).items():
            if not isinstance(values, list):
                raise TypeError("multiValueHeaders values must be lists")
            # API Gateway: a name in both maps keeps the multi-value list's values only.
            multi[str(key)] = [_text(v) for v in values]
    headers = _headers_out([(k, v) for k, values in multi.items() for v in values])
    if "content-type" not in {k.lower() for k in multi}:
        headers.append(("Content-Type", "application/json"))
    return HttpResponse(code, headers, _body(result, lenient=False))

"""AWS Signature Version 4, verified the way boto3 and the AWS CLI sign (botocore's ``SigV4Auth`` and
``SigV4QueryAuth``), from the request exactly as it arrived.

The canonical request is rebuilt from the raw request line: the path as sent, with dot segments and
repeated slashes removed and then percent-encoded once more (non-S3 services encode twice, so an ARN's
``%3A`` becomes ``%253A``); the query's keys and values decoded and encoded again with RFC 3986's
unreserved set, sorted, without ``X-Amz-Signature``; the headers named in ``SignedHeaders``, lower-cased,
values trimmed, repeated ones joined with commas; and the payload's SHA-256 (or the
``X-Amz-Content-SHA256`` header's value, checked against the body; ``UNSIGNED-PAYLOAD`` only where the
caller allows it, which SigV4 does for presigned URLs).

Checked besides the signature: the scope's date equals the request date, the region is the gateway's
and the service is ``lambda``, the terminator is ``aws4_request``, ``host`` (and the date header, when
one is used) is signed, and the request time is within 5 minutes of now (a presigned URL: not before
its date - 5 minutes, not after its ``X-Amz-Expires``, at most 7 days). The errors carry AWS's names
and messages. The signing key of each (secret, day, region, service) is cached, so a verification
costs one SHA-256 of the payload and two HMACs.

Pure: no I/O. :func:`verify` asks ``lookup`` for the secret of an access key id. What signing and
verifying share (the signing key and its cache, the canonical query string and request, the string to
sign) is :mod:`lamina_runtime.sigv4`, which also holds the signer (``lamina invoke``, S3 reads).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from calendar import timegm
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_tz
from time import gmtime, strftime
from typing import Protocol, TypeVar
from urllib.parse import quote, unquote

from lamina.auth.errors import (
    IncompleteSignature,
    InvalidSignature,
    MissingAuthenticationToken,
    UnrecognizedClient,
)
from lamina_runtime.sigv4 import (
    ALGORITHM,
    EMPTY_SHA256,
    SIGNING_KEYS,
    TERMINATOR,
    UNSIGNED_PAYLOAD,
    canonical_query_string,
    canonical_request,
    credential_scope,
    signature,
    string_to_sign,
    trim,
)

MAX_SKEW_SECONDS = 300
MAX_PRESIGNED_EXPIRES = 7 * 24 * 3600
BAD_SIGNATURE = (
    "The request signature we calculated does not match the signature you provided. Check your AWS "
    "Secret Access Key and signing method. Consult the service documentation for details."
)
_QUERY_AUTH = ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Signature")

P = TypeVar("P")


class Headers(Protocol):
    """What is read of the request's headers (aiohttp's CIMultiDictProxy is one)."""

    def get(self, key: str, /) -> str | None: ...

    def getall(self, key: str, default: list[str], /) -> list[str]: ...


@dataclass(frozen=True, slots=True)
class Signature:
    """One parsed SigV4 signature (from the Authorization header or a presigned query)."""

    access_key: str
    day: str
    region: str
    service: str
    terminator: str
    signed_headers: tuple[str, ...]
    signature: str
    timestamp: str  # YYYYMMDDTHHMMSSZ, from X-Amz-Date (or Date) or the query
    presigned: bool = False
    expires: int | None = None
    session_token: str | None = None


def is_signed(headers: Headers, query: str) -> bool:
    """Whether the request claims SigV4 at all (Authorization header, or a presigned query)."""
    auth = headers.get("Authorization")
    if auth is not None:
        return auth.startswith("AWS4-")
    return "X-Amz-Signature=" in query or "X-Amz-Credential=" in query


def _signature(credential: str, where: str, signed_headers: str, signature: str, **rest: object) -> Signature:
    """A Signature from its Credential (``keyid/date/region/service/aws4_request``) and the rest."""
    parts = credential.split("/")
    if len(parts) != 5 or not all(parts):
        raise IncompleteSignature(
            f"{where} Credential must have exactly 5 slash-delimited elements, e.g. "
            f"keyid/date/region/service/term, got '{credential}'"
        )
    key, day, region, service, terminator = parts
    return Signature(
        key,
        day,
        region,
        service,
        terminator,
        tuple(signed_headers.split(";")),
        signature,
        **rest,  # type: ignore[arg-type]
    )


def _header_timestamp(headers: Headers) -> str:
    amz = headers.get("X-Amz-Date")
    if amz:
        return amz
    date = headers.get("Date")
    if date:
        parsed = parsedate_tz(date)
        if parsed is not None:
            seconds = timegm(parsed[:9]) - (parsed[9] or 0)
            return strftime("%Y%m%dT%H%M%SZ", gmtime(seconds))
    raise IncompleteSignature(
        "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header."
    )


def parse_header(authorization: str, headers: Headers) -> Signature:
    """The signature of an ``Authorization: AWS4-HMAC-SHA256 Credential=..., SignedHeaders=...,
    Signature=...`` header."""
    algorithm, _, rest = authorization.partition(" ")
    if algorithm != ALGORITHM:
        raise IncompleteSignature(f"Unsupported AWS 'algorithm': '{algorithm}'")
    fields: dict[str, str] = {}
    for item in rest.split(","):
        key, sep, value = item.strip().partition("=")
        if sep:
            fields[key] = value
    missing = [k for k in ("Credential", "Signature", "SignedHeaders") if not fields.get(k)]
    if missing:
        needs = " ".join(f"Authorization header requires '{k}' parameter." for k in missing)
        raise IncompleteSignature(f"{needs} Authorization={authorization[:200]}")
    return _signature(
        fields["Credential"],
        "Authorization header:",
        fields["SignedHeaders"],
        fields["Signature"],
        timestamp=_header_timestamp(headers),
        session_token=headers.get("X-Amz-Security-Token"),
    )


def _query_pairs(query: str) -> list[tuple[str, str]]:
    pairs = []
    for item in query.split("&"):
        if item:
            key, _, value = item.partition("=")
            pairs.append((unquote(key), unquote(value)))
    return pairs


def parse_query(query: str) -> Signature:
    """The signature of a presigned URL (``X-Amz-Algorithm=...&X-Amz-Signature=...``)."""
    params = dict(_query_pairs(query))
    missing = [k for k in (*_QUERY_AUTH, "X-Amz-Date", "X-Amz-SignedHeaders") if not params.get(k)]
    if missing:
        raise IncompleteSignature(
            " ".join(f"AWS query-string parameters must include '{k}'." for k in missing)
            + " Re-examine the query-string parameters."
        )
    if params["X-Amz-Algorithm"] != ALGORITHM:
        raise IncompleteSignature(f"Unsupported AWS 'algorithm': '{params['X-Amz-Algorithm']}'")
    raw_expires = params.get("X-Amz-Expires", "")
    if not raw_expires.isascii() or not raw_expires.isdigit() or len(raw_expires) > 9:
        raise IncompleteSignature("X-Amz-Expires must be a number of seconds")
    return _signature(
        params["X-Amz-Credential"],
        "X-Amz-Credential:",
        params["X-Amz-SignedHeaders"],
        params["X-Amz-Signature"],
        timestamp=params["X-Amz-Date"],
        presigned=True,
        expires=int(raw_expires),
        session_token=params.get("X-Amz-Security-Token"),
    )


def parse(headers: Headers, query: str) -> Signature:
    """The request's signature; MissingAuthenticationToken when it has none."""
    authorization = headers.get("Authorization")
    if authorization is not None:
        return parse_header(authorization, headers)
    if any(f"{k}=" in query for k in _QUERY_AUTH):
        return parse_query(query)
    raise MissingAuthenticationToken()


_STAMP = re.compile(r"(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z")


_last_epoch: tuple[str, int] = ("", 0)


def _epoch(timestamp: str) -> int:
    """Seconds of a ``YYYYMMDDTHHMMSSZ`` time (by hand: strptime costs most of a verification; the
    last one is remembered, as calls of the same second share it)."""
    global _last_epoch
    if _last_epoch[0] == timestamp:
        return _last_epoch[1]
    _last_epoch = (timestamp, _parse_epoch(timestamp))
    return _last_epoch[1]


def _parse_epoch(timestamp: str) -> int:
    found = _STAMP.fullmatch(timestamp)
    try:
        if found is None:
            raise ValueError(timestamp)
        year, month, day, hour, minute, second = map(int, found.groups())
        if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 61):
            raise ValueError(timestamp)
        return timegm((year, month, day, hour, minute, second, 0, 0, 0))
    except ValueError:
        raise IncompleteSignature(
            f"Date must be in ISO-8601 'basic format'. Got '{timestamp}'. See "
            "http://en.wikipedia.org/wiki/ISO_8601"
        ) from None


def _stamp(epoch: float) -> str:
    return strftime("%Y%m%dT%H%M%SZ", gmtime(epoch))


def check_scope(sig: Signature, region: str, service: str, now: float) -> None:
    """Everything but the signature itself: terminator, region, service, date and time window."""
    if sig.terminator != TERMINATOR:
        raise InvalidSignature(
            f"Credential should be scoped with a valid terminator: '{TERMINATOR}', not '{sig.terminator}'."
        )
    if sig.service != service:
        raise InvalidSignature(f"Credential should be scoped to correct service: '{service}'. ")
    if sig.region != region:
        raise InvalidSignature(f"Credential should be scoped to a valid region, not '{sig.region}'. ")
    when = _epoch(sig.timestamp)
    if sig.day != sig.timestamp[:8]:
        raise InvalidSignature(
            f"Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: "
            f"'{sig.day}' != '{sig.timestamp[:8]}', from '{sig.timestamp}'."
        )
    if sig.presigned:
        assert sig.expires is not None
        if sig.expires > MAX_PRESIGNED_EXPIRES:
            raise InvalidSignature("X-Amz-Expires must be less than a week (in seconds) that is 604800")
        if now > when + sig.expires:
            raise InvalidSignature("Signature expired")
        if when - MAX_SKEW_SECONDS > now:
            raise InvalidSignature(
                f"Signature not yet current: {sig.timestamp} is still later than "
                f"{_stamp(now + MAX_SKEW_SECONDS)} ({_stamp(now)} + 5 min.)"
            )
        return
    if when < now - MAX_SKEW_SECONDS:
        raise InvalidSignature(
            f"Signature expired: {sig.timestamp} is now earlier than {_stamp(now - MAX_SKEW_SECONDS)} "
            f"({_stamp(now)} - 5 min.)"
        )
    if when > now + MAX_SKEW_SECONDS:
        raise InvalidSignature(
            f"Signature not yet current: {sig.timestamp} is still later than "
            f"{_stamp(now + MAX_SKEW_SECONDS)} ({_stamp(now)} + 5 min.)"
        )


_PLAIN_PATH = re.compile(r"(/[A-Za-z0-9_~-][A-Za-z0-9._~-]*)+/?")


def canonical_uri(path: str) -> str:
    """botocore's: dot segments and empty segments removed, a trailing slash kept, encoded again."""
    if _PLAIN_PATH.fullmatch(path) and "/." not in path:
        return path  # nothing to remove, nothing to encode (the usual Invoke path)
    if not path:
        return "/"
    segments: list[str] = []
    for segment in path.split("/"):
        if segment and segment != ".":
            if segment == "..":
                if segments:
                    segments.pop()
            else:
                segments.append(segment)
    normalized = "/" + "/".join(segments)
    if path.endswith("/") and normalized != "/":
        normalized += "/"
    return quote(normalized, safe="/~")


def canonical_query(query: str, presigned: bool) -> str:
    return canonical_query_string(
        (k, v) for k, v in _query_pairs(query) if not (presigned and k == "X-Amz-Signature")
    )


def canonical_headers(sig: Signature, headers: Headers) -> str:
    lines = []
    for name in sig.signed_headers:
        values = headers.getall(name, [])
        if not values:
            raise InvalidSignature(BAD_SIGNATURE)  # signed, but not sent: cannot match
        lines.append(f"{name}:{','.join(trim(v) for v in values)}\n")
    return "".join(lines)


def payload_hashes(sig: Signature, headers: Headers, body: bytes, allow_unsigned: bool) -> list[str]:
    """The payload lines the canonical request may have (and a check that a declared hash is the
    body's). A presigned URL without X-Amz-Content-SHA256 was signed with UNSIGNED-PAYLOAD by an
    https client and with the body's hash by botocore over plain http: both are tried."""
    declared = headers.get("X-Amz-Content-SHA256")
    if declared == UNSIGNED_PAYLOAD:
        if not allow_unsigned:
            raise InvalidSignature("UNSIGNED-PAYLOAD is not accepted for this operation; sign the payload.")
        return [UNSIGNED_PAYLOAD]
    actual = hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256
    if declared is not None and declared.lower() != actual:
        raise InvalidSignature("The provided 'x-amz-content-sha256' header does not match what was computed.")
    if declared is None and sig.presigned and allow_unsigned:
        return [actual, UNSIGNED_PAYLOAD]
    return [actual]


def request_string_to_sign(sig: Signature, method: str, raw_path: str, headers: Headers, payload: str) -> str:
    path, _, query = raw_path.partition("?")
    canonical = canonical_request(
        method.upper(),
        canonical_uri(path),
        canonical_query(query, sig.presigned),
        canonical_headers(sig, headers),
        ";".join(sig.signed_headers),
        payload,
    )
    return string_to_sign(sig.timestamp, credential_scope(sig.day, sig.region, sig.service), canonical)


def verify(
    method: str,
    raw_path: str,
    headers: Headers,
    body: bytes,
    lookup: Callable[[Signature], tuple[str, P] | None],
    *,
    region: str,
    service: str = "lambda",
    now: float,
    allow_unsigned_payload: bool = False,
) -> P:
    """Verify the request's SigV4 signature; returns what ``lookup`` gave for its key (the caller's
    principal). ``lookup(signature)`` returns (secret access key, principal) or None for a key (or
    session token) nobody issued. Raises the AWS error that describes the first problem found."""
    sig = parse(headers, raw_path.partition("?")[2])
    names = sig.signed_headers
    if "host" not in names:
        raise InvalidSignature("'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.")
    if not sig.presigned and headers.get("X-Amz-Date") and "x-amz-date" not in names:
        raise InvalidSignature("'X-Amz-Date' must be a 'SignedHeader' in the AWS Authorization.")
    joined = ";".join(names)
    if joined != joined.lower() or list(names) != sorted(names):
        raise InvalidSignature(BAD_SIGNATURE)
    check_scope(sig, region, service, now)
    found = lookup(sig)
    if found is None:
        raise UnrecognizedClient()
    secret, principal = found
    given = sig.signature.lower()
    if not given.isascii():
        raise InvalidSignature(BAD_SIGNATURE)
    key = SIGNING_KEYS.get(secret, sig.day, sig.region, sig.service)
    for payload in payload_hashes(sig, headers, body, allow_unsigned_payload):
        text = request_string_to_sign(sig, method, raw_path, headers, payload)
        if hmac.compare_digest(signature(key, text), given):
            return principal
    raise InvalidSignature(BAD_SIGNATURE)

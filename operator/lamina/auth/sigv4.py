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
and messages.

What a gateway pays per call is kept small (the target is 0.1 ms at p50 over no authentication): the
signing key of each (secret, day, region, service) is cached with its HMAC states, the parse of an
``Authorization`` header is remembered for the requests that differ only in their signature
(:func:`parse_header_cached`), so a verification costs the payload's SHA-256, the canonical
request's and one HMAC, with a few dictionary lookups around them.

Pure: no I/O. :func:`verify` asks ``lookup`` for the secret of an access key id. What signing and
verifying share (the signing key and its cache, the canonical query string and request, the string to
sign) is :mod:`lamina_runtime.sigv4`, which also holds the signer (``lamina invoke``, S3 reads).
"""

from __future__ import annotations

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
    sha256_hex,
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
    """What a SigV4 signature (from the Authorization header or a presigned query) claims: everything
    but the signature value itself, so that one parse serves every request a client signs within the
    same second (see :func:`parse_header_cached`)."""

    access_key: str
    day: str
    region: str
    service: str
    terminator: str
    signed_headers: tuple[str, ...]
    timestamp: str  # YYYYMMDDTHHMMSSZ, from X-Amz-Date (or Date) or the query
    presigned: bool = False
    expires: int | None = None
    session_token: str | None = None
    names: str = ""  # the signed headers as sent (";"-separated)
    scope: str = ""  # day/region/service/terminator


def _signature(credential: str, where: str, signed_headers: str, **rest: object) -> Signature:
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
        names=signed_headers,
        scope=credential_scope(day, region, service),
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


def parse_header(authorization: str, headers: Headers) -> tuple[Signature, str]:
    """The signature (and its value) of an ``Authorization: AWS4-HMAC-SHA256 Credential=...,
    SignedHeaders=..., Signature=...`` header."""
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
    sig = _signature(
        fields["Credential"],
        "Authorization header:",
        fields["SignedHeaders"],
        timestamp=_header_timestamp(headers),
        session_token=headers.get("X-Amz-Security-Token"),
    )
    return sig, fields["Signature"]


def _query_pairs(query: str) -> list[tuple[str, str]]:
    pairs = []
    for item in query.split("&"):
        if item:
            key, _, value = item.partition("=")
            pairs.append((unquote(key), unquote(value)))
    return pairs


def parse_query(query: str) -> tuple[Signature, str]:
    """The signature (and its value) of a presigned URL (``X-Amz-Algorithm=...&X-Amz-Signature=...``)."""
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
    sig = _signature(
        params["X-Amz-Credential"],
        "X-Amz-Credential:",
        params["X-Amz-SignedHeaders"],
        timestamp=params["X-Amz-Date"],
        presigned=True,
        expires=int(raw_expires),
        session_token=params.get("X-Amz-Security-Token"),
    )
    return sig, params["X-Amz-Signature"]


def check_signed_headers(sig: Signature, headers: Headers) -> None:
    """What must be signed is (``host``; ``x-amz-date`` when sent), in the canonical form."""
    names = sig.signed_headers
    if "host" not in names:
        raise InvalidSignature("'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.")
    if not sig.presigned and headers.get("X-Amz-Date") and "x-amz-date" not in names:
        raise InvalidSignature("'X-Amz-Date' must be a 'SignedHeader' in the AWS Authorization.")
    if sig.names != sig.names.lower() or list(names) != sorted(names):
        raise InvalidSignature(BAD_SIGNATURE)


#: Parsed and checked Authorization headers, by everything the parse reads but the signature value.
_PARSED: dict[tuple[str, str, str | None], Signature] = {}
PARSED_MAX = 1024


def parse_header_cached(authorization: str, headers: Headers) -> tuple[Signature, str]:
    """:func:`parse_header` and :func:`check_signed_headers`, remembered.

    A client's requests differ in their ``Signature=`` only (within a second, when its X-Amz-Date is
    the same), and botocore and the AWS CLI write it last. Everything before the last comma, the
    X-Amz-Date and the session token then decide the parse (the last item adds only the signature),
    so the Signature is kept under them: a hit costs one dictionary lookup instead of the parse.
    Other forms (a Date header, the signature elsewhere) are parsed each time. Bounded, the oldest
    entry dropped first; only signatures that parsed and passed the checks are kept."""
    head, comma, last = authorization.rpartition(",")
    last = last.strip()
    amz_date = headers.get("X-Amz-Date")
    if not (comma and amz_date and last.startswith("Signature=") and len(last) > 10):
        sig, given = parse_header(authorization, headers)
        check_signed_headers(sig, headers)
        return sig, given
    key = (head, amz_date, headers.get("X-Amz-Security-Token"))
    found = _PARSED.get(key)
    if found is not None:
        return found, last[10:]
    sig, given = parse_header(authorization, headers)
    check_signed_headers(sig, headers)
    if given == last[10:]:  # always, as said above; checked, since the cache relies on it
        if len(_PARSED) >= PARSED_MAX:
            del _PARSED[next(iter(_PARSED))]
        _PARSED[key] = sig
    return sig, given


def parse(headers: Headers, query: str) -> tuple[Signature, str]:
    """The request's signature and its value, checked for what must be signed;
    MissingAuthenticationToken when it has none."""
    authorization = headers.get("Authorization")
    if authorization is not None:
        return parse_header_cached(authorization, headers)
    if any(f"{k}=" in query for k in _QUERY_AUTH):
        sig, given = parse_query(query)
        check_signed_headers(sig, headers)
        return sig, given
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
    if not query:
        return ""
    return canonical_query_string(
        (k, v) for k, v in _query_pairs(query) if not (presigned and k == "X-Amz-Signature")
    )


_NOT_SENT: list[str] = []


def canonical_headers(sig: Signature, headers: Headers) -> str:
    lines = []
    for name in sig.signed_headers:
        values = headers.getall(name, _NOT_SENT)
        if not values:
            raise InvalidSignature(BAD_SIGNATURE)  # signed, but not sent: cannot match
        value = trim(values[0]) if len(values) == 1 else ",".join(trim(v) for v in values)
        lines.append(f"{name}:{value}\n")
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
    actual = sha256_hex(body) if body else EMPTY_SHA256
    if declared is not None and declared.lower() != actual:
        raise InvalidSignature("The provided 'x-amz-content-sha256' header does not match what was computed.")
    if declared is None and sig.presigned and allow_unsigned:
        return [actual, UNSIGNED_PAYLOAD]
    return [actual]


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
    path, _, query = raw_path.partition("?")
    sig, given = parse(headers, query)
    check_scope(sig, region, service, now)
    found = lookup(sig)
    if found is None:
        raise UnrecognizedClient()
    secret, principal = found
    given = given.lower()
    if not given.isascii():
        raise InvalidSignature(BAD_SIGNATURE)
    key = SIGNING_KEYS.get(secret, sig.day, sig.region, sig.service)
    payloads = payload_hashes(sig, headers, body, allow_unsigned_payload)
    uri, query_string = canonical_uri(path), canonical_query(query, sig.presigned)
    lines = canonical_headers(sig, headers)
    for payload in payloads:
        canonical = canonical_request(method.upper(), uri, query_string, lines, sig.names, payload)
        if hmac.compare_digest(key.sign(string_to_sign(sig.timestamp, sig.scope, canonical)), given):
            return principal
    raise InvalidSignature(BAD_SIGNATURE)

"""AWS Signature Version 4 with the standard library only (hashlib, hmac): the one implementation of
its shared parts, and the signer.

The runtime image fetches code and layers from S3-compatible storage in an init container, and may not
carry botocore; lamina's own clients (``lamina invoke``, the operator's S3 reads) sign with
:func:`sign`. The parts every SigV4 user needs live here once, in the lowest layer all of them may
import: the signing key of a day (:func:`signing_key`, cached ready to sign by :class:`SigningKeys`),
the canonical query string, the canonical request, the credential scope and the string to sign. The
SQS client's fast signer (``lamina.eventsources.sqs``) and the gateway's verifier
(``lamina.auth.sigv4``) build on them; each is checked byte for byte against botocore.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import urllib.parse
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

ALGORITHM = "AWS4-HMAC-SHA256"
TERMINATOR = "aws4_request"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str
    session_token: str | None = None

    def __repr__(self) -> str:  # never print a secret by accident
        return f"Credentials(access_key={self.access_key[:4]}…)"


_SHA256 = hashlib.sha256()
_INNER_PAD = bytes(x ^ 0x36 for x in range(256))
_OUTER_PAD = bytes(x ^ 0x5C for x in range(256))


def sha256_hex(data: bytes) -> str:
    """SHA-256 of ``data`` in hex, from a copy of one ready hash object: making a new one looks the
    digest up in OpenSSL's provider tables (OpenSSL 3), which costs more than hashing a request."""
    digest = _SHA256.copy()
    digest.update(data)
    return digest.hexdigest()


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.digest(key, message.encode(), "sha256")  # one C call, no HMAC object


def signing_key(secret: str, day: str, region: str, service: str) -> bytes:
    """The key that signs a day's requests to one region and service (four HMACs from the secret)."""
    key = _hmac(f"AWS4{secret}".encode(), day)
    for part in (region, service, TERMINATOR):
        key = _hmac(key, part)
    return key


class SigningKey:
    """A signing key ready to sign: HMAC-SHA256's inner and outer hash states (RFC 2104) computed
    once, so a signature costs two copies and two updates of them, and no digest lookup (on a busy
    gateway ``hmac.digest`` cost several times more than the hashing itself)."""

    __slots__ = ("_inner", "_outer", "key")

    def __init__(self, key: bytes) -> None:
        self.key = key
        block = (key if len(key) <= 64 else hashlib.sha256(key).digest()).ljust(64, b"\0")
        self._inner = hashlib.sha256(block.translate(_INNER_PAD))
        self._outer = hashlib.sha256(block.translate(_OUTER_PAD))

    def sign(self, to_sign: str) -> str:
        """The signature (hex HMAC-SHA256) of a string to sign."""
        inner = self._inner.copy()
        inner.update(to_sign.encode())
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()


class SigningKeys:
    """Signing keys by (secret, day, region, service): a key serves a whole day, so it is derived
    once a day rather than per request. Bounded, the oldest dropped first."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._keys: OrderedDict[tuple[str, str, str, str], SigningKey] = OrderedDict()

    def get(self, secret: str, day: str, region: str, service: str) -> SigningKey:
        cache_key = (secret, day, region, service)
        key = self._keys.get(cache_key)
        if key is None:
            key = SigningKey(signing_key(secret, day, region, service))
            self._keys[cache_key] = key
            if len(self._keys) > self.size:
                self._keys.popitem(last=False)
        return key


#: The process's signing keys (signer, SQS client and verifier alike; the secret is part of the key).
SIGNING_KEYS = SigningKeys()


def credential_scope(day: str, region: str, service: str) -> str:
    return f"{day}/{region}/{service}/{TERMINATOR}"


def trim(value: str) -> str:
    """A header value as the canonical request has it: trimmed, inner runs of spaces made one."""
    return " ".join(value.split())


def canonical_query_string(pairs: Iterable[tuple[str, str]]) -> str:
    """Decoded (key, value) pairs encoded with RFC 3986's unreserved set and sorted as encoded."""
    encoded = sorted((_quote(k), _quote(v)) for k, v in pairs)
    return "&".join(f"{k}={v}" for k, v in encoded)


def _quote(value: str) -> str:
    return urllib.parse.quote(value, safe="-_.~")


def canonical_request(
    method: str, uri: str, query: str, headers: str, signed_headers: str, payload_sha256: str
) -> str:
    """``headers``: one ``name:value\\n`` line per signed header, in ``signed_headers``' order."""
    return f"{method}\n{uri}\n{query}\n{headers}\n{signed_headers}\n{payload_sha256}"


def string_to_sign(timestamp: str, scope: str, canonical: str) -> str:
    return f"{ALGORITHM}\n{timestamp}\n{scope}\n{sha256_hex(canonical.encode())}"


def authorization(access_key: str, scope: str, signed_headers: str, signature: str) -> str:
    """The ``Authorization`` header's value."""
    return (
        f"{ALGORITHM} Credential={access_key}/{scope}, SignedHeaders={signed_headers}, Signature={signature}"
    )


def sign(
    method: str,
    url: str,
    credentials: Credentials,
    *,
    region: str,
    service: str,
    headers: Mapping[str, str] | None = None,
    payload_sha256: str = EMPTY_SHA256,
    now: datetime.datetime | None = None,
) -> dict[str, str]:
    """The headers to send with the request (``headers`` plus Host, X-Amz-Date, X-Amz-Content-Sha256,
    X-Amz-Security-Token when there is one, and Authorization).

    The path of ``url`` must already be percent-encoded as it goes on the wire; S3 signs it as it is,
    other services encode it once more (as botocore does).
    """
    parts = urllib.parse.urlsplit(url)
    now = now or datetime.datetime.now(datetime.UTC)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    out = {k: v for k, v in (headers or {}).items()}
    default_port = {"http": 80, "https": 443}.get(parts.scheme)
    host = parts.hostname or ""
    if parts.port and parts.port != default_port:
        host = f"{host}:{parts.port}"
    out["Host"] = host
    out["X-Amz-Date"] = amz_date
    out["X-Amz-Content-Sha256"] = payload_sha256
    if credentials.session_token:
        out["X-Amz-Security-Token"] = credentials.session_token
    signed = {k.lower(): trim(str(v)) for k, v in out.items()}
    names = sorted(signed)
    path = parts.path or "/"
    if service != "s3":
        path = urllib.parse.quote(path, safe="/-_.~%")
        path = urllib.parse.quote(path, safe="/-_.~")
    signed_headers = ";".join(names)
    canonical = canonical_request(
        method.upper(),
        path,
        canonical_query_string(urllib.parse.parse_qsl(parts.query, keep_blank_values=True)),
        "".join(f"{n}:{signed[n]}\n" for n in names),
        signed_headers,
        payload_sha256,
    )
    scope = credential_scope(day, region, service)
    key = SIGNING_KEYS.get(credentials.secret_key, day, region, service)
    to_sign = string_to_sign(amz_date, scope, canonical)
    out["Authorization"] = authorization(credentials.access_key, scope, signed_headers, key.sign(to_sign))
    return out

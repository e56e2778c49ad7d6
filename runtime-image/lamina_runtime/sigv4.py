"""AWS Signature Version 4 with the standard library only (hashlib, hmac).

The runtime image fetches code and layers from S3-compatible storage in an init container, and may not
carry botocore; lamina's own clients (``lamina invoke``, the operator's S3 reads) sign the same way,
so there is one implementation, tested against a real S3-compatible server.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str
    session_token: str | None = None

    def __repr__(self) -> str:  # never print a secret by accident
        return f"Credentials(access_key={self.access_key[:4]}…)"


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def _quote(value: str, safe: str = "-_.~") -> str:
    return urllib.parse.quote(value, safe=safe)


def canonical_query(query: str) -> str:
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    return "&".join(f"{_quote(k)}={_quote(v)}" for k, v in sorted(pairs))


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
    signed = {k.lower(): " ".join(str(v).strip().split()) for k, v in out.items()}
    names = sorted(signed)
    path = parts.path or "/"
    if service != "s3":
        path = _quote(path, safe="/-_.~%")
        path = _quote(path, safe="/-_.~")
    canonical = "\n".join(
        [
            method.upper(),
            path,
            canonical_query(parts.query),
            "".join(f"{n}:{signed[n]}\n" for n in names),
            ";".join(names),
            payload_sha256,
        ]
    )
    scope = f"{day}/{region}/{service}/aws4_request"
    to_sign = "\n".join([ALGORITHM, amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = _hmac(("AWS4" + credentials.secret_key).encode(), day)
    for part in (region, service, "aws4_request"):
        key = _hmac(key, part)
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    out["Authorization"] = (
        f"{ALGORITHM} Credential={credentials.access_key}/{scope}, "
        f"SignedHeaders={';'.join(names)}, Signature={signature}"
    )
    return out

"""Reading one object from S3-compatible storage with the standard library (SigV4 from :mod:`sigv4`).

Used by the init container that fetches a Function's code or a Layer from S3 (``python -m
lamina_runtime fetch-s3``), by local mode and by the operator, which records the object's digest.
Errors name the bucket, the key and the version, never the credentials.
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass

from .sigv4 import EMPTY_SHA256, Credentials, sign

MAX_BYTES = 250 * 1024 * 1024


@dataclass(frozen=True)
class S3Object:
    """Where an object is: Lambda's S3Bucket, S3Key, S3ObjectVersion, plus the endpoint of an
    S3-compatible server (path-style addressing) and its region."""

    bucket: str
    key: str
    version_id: str | None = None
    endpoint: str | None = None
    region: str = "us-east-1"

    def __str__(self) -> str:
        version = f" (version {self.version_id})" if self.version_id else ""
        return f"s3://{self.bucket}/{self.key}{version}"

    def url(self) -> str:
        base = (self.endpoint or f"https://s3.{self.region}.amazonaws.com").rstrip("/")
        path = f"/{urllib.parse.quote(self.bucket)}/{urllib.parse.quote(self.key, safe='/~')}"
        if self.version_id:
            return f"{base}{path}?versionId={urllib.parse.quote(self.version_id, safe='')}"
        return base + path


@dataclass(frozen=True)
class Fetched:
    data: bytes
    version_id: str | None
    etag: str | None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


class S3Error(Exception):
    """The object could not be read; the message names the object and S3's error code."""

    def __init__(self, obj: S3Object, code: str, message: str = "") -> None:
        self.code = code
        super().__init__(f"cannot read {obj}: {code}" + (f": {message}" if message else ""))


def credentials_from_env(environ: Mapping[str, str] = os.environ) -> Credentials | None:
    key, secret = environ.get("AWS_ACCESS_KEY_ID"), environ.get("AWS_SECRET_ACCESS_KEY")
    if not key or not secret:
        return None
    return Credentials(key, secret, environ.get("AWS_SESSION_TOKEN") or None)


def _request(
    obj: S3Object, method: str, credentials: Credentials | None, timeout: float
) -> urllib.request.Request:
    url = obj.url()
    headers: dict[str, str] = {}
    if credentials is not None:
        headers = sign(method, url, credentials, region=obj.region, service="s3", payload_sha256=EMPTY_SHA256)
        headers.pop("Host", None)  # urllib sets it (same value)
    return urllib.request.Request(url, method=method, headers=headers)


def _error(obj: S3Object, exc: urllib.error.HTTPError) -> S3Error:
    body = exc.read()[:4096].decode(errors="replace")
    code = _tag(body, "Code") or {403: "AccessDenied", 404: "NoSuchKey"}.get(exc.code, f"HTTP {exc.code}")
    return S3Error(obj, code, _tag(body, "Message") or "")


def _tag(xml: str, name: str) -> str | None:
    found = re.search(rf"<{name}>([^<]*)</{name}>", xml)
    return found.group(1) if found else None


def head(
    obj: S3Object, credentials: Credentials | None, timeout: float = 30.0
) -> tuple[str | None, str | None]:
    """(VersionId, ETag) of the object as it is now."""
    try:
        with urllib.request.urlopen(_request(obj, "HEAD", credentials, timeout), timeout=timeout) as response:
            return response.headers.get("x-amz-version-id"), response.headers.get("ETag")
    except urllib.error.HTTPError as exc:
        raise _error(obj, exc) from None
    except OSError as exc:
        raise S3Error(obj, "Unreachable", str(exc)) from None


def get(
    obj: S3Object, credentials: Credentials | None, timeout: float = 60.0, limit: int = MAX_BYTES
) -> Fetched:
    """The object's bytes (refused above ``limit``), with its VersionId and ETag."""
    try:
        with urllib.request.urlopen(_request(obj, "GET", credentials, timeout), timeout=timeout) as response:
            data = response.read(limit + 1)
            version, etag = response.headers.get("x-amz-version-id"), response.headers.get("ETag")
    except urllib.error.HTTPError as exc:
        raise _error(obj, exc) from None
    except OSError as exc:
        raise S3Error(obj, "Unreachable", str(exc)) from None
    if len(data) > limit:
        raise S3Error(obj, "TooLarge", f"larger than {limit} bytes")
    return Fetched(data, version if version and version != "null" else None, etag)

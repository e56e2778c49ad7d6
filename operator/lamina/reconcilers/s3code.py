"""A Function's code in S3-compatible storage, as the operator resolves it before building the pods.

The operator reads the object once per object version (HEAD says which version and ETag the key holds
now; the recorded digest is reused while they do not change), computes its SHA-256 and records it in
``status.codeS3``. The pods' init container then fetches exactly that object version (when the bucket
has versioning) and checks that digest, with credentials taken from the Secret by reference: the pod
spec names the Secret, never its values. An object that cannot be read blocks the Function with the
bucket and key in the message, never the credentials.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lamina.api import Function
from lamina.api.common import S3Location
from lamina.reconcilers.client import ApiError, KubeApi, Ref
from lamina.reconcilers.context import Blocked
from lamina.reconcilers.status import BlockReason
from lamina_runtime import s3
from lamina_runtime.sigv4 import Credentials

#: Retry delay (seconds) of an object that could not be read: uploads are not watched.
S3_RETRY = 15.0
ACCESS_KEY, SECRET_KEY, SESSION_TOKEN = "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"


@dataclass(frozen=True)
class ResolvedObject:
    """The object a Function's pods fetch: its digest and the object version pinned (if any)."""

    sha256: str
    version_id: str | None
    etag: str | None

    def to_status(self, location: S3Location) -> dict[str, Any]:
        doc = {"bucket": location.bucket, "key": location.key, "sha256": self.sha256}
        if self.version_id:
            doc["versionId"] = self.version_id
        if self.etag:
            doc["etag"] = self.etag
        return doc


def s3_object(location: S3Location, version_id: str | None = None) -> s3.S3Object:
    return s3.S3Object(
        location.bucket,
        location.key,
        version_id or location.object_version,
        location.endpoint,
        location.region,
    )


def credentials(kube: KubeApi, namespace: str, location: S3Location, where: str) -> Credentials | None:
    ref = location.credentials_secret
    if ref is None:
        return None
    try:
        secret = kube.get(Ref("v1", "Secret", namespace, ref.name))
    except ApiError as exc:
        if exc.status != 403:
            raise
        raise Blocked(
            BlockReason.SECRET_NOT_FOUND,
            f"{where}.credentialsSecret: the operator may not read Secret {ref.name} in {namespace}: it "
            "reads Secrets only in the chart's operator.watchNamespaces and operator.secretNamespaces",
            S3_RETRY,
        ) from None
    if secret is None:
        raise Blocked(
            BlockReason.SECRET_NOT_FOUND,
            f"{where}.credentialsSecret: Secret {ref.name} does not exist",
            S3_RETRY,
        )
    data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    data.update(secret.get("stringData") or {})
    if not data.get(ACCESS_KEY) or not data.get(SECRET_KEY):
        raise Blocked(
            BlockReason.SECRET_NOT_FOUND,
            f"{where}.credentialsSecret: Secret {ref.name} needs the keys {ACCESS_KEY} and {SECRET_KEY}",
            S3_RETRY,
        )
    return Credentials(data[ACCESS_KEY], data[SECRET_KEY], data.get(SESSION_TOKEN) or None)


def resolve_code(kube: KubeApi, fn: Function, recorded: Mapping[str, Any] | None) -> ResolvedObject | None:
    """The digest of the Function's S3 code (None when its code is not in S3)."""
    location = fn.spec.code.s3
    if location is None:
        return None
    return resolve_object(kube, fn.metadata.namespace, location, "spec.code.s3", recorded)


def resolve_object(
    kube: KubeApi, namespace: str, location: S3Location, where: str, recorded: Mapping[str, Any] | None
) -> ResolvedObject:
    """An object's digest and pinned version: HEAD it, reuse ``recorded`` (bucket, key, versionId, etag,
    sha256) while the object is unchanged, else read it and compute the digest."""
    creds = credentials(kube, namespace, location, where)
    obj = s3_object(location)
    try:
        version_id, etag = s3.head(obj, creds)
        version_id = version_id if version_id and version_id != "null" else None
        recorded = recorded or {}
        same = (
            recorded.get("bucket") == location.bucket
            and recorded.get("key") == location.key
            and recorded.get("versionId") == (location.object_version or version_id)
            and recorded.get("etag") == etag
            and recorded.get("sha256")
        )
        if same:
            return ResolvedObject(str(recorded["sha256"]), location.object_version or version_id, etag)
        fetched = s3.get(s3_object(location, version_id), creds)
    except s3.S3Error as exc:
        raise Blocked(BlockReason.S3_OBJECT_UNREADABLE, f"{where}: {exc}", S3_RETRY) from None
    return ResolvedObject(fetched.sha256, location.object_version or fetched.version_id, fetched.etag)

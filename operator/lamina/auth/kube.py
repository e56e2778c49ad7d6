"""The API server as authenticator and authorizer, and access keys kept in Secrets.

- :class:`TokenReviews`: bearer tokens checked with TokenReview for one audience (tokens minted for
  lamina: TokenRequest with ``audiences: [lamina]``, or a projected serviceAccountToken volume), the
  answer remembered briefly by the token's SHA-256, never the token.
- :class:`SubjectAccessReviews`: RBAC decisions (wrap in :class:`~lamina.auth.authorizer.CachedAuthorizer`).
- :class:`AccessKeySecrets`: Secrets of type ``lamina.dev/access-key`` in one namespace, watched, as a
  :class:`~lamina.auth.keys.KeyTable`. Each holds ``accessKeyId`` and ``secretAccessKey``, and the
  identity the key acts as: ``serviceAccount: namespace/name``, or ``user`` (with optional ``groups``,
  comma-separated)::

      apiVersion: v1
      kind: Secret
      type: lamina.dev/access-key
      metadata: {name: ci, namespace: lamina-system}
      stringData:
        accessKeyId: AKIAEXAMPLECI00000001
        secretAccessKey: <40 random characters>
        serviceAccount: team-a/deployer

The Kubernetes client blocks: calls run in threads, the watch in its own (lamina.kubeapi).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
from typing import Any

from kubernetes import client

from lamina.auth.authorizer import GROUP, RESOURCE
from lamina.auth.decisions import TtlCache
from lamina.auth.identity import Identity, parse_service_account
from lamina.auth.keys import AccessKey, KeyTable
from lamina.kubeapi import ThreadedWatch

log = logging.getLogger(__name__)

ACCESS_KEY_TYPE = "lamina.dev/access-key"


class TokenReviews:
    """Bearer tokens, checked by the API server for ``audience``."""

    def __init__(
        self,
        api: client.ApiClient,
        audience: str,
        ttl: float = 60.0,
        failed_ttl: float = 5.0,
        max_size: int = 10_000,
    ) -> None:
        self.api = client.AuthenticationV1Api(api)
        self.audience = audience
        self.cache: TtlCache[Identity | None] = TtlCache(lambda i: ttl if i else failed_ttl, max_size)

    async def review(self, token: str) -> Identity | None:
        key = hashlib.sha256(token.encode()).digest()
        found = self.cache.peek(key)
        if found is not None:
            return found
        return await self.cache.get(key, lambda: asyncio.to_thread(self._review, token))

    def _review(self, token: str) -> Identity | None:
        body = {"spec": {"token": token, "audiences": [self.audience]}}
        status = self.api.create_token_review(body).status  # type: ignore[arg-type]
        if not status or not status.authenticated or self.audience not in (status.audiences or []):
            return None
        user = status.user
        if user is None or not user.username:
            return None
        extra = tuple(sorted((k, tuple(v)) for k, v in (user.extra or {}).items()))
        return Identity(user=user.username, groups=tuple(user.groups or ()), uid=user.uid or "", extra=extra)


class SubjectAccessReviews:
    """May ``identity`` do ``verb`` on functions.lamina.dev (one, or all of a namespace)? Asked as a
    SubjectAccessReview."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = client.AuthorizationV1Api(api)

    async def allowed(self, identity: Identity, verb: str, namespace: str | None, name: str | None) -> bool:
        return await asyncio.to_thread(self._ask, identity, verb, namespace, name)

    def _ask(self, identity: Identity, verb: str, namespace: str | None, name: str | None) -> bool:
        attributes: dict[str, Any] = {"group": GROUP, "resource": RESOURCE, "verb": verb}
        if namespace:
            attributes["namespace"] = namespace
        if name:
            attributes["name"] = name
        spec: dict[str, Any] = {
            "resourceAttributes": attributes,
            "user": identity.user,
            "groups": list(identity.groups),
        }
        if identity.uid:
            spec["uid"] = identity.uid
        if identity.extra:
            spec["extra"] = {k: list(v) for k, v in identity.extra}
        review = self.api.create_subject_access_review({"spec": spec})  # type: ignore[arg-type]
        return bool(review.status and review.status.allowed)


def access_key(secret: dict[str, Any]) -> AccessKey:
    """The key a Secret of type lamina.dev/access-key holds; ValueError naming what is wrong."""
    data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    key_id, secret_key = data.get("accessKeyId", "").strip(), data.get("secretAccessKey", "").strip()
    if not key_id or not secret_key:
        raise ValueError("needs accessKeyId and secretAccessKey")
    if data.get("serviceAccount"):
        identity = parse_service_account(data["serviceAccount"].strip())
    elif data.get("user"):
        groups = tuple(g.strip() for g in data.get("groups", "").split(",") if g.strip())
        identity = Identity(user=data["user"].strip(), groups=(*groups, "system:authenticated"))
    else:
        raise ValueError("needs serviceAccount (namespace/name) or user (and groups) to act as")
    return AccessKey(key_id, secret_key, identity)


class AccessKeySecrets:
    """The access keys of one namespace's lamina.dev/access-key Secrets, kept current by a watch."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.core = client.CoreV1Api(api)
        self.namespace = namespace
        self.table = KeyTable()
        self._by_secret: dict[str, AccessKey] = {}
        self._watch: ThreadedWatch | None = None

    def lookup(self, sig: Any) -> tuple[str, Identity] | None:
        return self.table.lookup(sig)

    async def start(self) -> None:
        def list_secrets(**kw: Any) -> Any:
            return self.core.list_namespaced_secret(
                self.namespace, field_selector=f"type={ACCESS_KEY_TYPE}", **kw
            )

        self._watch = ThreadedWatch(list_secrets, self._on_secret, asyncio.get_running_loop())
        self._watch.start()
        await asyncio.to_thread(self._watch.synced.wait, 30)

    def _on_secret(self, kind: str, secret: dict[str, Any]) -> None:
        name = (secret.get("metadata") or {}).get("name", "")
        self._by_secret.pop(name, None)
        if kind != "DELETED":
            try:
                self._by_secret[name] = access_key(secret)
            except (ValueError, UnicodeDecodeError) as exc:
                log.warning("access key Secret %s/%s is ignored: %s", self.namespace, name, exc)
        self.table.replace(list(self._by_secret.values()))

    def stop(self) -> None:
        if self._watch is not None:
            self._watch.stop()

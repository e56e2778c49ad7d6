"""The cluster gateway's security pieces, put together from its settings.

- Authentication: access keys from the release namespace's ``lamina.dev/access-key`` Secrets, the
  execution credentials of functions (from the installation key, ``LAMINA_AUTH_KEY``), bearer tokens
  through TokenReview for one audience.
- Authorization: SubjectAccessReview, cached (lamina.auth.authorizer).
- The invoke secret each function's pods require (from the installation key).
- For the async dispatcher: whether a function may invoke its function destination (RBAC for the
  function's ServiceAccount). (The broker URLs of ``urlFrom`` destinations come from
  :class:`lamina.kubeapi.SecretValues`, where the chart's ``gateway.secretNamespaces`` allows it.)
"""

from __future__ import annotations

import logging
import os
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes import client

from lamina.auth.authenticator import Authenticator
from lamina.auth.authorizer import Authorizer, CachedAuthorizer
from lamina.auth.credentials import ExecutionClaims, execution_credentials, invoke_secret
from lamina.auth.identity import service_account
from lamina.auth.keys import ExecutionKeys, lookups
from lamina.auth.kube import AccessKeySecrets, SubjectAccessReviews, TokenReviews
from lamina.environments.base import FunctionConfig
from lamina.gateway.auth import GatewayAuth

log = logging.getLogger(__name__)

AUTH_KEY_ENV = "LAMINA_AUTH_KEY"


def installation_key(environ: Mapping[str, str] | None = None) -> bytes | None:
    """The installation key (invoke secrets, execution credentials), or None when not configured."""
    value = (os.environ if environ is None else environ).get(AUTH_KEY_ENV, "")
    return value.encode() if value else None


@dataclass
class ClusterAccess:
    auth: GatewayAuth
    keys: AccessKeySecrets
    authorizer: Authorizer

    async def start(self) -> None:
        await self.keys.start()

    def stop(self) -> None:
        self.keys.stop()


def cluster_access(
    api: client.ApiClient,
    *,
    region: str,
    audience: str,
    key_namespace: str,
    key: bytes | None,
    current_account: Callable[[str, str], str | None],
    allowed_ttl: float,
    denied_ttl: float,
) -> ClusterAccess:
    keys = AccessKeySecrets(api, key_namespace)
    sources: list[Any] = [keys]
    if key is not None:
        sources.append(ExecutionKeys(key, current_account))
    authorizer = CachedAuthorizer(SubjectAccessReviews(api), allowed_ttl, denied_ttl)
    authenticator = Authenticator(lookups(*sources), region, TokenReviews(api, audience))
    return ClusterAccess(GatewayAuth(authenticator, authorizer), keys, authorizer)


def secret_for(key: bytes | None) -> Callable[[FunctionConfig], str | None] | None:
    """What the HTTP pool sends each function's pods (None: pods that require no secret)."""
    if key is None:
        return None
    return lambda fn: invoke_secret(key, fn.namespace, fn.name)


def credentials_for(key: bytes | None) -> Callable[[FunctionConfig], dict[str, str]] | None:
    """What a claimed pool pod is handed as the function's AWS_* variables: its execution credentials,
    as the operator puts them into the function's own Secret for its Deployment's pods."""
    if key is None:
        return None
    return lambda fn: execution_credentials(
        key, ExecutionClaims(fn.namespace, fn.name, fn.execution_account)
    ).environment()


def destination_check(
    authorizer: Authorizer, lookup: Callable[[str], FunctionConfig | None]
) -> Callable[[str, str], Any]:
    """The dispatcher's ``may_invoke(source, target)``: RBAC for the source function's identity."""

    async def may_invoke(source: str, target: str) -> bool:
        fn = lookup(source)
        if fn is None:
            return False
        namespace, _, name = target.partition(":")[0].partition("/")
        identity = service_account(fn.namespace, fn.execution_account)
        return await authorizer.allowed(identity, "invoke", namespace, name)

    return may_invoke


def with_credentials(url: str, username: str | None, password: str | None) -> str:
    """A Redis URL with ``username``/``password`` (the chart passes them apart, from Secrets) in its
    userinfo, quoted; ``url`` unchanged without a password."""
    if not password:
        return url
    parts = urllib.parse.urlsplit(url)
    user = username if username is not None else urllib.parse.unquote(parts.username or "")
    netloc = (
        f"{urllib.parse.quote(user, safe='')}:{urllib.parse.quote(password, safe='')}@{parts.hostname or ''}"
    )
    if parts.port:
        netloc += f":{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))

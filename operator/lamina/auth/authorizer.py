"""May this identity do this to that function? RBAC in a cluster, the keys file in local mode.

The question is Kubernetes' own: verb ``invoke`` (or ``get``/``list``) on ``functions`` of the API
group ``lamina.dev`` in a namespace, with the function's name as ``resourceName``. Platform teams
grant it with ordinary Roles and RoleBindings::

    rules:
      - apiGroups: [lamina.dev]
        resources: [functions]
        resourceNames: [hello]        # omit for every function of the namespace
        verbs: [invoke, get]

:class:`CachedAuthorizer` remembers answers briefly (allowed for ``allowed_ttl`` seconds, denied for
``denied_ttl``), at most ``max_size`` of them, so a warm call costs a dictionary lookup and a grant or
revocation takes effect within seconds.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import Protocol

from lamina.auth.decisions import TtlCache
from lamina.auth.identity import Identity

GROUP = "lamina.dev"
RESOURCE = "functions"


class Authorizer(Protocol):
    async def allowed(self, identity: Identity, verb: str, namespace: str | None, name: str | None) -> bool:
        """``namespace`` None: every namespace (a cluster-wide ``list``); ``name`` None: any function."""
        ...


class AllowAll:
    """Authentication without authorization (every authenticated caller may do everything)."""

    async def allowed(self, identity: Identity, verb: str, namespace: str | None, name: str | None) -> bool:
        return True


class LocalAuthorizer:
    """``lamina local --auth``: a key may use the functions its ``functions`` patterns name
    (``hello``, ``orders-*``, ``team-b.*``; ``*`` for all), with every verb; the key from the
    environment has them all. ``default_namespace`` is how plain names are written."""

    def __init__(self, default_namespace: str = "default") -> None:
        self.default_namespace = default_namespace

    def _name(self, namespace: str, name: str) -> str:
        return name if namespace == self.default_namespace else f"{namespace}.{name}"

    async def allowed(self, identity: Identity, verb: str, namespace: str | None, name: str | None) -> bool:
        patterns: Sequence[str] = identity.functions if identity.functions is not None else ("*",)
        if "*" in patterns:
            return True
        if name is None:
            # Listing everything needs "*"; otherwise ListFunctions shows each function the key may use.
            return False
        full = self._name(namespace or self.default_namespace, name)
        return any(fnmatch.fnmatchcase(full, p) for p in patterns)


class CachedAuthorizer:
    """Decisions of ``inner`` remembered briefly (see the module's docs)."""

    def __init__(
        self, inner: Authorizer, allowed_ttl: float = 10.0, denied_ttl: float = 2.0, max_size: int = 10_000
    ) -> None:
        self.inner = inner
        self.cache: TtlCache[bool] = TtlCache(lambda ok: allowed_ttl if ok else denied_ttl, max_size)

    def decided(self, identity: Identity, verb: str, namespace: str | None, name: str | None) -> bool | None:
        """The remembered decision, if there is a fresh one (without awaiting anything)."""
        return self.cache.peek((identity, verb, namespace, name))

    async def allowed(self, identity: Identity, verb: str, namespace: str | None, name: str | None) -> bool:
        key = (identity, verb, namespace, name)
        found = self.cache.peek(key)
        if found is not None:
            return found
        return await self.cache.get(key, lambda: self.inner.allowed(identity, verb, namespace, name))

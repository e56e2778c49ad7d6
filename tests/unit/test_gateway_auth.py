"""The gateway's authorization step (lamina.gateway.auth.GatewayAuth): cached RBAC decisions are read
without asking again, misses and denials go to the authorizer, and a FunctionName's namespace is
worked out once per name."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from lamina.auth.authenticator import Authenticator
from lamina.auth.authorizer import CachedAuthorizer
from lamina.auth.identity import Identity
from lamina.gateway import auth as gateway_auth
from lamina.gateway.auth import GatewayAuth
from lamina.gateway.registry import FunctionRegistry
from lamina.invocation.errors import AccessDenied

ALICE = Identity(user="alice", groups=("devs",))


class Rbac:
    """An authorizer that answers from a set of (user, verb, namespace, name) and counts questions."""

    def __init__(self, grants: set[tuple[str, str, str | None, str | None]]) -> None:
        self.grants = grants
        self.asked: list[tuple[str, str, str | None, str | None]] = []

    async def allowed(self, identity: Identity, verb: str, namespace: str | None, name: str | None) -> bool:
        self.asked.append((identity.user, verb, namespace, name))
        return (identity.user, verb, namespace, name) in self.grants


def gateway(rbac: Rbac) -> GatewayAuth:
    return GatewayAuth(Authenticator(lambda sig: None, "us-east-1"), CachedAuthorizer(rbac))


def test_a_cached_decision_is_not_asked_again_and_a_denial_names_the_function() -> None:
    rbac = Rbac({("alice", "invoke", "team-a", "hello")})
    auth = gateway(rbac)

    async def run() -> None:
        await auth.check(ALICE, "invoke", "team-a", "hello")
        await auth.check(ALICE, "invoke", "team-a", "hello")
        with pytest.raises(AccessDenied) as denied:
            await auth.check(ALICE, "invoke", "team-a", "other")
        assert "not authorized to perform: lambda:InvokeFunction" in denied.value.message
        assert "'other' in namespace 'team-a'" in denied.value.message
        with pytest.raises(AccessDenied):  # a denial is remembered too (briefly)
            await auth.check(ALICE, "invoke", "team-a", "other")

    asyncio.run(run())
    assert rbac.asked == [("alice", "invoke", "team-a", "hello"), ("alice", "invoke", "team-a", "other")]


def test_a_grant_takes_effect_once_the_denial_expires() -> None:
    rbac = Rbac(set())
    auth = GatewayAuth(
        Authenticator(lambda sig: None, "us-east-1"), CachedAuthorizer(rbac, allowed_ttl=10, denied_ttl=0)
    )

    async def run() -> None:
        with pytest.raises(AccessDenied):
            await auth.check(ALICE, "invoke", "default", "hello")
        rbac.grants.add(("alice", "invoke", "default", "hello"))
        await auth.check(ALICE, "invoke", "default", "hello")

    asyncio.run(run())


def test_a_function_name_designates_its_namespace_once_per_name(monkeypatch: Any) -> None:
    registry = FunctionRegistry([], default_namespace="team-a")
    auth = gateway(Rbac(set()))
    calls = []
    original = gateway_auth._namespace_and_name
    monkeypatch.setattr(gateway_auth, "_namespace_and_name", lambda r, n: calls.append(n) or original(r, n))
    arn = "arn:aws:lambda:us-east-1:123456789012:function:team-b.orders:prod"
    assert auth.target(registry, "hello") == ("team-a", "hello")
    assert auth.target(registry, "hello:live") == ("team-a", "hello")
    assert auth.target(registry, arn) == ("team-b", "orders")
    assert auth.target(registry, "bad name!") is None  # the handler answers a malformed name
    assert auth.target(registry, "hello") == ("team-a", "hello")
    assert calls == ["hello", "hello:live", arn, "bad name!"]
    monkeypatch.setattr(gateway_auth, "MAX_TARGETS", 2)
    auth.target(registry, "one")
    assert len(auth.targets) == 2

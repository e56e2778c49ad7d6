"""The Secrets the operator writes: each function's own (invoke secret, execution credentials) and each
mapping's. It may create Secrets but neither read nor patch them (docs/security.md), so every one is
named after its content and created once."""

from __future__ import annotations

from typing import Any

from lamina.api import Function
from lamina.auth.credentials import function_secret_values
from lamina.reconcilers.client import Conflict, KubeApi
from lamina.reconcilers.status import FIELD_MANAGER


def secret_values(settings: Any, fn: Function) -> dict[str, str] | None:
    """The derived secrets of ``fn`` as its spec says (a published version's spec may name another
    ServiceAccount than $LATEST's); None without an installation key."""
    if settings.auth_key is None:
        return None
    account = fn.spec.service_account_name or "default"
    return function_secret_values(settings.auth_key, fn.metadata.namespace, fn.name, account)


def create_once(kube: KubeApi, obj: dict[str, Any]) -> None:
    """Create an object whose name says its content: one that exists already is the same, and the
    operator may not read Secrets to compare anyway."""
    try:
        kube.create(obj, field_manager=FIELD_MANAGER)
    except Conflict:
        pass

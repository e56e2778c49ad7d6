"""Who a request comes from, once authenticated."""

from __future__ import annotations

from dataclasses import dataclass

SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"


@dataclass(frozen=True, slots=True)
class Identity:
    """A Kubernetes user (what RBAC decides for) and, in local mode, what the key may reach.

    ``functions`` are FunctionName patterns a local key may use (``None``: no local limit, RBAC
    decides in a cluster; ``("*",)``: every function)."""

    user: str
    groups: tuple[str, ...] = ()
    uid: str = ""
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()
    functions: tuple[str, ...] | None = None

    def describe(self) -> str:
        return self.user


def service_account(namespace: str, name: str) -> Identity:
    """The identity a ServiceAccount's token authenticates as (with the groups the API server adds)."""
    return Identity(
        user=f"{SERVICE_ACCOUNT_PREFIX}{namespace}:{name}",
        groups=("system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"),
    )


def parse_service_account(text: str) -> Identity:
    """``namespace/name`` or ``system:serviceaccount:namespace:name``."""
    body = text.removeprefix(SERVICE_ACCOUNT_PREFIX)
    namespace, sep, name = body.replace(":", "/", 1).partition("/")
    if not sep or not namespace or not name:
        raise ValueError(f"a ServiceAccount is namespace/name, got {text!r}")
    return service_account(namespace, name)

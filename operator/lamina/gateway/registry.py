"""Name resolution: boto3 may send a plain name, a partial or a full ARN, with an optional qualifier."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from lamina.api.versions import Route
from lamina.environments.base import LATEST, FunctionConfig, function_arn
from lamina.gateway.errors import InvalidParameterValue, ValidationError
from lamina.invocation.errors import FunctionNotFound

LATEST_PUBLISHED = "$LATEST.PUBLISHED"
#: Lambda's FunctionName pattern, loosened only in the region (ARNs of other tools may name any region).
FUNCTION_NAME = re.compile(
    r"(arn:(aws[a-zA-Z-]*)?:lambda:([a-z0-9-]+:)?(\d{12}:)?function:|(\d{12}:)?function:)?"
    r"[a-zA-Z0-9._-]+(:(\$LATEST|[a-zA-Z0-9_-]+))?"
)
FUNCTION_NAME_MAX = 256
QUALIFIER = re.compile(r"\$LATEST|[a-zA-Z0-9$_-]{1,128}")


def check_function_name(raw: str) -> None:
    """Refuse what Lambda's API refuses before looking anything up (an ARN of another service, odd
    characters), in AWS's ValidationException shape."""
    if len(raw) > FUNCTION_NAME_MAX:
        raise ValidationError(
            "functionName", raw, f"Member must have length less than or equal to {FUNCTION_NAME_MAX}"
        )
    if not FUNCTION_NAME.fullmatch(raw):
        raise ValidationError(
            "functionName", raw, f"Member must satisfy regular expression pattern: {FUNCTION_NAME.pattern}"
        )


@dataclass(frozen=True, slots=True)
class Target:
    """What one invocation runs: the version's config, and the ARN the caller named (context's
    ``invoked_function_arn``; an alias ARN when called through an alias)."""

    config: FunctionConfig
    invoked_arn: str
    alias: str | None = None

    @property
    def executed_version(self) -> str:
        return self.config.version


def split_function_name(raw: str, qualifier: str | None = None) -> tuple[str, str | None]:
    """Return (name, qualifier) from `name`, `name:qual`, `acct:function:name[:qual]` or a full ARN."""
    check_function_name(raw)
    if qualifier and not QUALIFIER.fullmatch(qualifier):
        raise ValidationError(
            "qualifier", qualifier, f"Member must satisfy regular expression pattern: {QUALIFIER.pattern}"
        )
    parts = raw.split(":")
    if raw.startswith("arn:"):
        if len(parts) < 7 or parts[5] != "function":
            raise InvalidParameterValue(f"Invalid function ARN: {raw}")
        name, qual = parts[6], (parts[7] if len(parts) > 7 else None)
    elif len(parts) >= 3 and parts[1] == "function":
        name, qual = parts[2], (parts[3] if len(parts) > 3 else None)
    elif len(parts) == 2:
        name, qual = parts
    else:
        name, qual = raw, None
    if qual and qualifier and qual != qualifier:
        raise InvalidParameterValue(
            "The derived qualifier from the function name does not match the specified qualifier."
        )
    return name, qual or qualifier


class FunctionRegistry:
    """The functions a gateway serves.

    A plain name means a Function in the default namespace; `namespace.name` names another one
    (Kubernetes names are DNS labels, so the dot is unambiguous, and boto3 sends it unchanged).
    """

    def __init__(
        self, functions: list[FunctionConfig] | None = None, default_namespace: str = "default"
    ) -> None:
        self.default_namespace = default_namespace
        self._by_key: dict[str, FunctionConfig] = {}
        self.replace(functions or [])

    def replace(self, functions: list[FunctionConfig]) -> None:
        self._by_key = {f.key: f for f in functions}
        self._debt: dict[tuple[str, str, Route], float] = {}

    def _draw(self, key: str, alias: str, route: Route) -> str:
        """The version one invocation of a weighted alias runs. Random, as on Lambda, but with the
        shortfall carried over (randomised rounding): the additional version's count never strays
        more than two calls from ``calls * weight``, so a 10 % canary gets 10 % even over few calls."""
        if not route.additional:
            return route.primary
        slot = (key, alias, route)
        debt = self._debt.get(slot, 0.0) + route.weight
        pick = route.primary
        if random.random() < debt:
            debt -= 1.0
            pick = route.additional
        self._debt[slot] = debt
        return pick

    def all(self) -> list[FunctionConfig]:
        return list(self._by_key.values())

    def environments(self) -> list[FunctionConfig]:
        """Every config that has environments of its own: each $LATEST and each published version."""
        return [c for fn in self._by_key.values() for c in fn.with_versions()]

    def get(self, key: str) -> FunctionConfig | None:
        return self._by_key.get(key)

    def key_of(self, name: str) -> str:
        namespace, dot, short = name.partition(".")
        return f"{namespace}/{short}" if dot else f"{self.default_namespace}/{name}"

    def name_of(self, fn: FunctionConfig) -> str:
        """The FunctionName that reaches ``fn`` (the inverse of :meth:`key_of`)."""
        return fn.name if fn.namespace == self.default_namespace else f"{fn.namespace}.{fn.name}"

    def resolve(self, raw: str, qualifier: str | None = None) -> FunctionConfig:
        """The config a name (and qualifier) runs; an alias picks one of its versions by weight."""
        return self.route(raw, qualifier).config

    def route(self, raw: str, qualifier: str | None = None) -> Target:
        name, qual = split_function_name(raw, qualifier)
        return self.route_key(self.key_of(name), qual, name)

    def route_key(self, key: str, qualifier: str | None, name: str | None = None) -> Target:
        """Like :meth:`route` for a "namespace/name" key; raises ResourceNotFoundException (404) for an
        unknown function, version or alias."""
        fn = self._by_key.get(key)
        shown = name or key.partition("/")[2]
        if fn is not None:
            if not qualifier or qualifier == LATEST:
                return Target(fn, function_arn(shown, qualifier))
            arn = function_arn(shown, qualifier)
            version = fn.versions.get(qualifier)
            if version is not None:
                return Target(version, arn)
            route = fn.routes.get(qualifier)
            if route is not None:
                pick = self._draw(key, qualifier, route)
                chosen = fn if pick == LATEST else fn.versions.get(pick)
                if chosen is not None:
                    return Target(chosen, arn, alias=qualifier)
            if qualifier == LATEST_PUBLISHED and fn.versions:
                return Target(fn.versions[max(fn.versions, key=int)], arn)
        raise FunctionNotFound(f"Function not found: {function_arn(shown, qualifier)}")

"""Name resolution: boto3 may send a plain name, a partial or a full ARN, with an optional qualifier."""

from __future__ import annotations

import re

from lamina.environments.base import FunctionConfig, function_arn
from lamina.gateway.errors import InvalidParameterValue, ValidationError
from lamina.invocation.errors import FunctionNotFound

SUPPORTED_QUALIFIERS = {None, "", "$LATEST"}
#: Lambda's FunctionName pattern, loosened only in the region (lamina's own ARNs say "local").
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

    def all(self) -> list[FunctionConfig]:
        return list(self._by_key.values())

    def get(self, key: str) -> FunctionConfig | None:
        return self._by_key.get(key)

    def key_of(self, name: str) -> str:
        namespace, dot, short = name.partition(".")
        return f"{namespace}/{short}" if dot else f"{self.default_namespace}/{name}"

    def name_of(self, fn: FunctionConfig) -> str:
        """The FunctionName that reaches ``fn`` (the inverse of :meth:`key_of`)."""
        return fn.name if fn.namespace == self.default_namespace else f"{fn.namespace}.{fn.name}"

    def resolve(self, raw: str, qualifier: str | None = None) -> FunctionConfig:
        name, qual = split_function_name(raw, qualifier)
        fn = self._by_key.get(self.key_of(name))
        if fn is None or qual not in SUPPORTED_QUALIFIERS:
            raise FunctionNotFound(f"Function not found: {function_arn(name, qual)}")
        return fn

"""Access keys: which secret signs for an access key id, and whose identity it is.

- :class:`KeyTable`: keys known by id (local mode's environment key and keys file; in a cluster, the
  Secrets :mod:`lamina.auth.kube` watches).
- Execution credentials (:mod:`lamina.auth.credentials`) carry their claims in the session token and
  are recomputed from the installation key; :class:`ExecutionKeys` checks that the function they name
  still exists and still runs as that ServiceAccount.

The keys file of ``lamina local --auth --keys-file`` (YAML)::

    keys:
      - accessKeyId: AKIAEXAMPLECI
        secretAccessKey: ...
        functions: [hello, "orders-*"]     # FunctionName patterns; "*" for all (the default)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lamina.auth.credentials import ExecutionClaims, verify_session_token
from lamina.auth.errors import ExpiredToken
from lamina.auth.identity import Identity, service_account
from lamina.auth.sigv4 import Signature


@dataclass(frozen=True, slots=True)
class AccessKey:
    access_key_id: str
    secret_access_key: str
    identity: Identity

    def __repr__(self) -> str:  # never print a secret by accident
        return f"AccessKey({self.access_key_id!r}, {self.identity.user!r})"


class KeyTable:
    """Access keys by id; replaced as a whole (a watch's new state, a file read again)."""

    def __init__(self, keys: list[AccessKey] | None = None) -> None:
        self._keys: dict[str, AccessKey] = {}
        self.replace(keys or [])

    def replace(self, keys: list[AccessKey]) -> None:
        self._keys = {k.access_key_id: k for k in keys}

    def put(self, key: AccessKey) -> None:
        self._keys[key.access_key_id] = key

    def remove(self, access_key_id: str) -> None:
        self._keys.pop(access_key_id, None)

    def __len__(self) -> int:
        return len(self._keys)

    def lookup(self, sig: Signature) -> tuple[str, Identity] | None:
        if sig.session_token:
            return None  # long-term keys sign without a session token
        found = self._keys.get(sig.access_key)
        return None if found is None else (found.secret_access_key, found.identity)


class ExecutionKeys:
    """Execution credentials of functions (session tokens made with the installation key).

    ``current_account(namespace, function)`` is the ServiceAccount the function runs as now, or None
    when it does not exist: credentials of a deleted function, or of one whose account changed, no
    longer work."""

    def __init__(
        self,
        key: bytes,
        current_account: Callable[[str, str], str | None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.key = key
        self.current_account = current_account
        self.clock = clock

    def lookup(self, sig: Signature) -> tuple[str, Identity] | None:
        if not sig.session_token:
            return None
        found = verify_session_token(self.key, sig.session_token)
        if found is None:
            return None
        claims, creds = found
        if creds.access_key_id != sig.access_key:
            return None
        if claims.expires is not None and claims.expires < self.clock():
            raise ExpiredToken()
        if self.current_account(claims.namespace, claims.function) != claims.service_account:
            return None
        return creds.secret_access_key, function_identity(claims)


def function_identity(claims: ExecutionClaims) -> Identity:
    """A function's execution identity: its ServiceAccount, as its pods' tokens would say."""
    return service_account(claims.namespace, claims.service_account)


def lookups(*tables: Any) -> Callable[[Signature], tuple[str, Identity] | None]:
    """One lookup over several key sources, the first that knows the key answering."""

    def lookup(sig: Signature) -> tuple[str, Identity] | None:
        for table in tables:
            found = table.lookup(sig)
            if found is not None:
                return found
        return None

    return lookup


class KeysFileError(ValueError):
    pass


def load_keys_file(path: Path) -> list[AccessKey]:
    """The keys of a ``--keys-file`` (see the module's docs); every problem named with its entry."""
    import yaml

    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise KeysFileError(f"{path}: {exc}") from None
    entries = doc.get("keys") if isinstance(doc, Mapping) else None
    if not isinstance(entries, list):
        raise KeysFileError(f"{path}: expected a top-level 'keys:' list")
    keys, problems, seen = [], [], set()
    for i, entry in enumerate(entries):
        where = f"{path}: keys[{i}]"
        if not isinstance(entry, Mapping):
            problems.append(f"{where}: expected an object")
            continue
        key_id, secret = entry.get("accessKeyId"), entry.get("secretAccessKey")
        functions = entry.get("functions", ["*"])
        if not isinstance(key_id, str) or not key_id:
            problems.append(f"{where}.accessKeyId: is required")
        elif key_id in seen:
            problems.append(f"{where}.accessKeyId: {key_id} appears twice")
        if not isinstance(secret, str) or not secret:
            problems.append(f"{where}.secretAccessKey: is required")
        if not isinstance(functions, list) or not all(isinstance(f, str) and f for f in functions):
            problems.append(f"{where}.functions: must be a list of FunctionName patterns")
        unknown = sorted(set(entry) - {"accessKeyId", "secretAccessKey", "functions", "name"})
        if unknown:
            problems.append(f"{where}: unknown field(s) {', '.join(unknown)}")
        if isinstance(key_id, str) and isinstance(secret, str) and isinstance(functions, list):
            seen.add(key_id)
            user = f"lamina-local:{entry.get('name') or key_id}"
            keys.append(AccessKey(key_id, secret, Identity(user=user, functions=tuple(functions))))
    if problems:
        raise KeysFileError("\n".join(problems))
    return keys

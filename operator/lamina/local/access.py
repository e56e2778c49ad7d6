"""Who may call `lamina local`: nobody is asked by default (the banner says so); with ``--auth`` every
call is SigV4-signed, as boto3 and the AWS CLI sign.

Keys: ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` of lamina local's own environment (full
access, so the usual AWS variables of a developer's shell just work), and more from ``--keys-file``,
each limited to the FunctionName patterns it lists (:mod:`lamina.auth.keys`). That list is local
mode's stand-in for RBAC: there is no cluster to ask, so a key carries what it may use, with every
verb (invoke, get; ListFunctions shows only those functions). Bearer tokens need a cluster and are
refused (UnrecognizedClientException).

Functions call lamina back with boto3 and the credentials in their environment, as a Lambda signs with
its execution role's. With ``--auth`` each function gets execution credentials
(:func:`lamina.auth.credentials.execution_credentials`) made with a key drawn at start-up and held only
by this process: they act as the function's execution identity, which local mode, having no RBAC,
lets call every function (as the environment's key may). They stop working when lamina local stops.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from lamina.auth.authenticator import Authenticator
from lamina.auth.authorizer import LocalAuthorizer
from lamina.auth.credentials import ExecutionClaims, execution_credentials
from lamina.auth.identity import Identity
from lamina.auth.keys import AccessKey, ExecutionKeys, KeysFileError, KeyTable, load_keys_file, lookups
from lamina.environments.base import FunctionConfig
from lamina.gateway.auth import GatewayAuth
from lamina.resources.runtime_env import CREDENTIAL_VARIABLES

ENVIRONMENT_USER = "lamina-local:environment"
OFF = "  auth: off: anyone who reaches this port may call every function (--auth to require SigV4)"


class AuthSetupError(Exception):
    """--auth was asked for but cannot be set up (no key, a bad keys file)."""


def region_of(environ: Mapping[str, str]) -> str:
    return environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or "us-east-1"


#: ``account(namespace, name)``: the ServiceAccount a function local mode serves acts as, or None when
#: it serves no such function.
AccountLookup = Callable[[str, str], "str | None"]


@dataclass(frozen=True)
class LocalAccess:
    """Local mode's auth: the gateway's check (None when off), the banner's line about it, and the key
    that makes the functions' execution credentials (None when off)."""

    auth: GatewayAuth | None
    line: str
    execution_key: bytes | None = None

    def credentials(self, fn: FunctionConfig) -> dict[str, str] | None:
        """The AWS_* variables of ``fn``'s environments: its execution credentials with auth on, else
        None (the placeholders of lamina.resources.runtime_env, which nobody checks)."""
        if self.execution_key is None:
            return None
        if CREDENTIAL_VARIABLES & set(fn.environment):
            return {}  # the function signs with credentials of its own: none of ours mixed in
        claims = ExecutionClaims(fn.namespace, fn.name, fn.execution_account)
        return execution_credentials(self.execution_key, claims).environment()


def local_auth(
    enabled: bool,
    keys_file: Path | None,
    environ: Mapping[str, str] | None = None,
    account: AccountLookup | None = None,
) -> LocalAccess:
    """Local mode's auth (see the module's docs). ``account`` tells which functions exist, for their
    execution credentials (without it, none are accepted)."""
    if not enabled:
        if keys_file is not None:
            raise AuthSetupError("--keys-file needs --auth")
        return LocalAccess(None, OFF)
    environ = os.environ if environ is None else environ
    keys: list[AccessKey] = []
    key_id, secret = environ.get("AWS_ACCESS_KEY_ID"), environ.get("AWS_SECRET_ACCESS_KEY")
    if key_id and secret:
        keys.append(AccessKey(key_id, secret, Identity(user=ENVIRONMENT_USER, functions=("*",))))
    if keys_file is not None:
        try:
            from_file = load_keys_file(keys_file)
        except KeysFileError as exc:
            raise AuthSetupError(str(exc)) from None
        clash = {k.access_key_id for k in from_file} & {k.access_key_id for k in keys}
        if clash:
            raise AuthSetupError(f"{keys_file}: {', '.join(sorted(clash))} is also AWS_ACCESS_KEY_ID")
        keys += from_file
    if not keys:
        raise AuthSetupError(
            "--auth needs a key: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or give --keys-file"
        )
    region = region_of(environ)
    table = KeyTable(keys)
    execution_key = secrets.token_bytes(32)
    executions = ExecutionKeys(execution_key, account or (lambda namespace, name: None))
    auth = GatewayAuth(Authenticator(lookups(table, executions), region), LocalAuthorizer())
    sources = []
    if key_id and secret:
        sources.append(f"{key_id} from the environment (every function)")
    if keys_file is not None:
        sources.append(f"{len(keys) - (1 if key_id and secret else 0)} from {keys_file}")
    return LocalAccess(auth, f"  auth: SigV4 in {region}, keys: {'; '.join(sources)}", execution_key)

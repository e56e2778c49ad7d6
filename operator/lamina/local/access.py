"""Who may call `lamina local`: nobody is asked by default (the banner says so); with ``--auth`` every
call is SigV4-signed, as boto3 and the AWS CLI sign.

Keys: ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` of lamina local's own environment (full
access, so the usual AWS variables of a developer's shell just work), and more from ``--keys-file``,
each limited to the FunctionName patterns it lists (:mod:`lamina.auth.keys`). That list is local
mode's stand-in for RBAC: there is no cluster to ask, so a key carries what it may use, with every
verb (invoke, get; ListFunctions shows only those functions). Bearer tokens need a cluster and are
refused (UnrecognizedClientException).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from lamina.auth.authenticator import Authenticator
from lamina.auth.authorizer import LocalAuthorizer
from lamina.auth.identity import Identity
from lamina.auth.keys import AccessKey, KeysFileError, KeyTable, load_keys_file
from lamina.gateway.auth import GatewayAuth

ENVIRONMENT_USER = "lamina-local:environment"
OFF = "  auth: off: anyone who reaches this port may call every function (--auth to require SigV4)"


class AuthSetupError(Exception):
    """--auth was asked for but cannot be set up (no key, a bad keys file)."""


def region_of(environ: Mapping[str, str]) -> str:
    return environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def local_auth(
    enabled: bool, keys_file: Path | None, environ: Mapping[str, str] | None = None
) -> tuple[GatewayAuth | None, str]:
    """The gateway's auth for local mode (None when off) and the banner's line about it."""
    if not enabled:
        if keys_file is not None:
            raise AuthSetupError("--keys-file needs --auth")
        return None, OFF
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
    auth = GatewayAuth(Authenticator(table.lookup, region), LocalAuthorizer())
    sources = []
    if key_id and secret:
        sources.append(f"{key_id} from the environment (every function)")
    if keys_file is not None:
        sources.append(f"{len(keys) - (1 if key_id and secret else 0)} from {keys_file}")
    return auth, f"  auth: SigV4 in {region}, keys: {'; '.join(sources)}"

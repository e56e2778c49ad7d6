"""Who is calling: a SigV4 signature (access keys, execution credentials) or a Kubernetes bearer token."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from lamina.auth import sigv4
from lamina.auth.errors import UnrecognizedClient
from lamina.auth.identity import Identity

KeyLookup = Callable[[sigv4.Signature], "tuple[str, Identity] | None"]


class TokenReviewer(Protocol):
    async def review(self, token: str) -> Identity | None:
        """The identity a bearer token authenticates as, or None when it does not."""
        ...


class Authenticator:
    """SigV4 first (as boto3 and the AWS CLI sign), ``Authorization: Bearer <token>`` for callers
    inside the cluster when ``tokens`` is given. Raises the AWS error that says what is wrong."""

    def __init__(
        self,
        lookup: KeyLookup,
        region: str,
        tokens: TokenReviewer | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.lookup = lookup
        self.region = region
        self.tokens = tokens
        self.clock = clock

    async def authenticate(
        self,
        method: str,
        raw_path: str,
        headers: sigv4.Headers,
        body: bytes,
        allow_unsigned_payload: bool = False,
    ) -> Identity:
        authorization = headers.get("Authorization")
        if authorization is not None and authorization[:7].lower() == "bearer ":
            token = authorization[7:].strip()
            identity = await self.tokens.review(token) if self.tokens is not None and token else None
            if identity is None:
                raise UnrecognizedClient()
            return identity
        return sigv4.verify(
            method,
            raw_path,
            headers,
            body,
            self.lookup,
            region=self.region,
            now=self.clock(),
            allow_unsigned_payload=allow_unsigned_payload,
        )

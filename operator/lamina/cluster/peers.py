"""Gateway replicas forward each function's calls to the one replica that serves it.

:class:`PeerRouter` is the service's router: for a function this replica serves (it holds the
function's Lease, :mod:`lamina.cluster.leases`) the call stays here; otherwise it goes, once parsed,
authenticated and checked, to ``POST /_lamina/peer/invoke/{namespace}/{name}`` of the replica that
does, in the runtime protocol's own encoding (the ``Lamina-*`` headers), and that replica throttles,
routes and accounts it as its own. Its answer comes back as it was: a result, or a Lambda error whose
status, type and body the caller sees unchanged (a 429 stays a ThrottledError, so the async dispatcher
still backs off instead of counting an attempt).

Replicas prove themselves to each other with a shared token (``LAMINA_GATEWAY_PEER_TOKEN``, a Secret
the chart makes): the peer endpoint runs functions without the caller's own authorization.

Faults: a holder that refuses connections (its process is gone) is asked again until its Lease expires
and a live replica takes the function over, within the cold-start bound; a holder lost after the call
reached it fails the call with Lambda's ``ServiceException``, never a hang and never a second run.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import uuid
from typing import Any

from aiohttp import web
from kubernetes.client.exceptions import ApiException

from lamina.cluster.leases import FunctionLeases, Stopping
from lamina.environments.base import LATEST, FunctionConfig
from lamina.environments.pod_client import Broken, PodClient, Refused
from lamina.gateway.drain import Drain
from lamina.gateway.errors import ServiceError
from lamina.gateway.service import InvocationService
from lamina.invocation.errors import RESERVED_LIMIT, FunctionNotFound, LambdaServiceError, ThrottledError
from lamina_runtime.protocol import (
    InvocationRequest,
    InvocationResult,
    decode_request,
    decode_result,
    encode_request,
    encode_result,
)

log = logging.getLogger(__name__)

PEER_PATH = "/_lamina/peer/invoke"
TOKEN_HEADER = "Lamina-Peer-Token"
#: Answered by a replica asked to run a function it does not serve (its Lease moved): ask again.
NOT_HOLDER_HEADER = "Lamina-Not-Holder"
#: Gap between attempts to reach a holder that refuses connections (until its Lease expires).
RETRY_S = 0.25


class PeerRouter:
    """Keeps a function's calls on the replica that holds its Lease."""

    def __init__(
        self, leases: FunctionLeases, token: str, bound: float, client: PodClient | None = None
    ) -> None:
        self.leases = leases
        self.token = token
        #: Longest a call waits for a live holder (the gateway's cold-start bound).
        self.bound = bound
        self.client = client or PodClient()

    def abandon(self) -> None:
        """The gateway is stopping: a cut call stops waiting for the holder's reply (PodClient.abandon)."""
        self.client.abandon()

    async def forward(self, fn: FunctionConfig, request: InvocationRequest) -> InvocationResult | None:
        if self.leases.take_call(fn):
            return None  # the hot path: no API call, no hop
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.bound
        while True:
            try:
                holder = await self.leases.owner(fn)
            except ApiException as exc:
                raise ServiceError(
                    f"cannot tell which gateway replica serves {fn.name}: {exc.reason}"
                ) from None
            except Stopping as exc:  # never ran: the SDK sends it again, to a live replica
                raise ServiceError(str(exc)) from None
            if holder is None and self.leases.take_call(fn):
                return None
            if holder is None:  # taken and lost at once (a renewal raced it): ask again
                holder, why = "this replica", "lost its Lease as it took it"
            else:
                try:
                    return await self._post(holder, fn, request)
                except Refused:
                    why = "refused the connection"
                except _NotHolder:
                    why = "no longer serves it"
            self.leases.forget(fn)
            if loop.time() >= deadline:
                raise ServiceError(
                    f"the gateway replica serving {fn.name} ({holder}) {why}, and no other took it over "
                    f"within {self.bound:.0f} s"
                )
            await asyncio.sleep(RETRY_S)

    async def _post(self, holder: str, fn: FunctionConfig, request: InvocationRequest) -> InvocationResult:
        headers = encode_request(request)
        headers[TOKEN_HEADER] = self.token
        path = f"{PEER_PATH}/{fn.namespace}/{fn.name}?version={fn.version}"
        # The holder may hold the call for a cold start, then the function runs up to its timeout.
        timeout = self.bound + fn.timeout_seconds + 30
        try:
            reply = await self.client.request(holder, "POST", path, headers, request.payload, timeout)
        except Broken as exc:
            raise ServiceError(
                f"the gateway replica serving {fn.name} ({holder}) was lost during the call: {exc}"
            ) from None
        if reply.status == 200:
            return decode_result(request.request_id, reply.headers, reply.body)
        if NOT_HOLDER_HEADER.lower() in reply.headers:
            raise _NotHolder
        raise remote_error(reply.status, reply.headers, reply.body)


class _NotHolder(Exception):
    pass


def remote_error(status: int, headers: dict[str, str], body: bytes) -> LambdaServiceError:
    """The holder's error as the class this replica would have raised itself."""
    try:
        doc: dict[str, Any] = json.loads(body)
    except ValueError:
        doc = {}
    message = str(doc.get("message") or doc.get("Message") or body[:200].decode(errors="replace"))
    code = headers.get("x-amzn-errortype", "ServiceException")
    if status == 429:
        return ThrottledError(str(doc.get("Reason") or RESERVED_LIMIT))
    if status == 404 and code == FunctionNotFound.code:
        return FunctionNotFound(message)
    extra = {k: v for k, v in doc.items() if k not in ("Type", "message", "Message")}
    error = LambdaServiceError(message, **extra)
    error.status, error.code = status, code
    error.error_type = str(doc.get("Type") or error.error_type)
    return error


def add_peer_routes(
    app: web.Application,
    service: InvocationService,
    leases: FunctionLeases,
    token: str,
    drain: Drain | None = None,
) -> None:
    """``POST /_lamina/peer/invoke/{namespace}/{name}``: a call another replica forwards here. While
    this replica stops (``drain``), a forwarded call that was not running yet is answered "not the
    holder", so the forwarding replica asks the function's next holder; one cut at the end of the grace
    gets ServiceException, which the forwarding replica passes on."""
    if drain is not None:
        drain.answer(PEER_PATH, refused=lambda request, reason: _not_holder())

    async def handle(request: web.Request) -> web.Response:
        if not hmac.compare_digest(request.headers.get(TOKEN_HEADER, "").encode(), token.encode()):
            return web.json_response({"message": "not a gateway replica"}, status=403)
        key = f"{request.match_info['namespace']}/{request.match_info['name']}"
        fn = service.registry.get(key)
        version = request.query.get("version", LATEST)
        if fn is not None and version != LATEST:
            fn = fn.versions.get(version)
        if fn is None:
            return _error(FunctionNotFound(f"Function not found: {key}:{version}"))
        # Read before the Lease is checked: from the check to the limiter's count nothing may wait
        # (a stopping replica gives back the Leases of functions that no call runs for).
        body = await request.read()
        try:
            if await leases.owner(fn) is not None or not leases.take_call(fn):
                return _not_holder()
        except ApiException as exc:
            return _error(ServiceError(f"cannot tell which gateway replica serves {fn.name}: {exc.reason}"))
        except Stopping:
            return _not_holder()
        invocation = decode_request(request.headers, body, lambda: str(uuid.uuid4()))
        try:
            result = await service.invoke_here(fn, invocation)
        except LambdaServiceError as exc:
            return _error(exc)
        except Exception as exc:  # the platform failed here: the caller's replica answers Lambda's 500
            log.exception("forwarded invocation %s failed in the platform", invocation.request_id)
            return _error(ServiceError(f"{type(exc).__name__}: {exc}"))
        return web.Response(status=200, body=result.payload, headers=encode_result(result))

    app.router.add_post(PEER_PATH + "/{namespace}/{name}", handle)


def _not_holder() -> web.Response:
    return web.json_response({"message": "not the holder"}, status=503, headers={NOT_HOLDER_HEADER: "1"})


def _error(exc: LambdaServiceError) -> web.Response:
    return web.Response(status=exc.status, body=exc.body(), headers=exc.headers())

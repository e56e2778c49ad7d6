"""Authentication and authorization of the gateway's routes (an aiohttp middleware).

Every route that reaches a function is authenticated (:class:`lamina.auth.authenticator.Authenticator`)
before anything about the function is looked up, so an unauthenticated caller learns nothing, not even
whether a function exists; then the caller's permission on the function named in the path is checked:
``invoke`` for the Invoke API and the HTTP trigger, ``get`` for the function APIs, ``list`` (per
namespace) for ListFunctions, which shows only what the caller may list. ``/healthz`` and
``/metrics`` stay open (probes, Prometheus).

Errors are Lambda's: ``MissingAuthenticationTokenException``, ``IncompleteSignatureException``,
``InvalidSignatureException``, ``UnrecognizedClientException``, ``AccessDeniedException``. The HTTP
trigger answers as a function URL with ``AuthType: AWS_IAM`` does: 403 ``{"Message": "Forbidden"}``.
The trigger also takes presigned URLs and ``UNSIGNED-PAYLOAD`` (SigV4 allows them where the payload
is streamed); the Invoke API needs the payload signed.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from lamina.auth.authenticator import Authenticator
from lamina.auth.authorizer import Authorizer, CachedAuthorizer
from lamina.auth.identity import Identity
from lamina.auth.sigv4 import Headers
from lamina.environments.base import FunctionConfig, function_arn
from lamina.gateway.errors import ServiceError
from lamina.gateway.invoke_api import SERVICE_KEY, error_response
from lamina.gateway.registry import FunctionRegistry, split_function_name
from lamina.gateway.url_trigger import platform_failed
from lamina.invocation.errors import AccessDenied, LambdaServiceError

log = logging.getLogger(__name__)

IDENTITY = "lamina.identity"
ACTIONS = {"invoke": "lambda:InvokeFunction", "get": "lambda:GetFunction", "list": "lambda:ListFunctions"}


@dataclass
class GatewayAuth:
    authenticator: Authenticator
    authorizer: Authorizer
    #: FunctionName as sent -> (namespace, function), or None when malformed: a pure function of the
    #: name (the registry's default namespace is fixed), remembered so a call does not split it twice.
    targets: dict[str, tuple[str, str] | None] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        # A cached decision is read without awaiting anything (most calls); only a miss asks RBAC.
        cached = self.authorizer if isinstance(self.authorizer, CachedAuthorizer) else None
        self._decided = cached.decided if cached is not None else None

    async def admit(
        self,
        registry: FunctionRegistry,
        method: str,
        raw_path: str,
        headers: Headers,
        body: bytes,
        verb: str,
        raw_name: str | None,
        trigger: bool = False,
    ) -> Identity:
        """The caller of a protected route, authenticated and allowed ``verb`` on the function named
        ``raw_name`` (if any); raises Lambda's error otherwise. The middleware's check, and the front
        door's for the Invoke API (lamina.gateway.front). A check the platform could not make (the
        API server unreachable for a TokenReview or SubjectAccessReview) is Lambda's ServiceException,
        which the SDKs retry, never an answer in another shape or none."""
        try:
            identity = await self.authenticator.authenticate(
                method, raw_path, headers, body, allow_unsigned_payload=trigger
            )
            if raw_name is not None:
                target = self.target(registry, raw_name)
                if target is not None:
                    await self.check(identity, verb, *target)
        except LambdaServiceError:
            raise
        except Exception as exc:
            log.exception("authentication or authorization failed in the platform")
            raise ServiceError(f"could not authorize the call: {type(exc).__name__}") from exc
        return identity

    async def check(self, identity: Identity, verb: str, namespace: str, name: str) -> None:
        allowed = self._decided(identity, verb, namespace, name) if self._decided is not None else None
        if allowed is None:
            allowed = await self.authorizer.allowed(identity, verb, namespace, name)
        if not allowed:
            arn = function_arn(name)
            raise AccessDenied(
                f"User: {identity.describe()} is not authorized to perform: {ACTIONS[verb]} on resource: "
                f"{arn} because no RBAC rule allows verb {verb} on functions.lamina.dev {name!r} in "
                f"namespace {namespace!r}"
            )

    def target(self, registry: FunctionRegistry, raw_name: str) -> tuple[str, str] | None:
        """The namespace and function a FunctionName designates (qualifier dropped), whether or not it
        exists; None when the name is malformed (the handler answers that)."""
        if raw_name in self.targets:
            return self.targets[raw_name]
        found = _namespace_and_name(registry, raw_name)
        while len(self.targets) >= MAX_TARGETS:
            del self.targets[next(iter(self.targets))]
        self.targets[raw_name] = found
        return found


AUTH_KEY = web.AppKey("auth", GatewayAuth)
MAX_TARGETS = 4096


def _route_kind(request: web.Request) -> tuple[str, str | None, bool] | None:
    """(verb, raw FunctionName or None, whether it is the HTTP trigger) of a protected route; None for
    open ones."""
    path = request.path
    info = request.match_info
    if path.startswith("/url/"):
        return "invoke", info.get("function"), True
    if path.startswith(("/2015-03-31/functions", "/2019-09-30/functions")):
        if path.endswith("/invocations") and request.method == "POST":
            return "invoke", info.get("name"), False
        return ("get", info["name"], False) if "name" in info else ("list", None, False)
    return None


def _forbidden(request_id: str) -> web.Response:
    return web.json_response(
        {"Message": "Forbidden"},
        status=403,
        headers={"x-amzn-RequestId": request_id, "x-amzn-ErrorType": "AccessDeniedException"},
    )


def auth_middleware(auth: GatewayAuth) -> Middleware:
    """The middleware that authenticates and authorizes with ``auth`` (bound here, not looked up in
    the app on every request)."""

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = _route_kind(request)
        if route is None:
            return await handler(request)
        verb, raw_name, trigger = route
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return await handler(request)  # answered with Lambda's size error, before anything is read
        registry = request.app[SERVICE_KEY].registry
        try:
            request[IDENTITY] = await auth.admit(
                registry, request.method, request.raw_path, request.headers, body, verb, raw_name, trigger
            )
        except ServiceError as exc:  # the platform failed, not the caller
            return (
                platform_failed(request, exc.message) if trigger else error_response(exc, str(uuid.uuid4()))
            )
        except LambdaServiceError as exc:
            request_id = str(uuid.uuid4())
            return _forbidden(request_id) if trigger else error_response(exc, request_id)
        return await handler(request)

    return authenticate


def _namespace_and_name(registry: FunctionRegistry, raw_name: str) -> tuple[str, str] | None:
    try:
        name, _ = split_function_name(raw_name)
    except LambdaServiceError:
        return None
    namespace, _, short = registry.key_of(name.partition(":")[0]).partition("/")
    return namespace, short


async def listable(request: web.Request, functions: Iterable[FunctionConfig]) -> list[FunctionConfig]:
    """The functions ListFunctions shows this caller: all of those in namespaces they may ``list``."""
    items = list(functions)
    auth = request.app.get(AUTH_KEY)
    identity = request.get(IDENTITY)
    if auth is None or identity is None:
        return items
    if await auth.authorizer.allowed(identity, "list", None, None):
        return items
    namespaces = {f.namespace for f in items}
    allowed = {ns for ns in namespaces if await auth.authorizer.allowed(identity, "list", ns, None)}
    out = []
    for fn in items:
        if fn.namespace in allowed or await auth.authorizer.allowed(identity, "get", fn.namespace, fn.name):
            out.append(fn)
    return out

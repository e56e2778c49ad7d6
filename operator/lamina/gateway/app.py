"""The gateway's aiohttp application: routes only; the work is in `service`."""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from lamina.gateway import functions_api
from lamina.gateway.auth import AUTH_KEY, GatewayAuth, auth_middleware
from lamina.gateway.drain import Drain
from lamina.gateway.errors import SYNC_PAYLOAD_LIMIT
from lamina.gateway.front import FRONT_KEY, Front
from lamina.gateway.invoke_api import SERVICE_KEY, handle_invoke
from lamina.gateway.service import InvocationService
from lamina.gateway.url_trigger import handle_url, platform_failed


async def handle_metrics(request: web.Request) -> web.Response:
    registry = request.app[SERVICE_KEY].metrics.registry
    return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def handle_health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def build_app(
    service: InvocationService, auth: GatewayAuth | None = None, drain: Drain | None = None
) -> web.Application:
    """The gateway's routes; with ``auth``, every route that reaches a function is authenticated and
    authorized (lamina.gateway.auth), without it anyone who reaches the port may call anything; with
    ``drain``, a stopping gateway answers every call it took (lamina.gateway.drain)."""
    middlewares: list[Middleware] = []
    if drain is not None:
        drain.answer("/url/", platform_failed, platform_failed)  # a function URL's own shape
        middlewares.append(drain.middleware)
    if auth is not None:
        middlewares.append(auth_middleware(auth))
    # Room above the 6 MB limit so an oversize body is answered with Lambda's error, not aiohttp's.
    app = web.Application(client_max_size=SYNC_PAYLOAD_LIMIT + 1024 * 1024, middlewares=middlewares)
    app[SERVICE_KEY] = service
    # The Invoke API's lean path (lamina.gateway.front), used when the app is served by FrontSite.
    app[FRONT_KEY] = Front(service, auth, drain)
    if auth is not None:
        app[AUTH_KEY] = auth
    app.router.add_post("/2015-03-31/functions/{name}/invocations", handle_invoke)
    functions_api.add_routes(app)
    app.router.add_route("*", "/url/{function}", handle_url)
    app.router.add_route("*", "/url/{function}/{tail:.*}", handle_url)
    app.router.add_get("/metrics", handle_metrics)
    app.router.add_get("/healthz", handle_health)
    return app

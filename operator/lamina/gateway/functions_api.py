"""The read side of Lambda's control-plane API: what `aws lambda list-functions` / `get-function` and
boto3's `list_functions`, `get_function` (with a Qualifier), `get_function_configuration`,
`get_function_concurrency`, `list_versions_by_function`, `list_aliases`, `get_alias` and
`get_provisioned_concurrency_config` ask.

Functions are declared as manifests, not created through this API, so only reads are served. The
environment's variables are left out of the configuration: the gateway has no IAM in front of it,
and they may come from Secrets.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

from lamina.environments.base import LATEST, FunctionConfig, function_arn
from lamina.gateway.auth import listable
from lamina.gateway.errors import InvalidParameterValue
from lamina.gateway.invoke_api import SERVICE_KEY, error_response
from lamina.gateway.registry import FunctionRegistry, Target
from lamina.invocation.errors import FunctionNotFound, LambdaServiceError

MAX_ITEMS = 50  # Lambda's page size for ListFunctions
NUMBER = re.compile(r"[0-9]{1,9}")


def configuration(fn: FunctionConfig, name: str) -> dict[str, object]:
    """A FunctionConfiguration as Lambda returns it, for what lamina knows of the function
    (``name``: the FunctionName that reaches it)."""
    custom = fn.runtime.startswith("provided")
    return {
        "FunctionName": name,
        "FunctionArn": fn.arn if fn.version == LATEST else function_arn(fn.name, fn.version),
        "Runtime": fn.runtime,
        "Handler": fn.handler,
        "MemorySize": fn.memory_mb,
        "Timeout": fn.timeout_seconds,
        "Version": fn.version,
        "CodeSha256": fn.code_sha256 or fn.revision,
        "PackageType": "Zip",
        "Architectures": ["x86_64"],
        "State": "Active",
        "LastUpdateStatus": "Successful",
        "Description": f"{fn.namespace}/{fn.name}" + (" (custom runtime)" if custom else ""),
    }


def _json(body: object, request_id: str) -> web.Response:
    return web.json_response(body, headers={"x-amzn-RequestId": request_id})


def _paging(request: web.Request) -> tuple[int, int]:
    """(start, size) from Lambda's Marker and MaxItems query parameters."""
    raw = request.query.get("MaxItems", str(MAX_ITEMS))
    # ASCII digits only, and few of them: str.isdigit() takes "²", and int() refuses 5000 digits.
    if not NUMBER.fullmatch(raw) or not 1 <= int(raw) <= 10_000:
        raise InvalidParameterValue(f"MaxItems must be between 1 and 10000 (got {raw[:64]!r})")
    marker = request.query.get("Marker", "")
    if marker and not NUMBER.fullmatch(marker):
        raise InvalidParameterValue(f"Invalid Marker: {marker[:64]!r}")
    return int(marker or 0), int(raw)


def _page(items: list[dict[str, object]], field: str, start: int, size: int) -> dict[str, object]:
    body: dict[str, object] = {field: items[start : start + size]}
    if start + size < len(items):
        body["NextMarker"] = str(start + size)
    return body


async def handle_list(request: web.Request) -> web.Response:
    request_id = str(uuid.uuid4())
    service = request.app[SERVICE_KEY]
    try:
        start, size = _paging(request)
    except LambdaServiceError as exc:
        return error_response(exc, request_id)
    registry = service.registry
    functions = sorted(await listable(request, registry.all()), key=lambda f: (f.namespace, f.name))
    return _json(
        _page([configuration(f, registry.name_of(f)) for f in functions], "Functions", start, size),
        request_id,
    )


def alias_configuration(fn: FunctionConfig, alias: str) -> dict[str, object]:
    """An AliasConfiguration as Lambda returns it, with the routing in effect (during a rollout, the
    operator's current weights)."""
    route = fn.routes[alias]
    weights = {route.additional: route.weight} if route.additional else {}
    return {
        "AliasArn": function_arn(fn.name, alias),
        "Name": alias,
        "FunctionVersion": route.primary,
        "Description": "",
        "RoutingConfig": {"AdditionalVersionWeights": weights},
        "RevisionId": fn.revision,
    }


def _function_of(request: web.Request) -> FunctionConfig:
    """The unqualified function a versions/aliases call names (a qualifier in the name is refused)."""
    registry = request.app[SERVICE_KEY].registry
    target = registry.route(request.match_info["name"])
    return target.config


def paged(
    field: str, items: Callable[[FunctionConfig, str], list[dict[str, object]]]
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A GET handler that lists something of one function, paged as Lambda pages it."""

    async def handle(request: web.Request) -> web.Response:
        request_id = str(uuid.uuid4())
        try:
            start, size = _paging(request)
            fn = _function_of(request)
        except LambdaServiceError as exc:
            return error_response(exc, request_id)
        name = request.app[SERVICE_KEY].registry.name_of(fn)
        return _json(_page(items(fn, name), field, start, size), request_id)

    return handle


def _versions(fn: FunctionConfig, name: str) -> list[dict[str, object]]:
    return [configuration(v, name) for v in fn.with_versions()]


def _aliases(fn: FunctionConfig, name: str) -> list[dict[str, object]]:
    return [alias_configuration(fn, a) for a in sorted(fn.routes)]


async def handle_get_alias(request: web.Request) -> web.Response:
    request_id = str(uuid.uuid4())
    try:
        fn = _function_of(request)
        alias = request.match_info["alias"]
        if alias not in fn.routes:
            raise FunctionNotFound(f"Alias not found: {function_arn(fn.name, alias)}")
    except LambdaServiceError as exc:
        return error_response(exc, request_id)
    return _json(alias_configuration(fn, alias), request_id)


async def handle_get_provisioned(request: web.Request) -> web.Response:
    """GetProvisionedConcurrencyConfig: what the environments of a version or alias are kept at."""
    request_id = str(uuid.uuid4())
    try:
        fn = _function_of(request)
        qualifier = request.query.get("Qualifier", "")
        versions = [fn.versions[qualifier]] if qualifier in fn.versions else []
        if qualifier in fn.routes:
            versions = [fn.versions[v] for v in fn.routes[qualifier].versions() if v in fn.versions]
        requested = sum(v.provisioned_concurrency for v in versions)
        if not requested:
            arn = function_arn(fn.name, qualifier)
            raise ProvisionedConcurrencyConfigNotFound(
                f"No Provisioned Concurrency Config found for this function: {arn}"
            )
    except LambdaServiceError as exc:
        return error_response(exc, request_id)
    body = {
        "RequestedProvisionedConcurrentExecutions": requested,
        "AllocatedProvisionedConcurrentExecutions": requested,
        "AvailableProvisionedConcurrentExecutions": requested,
        "Status": "READY",
    }
    return _json(body, request_id)


class ProvisionedConcurrencyConfigNotFound(FunctionNotFound):
    code = "ProvisionedConcurrencyConfigNotFoundException"


def _function(fn: FunctionConfig, name: str) -> dict[str, object]:
    body: dict[str, object] = {
        "Configuration": configuration(fn, name),
        "Code": {"RepositoryType": "S3", "Location": ""},
    }
    if fn.reserved_concurrency is not None:
        body["Concurrency"] = {"ReservedConcurrentExecutions": fn.reserved_concurrency}
    return body


def _concurrency(fn: FunctionConfig, name: str) -> dict[str, object]:
    reserved = fn.reserved_concurrency
    return {} if reserved is None else {"ReservedConcurrentExecutions": reserved}


def describing(
    describe: Callable[[FunctionConfig, str], dict[str, object]], *, qualified: bool = True
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A GET handler for one function: resolve the name (and Qualifier) as Invoke does, describe it."""

    async def handle(request: web.Request) -> web.Response:
        request_id = str(uuid.uuid4())
        registry = request.app[SERVICE_KEY].registry
        qualifier = request.query.get("Qualifier") if qualified else None
        try:
            target = registry.route(request.match_info["name"], qualifier)
            fn = target.config
            if target.alias is not None:  # an alias describes the version it points to, not a draw
                owner = target_function(registry, target)
                primary = owner.routes[target.alias].primary
                fn = owner if primary == LATEST else owner.versions[primary]
        except LambdaServiceError as exc:
            return error_response(exc, request_id)
        return _json(describe(fn, registry.name_of(fn)), request_id)

    return handle


def target_function(registry: FunctionRegistry, target: Target) -> FunctionConfig:
    """The $LATEST config (which holds versions and aliases) of a routed target."""
    fn = registry.get(target.config.key)
    assert fn is not None
    return fn


def add_routes(app: web.Application) -> None:
    app.router.add_get("/2015-03-31/functions/", handle_list)
    app.router.add_get("/2015-03-31/functions", handle_list)
    app.router.add_get("/2015-03-31/functions/{name}", describing(_function))
    app.router.add_get("/2015-03-31/functions/{name}/configuration", describing(configuration))
    app.router.add_get("/2019-09-30/functions/{name}/concurrency", describing(_concurrency, qualified=False))
    app.router.add_get("/2015-03-31/functions/{name}/versions", paged("Versions", _versions))
    app.router.add_get("/2015-03-31/functions/{name}/aliases", paged("Aliases", _aliases))
    app.router.add_get("/2015-03-31/functions/{name}/aliases/{alias}", handle_get_alias)
    app.router.add_get("/2019-09-30/functions/{name}/provisioned-concurrency", handle_get_provisioned)

"""The read side of Lambda's control-plane API: what `aws lambda list-functions` / `get-function` and
boto3's `list_functions`, `get_function`, `get_function_configuration` and
`get_function_concurrency` ask.

Functions are declared as manifests, not created through this API, so only reads are served. The
environment's variables are left out of the configuration: the gateway has no IAM in front of it,
and they may come from Secrets.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

from lamina.environments.base import FunctionConfig
from lamina.gateway.errors import InvalidParameterValue
from lamina.gateway.invoke_api import SERVICE_KEY, error_response
from lamina.invocation.errors import LambdaServiceError

MAX_ITEMS = 50  # Lambda's page size for ListFunctions
NUMBER = re.compile(r"[0-9]{1,9}")


def configuration(fn: FunctionConfig, name: str) -> dict[str, object]:
    """A FunctionConfiguration as Lambda returns it, for what lamina knows of the function
    (``name``: the FunctionName that reaches it)."""
    custom = fn.runtime.startswith("provided")
    return {
        "FunctionName": name,
        "FunctionArn": fn.arn,
        "Runtime": fn.runtime,
        "Handler": fn.handler,
        "MemorySize": fn.memory_mb,
        "Timeout": fn.timeout_seconds,
        "Version": "$LATEST",
        "CodeSha256": fn.revision,
        "PackageType": "Zip",
        "Architectures": ["x86_64"],
        "State": "Active",
        "LastUpdateStatus": "Successful",
        "Description": f"{fn.namespace}/{fn.name}" + (" (custom runtime)" if custom else ""),
    }


def _json(body: object, request_id: str) -> web.Response:
    return web.json_response(body, headers={"x-amzn-RequestId": request_id})


async def handle_list(request: web.Request) -> web.Response:
    request_id = str(uuid.uuid4())
    service = request.app[SERVICE_KEY]
    try:
        raw = request.query.get("MaxItems", str(MAX_ITEMS))
        # ASCII digits only, and few of them: str.isdigit() takes "²", and int() refuses 5000 digits.
        if not NUMBER.fullmatch(raw) or not 1 <= int(raw) <= 10_000:
            raise InvalidParameterValue(f"MaxItems must be between 1 and 10000 (got {raw[:64]!r})")
        size = int(raw)
        marker = request.query.get("Marker", "")
        if marker and not NUMBER.fullmatch(marker):
            raise InvalidParameterValue(f"Invalid Marker: {marker[:64]!r}")
        start = int(marker or 0)
    except LambdaServiceError as exc:
        return error_response(exc, request_id)
    registry = service.registry
    functions = sorted(registry.all(), key=lambda f: (f.namespace, f.name))
    page = functions[start : start + size]
    body: dict[str, object] = {"Functions": [configuration(f, registry.name_of(f)) for f in page]}
    if start + size < len(functions):
        body["NextMarker"] = str(start + size)
    return _json(body, request_id)


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
            fn = registry.resolve(request.match_info["name"], qualifier)
        except LambdaServiceError as exc:
            return error_response(exc, request_id)
        return _json(describe(fn, registry.name_of(fn)), request_id)

    return handle


def add_routes(app: web.Application) -> None:
    app.router.add_get("/2015-03-31/functions/", handle_list)
    app.router.add_get("/2015-03-31/functions", handle_list)
    app.router.add_get("/2015-03-31/functions/{name}", describing(_function))
    app.router.add_get("/2015-03-31/functions/{name}/configuration", describing(configuration))
    app.router.add_get("/2019-09-30/functions/{name}/concurrency", describing(_concurrency, qualified=False))

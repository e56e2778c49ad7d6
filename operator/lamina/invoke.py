"""`lamina invoke`: call a function and print its result, like ``aws lambda invoke`` without the ceremony.

Two ways to reach the function:

- through a gateway's Invoke API (``--endpoint``, default ``$LAMINA_ENDPOINT`` or the
  ``http://127.0.0.1:9000`` that ``lamina local`` serves; a cluster's gateway through its Service or a
  port-forward). The request is SigV4-signed when AWS credentials are in the environment, and carries
  ``Authorization: Bearer`` with ``--token`` / ``$LAMINA_TOKEN``.
- in-process from manifests (``--local PATH...``), as ``sam local invoke`` does: the same artifacts
  and execution environments as ``lamina local``, started for this one call, no port opened.

The payload comes from the argument, from ``--file`` or from stdin (``-``). The result goes to stdout;
``--tail`` prints the invocation's log to stderr. Exit status: 0 success, 1 a function error (the
error object is still printed), 2 the invocation did not run (unknown function, throttled, bad input:
Lambda's service errors) or the gateway could not be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from lamina_runtime.sigv4 import Credentials, sign

DEFAULT_ENDPOINT = "http://127.0.0.1:9000"
EXIT_OK, EXIT_FUNCTION_ERROR, EXIT_NOT_RUN = 0, 1, 2


@dataclass
class Outcome:
    """What an invocation came back with, whichever way it went."""

    status: int
    payload: bytes = b""
    function_error: str | None = None
    log: str = ""
    executed_version: str | None = None
    error: str | None = None  # a service error (the function did not run): "Code: message"


def read_payload(args: argparse.Namespace) -> bytes:
    if args.file is not None and args.payload is not None:
        raise SystemExit("lamina invoke: give the payload as an argument or with --file, not both")
    if args.file == "-" or args.payload == "-":
        data = sys.stdin.buffer.read()
    elif args.file is not None:
        data = Path(args.file).read_bytes()
    elif args.payload is not None:
        data = args.payload.encode()
    else:
        data = b"{}"
    return data


def _credentials() -> Credentials | None:
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if not key or not secret:
        return None
    return Credentials(key, secret, os.environ.get("AWS_SESSION_TOKEN"))


def invoke_remote(
    endpoint: str,
    function: str,
    payload: bytes,
    *,
    qualifier: str | None = None,
    invocation_type: str = "RequestResponse",
    tail: bool = False,
    region: str = "us-east-1",
    token: str | None = None,
    timeout: float = 960.0,
) -> Outcome:
    """POST to the Invoke API as boto3 does, and read Lambda's answer."""
    path = f"/2015-03-31/functions/{urllib.parse.quote(function, safe='')}/invocations"
    url = endpoint.rstrip("/") + path
    if qualifier:
        url += "?" + urllib.parse.urlencode({"Qualifier": qualifier})
    headers = {"X-Amz-Invocation-Type": invocation_type}
    if tail:
        headers["X-Amz-Log-Type"] = "Tail"
    credentials = _credentials()
    if token:
        headers["Authorization"] = f"Bearer {token}"
    elif credentials is not None:
        digest = hashlib.sha256(payload).hexdigest()
        headers = sign(
            "POST", url, credentials, region=region, service="lambda", headers=headers, payload_sha256=digest
        )
    request = urllib.request.Request(url, data=payload, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body, status, h = response.read(), response.status, response.headers
    except urllib.error.HTTPError as exc:
        body, status, h = exc.read(), exc.code, exc.headers
    log = h.get("X-Amz-Log-Result")
    outcome = Outcome(
        status=status,
        payload=body,
        function_error=h.get("X-Amz-Function-Error"),
        log=base64.b64decode(log).decode(errors="replace") if log else "",
        executed_version=h.get("X-Amz-Executed-Version"),
    )
    if status >= 300:
        outcome.error = _service_error(h.get("x-amzn-ErrorType"), body, status)
    return outcome


def _service_error(code: str | None, body: bytes, status: int) -> str:
    try:
        doc = json.loads(body)
        message = doc.get("message") or doc.get("Message") or ""
    except (ValueError, AttributeError):
        message = body.decode(errors="replace")
    return f"{code or f'HTTP {status}'}: {message}"


async def invoke_local(
    paths: list[str],
    function: str,
    payload: bytes,
    *,
    qualifier: str | None,
    invocation_type: str,
    state_dir: Path,
) -> Outcome:
    """Run one invocation from manifests, in this process, with local mode's own parts."""
    import uuid

    from lamina.api import ManifestError, load_manifests
    from lamina.environments.local_pool import LocalProcessPool
    from lamina.gateway.registry import FunctionRegistry
    from lamina.gateway.service import InvocationService
    from lamina.invocation.errors import LambdaServiceError
    from lamina.local.interpreters import Interpreters
    from lamina.local.runner import StateDirInUse, build_functions, lock_state_dir, runtime_packages
    from lamina_runtime.protocol import InvocationRequest

    try:
        lock = lock_state_dir(state_dir)
    except StateDirInUse as exc:
        return Outcome(status=409, error=f"{exc} (or call it through its gateway: drop --local)")
    try:
        manifests = load_manifests(paths)
        interpreters = Interpreters()
        functions = build_functions(manifests, state_dir, interpreters=interpreters)
    except ManifestError as exc:
        lock.close()
        return Outcome(status=400, error=f"the manifests were refused:\n{exc}")
    registry = FunctionRegistry(functions)
    pool = LocalProcessPool(
        registry.environments(),
        handler_output=sys.stderr.fileno(),
        interpreters=interpreters,
        runtime_packages=runtime_packages(),
    )
    service = InvocationService(registry, pool)
    try:
        target = registry.route(function, qualifier)
        fn = target.config
        if invocation_type == "DryRun":
            return Outcome(status=204)
        if invocation_type == "Event":
            return Outcome(status=400, error="--type Event needs a gateway (lamina local or a cluster)")
        request_id = str(uuid.uuid4())
        request = InvocationRequest(request_id=request_id, payload=payload, invoked_function_arn=fn.arn)
        result = await service.invoke(fn, request)
    except LambdaServiceError as exc:
        return Outcome(status=exc.status, error=f"{exc.code}: {exc.message}")
    finally:
        await pool.close()
        lock.close()
    return Outcome(
        status=200,
        payload=result.payload,
        function_error=result.function_error,
        log=result.log,
        executed_version=fn.version,
    )


def report(outcome: Outcome, tail: bool) -> int:
    """Print an outcome as the command does; returns the exit status."""
    if tail and outcome.log:
        sys.stderr.write(outcome.log if outcome.log.endswith("\n") else outcome.log + "\n")
    if outcome.error is not None:
        print(f"lamina invoke: {outcome.error}", file=sys.stderr)
        return EXIT_NOT_RUN
    if outcome.status == 202:
        print("lamina invoke: queued (202)", file=sys.stderr)
        return EXIT_OK
    if outcome.status == 204:
        print("lamina invoke: the request is valid (DryRun, 204)", file=sys.stderr)
        return EXIT_OK
    out = sys.stdout.buffer
    out.write(outcome.payload)
    if not outcome.payload.endswith(b"\n"):
        out.write(b"\n")
    out.flush()
    if outcome.function_error:
        where = f" (version {outcome.executed_version})" if outcome.executed_version else ""
        print(f"lamina invoke: function error{where}: {outcome.function_error}", file=sys.stderr)
        return EXIT_FUNCTION_ERROR
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lamina invoke",
        description="invoke a function and print its result (exit 1 on a function error, 2 when it did "
        "not run)",
    )
    p.add_argument("function", help="name, namespace.name, name:qualifier or a function ARN")
    p.add_argument("payload", nargs="?", help="the JSON event; '-' reads stdin (default {})")
    p.add_argument("-f", "--file", help="read the event from this file ('-': stdin)")
    p.add_argument("-q", "--qualifier", help="version number or alias")
    p.add_argument(
        "-t",
        "--type",
        dest="invocation_type",
        default="RequestResponse",
        choices=["RequestResponse", "Event", "DryRun"],
        help="invocation type (default RequestResponse)",
    )
    p.add_argument("--tail", action="store_true", help="print the invocation's log to stderr")
    p.add_argument(
        "--endpoint",
        default=os.environ.get("LAMINA_ENDPOINT", DEFAULT_ENDPOINT),
        help=f"the gateway's URL (default $LAMINA_ENDPOINT or {DEFAULT_ENDPOINT})",
    )
    p.add_argument("--token", default=os.environ.get("LAMINA_TOKEN"), help="bearer token for the gateway")
    p.add_argument("--region", default=os.environ.get("AWS_REGION", "us-east-1"), help="SigV4 region")
    p.add_argument(
        "--local",
        nargs="+",
        metavar="PATH",
        help="run in this process from these manifests instead of calling a gateway",
    )
    p.add_argument(
        "--state-dir",
        default=".lamina-state",
        help="with --local: code, layers and published versions, as lamina local keeps them "
        "(default .lamina-state)",
    )
    return p


def run_invoke(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    payload = read_payload(args)
    if args.local:
        outcome = asyncio.run(
            invoke_local(
                args.local,
                args.function,
                payload,
                qualifier=args.qualifier,
                invocation_type=args.invocation_type,
                state_dir=Path(args.state_dir),
            )
        )
        return report(outcome, args.tail)
    try:
        outcome = invoke_remote(
            args.endpoint,
            args.function,
            payload,
            qualifier=args.qualifier,
            invocation_type=args.invocation_type,
            tail=args.tail,
            region=args.region,
            token=args.token,
        )
    except OSError as exc:
        print(f"lamina invoke: cannot reach {args.endpoint}: {exc}", file=sys.stderr)
        return EXIT_NOT_RUN
    return report(outcome, args.tail)

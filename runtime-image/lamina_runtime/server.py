"""The pod's entrypoint: one execution environment behind HTTP (`python -m lamina_runtime serve`).

INIT runs when the server starts, so /healthz (the readiness probe) turns 200 only once the environment
is warm. One invocation at a time: a second concurrent one gets 429 at once, because the gateway, not
this pod, decides where to queue or throttle.

With ``LAMINA_INVOKE_SECRET`` set (the operator sets it from the function's own Secret), ``/invoke``
is refused (403) unless the request carries that secret in ``Lamina-Invoke-Secret``: only the gateway
computes it, so another pod cannot run the function around the gateway's authentication and reserved
concurrency, even where the network does not enforce NetworkPolicy. The secret is taken out of the
environment the function's processes inherit, and never logged. ``/healthz`` stays open for probes.

With ``LAMINA_POOL=1`` (``serve --pool``) the pod is a generic pool environment: no function, Ready at
once, and ``POST /specialize`` (see :mod:`specialize`) turns it, once, into one function's environment:
code, layers and variables written, INIT run, and from then on it is that function's pod as above.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

# hmac's compare_digest without importing hmac, which loads hashlib's OpenSSL and BLAKE2 modules: a
# cold start waits for everything this module imports (hmac falls back to this same function).
from _operator import _compare_digest as compare_digest
from collections.abc import Mapping
from typing import Any

from .containerlog import ContainerLog
from .factory import environment_for, python_version
from .host import PROVISIONED, HostedEnvironment, WorkerBusy
from .http11 import BadRequest, HttpServerProtocol, Request, Timeouts
from .paths import split_layers
from .protocol import (
    FUNCTION_HEADER,
    HEALTH_WAIT_PARAM,
    INIT_FAILED_EXIT_CODE,
    INIT_FAILED_HEADER,
    INVOKE_SECRET_HEADER,
    MISDIRECTED,
    InvocationResult,
    decode_request,
    encode_result,
)

MAX_REQUEST_BYTES = 6291456  # Lambda's synchronous request payload limit
INVOKE_SECRET_ENV = "LAMINA_INVOKE_SECRET"
POOL_ENV = "LAMINA_POOL"
#: Longest hold of ``GET /healthz?wait=S``.
MAX_HEALTH_WAIT_S = 30.0
#: Where Kubernetes reads a container's last words (``terminationMessagePath``'s default).
TERMINATION_LOG = "/dev/termination-log"
#: The gateway opens a connection to send a request at once and keeps idle ones for 60 s; anything
#: slower is not the gateway. A request's head and body (6 MB at most) get 30 s.
TIMEOUTS = Timeouts(first=10.0, idle=120.0, read=30.0)
TIMEOUTS_ENV = "LAMINA_HTTP_TIMEOUTS"  # "first,idle,read" seconds, to shorten them in tests


def timeouts_from_env(environ: Mapping[str, str]) -> Timeouts:
    raw = environ.get(TIMEOUTS_ENV)
    if not raw:
        return TIMEOUTS
    try:
        first, idle, read = (float(x) for x in raw.split(","))
    except ValueError:
        raise SystemExit(f"lamina_runtime serve: {TIMEOUTS_ENV} must be first,idle,read seconds") from None
    return Timeouts(first=first, idle=idle, read=read)


def worker_from_env(environ: Mapping[str, str], log: ContainerLog | None = None) -> HostedEnvironment:
    """Configure the environment from the pod's variables (set by the operator on the container);
    LAMINA_RUNTIME picks a custom runtime's bootstrap (``provided*``) or the Python worker. ``log``:
    the container log it writes (the pod server's own, shared with its lines)."""
    handler = environ.get("LAMINA_HANDLER") or environ.get("_HANDLER")
    if not handler:
        raise SystemExit("lamina_runtime serve: set LAMINA_HANDLER (or _HANDLER), e.g. index.handler")
    try:
        timeout_s = float(environ.get("LAMINA_TIMEOUT_SECONDS", "3"))
        memory_mb = int(environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128"))
    except ValueError as exc:
        raise SystemExit(f"lamina_runtime serve: LAMINA_TIMEOUT_SECONDS / memory size: {exc}") from None
    runtime = environ.get("LAMINA_RUNTIME")
    declared = python_version(runtime)
    if declared is not None and declared != sys.version_info[:2]:
        # Never a silent substitute: the image of another Python version was given to this function.
        raise SystemExit(
            f"lamina_runtime serve: the function declares runtime {runtime}, but this image runs Python "
            f"{sys.version_info[0]}.{sys.version_info[1]}; give each runtime its own image "
            "(the operator's LAMINA_RUNTIME_IMAGE with {runtime} in it)"
        )
    function_env = {k: v for k, v in environ.items() if not k.startswith("LAMINA_")}
    return environment_for(
        runtime,
        handler,
        environ.get("LAMBDA_TASK_ROOT", "/var/task"),
        split_layers(environ.get("LAMINA_LAYERS")),
        function_env,
        function_name=environ.get("AWS_LAMBDA_FUNCTION_NAME", "function"),
        memory_mb=memory_mb,
        timeout_s=timeout_s,
        version=environ.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST"),
        site_packages=environ.get("LAMINA_SITE_PACKAGES", "") in ("1", "true"),
        runtime_packages=split_layers(environ.get("LAMINA_RUNTIME_PACKAGES")),
        system_log_level=environ.get("LAMINA_SYSTEM_LOG_LEVEL") or "INFO",
        container_log=log,
    )


def result_headers(result: InvocationResult) -> dict[str, str]:
    return {"Content-Type": "application/json", **encode_result(result)}


_FUNCTION = FUNCTION_HEADER.lower()


def _new_request_id() -> str:
    import uuid  # only for a call without Lamina-Request-Id (the gateway always sends one)

    return str(uuid.uuid4())


def _query_seconds(query: str, name: str) -> float:
    """``name=<seconds>`` from a query string; 0 when absent or not a number."""
    for part in query.split("&"):
        key, _, value = part.partition("=")
        if key == name:
            try:
                return max(0.0, float(value))
            except ValueError:
                return 0.0
    return 0.0


def _json(status: int, message: str) -> tuple[int, bytes, dict[str, str]]:
    return status, json.dumps({"message": message}).encode(), {"Content-Type": "application/json"}


def _refuse(exc: BadRequest) -> tuple[int, bytes, dict[str, str]]:
    return _json(exc.status, str(exc))


class RuntimeServer:
    def __init__(
        self,
        worker: HostedEnvironment | None,
        invoke_secret: str | None = None,
        timeouts: Timeouts = TIMEOUTS,
        pod_environ: Mapping[str, str] | None = None,
        provisioned: bool = False,
        log: ContainerLog | None = None,
    ) -> None:
        """``worker`` None: a generic pool environment until ``POST /specialize`` gives it a function
        (``pod_environ``: the pod's own variables, kept under the function's). ``provisioned``: a
        provisioned-concurrency environment, which never serves after a failed INIT (it exits).
        ``log``: the container log (this process's stdout), which the server's own lines and every
        environment it runs write (containerlog.py)."""
        self.worker = worker
        if log is None:
            log = worker.container_log if worker is not None else ContainerLog()
        self.log = log
        self.provisioned = provisioned
        self.pod_environ = dict(pod_environ or {})
        self._specializing = False
        self.timeouts = timeouts
        self._secret = invoke_secret.encode() if invoke_secret else None
        self._invoking = False
        #: Invocations answered, and those refused with 429 because one was already running: the
        #: second must stay 0 (the gateway, however many replicas it has, sends one at a time). GET /stats.
        self.invocations = 0
        self.busy_refusals = 0
        #: /invoke calls refused with 421 because they named another function (FUNCTION_HEADER).
        self.misdirected = 0
        # The INIT in progress (the first one, or a restart after a timeout/crash). Invocations wait for
        # it; probes answer 503 meanwhile. A failed INIT still counts as done: it is the next answer.
        self._starting: asyncio.Task[float] | None = None
        self._initialised = False
        #: Why the first INIT of a provisioned environment failed (it then exits), else None.
        self.provisioned_failure: str | None = None
        self._server: asyncio.Server | None = None
        #: Shutting down (SIGTERM): an invocation the shutdown cut short starts no new environment.
        self._closing = False
        #: A generic pool environment's worker, started ahead of the hand-over (process.Prespawned).
        self.prespawned: Any = None

    async def prespawn(self) -> None:
        """Start a worker that waits for the function's hand-over, so that the cold start served by
        this pool pod does not pay for a new interpreter and the runtime's imports."""
        from .process import Prespawned

        try:
            self.prespawned = await Prespawned.start(self.pod_environ, self.log)
        except OSError as exc:  # the hand-over spawns one then, as a function's own pod does
            self.log.line(f"lamina_runtime: no pre-spawned worker ({exc}); the hand-over will spawn one")

    async def listen(self, host: str, port: int) -> int:
        """Accept connections (probes get 503 until INIT is done); returns the bound port."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._connection, host, port)
        bound: int = self._server.sockets[0].getsockname()[1]
        return bound

    @property
    def generic(self) -> bool:
        return self.worker is None

    @property
    def ready(self) -> bool:
        if self.generic:
            return not self._specializing  # an idle pool environment is Ready to be claimed
        return self._initialised and self._starting is None and self.init_failure is None

    @property
    def init_failure(self) -> str | None:
        """Why the INIT done last failed, until an invocation has been answered with it."""
        return self.worker.init_failure if self.worker is not None and self._starting is None else None

    @property
    def failed_for_good(self) -> bool:
        """A provisioned environment whose first INIT failed: it exits instead of serving."""
        return self.provisioned_failure is not None

    async def init(self) -> float:
        self._starting = asyncio.create_task(self._start_worker())
        return await asyncio.shield(self._starting)

    async def _start_worker(self) -> float:
        assert self.worker is not None
        try:
            return await self.worker.start()
        finally:
            self._starting = None
            if not self._initialised and self.provisioned:
                self.provisioned_failure = self.worker.init_failure
            self._initialised = True

    async def close(self) -> None:
        self._closing = True
        if self._server is not None:
            self._server.close()
        if self._starting is not None:
            await asyncio.gather(self._starting, return_exceptions=True)
        if self.prespawned is not None:
            await self.prespawned.discard()
            self.prespawned = None
        if self.worker is not None:
            await self.worker.stop()
        await self.log.flushed()

    async def serve_forever(self) -> None:
        assert self._server is not None
        await self._server.serve_forever()

    def _connection(self) -> HttpServerProtocol:
        limit = MAX_REQUEST_BYTES
        if self.generic:
            from .specialize import MAX_BODY_BYTES  # only a pool environment takes hand-overs

            limit = max(limit, MAX_BODY_BYTES)
        return HttpServerProtocol(self._route, limit, _refuse, self.timeouts)

    def _authorized(self, request: Request) -> bool:
        if self._secret is None:
            return True
        given = request.headers.get(INVOKE_SECRET_HEADER.lower(), "").encode("latin-1")
        return compare_digest(given, self._secret)

    async def _health(self, query: str) -> tuple[int, bytes, dict[str, str]]:
        """200 once INIT is done; ``?wait=S`` holds the answer while INIT runs (up to S seconds). After
        a failed INIT: 503, with INIT_FAILED_HEADER unless the environment is about to exit."""
        wait = _query_seconds(query, HEALTH_WAIT_PARAM)
        starting = self._starting
        if wait > 0 and starting is not None:
            try:
                await asyncio.wait_for(asyncio.shield(starting), min(wait, MAX_HEALTH_WAIT_S))
            except TimeoutError:
                pass
            except Exception:  # the INIT task's own failure is reported below
                pass
        if self.ready:
            return _json(200, "ready")
        failure = self.init_failure
        if failure is None or self.generic:
            return _json(503, "initializing")
        status, body, headers = _json(503, f"INIT failed: {failure}")
        if not self.failed_for_good:
            headers[INIT_FAILED_HEADER] = "1"
        return status, body, headers

    async def _route(self, request: Request) -> tuple[int, bytes, dict[str, str]]:
        path, _, query = request.path.partition("?")
        if path == "/healthz":
            if request.method != "GET":
                return _json(405, "use GET /healthz")
            return await self._health(query)
        if path == "/stats":
            stats = {
                "invocations": self.invocations,
                "busyRefusals": self.busy_refusals,
                "misdirected": self.misdirected,
            }
            return 200, json.dumps(stats).encode(), {"Content-Type": "application/json"}
        if path == "/specialize":
            if request.method != "POST":
                return _json(405, "use POST /specialize")
            return await self._specialize(request)
        if path == "/invoke":
            if request.method != "POST":
                return _json(405, "use POST /invoke")
            if self.worker is None:
                return _json(503, "a generic pool environment: no function handed over yet")
            meant = request.headers.get(_FUNCTION)
            if meant is not None and meant != self.worker.function_name:
                # Checked before the secret: the gateway then tries another environment of its
                # function instead of failing the call (a 403 would be the caller's error).
                self.misdirected += 1
                return _json(MISDIRECTED, f"this environment serves another function, not {meant}")
            if not self._authorized(request):
                why = f"/invoke needs this function's {INVOKE_SECRET_HEADER} (only the gateway has it)"
                return _json(403, why)
            return await self._invoke(request)
        return _json(404, f"no route for {request.method} {path}")

    async def _specialize(self, request: Request) -> tuple[int, bytes, dict[str, str]]:
        """Become one function's environment, once: install its code and layers, run INIT, answer
        with INIT's duration (a failed INIT is the first invocation's answer, as on Lambda)."""
        if not self.generic or self._specializing:
            return _json(409, "this environment already belongs to a function; it is never handed another")
        from .specialize import HandoverError, install, parse

        try:
            handover = parse(request.body)
        except HandoverError as exc:  # nothing was written: still generic, still claimable
            return _json(400, f"hand-over refused: {exc}")
        # From here files are written: a hand-over that fails leaves the pod spoiled (never Ready
        # again), and the gateway that claimed it deletes it.
        self._specializing = True
        try:
            environ = await asyncio.to_thread(install, handover, self.pod_environ)
            worker = worker_from_env(environ, self.log)
        except HandoverError as exc:
            return _json(400, f"hand-over failed, this environment is spoiled: {exc}")
        except SystemExit as exc:  # the function's variables do not make an environment
            return _json(400, f"hand-over failed, this environment is spoiled: {exc}")
        except OSError as exc:
            return _json(500, f"hand-over failed, this environment is spoiled: {exc}")
        prespawned, self.prespawned = self.prespawned, None
        if prespawned is not None and not worker.adopt(prespawned):
            await prespawned.discard()
        self.worker = worker
        if handover.invoke_secret:
            self._secret = handover.invoke_secret.encode()
        init_ms = await self.init()
        self.log.line(f"lamina_runtime: specialized as {worker.function_name} (INIT {init_ms:.2f} ms)")
        body = json.dumps({"function": worker.function_name, "initDurationMs": round(init_ms, 2)}).encode()
        return 200, body, {"Content-Type": "application/json"}

    async def _invoke(self, request: Request) -> tuple[int, bytes, dict[str, str]]:
        assert self.worker is not None
        if self._invoking:
            self.busy_refusals += 1
            return _json(429, "the execution environment is busy (one invocation at a time)")
        self._invoking = True
        try:
            if self._starting is not None:
                await asyncio.shield(self._starting)  # held, not refused, while the environment starts
            req = decode_request(request.headers, request.body, _new_request_id)
            result = await self.worker.invoke(req)
        except WorkerBusy as exc:
            self.busy_refusals += 1
            return _json(429, str(exc))
        except Exception as exc:  # the environment itself failed (e.g. cannot spawn): say so, keep serving
            return _json(500, f"execution environment failed: {type(exc).__name__}: {exc}")
        finally:
            self._invoking = False
        self.invocations += 1
        if self.worker.needs_restart and self._starting is None and not self._closing:
            # After a timeout or crash, pay the next INIT now rather than on the next request.
            self._starting = asyncio.create_task(self._start_worker())
        return 200, result.payload, result_headers(result)


async def serve(host: str, port: int, environ: Mapping[str, str] | None = None) -> None:
    """Run until SIGTERM/SIGINT (a pod being deleted), then shut the environment down."""
    import signal

    environ = dict(os.environ if environ is None else environ)
    # Out of the environment before anything is spawned: the function must not inherit the secret.
    secret = environ.pop(INVOKE_SECRET_ENV, None)
    os.environ.pop(INVOKE_SECRET_ENV, None)
    pool = environ.get(POOL_ENV, "") in ("1", "true")
    log = ContainerLog()
    server = RuntimeServer(
        None if pool else worker_from_env(environ, log),
        invoke_secret=secret,
        timeouts=timeouts_from_env(environ),
        pod_environ=environ,
        provisioned=environ.get("AWS_LAMBDA_INITIALIZATION_TYPE") == PROVISIONED,
        log=log,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    bound = await server.listen(host, port)
    log.line(f"lamina_runtime: listening on http://{host}:{bound}")
    try:
        if server.worker is None:
            await server.prespawn()
            log.line("lamina_runtime: a generic pool environment, waiting for a function")
        else:
            init_ms = await server.init()
            if server.failed_for_good:
                # Lambda fails a provisioned environment whose INIT fails instead of serving with it.
                # The exit makes the pod not Ready and says why where Kubernetes looks for it.
                why = f"INIT of a provisioned environment failed: {server.provisioned_failure}"
                log.line(f"lamina_runtime: {why}")
                write_termination_message(why)
                raise SystemExit(INIT_FAILED_EXIT_CODE)
            log.line(f"lamina_runtime: {server.worker.handler} ready (INIT {init_ms:.2f} ms)")
        await stop.wait()
    finally:
        await server.close()


def write_termination_message(message: str, path: str = TERMINATION_LOG) -> None:
    """The container's last words for Kubernetes (its status shows them); nothing where the file
    does not exist (outside a pod)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)  # never created: only the kubelet's file
    except OSError:
        return
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(message[:4000])

"""Execution environments as local processes of the runtime (local mode's `EnvironmentPool`).

Per function: provisioned environments are INITialised up front and never reaped; more start on demand
up to the function's reserved concurrency (or the pool's global limit) and are reaped after the idle
keep-alive. An environment that timed out or crashed is replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from lamina.environments.base import FunctionConfig, hand_over
from lamina.invocation.errors import LambdaServiceError
from lamina.resources.runtime_env import function_environment, system_log_level
from lamina_runtime.environment import installation_region
from lamina_runtime.factory import environment_for, python_version
from lamina_runtime.host import HostedEnvironment
from lamina_runtime.protocol import InvocationRequest, InvocationResult


@dataclass(eq=False)
class _Environment:
    worker: HostedEnvironment
    provisioned: bool
    revision: str
    last_used: float = field(default_factory=time.monotonic)


@dataclass(eq=False)
class _FunctionEnvironments:
    config: FunctionConfig
    idle: list[_Environment] = field(default_factory=list)
    busy: set[_Environment] = field(default_factory=set)
    starting: int = 0
    waiters: deque[asyncio.Future[_Environment]] = field(default_factory=deque)

    @property
    def total(self) -> int:
        return len(self.idle) + len(self.busy) + self.starting

    @property
    def provisioned_count(self) -> int:
        return sum(e.provisioned for e in self.idle) + sum(e.provisioned for e in self.busy)


class LocalProcessPool:
    """An `EnvironmentPool` whose environments are local processes: `python -m lamina_runtime.worker`,
    or a custom runtime's `bootstrap` for `provided*` functions."""

    def __init__(
        self,
        functions: list[FunctionConfig],
        *,
        max_environments: int = 64,
        python: str = sys.executable,
        handler_output: IO[Any] | int | None = None,
        reap_interval: float = 1.0,
        interpreters: Callable[[str], str] | None = None,
        runtime_packages: Sequence[str] = (),
        gateway_url: str | None = None,
        credentials: Callable[[FunctionConfig], Mapping[str, str] | None] | None = None,
    ) -> None:
        self.max_environments = max_environments
        self.python = python
        #: The interpreter of each python3.X runtime (local mode's lamina.local.interpreters); without
        #: it every Python function runs on ``python`` (tests that drive the pool directly).
        self.interpreters = interpreters
        self.runtime_packages = list(runtime_packages)
        #: Where functions call lamina (AWS_ENDPOINT_URL_LAMBDA); None when nothing serves the API.
        self.gateway_url = gateway_url
        #: The AWS_* credentials of a function's environments (None, or an answer of None: placeholders).
        self.credentials = credentials
        self.handler_output = handler_output
        self.reap_interval = reap_interval
        self._functions: dict[str, _FunctionEnvironments] = {
            f.pool_key: _FunctionEnvironments(f) for f in functions
        }
        self._reaper: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        #: Set by :meth:`close`: no environment starts any more.
        self._closed = False
        #: Environments whose INIT runs (in none of the lists yet): close stops them too.
        self._starting: set[HostedEnvironment] = set()

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        starts = [
            self._start_provisioned(envs)
            for envs in self._functions.values()
            for _ in range(envs.config.provisioned_concurrency)
        ]
        await asyncio.gather(*starts)
        self._reaper = asyncio.create_task(self._reap_forever(), name="lamina-reaper")

    async def close(self) -> None:
        """Stop every environment's process group (each handler's own subprocesses too): those idle,
        busy, being replaced and still in INIT, so that no process outlives the pool."""
        self._closed = True
        if self._reaper:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        # Replacing or discarding an environment stops its process first (bounded by the runtime's
        # stop grace): waited for, not cancelled, which could leave the process running.
        await asyncio.gather(*self._background, return_exceptions=True)
        workers = [e.worker for envs in self._functions.values() for e in (*envs.idle, *envs.busy)]
        workers += self._starting
        await asyncio.gather(*(w.stop() for w in workers), return_exceptions=True)
        for envs in self._functions.values():
            envs.idle.clear()
            envs.busy.clear()
            for waiter in envs.waiters:
                if not waiter.done():
                    waiter.cancel()

    async def update(self, functions: list[FunctionConfig]) -> None:
        """New configurations take effect for new environments; stale idle ones are retired now."""
        retired: list[_Environment] = []
        wanted = {f.pool_key: f for f in functions}
        for key, envs in list(self._functions.items()):
            if key not in wanted:
                retired += envs.idle
                envs.idle = []
                del self._functions[key]
        for key, fn in wanted.items():
            envs = self._functions.setdefault(key, _FunctionEnvironments(fn))
            envs.config = fn
            keep = [e for e in envs.idle if e.revision == fn.revision]
            # Provisioned environments beyond the new provisioned concurrency (an alias moved away from
            # this version) become on-demand ones; a version nothing routes to keeps no idle on-demand
            # environment (they are retired now, not after the keep-alive).
            # Fewer provisioned: the extra become on-demand ones. More: idle on-demand ones, already
            # initialised, are promoted before any new environment is started.
            excess = envs.provisioned_count - fn.provisioned_concurrency
            for env in keep:
                if excess > 0 and env.provisioned:
                    env.provisioned = False
                    excess -= 1
                elif excess < 0 and not env.provisioned:
                    env.provisioned = True
                    excess += 1
            if not fn.routed:
                keep = [e for e in keep if e.provisioned]
            retired += [e for e in envs.idle if e not in keep]
            envs.idle = keep
        await asyncio.gather(*(e.worker.stop() for e in retired), return_exceptions=True)
        for envs in self._functions.values():
            while envs.provisioned_count + envs.starting < envs.config.provisioned_concurrency:
                await self._start_provisioned(envs)

    # -- accounting ----------------------------------------------------------------------------
    def in_flight(self, fn: FunctionConfig) -> int:
        envs = self._functions.get(fn.pool_key)
        return len(envs.busy) if envs else 0

    def environments(self, fn: FunctionConfig) -> int:
        envs = self._functions.get(fn.pool_key)
        return envs.total if envs else 0

    def describe(self) -> dict[str, dict[str, int]]:
        return {
            key: {
                "idle": len(e.idle),
                "busy": len(e.busy),
                "starting": e.starting,
                "provisioned": e.provisioned_count,
            }
            for key, e in self._functions.items()
        }

    # -- invocation ----------------------------------------------------------------------------
    async def invoke(self, fn: FunctionConfig, request: InvocationRequest) -> InvocationResult:
        envs = self._functions.get(fn.pool_key)
        if envs is None:
            envs = self._functions[fn.pool_key] = _FunctionEnvironments(fn)
        env = await self._acquire(envs)
        try:
            result = await env.worker.invoke(request)
        except BaseException:
            envs.busy.discard(env)
            self._spawn(self._discard(envs, env))
            raise
        self._release(envs, env)
        return result

    def _cap(self, fn: FunctionConfig) -> int:
        reserved = fn.reserved_concurrency
        return self.max_environments if reserved is None else min(reserved, self.max_environments)

    async def _acquire(self, envs: _FunctionEnvironments) -> _Environment:
        while envs.idle:
            env = envs.idle.pop()  # the most recently used is the warmest
            if env.worker.alive:
                envs.busy.add(env)
                return env
            self._spawn(self._discard(envs, env))
        if envs.total < self._cap(envs.config):
            env = await self._new_environment(envs, provisioned=False)
            envs.busy.add(env)
            return env
        waiter: asyncio.Future[_Environment] = asyncio.get_running_loop().create_future()
        envs.waiters.append(waiter)
        return await waiter  # _release hands an environment over, already marked busy

    def _release(self, envs: _FunctionEnvironments, env: _Environment) -> None:
        envs.busy.discard(env)
        env.last_used = time.monotonic()
        stale = env.revision != envs.config.revision
        if stale or not env.worker.alive:
            self._spawn(self._replace(envs, env, stale))
            return
        self._hand_over(envs, env)

    def _hand_over(self, envs: _FunctionEnvironments, env: _Environment) -> None:
        hand_over(env, envs.waiters, envs.busy, envs.idle)

    async def _replace(self, envs: _FunctionEnvironments, env: _Environment, stale: bool) -> None:
        """A timed-out or crashed environment is reset; a provisioned one is re-INITialised at once."""
        await env.worker.stop()
        if stale or self._closed or not (env.provisioned or envs.waiters):
            return
        try:
            fresh = await self._new_environment(envs, provisioned=env.provisioned)
        except Exception as exc:  # INIT failed: waiters get a cold start attempt of their own
            print(f"lamina: could not restart an environment of {envs.config.name}: {exc}", file=sys.stderr)
            return
        self._hand_over(envs, fresh)

    async def _discard(self, envs: _FunctionEnvironments, env: _Environment) -> None:
        await env.worker.stop()
        if envs.waiters and not self._closed and envs.total < self._cap(envs.config):
            fresh = await self._new_environment(envs, provisioned=env.provisioned)
            self._hand_over(envs, fresh)

    async def _start_provisioned(self, envs: _FunctionEnvironments) -> None:
        env = await self._new_environment(envs, provisioned=True)
        self._hand_over(envs, env)

    async def _new_environment(self, envs: _FunctionEnvironments, provisioned: bool) -> _Environment:
        fn = envs.config
        env_vars = {
            **function_environment(
                region=installation_region(),
                gateway_url=self.gateway_url,
                logging=fn.logging,
                credentials=self.credentials(fn) if self.credentials is not None else None,
            ),
            **fn.environment,
        }
        env_vars["AWS_LAMBDA_INITIALIZATION_TYPE"] = "provisioned-concurrency" if provisioned else "on-demand"
        python = self.python
        if self.interpreters is not None and python_version(fn.runtime) is not None:
            python = self.interpreters(fn.runtime)  # LookupError when missing: never another version
        worker = environment_for(
            fn.runtime,
            handler=fn.handler,
            code_dir=fn.code_dir or ".",
            layers=list(fn.layer_dirs),
            env=env_vars,
            function_name=fn.name,
            memory_mb=fn.memory_mb,
            timeout_s=float(fn.timeout_seconds),
            python=python,
            stdout=self.handler_output,
            version=fn.version,
            runtime_packages=self.runtime_packages,
            system_log_level=system_log_level(fn.logging),
        )
        if self._closed:
            raise LambdaServiceError("the pool is closed: lamina local is stopping")
        envs.starting += 1
        self._starting.add(worker)
        try:
            await worker.start()
        except BaseException:
            await worker.stop()  # a start cut short (its call cancelled) leaves no process behind
            raise
        finally:
            envs.starting -= 1
            self._starting.discard(worker)
        return _Environment(worker=worker, provisioned=provisioned, revision=fn.revision)

    # -- keep-alive ----------------------------------------------------------------------------
    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self.reap_interval)
            await self.reap(time.monotonic())

    async def reap(self, now: float) -> int:
        """Stop on-demand environments idle longer than the function's keep-alive."""
        victims: list[_Environment] = []
        for envs in self._functions.values():
            keep: list[_Environment] = []
            for env in envs.idle:
                expired = now - env.last_used >= envs.config.idle_timeout_seconds
                (victims if expired and not env.provisioned else keep).append(env)
            envs.idle = keep
        await asyncio.gather(*(e.worker.stop() for e in victims), return_exceptions=True)
        return len(victims)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

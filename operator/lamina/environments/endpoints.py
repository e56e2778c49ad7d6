"""Where a cluster gateway finds environments: a source of endpoints that it can also ask to scale."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from lamina.environments.base import FunctionConfig
from lamina.resources.pod_state import PodProblem


@dataclass(frozen=True)
class PodSet:
    """What a source knows of one function's environments ("host:port" endpoints)."""

    #: Ready by the orchestrator's own readiness (the kubelet's probe): take requests now.
    ready: tuple[str, ...] = ()
    #: Have an address but are not Ready yet (a pod whose containers are still starting): the pool may
    #: probe them itself, so a held request does not wait for the kubelet's next probe.
    starting: tuple[str, ...] = ()
    #: Why environments are not coming up (an image that cannot be pulled, a failed init container,
    #: a crash at start), or None. It may be one pod's alone (the node had room for all but one).
    problem: PodProblem | None = None
    #: Pods with no address yet and no problem (being scheduled, creating their sandbox): coming,
    #: so a request that waits for an environment still has one to wait for whatever ``problem`` says.
    pending: int = 0
    #: Those of ``ready`` that are claimed pool pods: given back by deleting them, not by scaling.
    pooled: tuple[str, ...] = ()

    @classmethod
    def of(
        cls,
        ready: Iterable[str],
        starting: Iterable[str] = (),
        problem: PodProblem | None = None,
        pending: int = 0,
        pooled: Iterable[str] = (),
    ) -> PodSet:
        return cls(tuple(sorted(ready)), tuple(sorted(starting)), problem, pending, tuple(sorted(pooled)))


Listener = Callable[[str, PodSet], None]  # (function key, its environments)


class ScaleTargetMissing(Exception):
    """What a source scales does not exist yet: a Function the gateway already knows, whose
    Deployment the operator has not made. The caller asks again later; nothing is wrong."""


class Claims(Protocol):
    """Warm pool pods a cold start may claim instead of starting a pod of the function's own."""

    def can_claim(self, fn: FunctionConfig) -> bool:
        """Whether ``fn`` takes pool pods and one is idle now."""

    async def claim(self, fn: FunctionConfig) -> str | None:
        """An idle pool pod made ``fn``'s environment (its endpoint, INIT done), or None when none
        could be claimed; raises EnvironmentFailed when ``fn`` cannot be handed over at all."""

    async def release(self, fn: FunctionConfig, endpoint: str) -> None:
        """Delete the claimed pool pod at ``endpoint``: a pool pod is never handed another function."""


class EndpointSource(Protocol):
    """Ready environments of each function, and the knob that makes more or fewer of them."""

    def subscribe(self, listener: Listener) -> None:
        """`listener` is called (on the event loop) whenever a function's `PodSet` changes."""

    async def start(self) -> None: ...

    async def scale(self, fn: FunctionConfig, replicas: int, retire: str | None = None) -> None:
        """Ask for `replicas` environments; `retire` names the endpoint to remove first when shrinking."""

    async def close(self) -> None: ...


class StaticEndpointSource:
    """Endpoints per function set by hand: for tests, benchmarks and gateways in front of fixed pools."""

    def __init__(self, endpoints: dict[str, list[str]]) -> None:
        self.pods = {key: PodSet.of(eps) for key, eps in endpoints.items()}
        self.requested: dict[str, int] = {}
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def start(self) -> None:
        for key, pods in self.pods.items():
            for listener in self._listeners:
                listener(key, pods)

    async def scale(self, fn: FunctionConfig, replicas: int, retire: str | None = None) -> None:
        self.requested[fn.pool_key] = replicas

    def set_endpoints(self, key: str, endpoints: list[str]) -> None:
        self.set_pods(key, PodSet.of(endpoints))

    def set_pods(self, key: str, pods: PodSet) -> None:
        self.pods[key] = pods
        loop = asyncio.get_running_loop()
        for listener in self._listeners:
            loop.call_soon(listener, key, pods)

    async def close(self) -> None:
        return None

"""PoolClaims' holds: what a replica writes to hold pods ahead, and a cold start on a held pod (the
hand-over alone, the claim after it). The API server is a small in-memory stand-in that applies the
conditional patches as the real one does (409 on a stale resourceVersion); the pods' servers a
stand-in that takes one hand-over each. The real API server and pods run in
tests/cluster/test_pool_cold_starts.py."""

from __future__ import annotations

import asyncio
import copy
import json
import time
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from lamina.environments.base import FunctionConfig
from lamina.environments.pod_client import Reply
from lamina.environments.pool_claims import HOLD_S, PoolClaims
from lamina.resources import labels
from lamina.resources.pool_pods import HELD_BY, HELD_UNTIL

POOL = "python3.12-128"


def api_pod(i: int) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"pool-{i}",
            "namespace": "ns",
            "uid": f"uid-{i}",
            "resourceVersion": "1",
            "labels": {labels.NAME: labels.POOL_APP, labels.POOL: POOL, labels.POOL_STATE: labels.IDLE},
            "annotations": {},
        },
        "status": {"podIP": f"10.0.0.{i}", "conditions": [{"type": "Ready", "status": "True"}]},
    }


class Core:
    """The pods API: merge patches conditional on metadata.resourceVersion; every write recorded."""

    def __init__(self, pods: list[dict[str, Any]]) -> None:
        self.pods = {p["metadata"]["name"]: p for p in pods}
        self.writes: list[tuple[str, dict[str, Any]]] = []
        self.deleted: list[str] = []

    def patch_namespaced_pod(
        self, name: str, namespace: str, body: dict[str, Any], **_: Any
    ) -> dict[str, Any]:
        pod = self.pods.get(name)
        if pod is None:
            raise ApiException(status=404)
        meta = body["metadata"]
        if meta.get("resourceVersion") not in (None, pod["metadata"]["resourceVersion"]):
            raise ApiException(status=409)
        self.writes.append((name, body))
        for key in ("labels", "annotations"):
            for k, v in (meta.get(key) or {}).items():
                if v is None:
                    pod["metadata"][key].pop(k, None)
                else:
                    pod["metadata"][key][k] = v
        pod["metadata"]["resourceVersion"] = str(int(pod["metadata"]["resourceVersion"]) + 1)
        return copy.deepcopy(pod)

    def read_namespaced_pod(self, name: str, namespace: str) -> dict[str, Any]:
        if name not in self.pods:
            raise ApiException(status=404)
        return copy.deepcopy(self.pods[name])

    def delete_namespaced_pod(self, name: str, namespace: str) -> None:
        self.deleted.append(name)
        self.pods.pop(name, None)


class Pods:
    """Pool pods' servers: each takes one hand-over (a second answers 409)."""

    def __init__(self) -> None:
        self.handed: dict[str, str] = {}  # address -> function

    async def request(
        self, endpoint: str, method: str, path: str, headers: Any, body: bytes, within: float
    ) -> Reply:
        assert (method, path) == ("POST", "/specialize")
        function = json.loads(body)["function"]
        if endpoint in self.handed:
            return Reply(409, {}, b"already specialized")
        self.handed[endpoint] = function
        return Reply(200, {}, b'{"initDurationMs": 3}')


async def handover(fn: FunctionConfig) -> dict[str, Any]:
    return {"function": fn.name}


def claims_on(core: Core, pods: Pods, gateway_id: str = "gw-1", holds: int = 1) -> PoolClaims:
    claims = PoolClaims(client.ApiClient(), "ns", handover, gateway_id, pods=pods, holds=holds)
    claims.core = core
    for pod in core.pods.values():
        claims._on_pod("ADDED", copy.deepcopy(pod))
    return claims


def fn(name: str) -> FunctionConfig:
    return FunctionConfig(name=name, namespace="ns", pool=POOL, uid=f"uid-{name}")


def held_by(core: Core) -> dict[str, str]:
    return {
        n: p["metadata"]["annotations"][HELD_BY]
        for n, p in core.pods.items()
        if HELD_BY in p["metadata"]["annotations"]
    }


def test_a_replica_holds_pods_only_of_pools_it_cold_starts_from_and_leaves_one_to_the_race() -> None:
    async def scenario() -> None:
        core, pods = Core([api_pod(i) for i in range(3)]), Pods()
        claims = claims_on(core, pods, holds=5)
        await claims.hold(time.time())
        assert core.writes == []  # no cold start from this pool yet: nothing held
        assert await claims.claim(fn("one")) is not None  # by the race: a claim patch with the hand-over
        await asyncio.sleep(0)
        await claims.hold(time.time())
        assert len(held_by(core)) == 1  # two idle pods left: one held, one left to the race
        [(name, holder)] = held_by(core).items()
        assert holder == "gw-1" and core.pods[name]["metadata"]["labels"][labels.POOL_STATE] == labels.IDLE

    asyncio.run(scenario())


def test_a_cold_start_on_a_held_pod_is_the_hand_over_then_one_conditional_claim() -> None:
    async def scenario() -> None:
        core, pods = Core([api_pod(i) for i in range(3)]), Pods()
        claims = claims_on(core, pods)
        claims._wanted[("ns", POOL)] = time.monotonic()
        await claims.hold(time.time())
        [held] = held_by(core)
        core.writes.clear()

        endpoint = await claims.claim(fn("two"))
        assert endpoint == f"10.0.0.{held[-1]}:8080" and pods.handed[endpoint] == "two"
        assert core.writes == []  # nothing written before the pod served: the claim comes after
        await asyncio.gather(*claims._tasks)
        [(name, patch)] = core.writes
        assert name == held and patch["metadata"]["resourceVersion"]  # conditional
        meta = core.pods[held]["metadata"]
        assert (
            meta["labels"][labels.POOL_STATE] == labels.SERVING and meta["labels"][labels.FUNCTION] == "two"
        )
        assert HELD_BY not in meta["annotations"] and HELD_UNTIL not in meta["annotations"]

    asyncio.run(scenario())


def test_a_held_pod_another_gateway_handed_over_first_is_deleted_and_the_next_one_used() -> None:
    async def scenario() -> None:
        core, pods = Core([api_pod(i) for i in range(3)]), Pods()
        claims = claims_on(core, pods)
        claims._wanted[("ns", POOL)] = time.monotonic()
        await claims.hold(time.time())
        [held] = held_by(core)
        for pod in core.pods.values():  # the watch brings the hold
            claims._on_pod("MODIFIED", copy.deepcopy(pod))
        pods.handed[f"10.0.0.{held[-1]}:8080"] = "rival"  # a race that had not seen the hold

        endpoint = await claims.claim(fn("three"))
        assert endpoint is not None and endpoint != f"10.0.0.{held[-1]}:8080"
        assert pods.handed[endpoint] == "three" and held in core.deleted  # never two functions in one

    asyncio.run(scenario())


def test_another_replicas_hold_is_never_raced_for_and_a_stopping_replica_gives_its_holds_back() -> None:
    async def scenario() -> None:
        core, pods = Core([api_pod(i) for i in range(2)]), Pods()
        a = claims_on(core, pods, gateway_id="gw-a")
        a._wanted[("ns", POOL)] = time.monotonic()
        await a.hold(time.time())
        [held] = held_by(core)
        b = claims_on(core, pods, gateway_id="gw-b")  # sees a's hold
        first = await b.claim(fn("four"))
        assert first == f"10.0.0.{1 - int(held[-1])}:8080"  # the unheld one
        assert await b.claim(fn("five")) is None  # only a's held pod is left: b falls back
        assert f"10.0.0.{held[-1]}:8080" not in pods.handed

        await a.close()
        assert held_by(core) == {}  # given back at once, not in HOLD_S
        assert core.pods[held]["metadata"]["labels"][labels.POOL_STATE] == labels.IDLE

    asyncio.run(scenario())


def test_a_hold_is_renewed_a_third_through() -> None:
    async def scenario() -> None:
        core, pods = Core([api_pod(i) for i in range(3)]), Pods()
        claims = claims_on(core, pods)
        claims._wanted[("ns", POOL)] = time.monotonic()
        now = time.time()
        await claims.hold(now)
        writes = len(core.writes)
        await claims.hold(now + HOLD_S / 6)
        assert len(core.writes) == writes  # fresh: not written again
        await claims.hold(now + HOLD_S / 2)
        assert len(core.writes) == writes + 1 and len(held_by(core)) == 1  # renewed, the same one

    asyncio.run(scenario())


def test_a_replica_that_cannot_reach_the_api_server_stops_all_the_same() -> None:
    """Giving holds back on stop when no answer comes: logged, the holds left to expire."""

    async def scenario() -> None:
        core, pods = Core([api_pod(i) for i in range(3)]), Pods()
        claims = claims_on(core, pods)
        claims._wanted[("ns", POOL)] = time.monotonic()
        await claims.hold(time.time())
        [held] = held_by(core)

        def unreachable(*args: Any, **kwargs: Any) -> None:
            raise ConnectionRefusedError("the API server is gone")

        core.patch_namespaced_pod = unreachable  # type: ignore[method-assign]
        await claims.close()
        assert held_by(core) == {held: "gw-1"}  # left to expire

    asyncio.run(scenario())

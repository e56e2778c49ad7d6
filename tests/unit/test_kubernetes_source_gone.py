"""A Kubernetes source whose position is too old for the API server ("410 Gone").

The cases a real API server cannot be made to show on demand (objects changed and deleted during the
gap, seen by a worker that knew them) are driven here at the source's own seam: its ``_get`` (one GET
of the API server) answers from a script; everything above it (the watch thread, the diff, the gap
event, the position) is the real code. tests/cluster/test_kubernetes_source.py gets real 410s from
the API server (a CRD change rebuilds its watch cache) for a running and a restarted worker.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from lamina.eventsources.kubernetes import (
    GAP_DETAIL_TYPE,
    KubernetesSource,
    MemoryCheckpoint,
    Watched,
    _Gone,
)


class Answer:
    def __init__(self, doc: Any = None, lines: list[dict[str, Any]] | None = None) -> None:
        self.data = json.dumps(doc).encode() if doc is not None else b""
        self.lines = lines or []

    def stream(self, amount: int, decode_content: bool = True):
        for line in self.lines:
            yield json.dumps(line).encode() + b"\n"

    def release_conn(self) -> None:
        pass


def cm(uid: str, name: str, rv: str) -> dict[str, Any]:
    return {"metadata": {"uid": uid, "name": name, "namespace": "shop", "resourceVersion": rv}}


class Scripted(KubernetesSource):
    """The API server: watching from 100 is too old; a list says what exists at 200."""

    def __init__(self, **kw: Any) -> None:
        watched = Watched("v1", "ConfigMap", "shop", None, frozenset({"ADDED", "MODIFIED", "DELETED"}), "w")
        super().__init__(watched, api_client=lambda: type("Api", (), {"close": lambda self: None})(), **kw)
        self.watches: list[str] = []
        self.idle = threading.Event()

    def _get(self, path: str, **query: Any) -> Any:
        if path == "/api/v1":
            return Answer({"resources": [{"name": "configmaps", "kind": "ConfigMap", "namespaced": True}]})
        if query.get("watch"):
            self.watches.append(query["resourceVersion"])
            if query["resourceVersion"] == "100":
                raise _Gone("too old resource version: 100 (150)")
            if len(self.watches) == 2:
                return Answer(lines=[{"type": "ADDED", "object": cm("u4", "late", "201")}])
            self.idle.wait(5)  # nothing more happens
            return Answer()
        return Answer(
            {
                "metadata": {"resourceVersion": "200"},
                "items": [cm("u1", "kept", "150"), cm("u3", "new", "160")],
            }
        )


async def drain(source: KubernetesSource, count: int) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for _ in range(100):
        for record in await source.fetch(10, 0.1):
            events.append(source.entry(record))
            await source.ack([record])
        if len(events) >= count:
            return events
    raise AssertionError(f"got {len(events)} events, wanted {count}: {events}")


async def test_a_worker_that_knew_the_objects_gets_the_gap_and_the_differences() -> None:
    checkpoint = MemoryCheckpoint("100")
    source = Scripted(checkpoint=checkpoint, save_interval=0.05)
    # What this worker had seen before its watch broke: u1 at 10 (changed since), u2 (deleted since).
    source._index = {"u1": cm("u1", "kept", "10"), "u2": cm("u2", "gone", "20")}
    await source.connect()
    try:
        events = await drain(source, 5)
    finally:
        source.idle.set()
        await source.close()
    gap, *changes = events
    assert gap["detail-type"] == GAP_DETAIL_TYPE
    assert gap["detail"]["reason"] == "ResourceVersionTooOld"
    assert (gap["detail"]["lastResourceVersion"], gap["detail"]["resourceVersion"]) == ("100", "200")
    assert gap["detail"]["workerKnewObjects"] is True
    assert [o["name"] for o in gap["detail"]["objects"]] == ["kept", "new"]
    summary = [(e["detail"]["type"], e["detail"]["name"], e["detail"].get("resync", False)) for e in changes]
    assert summary == [
        ("MODIFIED", "kept", True),
        ("ADDED", "new", True),
        ("DELETED", "gone", True),
        ("ADDED", "late", False),  # and the watch goes on from the list's resourceVersion
    ]
    assert source.watches[:2] == ["100", "200"]
    assert checkpoint.value == "201"


async def test_a_restarted_worker_is_told_what_exists_without_a_replay_as_changes() -> None:
    source = Scripted(checkpoint=MemoryCheckpoint("100"), starting_position="LATEST", save_interval=0.05)
    await source.connect()
    try:
        events = await drain(source, 2)
    finally:
        source.idle.set()
        await source.close()
    gap, late = events
    assert gap["detail-type"] == GAP_DETAIL_TYPE and gap["detail"]["workerKnewObjects"] is False
    assert {o["name"] for o in gap["detail"]["objects"]} == {"kept", "new"}
    assert late["detail"]["name"] == "late" and "resync" not in late["detail"]

"""Which warm pool pods a gateway may claim or hold, and the patches it sends (resources/pool_pods.py)."""

from __future__ import annotations

from typing import Any

from lamina.resources import labels
from lamina.resources.pool_pods import (
    CLAIMED_AT,
    HELD_BY,
    HELD_UNTIL,
    PoolPod,
    claim_patch,
    claimable,
    hold_patch,
    iso,
    pool_pod,
    ranked,
    to_hold,
    unhold_patch,
    usable_holds,
)

NOW = 1_800_000_000.0


def api_pod(name: str, state: str = labels.IDLE, ready: bool = True, **annotations: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "ns",
            "resourceVersion": "7",
            "labels": {labels.NAME: labels.POOL_APP, labels.POOL: "py312-128", labels.POOL_STATE: state},
            "annotations": annotations,
        },
        "status": {
            "podIP": "10.0.0.9",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def pod(name: str, held_by: str | None = None, until: float | None = None, **kw: Any) -> PoolPod:
    values: dict[str, Any] = {
        "namespace": "ns",
        "pool": "p",
        "state": labels.IDLE,
        "address": "10.0.0.1:8080",
        "ready": True,
        "resource_version": "1",
    }
    values.update(kw)
    return PoolPod(name=name, held_by=held_by, held_until=until, **values)


def names(pods: list[PoolPod]) -> list[str]:
    return sorted(p.name for p in pods)


def test_a_pool_pod_is_read_with_its_hold_and_claim() -> None:
    found = pool_pod(api_pod("a", **{HELD_BY: "gw-1", HELD_UNTIL: iso(NOW + 30), CLAIMED_AT: iso(NOW)}), 8080)
    assert found is not None
    assert (found.address, found.ready, found.state) == ("10.0.0.9:8080", True, labels.IDLE)
    assert found.held_by == "gw-1" and found.held_until == NOW + 30 and found.claimed_at == NOW
    assert found.held(NOW) and not found.held(NOW + 30)


def test_a_pod_being_deleted_or_of_no_pool_is_none_and_bad_times_are_ignored() -> None:
    deleting = api_pod("a")
    deleting["metadata"]["deletionTimestamp"] = "2026-11-30T10:00:00Z"
    assert pool_pod(deleting, 8080) is None
    other = api_pod("b")
    del other["metadata"]["labels"][labels.POOL]
    assert pool_pod(other, 8080) is None
    garbled = pool_pod(api_pod("c", **{HELD_BY: "gw-1", HELD_UNTIL: "soon"}), 8080)
    assert garbled is not None and garbled.held_until is None and not garbled.held(NOW)


def test_the_race_takes_available_pods_nobody_holds() -> None:
    pods = [
        pod("free"),
        pod("held", held_by="gw-2", until=NOW + 5),
        pod("expired", held_by="gw-2", until=NOW - 1),
        pod("mine", held_by="gw-1", until=NOW + 5),  # held pods go through the holder's own path
        pod("claimed", state=labels.CLAIMED),
        pod("starting", ready=False),
        pod("no-ip", address=None),
        pod("busy"),
    ]
    assert names(claimable(pods, NOW, taken={"busy"})) == ["expired", "free"]


def test_a_replica_uses_only_its_own_holds_with_time_to_spare() -> None:
    pods = [
        pod("mine", held_by="gw-1", until=NOW + 20),
        pod("ending", held_by="gw-1", until=NOW + 3),
        pod("theirs", held_by="gw-2", until=NOW + 20),
        pod("mine-busy", held_by="gw-1", until=NOW + 20),
        pod("mine-starting", held_by="gw-1", until=NOW + 20, ready=False),
        pod("free"),
    ]
    assert names(usable_holds(pods, "gw-1", NOW, margin=5, taken={"mine-busy"})) == ["mine"]


def test_a_replica_holds_up_to_its_share_and_never_the_last_pod_the_race_could_take() -> None:
    three = [pod("a"), pod("b"), pod("c")]
    assert len(to_hold(three, "gw-1", NOW, want=1, margin=5)) == 1
    assert len(to_hold(three, "gw-1", NOW, want=5, margin=5)) == 2  # one is left to the race
    assert to_hold([pod("a")], "gw-1", NOW, want=1, margin=5) == []
    held = [pod("a", held_by="gw-1", until=NOW + 20), pod("b"), pod("c")]
    assert to_hold(held, "gw-1", NOW, want=1, margin=5) == []  # it has its one
    # Another replica's hold is no pod to take; with one free pod left, nothing is held.
    theirs = [pod("a", held_by="gw-2", until=NOW + 20), pod("b")]
    assert to_hold(theirs, "gw-1", NOW, want=1, margin=5) == []
    # A hold about to expire counts as none: its pod is renewed (it is its own replica's to renew),
    # and another is taken only if the race keeps one.
    ending = [pod("a", held_by="gw-1", until=NOW + 3), pod("b"), pod("c")]
    assert names(to_hold(ending, "gw-1", NOW, want=1, margin=5)) in (["b"], ["c"])


def test_replicas_rank_pods_each_in_its_own_stable_order() -> None:
    pods = [pod(f"pod-{i}") for i in range(8)]
    one, again = ranked("gw-1", pods), ranked("gw-1", list(reversed(pods)))
    assert [p.name for p in one] == [p.name for p in again]
    assert [p.name for p in one] != [p.name for p in ranked("gw-2", pods)]


def test_the_patches_are_conditional_and_a_claim_ends_the_hold() -> None:
    hold = hold_patch("41", "gw-1", NOW + 30)
    assert hold == {
        "metadata": {"resourceVersion": "41", "annotations": {HELD_BY: "gw-1", HELD_UNTIL: iso(NOW + 30)}}
    }
    assert unhold_patch("42")["metadata"] == {
        "resourceVersion": "42",
        "annotations": {HELD_BY: None, HELD_UNTIL: None},
    }
    claim = claim_patch("43", "gw-1", "hello", "uid-1", NOW, state=labels.SERVING)["metadata"]
    assert claim["resourceVersion"] == "43"
    assert claim["labels"] == {labels.POOL_STATE: labels.SERVING, labels.FUNCTION: "hello"}
    assert claim["annotations"] == {
        labels.CLAIMED_BY: "gw-1",
        CLAIMED_AT: iso(NOW),
        HELD_BY: None,
        HELD_UNTIL: None,
    }
    assert claim["ownerReferences"][0]["uid"] == "uid-1"
    assert "ownerReferences" not in claim_patch("43", "gw-1", "hello", None, NOW)["metadata"]
    assert (
        claim_patch("43", "gw-1", "hello", None, NOW)["metadata"]["labels"][labels.POOL_STATE]
        == labels.CLAIMED
    )

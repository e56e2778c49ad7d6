"""The rollout state machine: start, steps, success, rollback on errors, staying back, manual rollback."""

from __future__ import annotations

from lamina.api import RolloutPolicy
from lamina.api.rollouts import Counts, ErrorWindow, advance
from lamina.api.versions import Route

T0 = 1_800_000_000.0
CANARY = RolloutPolicy(
    type="Canary", percent=10, interval_seconds=60, error_rate_threshold=0.2, window_seconds=30
)
LINEAR = RolloutPolicy(type="Linear", percent=25, interval_seconds=10)


def no_errors(version: str, window: float, since: float) -> Counts:
    return Counts(100, 0)


def failing(version: str, window: float, since: float) -> Counts:
    return Counts(10, 5) if version == "2" else Counts(100, 0)


def test_a_new_alias_starts_on_its_version_without_a_rollout() -> None:
    d = advance("live", CANARY, "1", None, T0, no_errors)
    assert d.route == Route("1") and d.events == [] and "rollout" not in d.status


def test_canary_starts_bakes_and_succeeds() -> None:
    d = advance("live", CANARY, "2", {"functionVersion": "1"}, T0, no_errors)
    assert d.route == Route("1", "2", 0.1)
    assert d.status["additionalVersionWeights"] == {"2": 0.1}
    assert d.status["rollout"]["phase"] == "Progressing"
    assert [e[1] for e in d.events] == ["RolloutStarted"] and d.revisit is not None
    d = advance("live", CANARY, "2", d.status, T0 + 30, no_errors)
    assert d.route == Route("1", "2", 0.1) and d.events == []
    d = advance("live", CANARY, "2", d.status, T0 + 61, no_errors)
    assert d.route == Route("2")
    assert d.status["functionVersion"] == "2" and d.status["rollout"]["phase"] == "Succeeded"
    assert [e[1] for e in d.events] == ["RolloutSucceeded"]


def test_linear_steps_up_to_everything() -> None:
    status: dict = {"functionVersion": "1"}
    weights, now = [], T0
    for _ in range(5):
        d = advance("live", LINEAR, "2", status, now, no_errors)
        status, now = d.status, now + 11
        weights.append(d.route.weight if d.route.additional else d.route.primary)
    assert weights == [0.25, 0.5, 0.75, "2", "2"]


def test_error_rate_over_the_threshold_rolls_back_and_stays_back() -> None:
    d = advance("live", CANARY, "2", {"functionVersion": "1"}, T0, no_errors)
    d = advance("live", CANARY, "2", d.status, T0 + 5, failing)
    assert d.route == Route("1")
    assert d.status["rollout"]["phase"] == "RolledBack"
    assert d.events[0][:2] == ("Warning", "RolloutRolledBack")
    assert "failed 5 of 10 invocations" in d.status["rollout"]["message"]
    again = advance("live", CANARY, "2", d.status, T0 + 100, no_errors)
    assert again.route == Route("1") and again.events == []  # version 2 is not retried
    new = advance("live", CANARY, "3", again.status, T0 + 200, no_errors)
    assert new.route == Route("1", "3", 0.1)  # a new version rolls out again


def test_too_few_invocations_do_not_roll_back() -> None:
    d = advance("live", CANARY, "2", {"functionVersion": "1"}, T0, no_errors)
    d = advance("live", CANARY, "2", d.status, T0 + 5, lambda v, w, s: Counts(4, 4))
    assert d.route == Route("1", "2", 0.1)


def test_setting_the_alias_back_is_a_rollback() -> None:
    d = advance("live", CANARY, "2", {"functionVersion": "1"}, T0, no_errors)
    d = advance("live", CANARY, "1", d.status, T0 + 5, no_errors)
    assert d.route == Route("1") and d.status["rollout"]["phase"] == "RolledBack"
    assert d.events[0][1] == "RolloutAborted"


def test_error_window_takes_deltas_and_survives_a_restart() -> None:
    w = ErrorWindow()
    w.observe("k", 0, 100, 10)
    w.observe("k", 50, 150, 10)
    w.observe("k", 100, 200, 30)
    assert w.counts("k", 100, 60, 0) == Counts(100, 20)  # from the newest sample at or before t=40
    w.observe("k", 110, 5, 1)  # the gateway restarted
    assert w.counts("k", 110, 60, 0) == Counts(5, 1)

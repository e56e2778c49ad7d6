"""The payload of a scheduled tick: EventBridge's Scheduled Event, or the constant input."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from lamina.schedule import event_id, scheduled_event

FIRE = datetime(2024, 3, 1, 1, 23, tzinfo=UTC)


def test_default_event_has_the_scheduled_event_shape() -> None:
    event = scheduled_event("nightly", FIRE, None, region="eu-west-1", account="123456789012")
    assert event == {
        "version": "0",
        "id": event["id"],
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "123456789012",
        "time": "2024-03-01T01:23:00Z",
        "region": "eu-west-1",
        "resources": ["arn:aws:events:eu-west-1:123456789012:rule/nightly"],
        "detail": {},
    }
    assert uuid.UUID(event["id"]).version == 5


def test_defaults_are_the_installation_region_and_zero_account(monkeypatch) -> None:
    event = scheduled_event("r", FIRE, None)
    assert (event["region"], event["account"]) == ("us-east-1", "000000000000")
    monkeypatch.setenv("LAMINA_REGION", "eu-west-1")  # one region everywhere: the installation's
    assert scheduled_event("r", FIRE, None)["region"] == "eu-west-1"
    assert event["resources"] == ["arn:aws:events:us-east-1:000000000000:rule/r"]


def test_time_is_rendered_in_utc_whatever_the_input_zone() -> None:
    local = datetime(2024, 7, 4, 12, 0, tzinfo=ZoneInfo("America/New_York"))
    assert scheduled_event("r", local, None)["time"] == "2024-07-04T16:00:00Z"


def test_id_is_deterministic_per_rule_and_tick() -> None:
    first = scheduled_event("nightly", FIRE, None)["id"]
    same_instant_other_zone = FIRE.astimezone(ZoneInfo("Asia/Tokyo"))
    assert scheduled_event("nightly", same_instant_other_zone, None)["id"] == first
    assert event_id("nightly", FIRE) == first
    assert scheduled_event("other", FIRE, None)["id"] != first
    assert scheduled_event("nightly", FIRE.replace(minute=24), None)["id"] != first


@pytest.mark.parametrize(
    "constant", [{"job": "cleanup", "days": [1, 2]}, "just a string", 42, [1, "a"], False]
)
def test_constant_input_is_the_whole_event(constant: object) -> None:
    assert scheduled_event("r", FIRE, constant) == constant


def test_constant_input_is_copied_not_shared() -> None:
    constant = {"nested": {"n": 1}}
    event = scheduled_event("r", FIRE, constant)
    event["nested"]["n"] = 2
    assert constant == {"nested": {"n": 1}}


def test_naive_fire_time_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        scheduled_event("r", datetime(2024, 1, 1), None)

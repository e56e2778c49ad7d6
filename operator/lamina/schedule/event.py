"""The payload a scheduled tick hands to the function."""

from __future__ import annotations

import copy
import uuid
from datetime import UTC, datetime
from typing import Any

from lamina_runtime.environment import ACCOUNT_ID, installation_region

# Fixed namespace so that the same (rule, fire time) always yields the same event id,
# letting a consumer drop a tick that was fired twice.
EVENT_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://lamina.dev/schedule/event-id")


def event_id(rule_name: str, fire_time: datetime) -> str:
    """Deterministic id of one tick of one rule."""
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, f"{rule_name}\n{_iso_z(fire_time)}"))


def _iso_z(fire_time: datetime) -> str:
    if fire_time.tzinfo is None or fire_time.utcoffset() is None:
        raise ValueError(f"fire_time must be timezone-aware (got {fire_time.isoformat()})")
    return fire_time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def scheduled_event(
    rule_name: str,
    fire_time: datetime,
    input: Any | None,
    region: str | None = None,
    account: str = ACCOUNT_ID,
) -> Any:
    """The event for one tick.

    With ``input`` the function receives exactly that JSON value (EventBridge's
    "constant input" target setting); without it, the standard Scheduled Event.
    """
    time = _iso_z(fire_time)
    region = region or installation_region()
    if input is not None:
        return copy.deepcopy(input)
    return {
        "version": "0",
        "id": event_id(rule_name, fire_time),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": account,
        "time": time,
        "region": region,
        "resources": [f"arn:aws:events:{region}:{account}:rule/{rule_name}"],
        "detail": {},
    }

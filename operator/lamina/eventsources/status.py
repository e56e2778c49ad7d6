"""What a mapping worker reports: Lambda's State / LastProcessingResult, plus counters."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

OK = "OK"
NO_RECORDS = "No records processed"
FUNCTION_FAILED = "PROBLEM: Function call failed"
THROTTLED = "PROBLEM: Function call throttled"
NOT_FOUND = "PROBLEM: Function not found"
NO_DESTINATION = "PROBLEM: Records exhausted their retries and there is no onFailure destination; kept"
TOO_LARGE_KEPT = (
    "PROBLEM: A record is larger than the function's payload limit and there is no onFailure "
    "destination; kept"
)


@dataclass(slots=True)
class MappingStatus:
    """What the worker reports; mirrors Lambda's State / LastProcessingResult plus counters."""

    state: str = "Creating"
    state_transition_reason: str = "User action"
    last_processing_result: str = NO_RECORDS
    iterator_age_ms: int = 0
    last_error: str | None = None
    records_received: int = 0
    records_filtered: int = 0
    records_succeeded: int = 0
    records_dead_lettered: int = 0
    records_kept_without_destination: int = 0
    invocations: int = 0
    function_errors: int = 0
    partial_failures: int = 0
    throttles: int = 0
    retries: int = 0
    bisections: int = 0
    broker_errors: int = 0

    #: The fields that count what happened (summed across the workers of one mapping).
    COUNTERS: ClassVar[tuple[str, ...]] = (
        "records_received",
        "records_filtered",
        "records_succeeded",
        "records_dead_lettered",
        "records_kept_without_destination",
        "invocations",
        "function_errors",
        "partial_failures",
        "throttles",
        "retries",
        "bisections",
        "broker_errors",
    )

    @classmethod
    def merged(cls, statuses: Sequence[MappingStatus]) -> MappingStatus:
        """One status for several workers of one mapping: counters summed, the oldest record's age,
        a problem if any worker has one, else OK if any processed records; the rest is the first's."""
        if len(statuses) == 1:
            return statuses[0]
        merged = dataclasses.replace(statuses[0])
        for name in cls.COUNTERS:
            setattr(merged, name, sum(getattr(s, name) for s in statuses))
        merged.iterator_age_ms = max(s.iterator_age_ms for s in statuses)
        problems = [s for s in statuses if s.last_processing_result.startswith("PROBLEM")]
        if problems:
            merged.last_processing_result = problems[0].last_processing_result
            merged.last_error = problems[0].last_error
        elif any(s.last_processing_result == "OK" for s in statuses):
            merged.last_processing_result = "OK"
        return merged

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "stateTransitionReason": self.state_transition_reason,
            "lastProcessingResult": self.last_processing_result,
            "iteratorAgeMs": self.iterator_age_ms,
            "lastError": self.last_error,
            "counters": {_camel(name): getattr(self, name) for name in self.COUNTERS},
        }


def _camel(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(part.title() for part in rest)

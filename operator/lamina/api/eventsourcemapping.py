"""The EventSourceMapping kind: what invokes a function without a caller (queues, schedules)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, ClassVar, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import ConfigDict, Field, field_validator, model_validator

from lamina.api.common import (
    QUALIFIED_FUNCTION,
    SCHEDULE,
    BrokerChoice,
    Endpoint,
    FieldError,
    LaminaModel,
    LaminaObject,
    StatusBase,
    cel_exactly_one,
    split_qualifier,
)
from lamina.schedule.expressions import parse_schedule

MAX_FILTERS = 5


class ScheduleSource(LaminaModel):
    """An EventBridge schedule: ``rate(5 minutes)`` or ``cron(0 12 * * ? *)``."""

    expression: str = Field(pattern=SCHEDULE, max_length=256, description="rate(...), cron(...) or at(...).")
    timezone: str = Field(default="UTC", max_length=64, description="IANA time zone of cron expressions.")
    input: Any = Field(
        default=None,
        description="JSON passed as the event; by default an EventBridge Scheduled Event.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )

    @field_validator("expression")
    @classmethod
    def _parse(cls, expression: str) -> str:
        parse_schedule(expression)  # lamina.schedule owns the grammar (and its error messages)
        return expression

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, timezone: str) -> str:
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {timezone!r}") from None
        return timezone


class EventSource(BrokerChoice):
    """A broker that delivers records, or a schedule."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [cel_exactly_one("redis", "nats", "rabbitmq", "schedule")]
        }
    )

    schedule: ScheduleSource | None = None

    CHOICES: ClassVar[tuple[str, ...]] = ("redis", "nats", "rabbitmq", "schedule")

    def describe(self) -> str:
        """A short human label, e.g. ``redis orders`` or ``schedule rate(5 minutes)``."""
        kind = self.kind
        if self.schedule is not None:
            return f"schedule {self.schedule.expression}"
        target = self.target
        where = {"redis": "stream", "nats": "subject", "rabbitmq": "queue"}[kind]
        return f"{kind} {getattr(target, where)}"


class DestinationConfig(LaminaModel):
    """Where records that could not be processed go."""

    on_failure: Endpoint | None = Field(default=None, description="Receives failed records and why.")


class Filter(LaminaModel):
    """One Lambda event filter pattern (a JSON object)."""

    pattern: str = Field(max_length=4096)

    @field_validator("pattern")
    @classmethod
    def _json_object(cls, pattern: str) -> str:
        try:
            parsed = json.loads(pattern)
        except json.JSONDecodeError as exc:
            raise ValueError(f"must be a JSON object ({exc.msg} at character {exc.pos})") from None
        if not isinstance(parsed, dict):
            raise ValueError("must be a JSON object")
        return pattern


class FilterCriteria(LaminaModel):
    """Records matching none of the filters are dropped without invoking the function."""

    filters: list[Filter] = Field(
        default_factory=list, max_length=MAX_FILTERS, json_schema_extra={"x-kubernetes-list-type": "atomic"}
    )


SCALING_ONLY_QUEUES = (
    "spec.scalingConfig: applies to rabbitmq sources only (Redis and NATS streams keep their order by "
    "processing one batch at a time)"
)


class ScalingConfig(LaminaModel):
    """How many batches of a queue are processed at once (Lambda's SQS ScalingConfig)."""

    maximum_concurrency: int = Field(
        ge=2, le=1000, description="Most batches in flight at once (each invokes the function)."
    )


class EventSourceMappingSpec(LaminaModel):
    """How records flow from a source into a function."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.maximumRecordAgeSeconds) || self.maximumRecordAgeSeconds == -1"
                    " || self.maximumRecordAgeSeconds >= 60",
                    "message": "spec.maximumRecordAgeSeconds must be -1 or between 60 and 604800",
                    "fieldPath": ".maximumRecordAgeSeconds",
                },
                {
                    "rule": "!has(self.scalingConfig) || has(self.source.rabbitmq)",
                    "message": SCALING_ONLY_QUEUES,
                    "fieldPath": ".scalingConfig",
                },
            ]
        }
    )

    function_name: str = Field(
        pattern=QUALIFIED_FUNCTION,
        max_length=192,
        description="Function to invoke; name:alias or name:version targets an alias or a version.",
    )
    source: EventSource
    batch_size: int = Field(default=10, ge=1, le=10000, description="Most records per invocation.")
    maximum_batching_window_seconds: int = Field(
        default=0, ge=0, le=300, description="How long to gather records before invoking."
    )
    starting_position: Literal["TRIM_HORIZON", "LATEST"] = Field(
        default="TRIM_HORIZON", description="Where a new consumer starts reading."
    )
    enabled: bool = Field(default=True, description="false pauses the mapping.")
    maximum_retry_attempts: int = Field(
        default=-1, ge=-1, le=10000, description="Retries of a failed batch; -1 retries until the age limit."
    )
    maximum_record_age_seconds: int = Field(
        default=-1, ge=-1, le=604800, description="Older records are discarded; -1 means no limit."
    )
    bisect_batch_on_function_error: bool = Field(
        default=False, description="Split a failed batch in two and retry the halves."
    )
    function_response_types: list[Literal["ReportBatchItemFailures"]] = Field(
        default_factory=list,
        description="ReportBatchItemFailures lets the handler report partial failures.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    destination_config: DestinationConfig | None = None
    filter_criteria: FilterCriteria | None = None
    scaling_config: ScalingConfig | None = Field(
        default=None, description="rabbitmq only: process several batches at once (default: one)."
    )

    @field_validator("maximum_record_age_seconds")
    @classmethod
    def _age(cls, age: int) -> int:
        if age != -1 and age < 60:
            raise ValueError(f"must be -1 or between 60 and 604800 (got {age})")
        return age

    @model_validator(mode="after")
    def _brokers_only(self) -> EventSourceMappingSpec:
        if self.source.schedule is not None and self.function_response_types:
            raise FieldError("functionResponseTypes", "does not apply to a schedule")
        if self.scaling_config is not None and self.source.kind != "rabbitmq":
            raise FieldError("scalingConfig", SCALING_ONLY_QUEUES.removeprefix("spec.scalingConfig: "))
        return self

    @property
    def concurrency(self) -> int:
        """Batches in flight at once: one unless scalingConfig says more."""
        return self.scaling_config.maximum_concurrency if self.scaling_config is not None else 1

    @property
    def is_schedule(self) -> bool:
        """True when the source is a schedule rather than a broker."""
        return self.source.schedule is not None


class EventSourceMappingStatus(StatusBase):
    """What the consumer or scheduler is doing."""

    state: str | None = Field(default=None, description="Enabled, Disabled, Creating, ...")
    source: str | None = Field(default=None, description="Short label of the source (printer column).")
    last_processing_result: str | None = Field(default=None, description="Outcome of the last batch.")
    iterator_age_ms: int | None = Field(default=None, ge=0, description="Age of the last record read.")
    last_fire_time: datetime | None = Field(default=None, description="When the schedule last fired.")
    next_fire_time: datetime | None = Field(default=None, description="When the schedule fires next.")


class EventSourceMapping(LaminaObject):
    """Connects a queue, stream or schedule to a function."""

    kind: Literal["EventSourceMapping"] = "EventSourceMapping"
    spec: EventSourceMappingSpec
    status: EventSourceMappingStatus | None = None

    @property
    def function(self) -> str:
        """The Function the mapping invokes, without the qualifier of ``spec.functionName``."""
        return split_qualifier(self.spec.function_name)[0]

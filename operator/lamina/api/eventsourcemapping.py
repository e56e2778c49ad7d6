"""The EventSourceMapping kind: what invokes a function without a caller (queues, schedules)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, ClassVar, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import ConfigDict, Field, field_validator, model_validator

from lamina.api.common import (
    DNS_LABEL,
    DNS_SUBDOMAIN,
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


EventType = Literal["ADDED", "MODIFIED", "DELETED"]
EVENT_TYPES: tuple[EventType, ...] = ("ADDED", "MODIFIED", "DELETED")


class KubernetesSource(LaminaModel):
    """Changes of Kubernetes objects of one kind, as EventBridge-shaped events.

    The worker watches with ``serviceAccountName`` (a ServiceAccount of the mapping's namespace) and
    nothing else: the operator grants it no permission, so a mapping shows only what that account
    may already list and watch.
    """

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!(has(self.namespace) && has(self.allNamespaces) && self.allNamespaces)",
                    "message": "namespace and allNamespaces exclude each other",
                }
            ]
        }
    )

    api_version: str = Field(
        pattern=r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?v[0-9]+((alpha|beta)[0-9]+)?$",
        max_length=253,
        description="apiVersion of the objects, e.g. apps/v1 or v1.",
    )
    kind: str = Field(pattern=r"^[A-Z][A-Za-z0-9]*$", max_length=63, description="Kind, e.g. Deployment.")
    namespace: str | None = Field(
        default=None,
        pattern=DNS_LABEL,
        max_length=63,
        description="Namespace to watch (default: the mapping's).",
    )
    all_namespaces: bool = Field(
        default=False, description="Watch every namespace (needs cluster-wide RBAC)."
    )
    label_selector: str | None = Field(default=None, max_length=1024, description="Only objects matching it.")
    event_types: list[EventType] = Field(
        default_factory=lambda: list(EVENT_TYPES),
        min_length=1,
        description="Which changes become events.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    service_account_name: str = Field(
        pattern=DNS_SUBDOMAIN, max_length=253, description="ServiceAccount the worker watches with."
    )

    @model_validator(mode="after")
    def _one_scope(self) -> KubernetesSource:
        if self.namespace is not None and self.all_namespaces:
            raise FieldError("allNamespaces", "namespace and allNamespaces exclude each other")
        return self

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def version(self) -> str:
        return self.api_version.rpartition("/")[2]

    def describe(self) -> str:
        where = "all namespaces" if self.all_namespaces else (self.namespace or "its namespace")
        group = f".{self.group}" if self.group else ""
        return f"kubernetes {self.kind}{group} in {where}"


class EventSource(BrokerChoice):
    """A broker that delivers records, Kubernetes object changes, or a schedule."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel_exactly_one("redis", "nats", "rabbitmq", "kafka", "sqs", "kubernetes", "schedule")
            ]
        }
    )

    kubernetes: KubernetesSource | None = None
    schedule: ScheduleSource | None = None

    CHOICES: ClassVar[tuple[str, ...]] = (
        "redis",
        "nats",
        "rabbitmq",
        "kafka",
        "sqs",
        "kubernetes",
        "schedule",
    )

    def describe(self) -> str:
        """A short human label, e.g. ``redis orders`` or ``schedule rate(5 minutes)``."""
        kind = self.kind
        if self.schedule is not None:
            return f"schedule {self.schedule.expression}"
        target = self.target
        describe = getattr(target, "describe", None)
        if describe is not None:
            return str(describe())
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


SCALED_KINDS = ("rabbitmq", "sqs", "kafka")
SCALING_ONLY_QUEUES = (
    "spec.scalingConfig: applies to rabbitmq, sqs and kafka sources only (Redis and NATS streams and "
    "Kubernetes watches keep their order by processing one batch at a time)"
)
AT_TIMESTAMP_KAFKA = "spec.startingPosition: AT_TIMESTAMP applies to kafka sources only"
AT_TIMESTAMP_NEEDS = "spec.startingPositionTimestamp: required with startingPosition AT_TIMESTAMP"
FIFO_BATCH = "spec.batchSize: at most 10 for an SQS FIFO queue"
SQS_WINDOW = "spec.maximumBatchingWindowSeconds: at least 1 for an SQS batchSize over 10"


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
                    "rule": "!has(self.scalingConfig) || "
                    + " || ".join(f"has(self.source.{k})" for k in SCALED_KINDS),
                    "message": SCALING_ONLY_QUEUES,
                    "fieldPath": ".scalingConfig",
                },
                {
                    "rule": "!has(self.startingPosition) || self.startingPosition != 'AT_TIMESTAMP'"
                    " || has(self.source.kafka)",
                    "message": AT_TIMESTAMP_KAFKA,
                    "fieldPath": ".startingPosition",
                },
                {
                    "rule": "!has(self.startingPosition) || self.startingPosition != 'AT_TIMESTAMP'"
                    " || has(self.startingPositionTimestamp)",
                    "message": AT_TIMESTAMP_NEEDS,
                    "fieldPath": ".startingPositionTimestamp",
                },
                {
                    "rule": "!has(self.source.sqs) || !self.source.sqs.queueUrl.endsWith('.fifo')"
                    " || !has(self.batchSize) || self.batchSize <= 10",
                    "message": FIFO_BATCH,
                    "fieldPath": ".batchSize",
                },
                {
                    "rule": "!has(self.source.sqs) || !has(self.batchSize) || self.batchSize <= 10"
                    " || (has(self.maximumBatchingWindowSeconds) && self.maximumBatchingWindowSeconds >= 1)",
                    "message": SQS_WINDOW,
                    "fieldPath": ".maximumBatchingWindowSeconds",
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
    starting_position: Literal["TRIM_HORIZON", "LATEST", "AT_TIMESTAMP"] = Field(
        default="TRIM_HORIZON", description="Where a new consumer starts reading (AT_TIMESTAMP: kafka)."
    )
    starting_position_timestamp: datetime | None = Field(
        default=None, description="With AT_TIMESTAMP: the first record at or after this time."
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
        default=None,
        description="rabbitmq, sqs, kafka: process several batches at once (default: one; "
        "kafka: members of the consumer group).",
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
        if self.scaling_config is not None and self.source.kind not in SCALED_KINDS:
            raise FieldError("scalingConfig", SCALING_ONLY_QUEUES.removeprefix("spec.scalingConfig: "))
        if self.starting_position == "AT_TIMESTAMP":
            if self.source.kafka is None:
                raise FieldError(
                    "startingPosition", AT_TIMESTAMP_KAFKA.removeprefix("spec.startingPosition: ")
                )
            if self.starting_position_timestamp is None:
                raise FieldError(
                    "startingPositionTimestamp",
                    AT_TIMESTAMP_NEEDS.removeprefix("spec.startingPositionTimestamp: "),
                )
        sqs = self.source.sqs
        if sqs is not None and sqs.fifo and self.batch_size > 10:
            raise FieldError(
                "batchSize", f"{FIFO_BATCH.removeprefix('spec.batchSize: ')} (got {self.batch_size})"
            )
        if sqs is not None and self.batch_size > 10 and self.maximum_batching_window_seconds < 1:
            raise FieldError(
                "maximumBatchingWindowSeconds", SQS_WINDOW.removeprefix("spec.maximumBatchingWindowSeconds: ")
            )
        return self

    def secret_keys(self) -> list[tuple[str, str, bool]]:
        """Every (Secret name, key, required) the mapping's source and destination read: ``urlFrom``
        broker URLs, Kafka TLS/SASL and SQS credentials. Missing ones show in the mapping's status."""
        on_failure = self.destination_config.on_failure if self.destination_config else None
        keys = self.source.secret_keys() + (on_failure.secret_keys() if on_failure is not None else [])
        return list(dict.fromkeys(keys))

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
    watch_resource_version: str | None = Field(
        default=None,
        max_length=128,
        description="Kubernetes sources: the resourceVersion the worker resumes watching from.",
    )


class EventSourceMapping(LaminaObject):
    """Connects a queue, stream or schedule to a function."""

    kind: Literal["EventSourceMapping"] = "EventSourceMapping"
    spec: EventSourceMappingSpec
    status: EventSourceMappingStatus | None = None

    @property
    def function(self) -> str:
        """The Function the mapping invokes, without the qualifier of ``spec.functionName``."""
        return split_qualifier(self.spec.function_name)[0]

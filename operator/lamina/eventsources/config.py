"""The parts of an EventSourceMapping spec a mapping worker uses, as one plain value."""

from __future__ import annotations

from dataclasses import dataclass, field

from lamina.api import EventSourceMappingSpec


@dataclass(slots=True)
class MappingConfig:
    """The parts of an EventSourceMapping spec the worker uses; tests build it directly."""

    name: str
    function_name: str
    batch_size: int = 10
    maximum_batching_window_seconds: float = 0.0
    starting_position: str = "TRIM_HORIZON"
    enabled: bool = True
    maximum_retry_attempts: int = -1
    maximum_record_age_seconds: int = -1
    bisect_batch_on_function_error: bool = False
    report_batch_item_failures: bool = False
    filter_patterns: list[str] = field(default_factory=list)

    @classmethod
    def from_spec(cls, name: str, spec: EventSourceMappingSpec) -> MappingConfig:
        criteria = spec.filter_criteria
        return cls(
            name=name,
            function_name=spec.function_name,
            batch_size=spec.batch_size,
            maximum_batching_window_seconds=spec.maximum_batching_window_seconds,
            starting_position=spec.starting_position,
            enabled=spec.enabled,
            maximum_retry_attempts=spec.maximum_retry_attempts,
            maximum_record_age_seconds=spec.maximum_record_age_seconds,
            bisect_batch_on_function_error=spec.bisect_batch_on_function_error,
            report_batch_item_failures="ReportBatchItemFailures" in spec.function_response_types,
            filter_patterns=[f.pattern for f in criteria.filters] if criteria is not None else [],
        )

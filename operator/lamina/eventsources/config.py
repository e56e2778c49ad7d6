"""The parts of an EventSourceMapping spec a mapping worker uses, as one plain value."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def _get(spec: Any, name: str, camel: str, default: Any = None) -> Any:
    """Read a spec field from a pydantic model (snake_case) or a wire dict (camelCase)."""
    if isinstance(spec, dict):
        return spec.get(camel, spec.get(name, default))
    return getattr(spec, name, default)


@dataclass(slots=True)
class MappingConfig:
    """The parts of an EventSourceMapping spec the worker uses (see docs/contracts.md)."""

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
    def from_spec(cls, name: str, spec: Any) -> MappingConfig:
        """From an ``EventSourceMappingSpec`` model or its camelCase dict."""
        criteria = _get(spec, "filter_criteria", "filterCriteria")
        filters = _get(criteria, "filters", "filters", []) if criteria is not None else []
        types = _get(spec, "function_response_types", "functionResponseTypes", []) or []
        return cls(
            name=name,
            function_name=_get(spec, "function_name", "functionName"),
            batch_size=_get(spec, "batch_size", "batchSize", 10),
            maximum_batching_window_seconds=_get(
                spec, "maximum_batching_window_seconds", "maximumBatchingWindowSeconds", 0
            ),
            starting_position=_get(spec, "starting_position", "startingPosition", "TRIM_HORIZON"),
            enabled=_get(spec, "enabled", "enabled", True),
            maximum_retry_attempts=_get(spec, "maximum_retry_attempts", "maximumRetryAttempts", -1),
            maximum_record_age_seconds=_get(
                spec, "maximum_record_age_seconds", "maximumRecordAgeSeconds", -1
            ),
            bisect_batch_on_function_error=_get(
                spec, "bisect_batch_on_function_error", "bisectBatchOnFunctionError", False
            ),
            report_batch_item_failures="ReportBatchItemFailures" in types,
            filter_patterns=[_get(f, "pattern", "pattern") for f in filters or []],
        )

"""Defaults, round-trips and helper properties of the api models."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import pytest

from lamina.api import (
    GROUP,
    VERSION,
    Endpoint,
    EventSourceMapping,
    Function,
    FunctionSpec,
    Layer,
    ManifestError,
    parse_object,
)
from lamina.api.common import cel_field

SHA = "0123456789abcdef" * 4


def fn(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Function",
        "metadata": {"name": "hello"},
        "spec": {"handler": "index.handler", "code": {"inline": "x = 1"}, **spec},
    }


def test_function_defaults_follow_the_contract() -> None:
    f = parse_object(fn())
    assert isinstance(f, Function)
    s = f.spec
    assert (s.runtime, s.memory_mb, s.timeout_seconds, s.idle_timeout_seconds) == ("python3.12", 128, 3, 300)
    assert (s.reserved_concurrency, s.provisioned_concurrency) == (None, 0)
    assert (s.async_.maximum_retry_attempts, s.async_.maximum_event_age_seconds) == (2, 21600)
    assert s.async_.on_failure is None and s.layers == [] and s.environment == {}
    assert f.metadata.namespace == "default"
    assert f.key == ("default", "hello")
    assert f.status is None


def test_mapping_defaults_follow_the_contract() -> None:
    m = parse_object(
        {
            "apiVersion": "lamina.dev/v1alpha1",
            "kind": "EventSourceMapping",
            "metadata": {"name": "tick", "namespace": "jobs"},
            "spec": {"functionName": "hello", "source": {"schedule": {"expression": "rate(5 minutes)"}}},
        }
    )
    assert isinstance(m, EventSourceMapping)
    s = m.spec
    assert (s.batch_size, s.maximum_batching_window_seconds, s.starting_position) == (10, 0, "TRIM_HORIZON")
    assert (s.enabled, s.maximum_retry_attempts, s.maximum_record_age_seconds) == (True, -1, -1)
    assert s.bisect_batch_on_function_error is False and s.function_response_types == []
    assert s.source.schedule is not None and s.source.schedule.timezone == "UTC"
    assert s.is_schedule and s.source.kind == "schedule"
    assert s.source.describe() == "schedule rate(5 minutes)"
    assert m.key == ("jobs", "tick")


def test_wire_form_round_trips_with_camel_case() -> None:
    doc = fn(
        memoryMB=512,
        layers=["numpy", "common"],
        environment={"STAGE": "prod"},
        environmentFrom=[{"name": "TOKEN", "secretKeyRef": {"name": "creds", "key": "token"}}],
        reservedConcurrency=4,
        provisionedConcurrency=1,
        **{
            "async": {
                "maximumRetryAttempts": 0,
                "onFailure": {
                    "redis": {"urlFrom": {"secretKeyRef": {"name": "r", "key": "url"}}, "stream": "dlq"}
                },
                "onSuccess": {"function": {"name": "audit"}},
            }
        },
    )
    f = parse_object(doc)
    wire = f.to_dict()
    assert wire["spec"]["memoryMB"] == 512
    assert wire["spec"]["async"]["onFailure"]["redis"]["urlFrom"]["secretKeyRef"] == {
        "name": "r",
        "key": "url",
    }
    assert wire["spec"]["environmentFrom"][0]["secretKeyRef"]["key"] == "token"
    assert "reserved_concurrency" not in wire["spec"]
    assert parse_object(wire) == f
    assert f.spec.async_.on_failure is not None and f.spec.async_.on_failure.kind == "redis"
    assert f.spec.async_.on_success is not None and f.spec.async_.on_success.kind == "function"


def test_python_names_are_accepted_too() -> None:
    spec = FunctionSpec(
        handler="app.main", code={"inline": ""}, memory_mb=256, async_={"maximum_retry_attempts": 1}
    )
    assert spec.memory_mb == 256 and spec.async_.maximum_retry_attempts == 1


def test_cluster_objects_with_server_fields_parse() -> None:
    doc = fn()
    doc["metadata"].update(
        uid="1234",
        generation=7,
        resourceVersion="99",
        creationTimestamp="2024-01-01T00:00:00Z",
        managedFields=[],
    )
    doc["status"] = {
        "observedGeneration": 6,
        "readyEnvironments": 2,
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Ready",
                "lastTransitionTime": "2024-01-01T00:00:00Z",
            }
        ],
    }
    f = parse_object(doc)
    assert (f.metadata.uid, f.metadata.generation) == ("1234", 7)
    assert f.status is not None and f.status.ready and f.status.ready_environments == 2
    assert f.status.condition("Ready") is not None and f.status.condition("Stalled") is None


@pytest.mark.parametrize(
    ("memory", "millicores"),
    [(128, 100), (177, 101), (1769, 1000), (3538, 2000), (10240, 5789)],
)
def test_cpu_follows_memory(memory: int, millicores: int) -> None:
    assert FunctionSpec(handler="a.b", code={"inline": ""}, memory_mb=memory).cpu_millicores == millicores


@pytest.mark.parametrize("handler", ["index.handler", "src/app.main", "pkg.sub.mod.fn", "_a._b"])
def test_handlers_accepted(handler: str) -> None:
    assert parse_object(fn(handler=handler)).spec.handler == handler


@pytest.mark.parametrize("handler", ["index", ".handler", "index.", "a/b", "a..b", "1a.b", "a.b c"])
def test_handlers_refused(handler: str) -> None:
    with pytest.raises(ManifestError, match=r"spec\.handler: must be module\.function"):
        parse_object(fn(handler=handler))


@pytest.mark.parametrize(
    ("endpoint", "kind"),
    [
        ({"redis": {"url": "redis://h", "stream": "s"}}, "redis"),
        ({"nats": {"url": "nats://h", "subject": "a.b", "stream": "S"}}, "nats"),
        ({"rabbitmq": {"url": "amqp://h", "queue": "q"}}, "rabbitmq"),
        ({"function": {"name": "other"}}, "function"),
    ],
)
def test_endpoint_kind(endpoint: dict[str, Any], kind: str) -> None:
    e = Endpoint.model_validate(endpoint)
    assert e.kind == kind
    assert e.target is getattr(e, kind)


def test_layer_sources_and_runtimes() -> None:
    layer = parse_object(
        {
            "apiVersion": "lamina.dev/v1alpha1",
            "kind": "Layer",
            "metadata": {"name": "deps"},
            "spec": {"url": "https://h/l.zip", "sha256": SHA, "compatibleRuntimes": ["python3.12"]},
        }
    )
    assert isinstance(layer, Layer)
    assert layer.spec.kind == "url"
    assert layer.spec.supports("python3.12") and not layer.spec.supports("python3.11")


def test_schedule_input_is_free_json() -> None:
    m = parse_object(
        {
            "apiVersion": "lamina.dev/v1alpha1",
            "kind": "EventSourceMapping",
            "metadata": {"name": "tick"},
            "spec": {
                "functionName": "hello",
                "source": {
                    "schedule": {"expression": "cron(0 12 * * ? *)", "input": {"a": [1, {"b": None}]}}
                },
            },
        }
    )
    assert m.spec.source.schedule is not None
    assert m.spec.source.schedule.input == {"a": [1, {"b": None}]}


def test_cel_escapes_reserved_words() -> None:
    assert cel_field("function") == "__function__"
    assert cel_field("redis") == "redis"


def test_read_only_mappings_are_accepted() -> None:
    # kopf passes bodies as Mapping views rather than dicts.
    doc = fn(environment={"A": "1"})
    view = MappingProxyType({**doc, "spec": MappingProxyType(doc["spec"])})
    assert parse_object(view) == parse_object(doc)

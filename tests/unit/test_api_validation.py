"""A bad manifest is refused with the field named and the rule spelled out, one line per problem."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest

from lamina.api import ManifestError, load_manifests, parse_object

INVALID = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "invalid"

FUNCTION: dict[str, Any] = {
    "apiVersion": "lamina.dev/v1alpha1",
    "kind": "Function",
    "metadata": {"name": "hello"},
    "spec": {"handler": "index.handler", "code": {"inline": "def handler(e, c):\n    return e\n"}},
}
MAPPING: dict[str, Any] = {
    "apiVersion": "lamina.dev/v1alpha1",
    "kind": "EventSourceMapping",
    "metadata": {"name": "orders"},
    "spec": {
        "functionName": "hello",
        "source": {"redis": {"url": "redis://localhost:6379/0", "stream": "orders"}},
    },
}
LAYER: dict[str, Any] = {
    "apiVersion": "lamina.dev/v1alpha1",
    "kind": "Layer",
    "metadata": {"name": "deps"},
    "spec": {"requirements": ["requests==2.32.3"]},
}
SHA = "a" * 64


def with_spec(doc: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    for key, value in changes.items():
        out["spec"][key] = value
    return out


def problems(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(ManifestError) as info:
        parse_object(doc)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


CASES = [
    (
        with_spec(FUNCTION, timeoutSeconds=0),
        "Function hello: spec.timeoutSeconds: must be between 1 and 900 (got 0)",
    ),
    (
        with_spec(FUNCTION, memoryMB=10241),
        "Function hello: spec.memoryMB: must be between 128 and 10240 (got 10241)",
    ),
    (
        with_spec(FUNCTION, runtime="python3.9"),
        "Function hello: spec.runtime: must be one of python3.11, python3.12, python3.13, provided.al2023, "
        "provided.al2 (got 'python3.9')",
    ),
    (with_spec(FUNCTION, timeoutSecond=3), "Function hello: spec.timeoutSecond: unknown field"),
    (with_spec(FUNCTION, code=None), "Function hello: spec.code: must be an object (got null)"),
    (
        with_spec(FUNCTION, handler="index"),
        "Function hello: spec.handler: must be module.function, e.g. index.handler or src/app.main (got "
        "'index')",
    ),
    (
        with_spec(FUNCTION, code={}),
        "Function hello: spec.code: exactly one of inline, configMap, url, s3 must be set (got none)",
    ),
    (
        with_spec(FUNCTION, code={"inline": "x", "url": "https://h/a.zip", "sha256": SHA}),
        "Function hello: spec.code: exactly one of inline, configMap, url, s3 must be set (got inline, url)",
    ),
    (
        with_spec(FUNCTION, code={"url": "https://h/a.zip"}),
        "Function hello: spec.code.sha256: is required with url",
    ),
    (
        with_spec(FUNCTION, code={"inline": "x", "sha256": SHA}),
        "Function hello: spec.code.sha256: only goes with url",
    ),
    (
        with_spec(FUNCTION, code={"url": "https://h/a.zip", "sha256": "abc"}),
        "Function hello: spec.code.sha256: must be 64 hexadecimal characters (a SHA-256 digest) (got 'abc')",
    ),
    (
        with_spec(FUNCTION, reservedConcurrency=1, provisionedConcurrency=2),
        "Function hello: spec.provisionedConcurrency: must not exceed reservedConcurrency (2 > 1)",
    ),
    (
        with_spec(FUNCTION, reservedConcurrency=-1),
        "Function hello: spec.reservedConcurrency: must be at least 0 (got -1)",
    ),
    (
        with_spec(FUNCTION, layers=["a", "b", "c", "d", "e", "f"]),
        "Function hello: spec.layers: must have at most 5 items (got 6)",
    ),
    (
        with_spec(FUNCTION, layers=["a", "b", "a"]),
        "Function hello: spec.layers: must not repeat a layer (got a twice)",
    ),
    (
        with_spec(FUNCTION, layers=["a", "b", "Bad_Name"]),
        "Function hello: spec.layers[2]: must be a DNS label: lowercase letters, digits and '-', starting "
        "and "
        "ending with a letter or digit, at most 63 characters (got 'Bad_Name')",
    ),
    (
        with_spec(FUNCTION, environment={"AWS_LAMBDA_FUNCTION_NAME": "x"}),
        "Function hello: spec.environment.AWS_LAMBDA_FUNCTION_NAME: is reserved by the runtime",
    ),
    (
        with_spec(FUNCTION, environment={"PORT": 80}),
        "Function hello: spec.environment.PORT: must be a string (got 80)",
    ),
    (
        with_spec(FUNCTION, environmentFrom=[{"name": "TOKEN", "secretKeyRef": {"name": "s"}}]),
        "Function hello: spec.environmentFrom[0].secretKeyRef.key: is required",
    ),
    (
        with_spec(FUNCTION, environmentFrom=[{"name": "TOKEN"}]),
        "Function hello: spec.environmentFrom[0]: exactly one of secretKeyRef, configMapKeyRef must be set "
        "(got none)",
    ),
    (
        with_spec(FUNCTION, **{"async": {"maximumRetryAttempts": 3}}),
        "Function hello: spec.async.maximumRetryAttempts: must be between 0 and 2 (got 3)",
    ),
    (
        with_spec(FUNCTION, **{"async": {"maximumEventAgeSeconds": 59}}),
        "Function hello: spec.async.maximumEventAgeSeconds: must be between 60 and 21600 (got 59)",
    ),
    (
        with_spec(
            FUNCTION, **{"async": {"onFailure": {"function": {"name": "x"}, "nats": {"subject": "s"}}}}
        ),
        "Function hello: spec.async.onFailure.nats: exactly one of url, urlFrom must be set (got none)",
    ),
    (
        with_spec(FUNCTION, **{"async": {"onSuccess": {}}}),
        "Function hello: spec.async.onSuccess: exactly one of redis, nats, rabbitmq, kafka, sqs, function "
        "must be set (got none)",
    ),
    (
        {**FUNCTION, "metadata": {"name": "Hello"}},
        "Function Hello: metadata.name: must be a DNS label: lowercase letters, digits and '-', starting and "
        "ending with a letter or digit, at most 63 characters (got 'Hello')",
    ),
    ({**FUNCTION, "metadata": {}}, "Function <unnamed>: metadata.name: is required"),
    (
        {k: v for k, v in FUNCTION.items() if k != "spec"},
        "Function hello: spec: is required",
    ),
    (
        with_spec(MAPPING, batchSize=0),
        "EventSourceMapping orders: spec.batchSize: must be between 1 and 10000 (got 0)",
    ),
    (
        with_spec(MAPPING, maximumRecordAgeSeconds=30),
        "EventSourceMapping orders: spec.maximumRecordAgeSeconds: must be -1 or between 60 and 604800 (got "
        "30)",
    ),
    (
        with_spec(MAPPING, startingPosition="AT_SOME_POINT"),
        "EventSourceMapping orders: spec.startingPosition: must be one of TRIM_HORIZON, LATEST, "
        "AT_TIMESTAMP (got 'AT_SOME_POINT')",
    ),
    (
        with_spec(MAPPING, functionResponseTypes=["ReportItemFailures"]),
        "EventSourceMapping orders: spec.functionResponseTypes[0]: must be one of ReportBatchItemFailures "
        "(got 'ReportItemFailures')",
    ),
    (
        with_spec(MAPPING, enabled="maybe"),
        "EventSourceMapping orders: spec.enabled: must be true or false (got 'maybe')",
    ),
    (
        with_spec(MAPPING, source={"function": {"name": "x"}}),
        "EventSourceMapping orders: spec.source.function: unknown field",
    ),
    (
        with_spec(MAPPING, filterCriteria={"filters": [{"pattern": "[1]"}]}),
        "EventSourceMapping orders: spec.filterCriteria.filters[0].pattern: must be a JSON object",
    ),
    (
        with_spec(MAPPING, source={"schedule": {"expression": "rate(1 hour)", "timezone": "Mars/Olympus"}}),
        "EventSourceMapping orders: spec.source.schedule.timezone: unknown time zone 'Mars/Olympus'",
    ),
    (
        with_spec(
            MAPPING,
            source={"schedule": {"expression": "rate(1 hour)"}},
            functionResponseTypes=["ReportBatchItemFailures"],
        ),
        "EventSourceMapping orders: spec.functionResponseTypes: does not apply to a schedule",
    ),
    (
        with_spec(MAPPING, scalingConfig={"maximumConcurrency": 5}),
        "EventSourceMapping orders: spec.scalingConfig: applies to rabbitmq, sqs and kafka sources only "
        "(Redis and NATS streams and Kubernetes watches keep their order by processing one batch at a time)",
    ),
    (
        with_spec(MAPPING, source={"kafka": {"bootstrapServers": ["kafka:9092", "no port"], "topic": "t"}}),
        "EventSourceMapping orders: spec.source.kafka.bootstrapServers[1]: must be host:port, e.g. "
        "kafka-0.kafka:9092 (got 'no port')",
    ),
    (
        with_spec(MAPPING, source={"kafka": {"bootstrapServers": ["k:9092"], "topic": "bad topic"}}),
        "EventSourceMapping orders: spec.source.kafka.topic: may contain only letters, digits, '.', '_' "
        "and '-' (got 'bad topic')",
    ),
    (
        with_spec(
            MAPPING,
            source={
                "kafka": {
                    "bootstrapServers": ["k:9092"],
                    "topic": "t",
                    "sasl": {"mechanism": "GSSAPI", "secretRef": {"name": "u"}},
                }
            },
        ),
        "EventSourceMapping orders: spec.source.kafka.sasl.mechanism: must be one of SCRAM-SHA-512, "
        "SCRAM-SHA-256, PLAIN (got 'GSSAPI')",
    ),
    (
        with_spec(MAPPING, startingPosition="AT_TIMESTAMP"),
        "EventSourceMapping orders: spec.startingPosition: AT_TIMESTAMP applies to kafka sources only",
    ),
    (
        with_spec(
            MAPPING,
            source={"kafka": {"bootstrapServers": ["k:9092"], "topic": "t"}},
            startingPosition="AT_TIMESTAMP",
        ),
        "EventSourceMapping orders: spec.startingPositionTimestamp: required with startingPosition "
        "AT_TIMESTAMP",
    ),
    (
        with_spec(MAPPING, source={"sqs": {"queueUrl": "http://sqs:9324/000000000000/q.fifo"}}, batchSize=20),
        "EventSourceMapping orders: spec.batchSize: at most 10 for an SQS FIFO queue (got 20)",
    ),
    (
        with_spec(MAPPING, source={"sqs": {"queueUrl": "http://sqs:9324/000000000000/q"}}, batchSize=100),
        "EventSourceMapping orders: spec.maximumBatchingWindowSeconds: at least 1 for an SQS batchSize "
        "over 10",
    ),
    (
        with_spec(MAPPING, source={"sqs": {"queueUrl": "http://sqs:9324/0/q", "region": "mars"}}),
        "EventSourceMapping orders: spec.source.sqs.region: must be an AWS region name such as us-east-1 "
        "(got 'mars')",
    ),
    (
        with_spec(MAPPING, source={"kubernetes": {"apiVersion": "apps/v1", "kind": "Deployment"}}),
        "EventSourceMapping orders: spec.source.kubernetes.serviceAccountName: is required",
    ),
    (
        with_spec(
            MAPPING,
            source={
                "kubernetes": {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "serviceAccountName": "watcher",
                    "eventTypes": ["CREATED"],
                }
            },
        ),
        "EventSourceMapping orders: spec.source.kubernetes.eventTypes[0]: must be one of ADDED, MODIFIED, "
        "DELETED (got 'CREATED')",
    ),
    (
        with_spec(
            MAPPING,
            source={
                "kubernetes": {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "serviceAccountName": "watcher",
                    "namespace": "a",
                    "allNamespaces": True,
                }
            },
        ),
        "EventSourceMapping orders: spec.source.kubernetes.allNamespaces: namespace and allNamespaces "
        "exclude each other",
    ),
    (
        with_spec(
            MAPPING,
            source={"kubernetes": {"apiVersion": "v1", "kind": "ConfigMap", "serviceAccountName": "w"}},
            scalingConfig={"maximumConcurrency": 2},
        ),
        "EventSourceMapping orders: spec.scalingConfig: applies to rabbitmq, sqs and kafka sources only "
        "(Redis and NATS streams and Kubernetes watches keep their order by processing one batch at a time)",
    ),
    (
        with_spec(
            MAPPING,
            source={"rabbitmq": {"url": "amqp://localhost", "queue": "q"}},
            scalingConfig={"maximumConcurrency": 1},
        ),
        "EventSourceMapping orders: spec.scalingConfig.maximumConcurrency: "
        "must be between 2 and 1000 (got 1)",
    ),
    (
        with_spec(LAYER, url="https://h/l.zip", sha256=SHA),
        "Layer deps: spec: exactly one of url, configMap, requirements, s3 must be set "
        "(got url, requirements)",
    ),
    (
        with_spec(LAYER, requirements=["ok", "--index-url=http://evil"]),
        "Layer deps: spec.requirements[1]: must be a requirement specifier (got '--index-url=http://evil')",
    ),
    (
        with_spec(LAYER, compatibleRuntimes=["python2.7"]),
        "Layer deps: spec.compatibleRuntimes[0]: must be one of python3.11, python3.12, python3.13, "
        "provided.al2023, provided.al2 (got 'python2.7')",
    ),
    (with_spec(LAYER, requirements=[]), "Layer deps: spec.requirements: must have at least 1 item"),
    (
        with_spec(FUNCTION, logging={"applicationLogLevel": "DEBUG"}),
        "Function hello: spec.logging.applicationLogLevel: needs logFormat JSON (as on Lambda)",
    ),
    (
        with_spec(FUNCTION, logging={"logFormat": "Text", "systemLogLevel": "WARN"}),
        "Function hello: spec.logging.systemLogLevel: needs logFormat JSON (as on Lambda)",
    ),
    (
        with_spec(FUNCTION, logging={"logFormat": "json"}),
        "Function hello: spec.logging.logFormat: must be one of Text, JSON (got 'json')",
    ),
    (
        with_spec(FUNCTION, logging={"logGroup": "has space"}),
        "Function hello: spec.logging.logGroup: must match ^[\\.\\-_/#A-Za-z0-9]+$ (got 'has space')",
    ),
]


@pytest.mark.parametrize(("doc", "expected"), CASES, ids=[c[1].split(": ", 1)[1][:60] for c in CASES])
def test_one_problem_one_line(doc: dict[str, Any], expected: str) -> None:
    assert problems(doc) == [expected]


def test_all_problems_are_reported() -> None:
    doc = with_spec(FUNCTION, timeoutSeconds=901, memoryMB=1, runtime="go")
    assert problems(doc) == [
        "Function hello: spec.runtime: must be one of python3.11, python3.12, python3.13, provided.al2023, "
        "provided.al2 (got 'go')",
        "Function hello: spec.memoryMB: must be between 128 and 10240 (got 1)",
        "Function hello: spec.timeoutSeconds: must be between 1 and 900 (got 901)",
    ]


def test_schedule_grammar_comes_from_lamina_schedule() -> None:
    # Passes the pattern (rate|cron|at)(...) but is wrong in lamina.schedule's grammar.
    doc = with_spec(MAPPING, source={"schedule": {"expression": "cron(0 12 * *)"}})
    (line,) = problems(doc)
    assert line.startswith("EventSourceMapping orders: spec.source.schedule.expression: ")
    assert "fields" in line


def test_unknown_kind_and_version_are_refused() -> None:
    assert problems({**FUNCTION, "kind": "Lambda"}) == [
        "unknown kind 'Lambda' (apiVersion 'lamina.dev/v1alpha1')"
    ]
    assert problems({**FUNCTION, "apiVersion": "lamina.dev/v1"}) == [
        "unknown kind 'Function' (apiVersion 'lamina.dev/v1')"
    ]


def _expectations(path: Path) -> list[str]:
    return [m.group(1) for m in re.finditer(r"^# expect: (.*)$", path.read_text(), re.M)]


@pytest.mark.parametrize("path", sorted(INVALID.glob("*.yaml")), ids=lambda p: p.name)
def test_examples_invalid(path: Path) -> None:
    expected = [e.replace("{file}", str(path)) for e in _expectations(path)]
    assert expected, f"{path.name} has no '# expect:' line"
    with pytest.raises(ManifestError) as info:
        load_manifests(path)
    assert info.value.problems == expected

"""filterCriteria patterns (EventBridge grammar), event shapes and batch-response parsing; no broker."""

from __future__ import annotations

import hashlib
import json

import pytest

from lamina.api import EventSourceMappingSpec
from lamina.eventsources.base import SourceRecord
from lamina.eventsources.config import MappingConfig
from lamina.eventsources.events import (
    build_record,
    encode_entry,
    encode_event,
    failure_record,
    join_event,
    split_by_size,
)
from lamina.eventsources.filtering import FilterError, RecordFilter, matches, parse_pattern
from lamina.eventsources.mapping import MappingWorker, _Held


def entry(body, **attributes) -> dict:
    raw = body if isinstance(body, bytes) else (body if isinstance(body, str) else json.dumps(body)).encode()
    return build_record(SourceRecord(id="1-0", body=raw, attributes=attributes), "redis", "lamina:redis:s")


def accepts(pattern, body, **attributes) -> bool:
    return RecordFilter([json.dumps(pattern)]).accepts(entry(body, **attributes))


@pytest.mark.parametrize(
    ("pattern", "body", "expected"),
    [
        ({"body": {"kind": ["order"]}}, {"kind": "order"}, True),
        ({"body": {"kind": ["order"]}}, {"kind": "Order"}, False),  # exact, no case folding
        ({"body": {"kind": ["order", "refund"]}}, {"kind": "refund"}, True),  # OR
        ({"body": {"kind": ["order"]}}, {"other": 1}, False),  # a named field must exist
        ({"body": {"v": [None]}}, {"v": None}, True),
        ({"body": {"v": [None]}}, {}, False),  # null is not missing
        ({"body": {"v": [""]}}, {"v": ""}, True),
        ({"body": {"v": [""]}}, {"v": "x"}, False),
        ({"body": {"n": [5]}}, {"n": 5.0}, True),  # numbers by value
        ({"body": {"n": [5]}}, {"n": "5"}, False),  # but not strings
        ({"body": {"b": [True]}}, {"b": 1}, False),
        ({"body": {"b": [True]}}, {"b": True}, True),
        ({"body": {"r": [{"prefix": "us-"}]}}, {"r": "us-east-1"}, True),
        ({"body": {"r": [{"prefix": "us-"}]}}, {"r": "eu-west-1"}, False),
        ({"body": {"f": [{"suffix": ".png"}]}}, {"f": "a.png"}, True),
        ({"body": {"f": [{"equals-ignore-case": "ABC"}]}}, {"f": "abc"}, True),
        ({"body": {"f": [{"wildcard": "img-*.png"}]}}, {"f": "img-12.png"}, True),
        ({"body": {"f": [{"wildcard": "img-*.png"}]}}, {"f": "img-12.jpg"}, False),
        ({"body": {"s": [{"anything-but": "x"}]}}, {"s": "y"}, True),
        ({"body": {"s": [{"anything-but": "x"}]}}, {"s": "x"}, False),
        ({"body": {"s": [{"anything-but": ["x", "y"]}]}}, {"s": "y"}, False),
        ({"body": {"s": [{"anything-but": {"prefix": "tmp"}}]}}, {"s": "tmp-1"}, False),
        ({"body": {"s": [{"anything-but": {"prefix": "tmp"}}]}}, {"s": "keep"}, True),
        ({"body": {"s": [{"anything-but": "x"}]}}, {}, False),
        ({"body": {"p": [{"numeric": [">", 0, "<=", 5]}]}}, {"p": 5}, True),
        ({"body": {"p": [{"numeric": [">", 0, "<=", 5]}]}}, {"p": 0}, False),
        ({"body": {"p": [{"numeric": [">", 0, "<=", 5]}]}}, {"p": 5.5}, False),
        ({"body": {"p": [{"numeric": ["=", 3]}]}}, {"p": 3}, True),
        ({"body": {"p": [{"numeric": [">", 0]}]}}, {"p": "7"}, False),
        ({"body": {"e": [{"exists": True}]}}, {"e": {"deep": 1}}, True),
        ({"body": {"e": [{"exists": True}]}}, {}, False),
        ({"body": {"e": [{"exists": False}]}}, {}, True),
        ({"body": {"e": [{"exists": False}]}}, {"e": 1}, False),
        ({"body": {"a": {"b": ["x"]}}}, {"a": {"b": "x"}}, True),  # nested
        ({"body": {"a": {"b": ["x"]}}}, {"a": {"b": "y"}}, False),
        ({"body": {"a": {"b": [{"exists": False}]}}}, {}, True),
        ({"body": {"tags": ["red"]}}, {"tags": ["blue", "red"]}, True),  # any element of a list
        ({"body": {"tags": ["red"]}}, {"tags": ["blue"]}, False),
        (
            {"body": {"kind": ["order"], "n": [{"numeric": [">", 1]}]}},
            {"kind": "order", "n": 0},
            False,
        ),  # AND
        ({"body": ["plain text"]}, "plain text", True),  # a body that is not JSON is a string
        ({"body": [{"prefix": "plain"}]}, "plain text", True),
        ({"body": {"kind": ["order"]}}, "plain text", False),
    ],
)
def test_patterns(pattern, body, expected):
    assert accepts(pattern, body) is expected


def test_attributes_and_envelope_fields_can_be_matched():
    assert accepts({"messageAttributes": {"tenant": {"stringValue": ["a"]}}}, {"x": 1}, tenant="a")
    assert not accepts({"messageAttributes": {"tenant": {"stringValue": ["a"]}}}, {"x": 1}, tenant="b")
    assert accepts({"eventSource": ["lamina:redis"]}, {"x": 1})


def test_filters_are_ored_and_no_filter_accepts_everything():
    f = RecordFilter([json.dumps({"body": {"k": ["a"]}}), json.dumps({"body": {"k": ["b"]}})])
    assert f.accepts(entry({"k": "a"})) and f.accepts(entry({"k": "b"}))
    assert not f.accepts(entry({"k": "c"}))
    assert RecordFilter([]).accepts(entry("anything"))


def test_non_utf8_body_is_base64_and_matches_only_as_text():
    e = entry(b"\xff\xfe")
    assert e["bodyEncoding"] == "base64" and e["body"] == "//4="
    assert RecordFilter([json.dumps({"body": ["//4="]})]).accepts(e)


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("not json", "not JSON"),
        ("[1]", "non-empty JSON object"),
        ('{"body": "x"}', "pattern.body: must be a list of matchers"),
        ('{"body": []}', "may not be empty"),
        ('{"body": [{"numeric": [">", "a"]}]}', "numeric operators"),
        ('{"body": [{"numeric": ["~", 1]}]}', "numeric operators"),
        ('{"body": [{"exists": "yes"}]}', "exists takes true or false"),
        ('{"body": [{"prefix": 3}]}', "prefix needs a string"),
        ('{"body": [{"nope": 1}]}', "unknown operator 'nope'"),
        ('{"body": [{"prefix": "a", "suffix": "b"}]}', "one operator"),
        ('{"a": {"b": [{"anything-but": {"numeric": [">", 1]}}]}}', "pattern.a.b: anything-but"),
    ],
)
def test_invalid_patterns_name_the_field(pattern, message):
    with pytest.raises(FilterError, match=message):
        parse_pattern(pattern)


def test_duplicate_keys_last_wins():
    pattern = parse_pattern('{"body": {"k": ["a"], "k": ["b"]}}')
    assert matches(pattern, {"body": {"k": "b"}})
    assert not matches(pattern, {"body": {"k": "a"}})


# -- events ------------------------------------------------------------------------------------


def test_event_record_shape():
    rec = SourceRecord(
        id="1700000000000-0",
        body=b'{"a":1}',
        attributes={"tenant": "t1"},
        arrival_time=1700000000.0,
        ordering_key="orders",
        receive_count=3,
        received_time=1700000001.5,
        source_fields={"stream": "orders", "entryId": "1700000000000-0"},
    )
    e = build_record(rec, "redis", "lamina:redis:orders", ordered=True)
    assert e == {
        "messageId": "1700000000000-0",
        "body": '{"a":1}',
        "attributes": {
            "ApproximateReceiveCount": "3",
            "SentTimestamp": "1700000000000",
            "ApproximateFirstReceiveTimestamp": "1700000001500",
            "SequenceNumber": "1700000000000-0",
            "MessageGroupId": "orders",
        },
        "messageAttributes": {"tenant": {"stringValue": "t1", "dataType": "String"}},
        "md5OfBody": hashlib.md5(b'{"a":1}').hexdigest(),
        "eventSource": "lamina:redis",
        "eventSourceARN": "lamina:redis:orders",
        "redis": {"stream": "orders", "entryId": "1700000000000-0"},
    }
    assert json.loads(encode_event([e])) == {"Records": [e]}
    assert json.loads(join_event([encode_entry(e), encode_entry(e)])) == {"Records": [e, e]}


def test_split_by_size_keeps_each_event_under_the_limit():
    assert split_by_size([10, 10, 10], limit=100) == [(0, 3)]
    assert split_by_size([40, 40, 40], limit=100) == [(0, 2), (2, 3)]
    assert split_by_size([500, 10], limit=100) == [(0, 1), (1, 2)]  # an oversize record alone
    assert split_by_size([], limit=100) == []


def test_failure_record_carries_the_record_and_the_error():
    e = entry({"x": 1})
    doc = failure_record(
        entry=e,
        condition="RetryAttemptsExhausted",
        esm="m",
        function_name="fn",
        invoke_count=3,
        function_error="Unhandled",
        response_payload=b'{"errorMessage": "boom", "errorType": "ValueError"}',
    )
    assert doc["version"] == "1.0"
    assert doc["requestContext"]["condition"] == "RetryAttemptsExhausted"
    assert doc["requestContext"]["approximateInvokeCount"] == 3
    assert doc["responseContext"] == {
        "statusCode": 200,
        "executedVersion": "$LATEST",
        "functionError": "Unhandled",
    }
    assert doc["responsePayload"]["errorMessage"] == "boom"
    assert doc["record"] == e
    assert doc["timestamp"].endswith("Z")


# -- ReportBatchItemFailures responses ------------------------------------------------------------


def held(*ids: str) -> list[_Held]:
    return [_Held(SourceRecord(id=i, body=b"x"), {}, b"{}") for i in ids]


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"", set()),
        (b"null", set()),
        (b"{}", set()),
        (b'{"batchItemFailures": []}', set()),
        (b'{"batchItemFailures": null}', set()),
        (b'{"batchItemFailures": [{"itemIdentifier": "b"}]}', {"b"}),
        (b'{"batchItemFailures": [{"itemIdentifier": "a"}, {"itemIdentifier": "c"}]}', {"a", "c"}),
        (b'{"batchItemFailures": [{"itemIdentifier": "zzz"}]}', None),  # unknown id
        (b'{"batchItemFailures": [{"itemIdentifier": ""}]}', None),
        (b'{"batchItemFailures": [{"itemIdentifier": null}]}', None),
        (b'{"batchItemFailures": [{"id": "a"}]}', None),  # wrong key
        (b'{"batchItemFailures": "a"}', None),
        (b"not json", None),
        (b'"a string"', None),
    ],
)
def test_batch_item_failures(payload, expected):
    assert MappingWorker._batch_item_failures(payload, held("a", "b", "c")) == expected


def test_config_from_wire_spec():
    """The camelCase spec is read once, into the model, and the worker's config comes from that."""
    cfg = MappingConfig.from_spec(
        "m",
        EventSourceMappingSpec.model_validate(
            {
                "functionName": "fn",
                "source": {"redis": {"url": "redis://x", "stream": "s"}},
                "batchSize": 50,
                "maximumBatchingWindowSeconds": 2,
                "startingPosition": "LATEST",
                "maximumRetryAttempts": 3,
                "maximumRecordAgeSeconds": 60,
                "bisectBatchOnFunctionError": True,
                "functionResponseTypes": ["ReportBatchItemFailures"],
                "filterCriteria": {"filters": [{"pattern": '{"body": {"a": [1]}}'}]},
            }
        ),
    )
    assert (cfg.batch_size, cfg.maximum_batching_window_seconds, cfg.starting_position) == (50, 2, "LATEST")
    assert (cfg.maximum_retry_attempts, cfg.maximum_record_age_seconds) == (3, 60)
    assert cfg.bisect_batch_on_function_error and cfg.report_batch_item_failures
    assert cfg.filter_patterns == ['{"body": {"a": [1]}}']


def test_config_from_api_model():
    api = pytest.importorskip("lamina.api")
    spec = api.EventSourceMapping.model_validate(
        {
            "apiVersion": "lamina.dev/v1alpha1",
            "kind": "EventSourceMapping",
            "metadata": {"name": "m"},
            "spec": {
                "functionName": "fn",
                "source": {"nats": {"url": "nats://127.0.0.1:4222", "subject": "a.b"}},
                "functionResponseTypes": ["ReportBatchItemFailures"],
                "filterCriteria": {"filters": [{"pattern": '{"body": {"a": [1]}}'}]},
            },
        }
    ).spec
    cfg = MappingConfig.from_spec("m", spec)
    assert cfg.function_name == "fn" and cfg.batch_size == 10 and cfg.report_batch_item_failures
    assert cfg.filter_patterns == ['{"body": {"a": [1]}}']

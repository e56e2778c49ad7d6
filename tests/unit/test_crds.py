"""The generated CRDs: structural, complete, and equal to the committed files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from lamina.crdgen import generate, main
from lamina.crdgen.schema import walk

REPO = Path(__file__).resolve().parents[2]
FILES = ["lamina.dev_functions.yaml", "lamina.dev_layers.yaml", "lamina.dev_eventsourcemappings.yaml"]


@pytest.fixture(scope="module")
def crds() -> dict[str, dict[str, Any]]:
    return {name: yaml.safe_load(text) for name, text in generate().items()}


def version(crd: dict[str, Any]) -> dict[str, Any]:
    (v,) = crd["spec"]["versions"]
    return v


def schema(crd: dict[str, Any]) -> dict[str, Any]:
    return version(crd)["schema"]["openAPIV3Schema"]


def at(node: dict[str, Any], *path: str) -> dict[str, Any]:
    for part in path:
        node = node["items"] if part == "[]" else node["properties"][part]
    return node


def rules(node: dict[str, Any]) -> list[str]:
    return [r["rule"] for r in node.get("x-kubernetes-validations", [])]


def test_files_and_names(crds: dict[str, dict[str, Any]]) -> None:
    assert list(crds) == FILES
    by_kind = {c["spec"]["names"]["kind"]: c for c in crds.values()}
    assert by_kind["Function"]["metadata"]["name"] == "functions.lamina.dev"
    assert by_kind["Function"]["spec"]["names"]["shortNames"] == ["fn"]
    assert by_kind["EventSourceMapping"]["spec"]["names"]["shortNames"] == ["esm"]
    for crd in crds.values():
        assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
        assert crd["spec"]["group"] == "lamina.dev"
        assert crd["spec"]["scope"] == "Namespaced"
        assert crd["spec"]["names"]["categories"] == ["lamina"]
        v = version(crd)
        assert (v["name"], v["served"], v["storage"]) == ("v1alpha1", True, True)
        assert v["subresources"] == {"status": {}}


def schema_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every schema node (not the property-name mappings in between)."""
    yield node
    children = [*node.get("properties", {}).values()]
    children += [node[k] for k in ("items", "additionalProperties") if isinstance(node.get(k), dict)]
    for child in children:
        yield from schema_nodes(child)


def _is_structural_node(node: dict[str, Any]) -> bool:
    return (
        "type" in node
        or node.get("x-kubernetes-preserve-unknown-fields") is True
        or node.get("x-kubernetes-int-or-string") is True  # Kubernetes' own int | str (a port)
    )


def test_schemas_are_structural(crds: dict[str, dict[str, Any]]) -> None:
    forbidden = {"$ref", "$defs", "anyOf", "oneOf", "allOf", "not", "const", "title", "exclusiveMinimum"}
    forbidden.add("patternProperties")  # the apiserver refuses a CRD with it
    for crd in crds.values():
        root = schema(crd)
        for node in schema_nodes(root):
            assert not forbidden & node.keys(), node
            assert node.get("additionalProperties", {}) is not False
            assert not ("properties" in node and "additionalProperties" in node), node
            assert _is_structural_node(node), node
            if node.get("x-kubernetes-list-type") == "map":
                item = node["items"]
                assert set(node["x-kubernetes-list-map-keys"]) <= set(item.get("required", [])), node
            if node.get("x-kubernetes-list-type") == "set":
                assert node["items"]["type"] in ("string", "integer"), node
        assert at(root, "metadata") == {"type": "object"}
        assert root["required"] == ["spec"]


def _defaults_valid(node: dict[str, Any]) -> None:
    default = node["default"]
    if "enum" in node:
        assert default in node["enum"]
    if "minimum" in node:
        assert node["minimum"] <= default <= node.get("maximum", default)
    expected = {
        "string": str,
        "integer": int,
        "number": (int, float),
        "boolean": bool,
        "array": list,
        "object": dict,
    }[node["type"]]
    assert isinstance(default, expected)


def test_defaults_and_bounds_are_kept(crds: dict[str, dict[str, Any]]) -> None:
    fn = schema(crds["lamina.dev_functions.yaml"])
    spec = at(fn, "spec")
    assert {k: at(spec, "memoryMB")[k] for k in ("minimum", "maximum", "default")} == {
        "minimum": 128,
        "maximum": 10240,
        "default": 128,
    }
    assert {k: at(spec, "timeoutSeconds")[k] for k in ("minimum", "maximum", "default")} == {
        "minimum": 1,
        "maximum": 900,
        "default": 3,
    }
    assert at(spec, "runtime")["enum"] == [
        "python3.11",
        "python3.12",
        "python3.13",
        "provided.al2023",
        "provided.al2",
    ]
    assert at(spec, "runtime")["default"] == "python3.12"
    assert at(spec, "layers")["maxItems"] == 5
    assert at(spec, "layers", "[]")["pattern"].startswith("^")
    assert at(spec, "environment")["additionalProperties"] == {"type": "string"}
    assert at(spec, "async", "maximumRetryAttempts")["maximum"] == 2
    assert "reservedConcurrency" not in spec["required"] and "default" not in at(spec, "reservedConcurrency")
    esm = at(schema(crds["lamina.dev_eventsourcemappings.yaml"]), "spec")
    assert at(esm, "source", "schedule", "input") == {
        "description": "JSON passed as the event; by default an EventBridge Scheduled Event.",
        "x-kubernetes-preserve-unknown-fields": True,
    }
    assert at(esm, "filterCriteria", "filters")["maxItems"] == 5
    assert at(esm, "startingPosition")["enum"] == ["TRIM_HORIZON", "LATEST", "AT_TIMESTAMP"]
    for crd in crds.values():
        for node in schema_nodes(schema(crd)):
            if "default" in node:
                _defaults_valid(node)


def test_cel_rules_where_openapi_cannot(crds: dict[str, dict[str, Any]]) -> None:
    fn = at(schema(crds["lamina.dev_functions.yaml"]), "spec")
    code = at(fn, "code")
    assert rules(code) == [
        "[has(self.inline), has(self.configMap), has(self.url), has(self.s3)].filter(x, x).size() == 1",
        "has(self.url) == has(self.sha256)",
    ]
    assert "spec.code" in code["x-kubernetes-validations"][0]["message"]
    assert rules(fn) == [
        "!has(self.reservedConcurrency) || !has(self.provisionedConcurrency)"
        " || self.provisionedConcurrency <= self.reservedConcurrency"
    ]
    on_failure = at(fn, "async", "onFailure")
    assert rules(on_failure) == [
        "[has(self.redis), has(self.nats), has(self.rabbitmq), has(self.kafka), has(self.sqs), "
        "has(self.__function__)].filter(x, x).size() == 1"
    ]
    assert rules(at(on_failure, "redis")) == ["[has(self.url), has(self.urlFrom)].filter(x, x).size() == 1"]
    assert rules(at(fn, "environmentFrom", "[]")) == [
        "[has(self.secretKeyRef), has(self.configMapKeyRef)].filter(x, x).size() == 1"
    ]
    layer = at(schema(crds["lamina.dev_layers.yaml"]), "spec")
    assert (
        rules(layer)[0] == "[has(self.url), has(self.configMap), has(self.requirements), has(self.s3)]"
        ".filter(x, x).size() == 1"
    )
    esm = at(schema(crds["lamina.dev_eventsourcemappings.yaml"]), "spec")
    assert rules(at(esm, "source"))[0].startswith(
        "[has(self.redis), has(self.nats), has(self.rabbitmq), has(self.kafka), has(self.sqs), "
        "has(self.kubernetes), has(self.schedule)]"
    )
    for crd in crds.values():
        for node in walk(schema(crd)):
            for rule in node.get("x-kubernetes-validations", []):
                assert list(rule)[:2] == ["rule", "message"], rule


def test_status_schema(crds: dict[str, dict[str, Any]]) -> None:
    expected = {
        "lamina.dev_functions.yaml": {"readyEnvironments", "desiredEnvironments", "layerRevisions"},
        "lamina.dev_layers.yaml": {"revision", "digest", "artifact"},
        "lamina.dev_eventsourcemappings.yaml": {"state", "lastProcessingResult", "iteratorAgeMs", "source"},
    }
    for name, crd in crds.items():
        status = at(schema(crd), "status")
        assert {"observedGeneration", "conditions"} | expected[name] <= set(status["properties"])
        conditions = at(status, "conditions")
        assert conditions["x-kubernetes-list-type"] == "map"
        assert conditions["x-kubernetes-list-map-keys"] == ["type"]
        assert at(conditions, "[]", "lastTransitionTime")["format"] == "date-time"
    layer_revisions = at(schema(crds["lamina.dev_functions.yaml"]), "status", "layerRevisions")
    assert layer_revisions["additionalProperties"] == {"type": "integer"}


READY = '.status.conditions[?(@.type=="Ready")].status'


@pytest.mark.parametrize(
    ("name", "columns"),
    [
        (
            "lamina.dev_functions.yaml",
            [
                ("Runtime", ".spec.runtime"),
                ("Memory", ".spec.memoryMB"),
                ("Ready", READY),
                ("Environments", ".status.readyEnvironments"),
            ],
        ),
        ("lamina.dev_layers.yaml", [("Revision", ".status.revision"), ("Ready", READY)]),
        (
            "lamina.dev_eventsourcemappings.yaml",
            [
                ("Function", ".spec.functionName"),
                ("Source", ".status.source"),
                ("State", ".status.state"),
                ("Ready", READY),
            ],
        ),
    ],
)
def test_printer_columns(crds: dict[str, dict[str, Any]], name: str, columns: list[tuple[str, str]]) -> None:
    cols = version(crds[name])["additionalPrinterColumns"]
    narrow = [(c["name"], c["jsonPath"]) for c in cols if not c.get("priority")]
    assert narrow == [*columns, ("Age", ".metadata.creationTimestamp")]
    assert cols[-1]["type"] == "date"
    fields = schema(crds[name])
    for col in cols:  # every column points at a field the schema keeps (or metadata)
        parts = col["jsonPath"].split("[")[0].strip(".").split(".")
        if parts[0] != "metadata":
            at(fields, *parts)


@pytest.mark.parametrize("where", ["crds", "charts/lamina/crds"])
def test_committed_crds_are_up_to_date(where: str) -> None:
    for name, text in generate().items():
        path = REPO / where / name
        assert path.is_file(), f"{path} missing: run `python -m lamina.crdgen`"
        assert path.read_text() == text, f"{path} is stale: run `python -m lamina.crdgen`"


def test_generated_yaml_has_no_aliases_and_reparses() -> None:
    for text in generate().values():
        assert "&id" not in text and "*id" not in text
        assert yaml.safe_dump(yaml.safe_load(text))


def test_cli_writes_and_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "crds"
    assert main(["--check", "--out", str(out)]) == 1
    assert "lamina.dev_functions.yaml" in capsys.readouterr().err
    assert main(["--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    assert main(["--check", "--out", str(out)]) == 0
    (out / FILES[1]).write_text((out / FILES[1]).read_text() + "# edited\n")
    assert main(["--check", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert FILES[1] in err and FILES[0] not in err


def test_cli_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--stdout"]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [d["metadata"]["name"] for d in docs] == [
        "functions.lamina.dev",
        "layers.lamina.dev",
        "eventsourcemappings.lamina.dev",
    ]

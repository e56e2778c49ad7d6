"""Loading the YAML a user would `kubectl apply`: files, folders, multi-document, ConfigMaps, Secrets."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from lamina.api import ManifestError, load_documents, load_manifests, reference_problems

FUNCTION = """\
apiVersion: lamina.dev/v1alpha1
kind: Function
metadata:
  name: {name}
spec:
  handler: index.handler
  layers: [deps]
  code:
    inline: |
      def handler(event, context):
          return event
"""
LAYER = """\
apiVersion: lamina.dev/v1alpha1
kind: Layer
metadata:
  name: deps
spec:
  configMap:
    name: deps-files
"""
MAPPING = """\
apiVersion: lamina.dev/v1alpha1
kind: EventSourceMapping
metadata:
  name: tick
  namespace: jobs
spec:
  functionName: hello
  source:
    schedule:
      expression: rate(1 minute)
"""
CONFIGMAP = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: deps-files
data:
  util.py: "X = 1"
"""
SECRET = f"""\
apiVersion: v1
kind: Secret
metadata:
  name: creds
  namespace: jobs
data:
  token: {base64.b64encode(b"s3cret").decode()}
stringData:
  url: redis://localhost
"""


def write(path: Path, *docs: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("---\n".join(docs))
    return path


def test_multi_document_file(tmp_path: Path) -> None:
    f = write(tmp_path / "all.yaml", FUNCTION.format(name="hello"), LAYER, MAPPING, CONFIGMAP, SECRET, "")
    m = load_manifests(f)
    assert list(m.functions) == [("default", "hello")]
    assert list(m.layers) == [("default", "deps")]
    assert list(m.mappings) == [("jobs", "tick")]
    assert m.config_maps[("default", "deps-files")]["data"] == {"util.py": "X = 1"}
    assert m.config_map_value("default", "deps-files", "util.py") == "X = 1"
    assert m.secret_value("jobs", "creds", "token") == "s3cret"
    assert m.secret_value("jobs", "creds", "url") == "redis://localhost"
    assert m.secret_value("jobs", "creds", "missing") is None
    assert m.secret_value("default", "creds", "token") is None


def test_folders_are_read_recursively_yaml_and_yml_only(tmp_path: Path) -> None:
    write(tmp_path / "app" / "fn.yaml", FUNCTION.format(name="hello"))
    write(tmp_path / "app" / "nested" / "deeper" / "layer.yml", LAYER)
    write(tmp_path / "app" / "notes.txt", "kind: Nonsense")
    write(tmp_path / "app" / ".hidden" / "x.yaml", "kind: Nonsense")
    extra = write(tmp_path / "other.yaml", FUNCTION.format(name="second"))
    m = load_manifests([tmp_path / "app", str(extra)])
    assert sorted(n for _, n in m.functions) == ["hello", "second"]
    assert list(m.layers) == [("default", "deps")]


def test_kind_list_is_flattened() -> None:
    text = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: a}\n"
    assert list(load_documents([("list.yaml", text)]).config_maps) == [("default", "a")]


def test_unknown_kind_names_file_and_document(tmp_path: Path) -> None:
    f = write(tmp_path / "x.yaml", CONFIGMAP, "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n")
    with pytest.raises(ManifestError) as info:
        load_manifests(f)
    assert info.value.problems == [f"{f} (document 2): unknown kind 'Deployment' with apiVersion 'apps/v1'"]


def test_every_problem_of_every_file_is_collected(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", FUNCTION.format(name="hello").replace("index.handler", "nohandler"))
    write(tmp_path / "b.yaml", "- just\n- a list\n")
    write(tmp_path / "c.yaml", "key: [unclosed\n")
    with pytest.raises(ManifestError) as info:
        load_manifests(tmp_path)
    assert info.value.problems == [
        "Function hello: spec.handler: must be module.function, e.g. index.handler or src/app.main (got "
        "'nohandler')",
        f"{tmp_path / 'b.yaml'} (document 1): expected a Kubernetes object, got list",
        f"{tmp_path / 'c.yaml'}: invalid YAML at line 2: expected ',' or ']', but got '<stream end>'",
    ]


def test_duplicates_are_refused(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", FUNCTION.format(name="hello"))
    write(tmp_path / "b.yaml", CONFIGMAP, FUNCTION.format(name="hello"))
    with pytest.raises(ManifestError) as info:
        load_manifests(tmp_path)
    assert info.value.problems == [
        f"Function hello: defined twice in namespace default ({tmp_path / 'a.yaml'} (document 1) "
        f"and {tmp_path / 'b.yaml'} (document 2))"
    ]


def test_same_name_in_other_namespace_or_kind_is_fine(tmp_path: Path) -> None:
    other_ns = FUNCTION.format(name="hello").replace("  name: hello", "  name: hello\n  namespace: team")
    cm = CONFIGMAP.replace("deps-files", "hello")
    m = load_manifests(write(tmp_path / "a.yaml", FUNCTION.format(name="hello"), other_ns, cm))
    assert sorted(m.functions) == [("default", "hello"), ("team", "hello")]
    assert ("default", "hello") in m.config_maps


def test_missing_path_and_unnamed_configmap(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"nope\.yaml: no such file or directory"):
        load_manifests(tmp_path / "nope.yaml")
    with pytest.raises(ManifestError) as info:
        load_documents([("s", "apiVersion: v1\nkind: ConfigMap\ndata: {}\n")])
    assert info.value.problems == ["s (document 1): ConfigMap <unnamed>: metadata.name: is required"]


REFERRING = """\
apiVersion: lamina.dev/v1alpha1
kind: Function
metadata:
  name: hello
spec:
  runtime: python3.11
  handler: index.handler
  layers: [deps, absent]
  code:
    configMap:
      name: hello-code
  environmentFrom:
  - name: TOKEN
    secretKeyRef: {name: creds, key: token}
  - name: MODE
    configMapKeyRef: {name: deps-files, key: mode}
  async:
    onFailure:
      function: {name: dlq-handler}
---
apiVersion: lamina.dev/v1alpha1
kind: Layer
metadata:
  name: deps
spec:
  compatibleRuntimes: [python3.12]
  configMap:
    name: deps-files
---
apiVersion: lamina.dev/v1alpha1
kind: EventSourceMapping
metadata:
  name: orders
spec:
  functionName: nobody
  source:
    redis:
      urlFrom:
        secretKeyRef: {name: broker, key: url}
      stream: orders
"""


def test_reference_problems_name_the_referring_field() -> None:
    m = load_documents([("refs.yaml", REFERRING)])
    assert reference_problems(m) == [
        "Function hello: spec.code.configMap.name: ConfigMap 'hello-code' not found in namespace default",
        "Function hello: spec.layers[0]: Layer 'deps' does not support python3.11",
        "Function hello: spec.layers[1]: Layer 'absent' not found in namespace default",
        "Function hello: spec.environmentFrom[0].secretKeyRef: key 'token' of Secret 'creds' "
        "not found in namespace default",
        "Function hello: spec.environmentFrom[1].configMapKeyRef: key 'mode' of ConfigMap 'deps-files' "
        "not found in namespace default",
        "Function hello: spec.async.onFailure.function.name: Function 'dlq-handler' "
        "not found in namespace default",
        "Layer deps: spec.configMap.name: ConfigMap 'deps-files' not found in namespace default",
        "EventSourceMapping orders: spec.functionName: Function 'nobody' not found in namespace default",
        "EventSourceMapping orders: spec.source.redis.urlFrom.secretKeyRef: key 'url' of Secret 'broker' "
        "not found in namespace default",
    ]


def test_complete_manifests_have_no_reference_problems(tmp_path: Path) -> None:
    secret = SECRET.replace("  namespace: jobs\n", "")
    mapping = MAPPING.replace("  namespace: jobs\n", "")
    m = load_manifests(
        write(tmp_path / "a.yaml", FUNCTION.format(name="hello"), LAYER, mapping, CONFIGMAP, secret)
    )
    assert reference_problems(m) == []

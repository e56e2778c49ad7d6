"""Limits on what manifests and builders let through (issue 9, item 6), as data: no cluster."""

from __future__ import annotations

from typing import Any

import pytest

from lamina.api import ManifestError
from lamina.api.manifests import load_documents
from lamina.resources import LayerArtifact, build_function, build_mapping
from tests.unit.test_resources_function import SETTINGS, function
from tests.unit.test_resources_layer_and_mapping import mapping

SHA = "ab" * 32


def empty_dirs(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    return [v for v in volumes if "emptyDir" in v]


def test_every_empty_dir_the_builders_make_has_a_size_limit() -> None:
    fn = function({"code": {"url": "https://example.com/code.zip", "sha256": SHA}, "layers": ["deps"]})
    artifact = LayerArtifact(name="deps", revision=1, digest=SHA, url="https://example.com/deps.zip")
    deployment = build_function(fn, SETTINGS, [artifact]).deployment
    worker = build_mapping(mapping({"source": {"redis": {"url": "redis://r:6379", "stream": "s"}}}), SETTINGS)
    dirs = empty_dirs(deployment) + empty_dirs(worker)
    assert {v["name"] for v in dirs} >= {"tmp", "code", "layer-0"}
    for volume in dirs:
        assert volume["emptyDir"].get("sizeLimit"), volume
    sizes = {v["name"]: v["emptyDir"]["sizeLimit"] for v in empty_dirs(deployment)}
    assert sizes["code"] == sizes["layer-0"] == "250Mi"  # Lambda's unzipped limit


CONFIG_MAP = """\
apiVersion: v1
kind: ConfigMap
metadata: {{name: src}}
data:
  {key!r}: "x = 1"
"""


@pytest.mark.parametrize("key", ["..", "../escape.py", "/etc/cron.d/x", "..hidden", "a/b.py", ".", "sp ace"])
def test_config_map_keys_that_could_leave_a_directory_are_refused(key: str) -> None:
    with pytest.raises(ManifestError) as info:
        load_documents([("cm.yaml", CONFIG_MAP.format(key=key))])
    problem = info.value.problems[0]
    assert f"ConfigMap src: data[{key!r}]" in problem and "a key must consist of" in problem


def test_ordinary_config_map_keys_and_secret_data_are_accepted() -> None:
    docs = (
        CONFIG_MAP.format(key="index.py")
        + "---\n"
        + CONFIG_MAP.format(key="..ok").replace("..ok", ".env-file").replace("name: src", "name: other")
    )
    found = load_documents([("cm.yaml", docs)])
    assert found.config_map_value("default", "src", "index.py") == "x = 1"


def test_secret_data_must_be_base64() -> None:
    text = "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata:\n  token: 'not base64!'\n"
    with pytest.raises(ManifestError, match=r"Secret s: data\['token'\]: must be base64"):
        load_documents([("s.yaml", text)])

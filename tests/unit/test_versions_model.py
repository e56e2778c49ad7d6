"""Versions and aliases in the model: field-named refusals, retention, routing plans."""

from __future__ import annotations

import pytest

from lamina.api import ManifestError, parse_object
from lamina.api.versions import MissingVersion, Route, declared_routes, plan, retained, version_digest


def function(spec: dict, status: dict | None = None) -> dict:
    doc = {
        "apiVersion": "lamina.dev/v1alpha1",
        "kind": "Function",
        "metadata": {"name": "f"},
        "spec": {"handler": "index.handler", "code": {"inline": "x"}, **spec},
    }
    if status is not None:
        doc["status"] = status
    return doc


@pytest.mark.parametrize(
    ("aliases", "message"),
    [
        (
            {"live": {"functionVersion": "1", "additionalVersionWeights": {"2": 1.5}}},
            "additionalVersionWeights.2",
        ),
        (
            {"live": {"functionVersion": "1", "additionalVersionWeights": {"2": 0.1, "3": 0.1}}},
            "spec.aliases.live.additionalVersionWeights",
        ),
        (
            {"live": {"functionVersion": "$LATEST", "additionalVersionWeights": {"2": 0.1}}},
            "spec.aliases.live.additionalVersionWeights: weighted routing needs functionVersion",
        ),
        (
            {"live": {"functionVersion": "2", "additionalVersionWeights": {"2": 0.1}}},
            "must name another version than functionVersion",
        ),
        ({"123": {"functionVersion": "1"}}, "spec.aliases: an alias name"),
        ({"live": {"functionVersion": "latest"}}, "spec.aliases.live.functionVersion"),
        ({"live": {"functionVersion": "$LATEST", "provisionedConcurrency": 1}}, "not on an alias of $LATEST"),
    ],
)
def test_bad_aliases_are_refused_naming_the_field(aliases: dict, message: str) -> None:
    with pytest.raises(ManifestError) as err:
        parse_object(function({"aliases": aliases}))
    assert message in str(err.value)


def test_provisioned_concurrency_not_on_latest_once_versioned() -> None:
    with pytest.raises(ManifestError, match=r"spec\.provisionedConcurrency: not on \$LATEST"):
        parse_object(function({"publishVersions": True, "provisionedConcurrency": 1}))


def test_provisioned_concurrency_of_aliases_within_reserved() -> None:
    spec = {"reservedConcurrency": 2, "aliases": {"a": {"functionVersion": "1", "provisionedConcurrency": 3}}}
    with pytest.raises(ManifestError, match=r"must not exceed reservedConcurrency \(2\)"):
        parse_object(function(spec))


def test_alias_naming_an_unpublished_version_is_refused_against_the_status() -> None:
    status = {"latestVersion": 3, "versions": [{"version": "2", "codeSha256": "c", "digest": "d"}]}
    ok = function({"publishVersions": True, "aliases": {"p": {"functionVersion": "4"}}}, status)
    parse_object(ok)  # the version this change publishes
    bad = function({"aliases": {"p": {"functionVersion": "3"}}}, status)
    with pytest.raises(ManifestError, match=r"spec\.aliases\.p: version 3 does not exist \(published: 2\)"):
        parse_object(bad)


def test_declared_routes_resolve_latest_published_and_check_existence() -> None:
    fn = parse_object(
        function(
            {
                "aliases": {
                    "live": {"functionVersion": "$LATEST.PUBLISHED"},
                    "canary": {"functionVersion": "1", "additionalVersionWeights": {"3": 0.25}},
                }
            }
        )
    )
    routes = declared_routes(fn.spec, ["1", "3"])
    assert routes["live"] == Route("3")
    assert routes["canary"] == Route("1", "3", 0.25)
    with pytest.raises(MissingVersion, match=r"spec\.aliases\.canary\.additionalVersionWeights: version 3"):
        declared_routes(fn.spec, ["1", "2"])


def test_plan_splits_alias_provisioned_concurrency_by_weight() -> None:
    fn = parse_object(
        function(
            {
                "aliases": {"prod": {"functionVersion": "1", "provisionedConcurrency": 4}},
                "provisionedConcurrencyByVersion": {"5": 1},
            }
        )
    )
    p = plan(fn.spec, {"prod": Route("1", "2", 0.1)})
    assert p.provisioned == {"1": 3, "2": 1, "5": 1}  # the canary starts warm
    assert p.routed == {"1", "2", "5"}


def test_retention_keeps_the_newest_and_what_is_named() -> None:
    kept, collected = retained(["1", "2", "3", "10", "11"], keep=2, named={"2"})
    assert kept == ["2", "10", "11"]
    assert collected == ["1", "3"]


def test_version_digest_ignores_function_level_settings() -> None:
    a = parse_object(function({"reservedConcurrency": 1, "aliases": {}})).spec
    b = parse_object(function({"reservedConcurrency": 5, "publishVersions": True})).spec
    c = parse_object(function({"memoryMB": 256})).spec
    assert version_digest(a, "code", []) == version_digest(b, "code", [])
    assert version_digest(a, "code", []) != version_digest(c, "code", [])
    assert version_digest(a, "code", []) != version_digest(a, "other", [])

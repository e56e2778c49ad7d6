"""FunctionName <-> function: name_of is the inverse of how the Invoke API resolves a name."""

from __future__ import annotations

from lamina.environments.base import FunctionConfig
from lamina.gateway.registry import FunctionRegistry


def test_names_round_trip_in_and_out_of_the_default_namespace() -> None:
    here, there = FunctionConfig(name="hello"), FunctionConfig(name="hello", namespace="team-a")
    registry = FunctionRegistry([here, there], default_namespace="default")
    assert registry.name_of(here) == "hello" and registry.name_of(there) == "team-a.hello"
    for fn in (here, there):
        assert registry.resolve(registry.name_of(fn)) is fn


def test_weighted_alias_split_stays_within_two_calls_of_the_weight() -> None:
    from lamina.api.versions import Route
    from lamina.environments.base import FunctionConfig
    from lamina.gateway.registry import FunctionRegistry

    latest = FunctionConfig(name="f")
    latest.versions = {"1": FunctionConfig(name="f", version="1"), "2": FunctionConfig(name="f", version="2")}
    latest.routes = {"canary": Route("1", "2", 0.1)}
    registry = FunctionRegistry([latest])
    for calls in (7, 100, 1000, 10_000):
        registry.replace([latest])
        picks = [registry.route("f", "canary").executed_version for _ in range(calls)]
        assert abs(picks.count("2") - calls * 0.1) <= 2, (calls, picks.count("2"))
        assert picks.count("1") + picks.count("2") == calls

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

"""`lamina gateway`'s command line: plain function names follow the one watched namespace."""

from __future__ import annotations

from lamina.cluster.settings import GatewaySettings


def test_plain_names_belong_to_the_watched_namespace() -> None:
    assert GatewaySettings.from_args(["--namespace", "team-a"]).default_namespace == "team-a"


def test_an_explicit_default_namespace_wins() -> None:
    settings = GatewaySettings.from_args(["--namespace", "team-a", "--default-namespace", "other"])
    assert settings.default_namespace == "other"


def test_all_namespaces_default_to_default() -> None:
    assert GatewaySettings.from_args([]).default_namespace == "default"

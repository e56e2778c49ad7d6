"""One credential loader for every lamina process: an explicit kubeconfig, then the pod's service
account (in-cluster), then $KUBECONFIG (kubectl's ~/.kube/config when unset)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config

from lamina.kubeapi import NoCredentials, load_configuration
from lamina.reconcilers.settings import connection_info


def kubeconfig(path: Path, server: str, token: str = "t0ken") -> str:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": server, "insecure-skip-tls-verify": True}}],
                "users": [{"name": "u", "user": {"token": token}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    return str(path)


@pytest.fixture
def in_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    """As in a pod: the service account's loader succeeds (its files exist only in pods)."""

    def load(client_configuration: client.Configuration | None = None, **_: Any) -> None:
        assert client_configuration is not None
        client_configuration.host = "https://in-cluster:443"

    monkeypatch.setattr(config, "load_incluster_config", load)


@pytest.fixture
def outside(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Outside a pod, with no kubeconfig of the user's own."""

    def load(**_: Any) -> None:
        raise config.ConfigException("Service host/port is not set.")

    monkeypatch.setattr(config, "load_incluster_config", load)
    monkeypatch.setenv("HOME", str(tmp_path))


def test_an_explicit_kubeconfig_wins_even_in_a_pod(in_cluster: None, tmp_path: Path) -> None:
    explicit = kubeconfig(tmp_path / "explicit", "https://explicit:6443")
    env = {"KUBECONFIG": kubeconfig(tmp_path / "env", "https://env:6443")}
    assert load_configuration(explicit, env).host == "https://explicit:6443"


def test_in_a_pod_its_service_account_comes_before_kubeconfig(in_cluster: None, tmp_path: Path) -> None:
    env = {"KUBECONFIG": kubeconfig(tmp_path / "env", "https://env:6443")}
    assert load_configuration(None, env).host == "https://in-cluster:443"


def test_outside_a_pod_kubeconfig_is_used(outside: None, tmp_path: Path) -> None:
    env = {"KUBECONFIG": kubeconfig(tmp_path / "env", "https://env:6443")}
    assert load_configuration(None, env).host == "https://env:6443"


def test_outside_a_pod_kubectls_default_file_is_used(outside: None, tmp_path: Path) -> None:
    (tmp_path / ".kube").mkdir()
    kubeconfig(tmp_path / ".kube" / "config", "https://home:6443")
    assert load_configuration(None, {}).host == "https://home:6443"


def test_no_credentials_say_what_was_tried(outside: None, tmp_path: Path) -> None:
    with pytest.raises(NoCredentials, match=r"not in a pod .* and no kubeconfig"):
        load_configuration(None, {"KUBECONFIG": str(tmp_path / "missing")})


def test_kopf_logs_in_with_the_same_credentials(outside: None, tmp_path: Path) -> None:
    """The operator's kopf watches and its reconcilers' calls go to one cluster as one identity."""
    configuration = load_configuration(kubeconfig(tmp_path / "k", "https://explicit:6443", token="s3cret"))
    info = connection_info(configuration, trust_env=False)
    assert (info.server, info.scheme, info.token, info.insecure) == (
        "https://explicit:6443",
        "Bearer",
        "s3cret",
        True,
    )

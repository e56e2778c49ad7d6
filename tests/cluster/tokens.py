"""Kubeconfigs that authenticate as a ServiceAccount, so tests see exactly what its RBAC allows."""

from __future__ import annotations

import base64
import tempfile
from pathlib import Path

import yaml
from kubernetes import client


def token_kubeconfig(k8s_api: client.ApiClient, kubeconfig: str, namespace: str, account: str) -> str:
    """A kubeconfig file for ServiceAccount ``account`` (a bound token from the TokenRequest API),
    pointing at the same API server as ``kubeconfig``. The caller deletes the file."""
    core = client.CoreV1Api(k8s_api)
    token = core.create_namespaced_service_account_token(
        account, namespace, {"spec": {"expirationSeconds": 3600}}
    ).status.token
    admin = yaml.safe_load(Path(kubeconfig).read_text())
    cluster = admin["clusters"][0]["cluster"]
    ca = cluster.get("certificate-authority-data")
    if ca is None and cluster.get("certificate-authority"):
        ca = base64.b64encode(Path(cluster["certificate-authority"]).read_bytes()).decode()
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "c", "cluster": {"server": cluster["server"], "certificate-authority-data": ca}}
        ],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "c", "user": account, "namespace": namespace}}],
        "current-context": "sa",
    }
    path = Path(tempfile.mkstemp(prefix="lamina-sa-", suffix=".kubeconfig")[1])
    path.write_text(yaml.safe_dump(doc))
    return str(path)

"""Code and layers from S3-compatible storage in a cluster: the operator reads the objects (a real
versitygw with versioning, uploads through boto3), records their digests, pins the pods' fetch to the
object version with credentials by Secret reference, publishes a new version when a new object is
uploaded, and names bucket and key, never the credentials, when an object cannot be read."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.test_operator_reconcile import Cluster, Operator, cluster, crds, function  # noqa: F401
from tests.support.s3server import ACCESS_KEY, SECRET_KEY, S3Server

pytestmark = pytest.mark.builds("s3-server")

BUCKET = "lamina-cluster-code"


def zipped(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for name, text in files.items():
            archive.writestr(zipfile.ZipInfo(name, (2026, 1, 1, 0, 0, 0)), text)
    return buf.getvalue()


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[S3Server]:
    with S3Server(tmp_path / "s3") as server:
        server.versioned_bucket(BUCKET)
        yield server


def test_s3_code_and_layer(
    request: pytest.FixtureRequest, s3: S3Server, wait_until: Callable[..., Any]
) -> None:
    kubeconfig, namespace = request.getfixturevalue("kubeconfig"), request.getfixturevalue("namespace")
    request.getfixturevalue("crds")
    op = Operator(kubeconfig, namespace, env={"LAMINA_S3_POLL_SECONDS": "2"}).start()
    request.addfinalizer(op.stop)
    k8s: Cluster = request.getfixturevalue("cluster")
    k8s.core.create_namespaced_secret(
        k8s.ns,
        {
            "metadata": {"name": "s3-creds"},
            "stringData": {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY},
        },
    )
    client = s3.client()
    layer_zip = zipped({"python/helper.py": "GREETING = 'hi'"})
    client.put_object(Bucket=BUCKET, Key="layers/helper.zip", Body=layer_zip)
    one = zipped({"app.py": "def handler(e, c):\n    return 1\n"})
    first = client.put_object(Bucket=BUCKET, Key="fn/app.zip", Body=one)
    location = {"bucket": BUCKET, "endpoint": s3.endpoint, "credentialsSecret": {"name": "s3-creds"}}
    k8s.create(
        "layers",
        {"apiVersion": "lamina.dev/v1alpha1", "kind": "Layer", "metadata": {"name": "helper"},
         "spec": {"s3": {**location, "key": "layers/helper.zip"}}},
    )  # fmt: skip
    k8s.wait_ready(wait_until, "layers", "helper")
    layer_status = k8s.get("layers", "helper")["status"]
    assert layer_status["digest"] == hashlib.sha256(layer_zip).hexdigest()
    assert layer_status["artifact"].startswith("s3:") and SECRET_KEY not in layer_status["artifact"]

    k8s.create(
        "functions",
        function("from-s3", handler="app.handler", layers=["helper"], publishVersions=True,
                 code={"s3": {**location, "key": "fn/app.zip"}}),
    )  # fmt: skip
    k8s.wait_ready(wait_until, "functions", "from-s3")
    status = k8s.get("functions", "from-s3")["status"]
    assert status["codeS3"]["sha256"] == hashlib.sha256(one).hexdigest()
    assert status["codeS3"]["versionId"] == first["VersionId"]
    assert status["latestVersion"] == 1
    pod = k8s.deployment("fn-from-s3")["spec"]["template"]["spec"]
    inits = {c["name"]: c for c in pod["initContainers"]}
    code = inits["fetch-code"]["command"]
    assert code[:4] == ["python", "-m", "lamina_runtime", "fetch-s3"]
    assert code[code.index("--version-id") + 1] == first["VersionId"]
    assert "fetch-layer-0" in inits
    assert SECRET_KEY not in json.dumps(pod) and ACCESS_KEY not in json.dumps(pod)
    assert {e["valueFrom"]["secretKeyRef"]["name"] for e in inits["fetch-code"]["env"]} == {"s3-creds"}

    # A new upload under the same key: a new code digest, a new version, the pods pinned to it.
    two = zipped({"app.py": "def handler(e, c):\n    return 2\n"})
    second = client.put_object(Bucket=BUCKET, Key="fn/app.zip", Body=two)
    k8s.patch(
        "functions", "from-s3", {"timeoutSeconds": 3}
    )  # any edit makes it look again (and so does its retry)
    wait_until(
        lambda: k8s.get("functions", "from-s3")["status"].get("latestVersion") == 2,
        timeout=90,
        message="version 2 from the new upload",
    )
    status = k8s.get("functions", "from-s3")["status"]
    assert status["codeS3"]["versionId"] == second["VersionId"]
    assert status["codeS3"]["sha256"] == hashlib.sha256(two).hexdigest()

    # A missing object blocks with bucket and key, never the credentials.
    k8s.create(
        "functions", function("missing", handler="app.handler", code={"s3": {**location, "key": "nope.zip"}})
    )
    ready = k8s.wait_reason(wait_until, "functions", "missing", "S3ObjectUnreadable")
    assert f"s3://{BUCKET}/nope.zip" in ready["message"] and "NoSuchKey" in ready["message"]
    assert SECRET_KEY not in ready["message"] and ACCESS_KEY not in ready["message"]

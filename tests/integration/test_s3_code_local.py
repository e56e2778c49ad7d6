"""Code and layers from S3-compatible storage in local mode, against a real server with object
versioning (versitygw), uploads through boto3's S3 client: the digest is computed and recorded, a new
upload is a new code digest and a new version, a missing object names bucket and key but never the
credentials, and the runtime's stdlib fetcher (the init container's job) reads pinned versions."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.local_mode import LocalServer
from tests.support.s3server import ACCESS_KEY, SECRET_KEY, S3Server

pytestmark = pytest.mark.builds("s3-server")

BUCKET = "lamina-code"


def zipped(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for name, text in files.items():
            archive.writestr(zipfile.ZipInfo(name, (2026, 1, 1, 0, 0, 0)), text)  # same bytes every time
    return buf.getvalue()


def app(tag: str) -> bytes:
    return zipped(
        {
            "app.py": "import os\nfrom helper import GREETING\n\ndef handler(event, context):\n"
            f"    return {{'code': '{tag}', 'greeting': GREETING,"
            " 'version': os.environ['AWS_LAMBDA_FUNCTION_VERSION']}\n"
        }
    )


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with S3Server(tmp_path_factory.mktemp("s3")) as server:
        server.versioned_bucket(BUCKET)
        yield server


def manifests(s3: S3Server, key: str = "fn/app.zip", object_version: str | None = None) -> str:
    version = f"\n      objectVersion: {object_version}" if object_version else ""
    return f"""
apiVersion: v1
kind: Secret
metadata: {{name: s3-creds}}
stringData: {{AWS_ACCESS_KEY_ID: {ACCESS_KEY}, AWS_SECRET_ACCESS_KEY: {SECRET_KEY}}}
---
apiVersion: lamina.dev/v1alpha1
kind: Layer
metadata: {{name: helper}}
spec:
  s3:
    bucket: {BUCKET}
    key: layers/helper.zip
    endpoint: "{s3.endpoint}"
    credentialsSecret: {{name: s3-creds}}
---
apiVersion: lamina.dev/v1alpha1
kind: Function
metadata: {{name: from-s3}}
spec:
  handler: app.handler
  publishVersions: true
  layers: [helper]
  code:
    s3:
      bucket: {BUCKET}
      key: {key}
      endpoint: "{s3.endpoint}"
      credentialsSecret: {{name: s3-creds}}{version}
"""


def start(tmp: Path, text: str, state: Path) -> LocalServer:
    path = tmp / "fn.yaml"
    path.write_text(text)
    return LocalServer([path], state).start()


def invoke(server: LocalServer, name: str) -> dict:
    response = server.lambda_client().invoke(FunctionName=name, Payload=b"{}")
    assert "FunctionError" not in response
    return json.loads(response["Payload"].read())


def test_code_and_layer_from_s3_and_a_new_upload_is_a_new_version(s3: S3Server, tmp_path: Path) -> None:
    client = s3.client()
    client.put_object(
        Bucket=BUCKET, Key="layers/helper.zip", Body=zipped({"python/helper.py": "GREETING = 'hi'"})
    )
    first = client.put_object(Bucket=BUCKET, Key="fn/app.zip", Body=app("one"))
    state = tmp_path / "state"
    server = start(tmp_path, manifests(s3), state)
    try:
        assert invoke(server, "from-s3") == {"code": "one", "greeting": "hi", "version": "$LATEST"}
        config = server.lambda_client().get_function(FunctionName="from-s3")["Configuration"]
        assert config["CodeSha256"] == hashlib.sha256(app("one")).hexdigest()
    finally:
        server.stop()

    client.put_object(Bucket=BUCKET, Key="fn/app.zip", Body=app("two"))  # a new object version
    server = start(tmp_path, manifests(s3), state)
    try:
        assert "published from-s3 version 2" in server.output()
        assert invoke(server, "from-s3:1")["code"] == "one"
        assert invoke(server, "from-s3:2")["code"] == "two"
    finally:
        server.stop()

    # Pinned to the first object version: the old code, whatever the key holds now.
    server = start(tmp_path, manifests(s3, object_version=first["VersionId"]), tmp_path / "pinned")
    try:
        assert invoke(server, "from-s3")["code"] == "one"
    finally:
        server.stop()


def test_missing_object_names_bucket_and_key_never_the_credentials(s3: S3Server, tmp_path: Path) -> None:
    path = tmp_path / "fn.yaml"
    path.write_text(manifests(s3, key="fn/missing.zip"))
    s3.client().put_object(
        Bucket=BUCKET, Key="layers/helper.zip", Body=zipped({"python/helper.py": "GREETING = 1"})
    )
    with pytest.raises(RuntimeError) as err:
        LocalServer([path], tmp_path / "state").start()
    text = str(err.value)
    assert f"Function from-s3: spec.code.s3: cannot read s3://{BUCKET}/fn/missing.zip: NoSuchKey" in text
    assert SECRET_KEY not in text and ACCESS_KEY not in text


def test_wrong_credentials_are_access_denied_without_the_secret(s3: S3Server, tmp_path: Path) -> None:
    text = manifests(s3).replace(SECRET_KEY, "not-the-secret")
    path = tmp_path / "fn.yaml"
    path.write_text(text)
    with pytest.raises(RuntimeError) as err:
        LocalServer([path], tmp_path / "state").start()
    assert f"spec.code.s3: cannot read s3://{BUCKET}/fn/app.zip: SignatureDoesNotMatch" in str(err.value)
    assert "not-the-secret" not in str(err.value)


def test_runtime_fetcher_reads_a_pinned_version_with_env_credentials(s3: S3Server, tmp_path: Path) -> None:
    client = s3.client()
    old = client.put_object(Bucket=BUCKET, Key="fetch/app.zip", Body=app("old"))
    client.put_object(Bucket=BUCKET, Key="fetch/app.zip", Body=app("new"))
    digest = hashlib.sha256(app("old")).hexdigest()
    env = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "PATH": "/usr/bin:/bin"}
    cmd = [
        sys.executable,
        "-m",
        "lamina_runtime",
        "fetch-s3",
        "--endpoint",
        s3.endpoint,
        "--version-id",
        old["VersionId"],
        BUCKET,
        "fetch/app.zip",
        digest,
        str(tmp_path / "task"),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "'old'" in (tmp_path / "task" / "app.py").read_text()
    # Without the version the current object is fetched, and its digest does not match: refused.
    cmd.remove("--version-id")
    cmd.remove(old["VersionId"])
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "sha256 mismatch" in done.stderr
    assert SECRET_KEY not in done.stderr

"""A real S3-compatible server with object versioning for tests: versitygw (Apache-2.0) on its POSIX
backend, built once from the Go module proxy by ``scripts/build-s3-server`` and cached under
``~/.cache/lamina``. It verifies SigV4 signatures, so lamina's own signer is checked by it too.

    with S3Server(tmp_path / "s3") as s3:
        client = s3.client()           # boto3's S3 client
        s3.versioned_bucket("code")
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Self

import boto3

from lamina_runtime.host import kill_group
from tests.support.local_mode import REPO, free_port

ACCESS_KEY = "LAMINATESTKEY"
SECRET_KEY = "lamina-test-secret-do-not-print"


def server_binary() -> str:
    """The cached versitygw binary, building it the first time (takes minutes, then instant)."""
    done = subprocess.run(
        [str(REPO / "scripts" / "build-s3-server")], capture_output=True, text=True, check=False, timeout=1800
    )
    if done.returncode != 0:
        raise RuntimeError(f"scripts/build-s3-server failed:\n{done.stderr[-3000:]}")
    return done.stdout.strip().splitlines()[-1]


class S3Server:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        data, versions = self.root / "data", self.root / "versions"
        data.mkdir(parents=True, exist_ok=True)
        versions.mkdir(parents=True, exist_ok=True)
        log = (self.root / "server.log").open("wb")
        self.proc = subprocess.Popen(
            [
                server_binary(),
                "--access",
                ACCESS_KEY,
                "--secret",
                SECRET_KEY,
                "--port",
                f"127.0.0.1:{self.port}",
                "posix",
                "--versioning-dir",
                str(versions),
                str(data),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError((self.root / "server.log").read_text())
            try:
                urllib.request.urlopen(self.endpoint, timeout=1)
                return self
            except urllib.error.HTTPError:
                return self  # it answers (403 to an anonymous request): up
            except OSError:
                time.sleep(0.05)
        raise TimeoutError("versitygw did not start")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            kill_group(self.proc.pid, signal.SIGKILL, leader_reaped=False)
            self.proc.wait(10)

    def client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        )

    def versioned_bucket(self, name: str) -> None:
        client = self.client()
        client.create_bucket(Bucket=name)
        client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})

"""Start `lamina local` as a real subprocess on a free loopback port, as a user would."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

REPO = Path(__file__).resolve().parents[2]


def lambda_client(
    endpoint_url: str,
    read_timeout: float = 60,
    *,
    key: str = "test",
    secret: str = "test",
    region: str = "us-east-1",
    token: str | None = None,
) -> Any:
    """boto3's Lambda client for a lamina gateway at ``endpoint_url``: no retries (a test sees each
    answer as it came), dummy credentials unless a key pair is given."""
    return boto3.client(
        "lambda",
        endpoint_url=endpoint_url,
        region_name=region,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        aws_session_token=token,
        config=Config(
            retries={"max_attempts": 0, "mode": "standard"},
            read_timeout=read_timeout,
            connect_timeout=5,
            max_pool_connections=50,
        ),
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalServer:
    paths: list[Path]
    state_dir: Path
    extra_args: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[str] | None = None
    log_path: Path | None = None
    env: dict[str, str] = field(default_factory=dict)  # added to this process's environment

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> LocalServer:
        self.log_path = self.state_dir.parent / f"lamina-local-{self.port}.log"
        log = self.log_path.open("w")
        cmd = [
            sys.executable,
            "-m",
            "lamina.cli",
            "local",
            *map(str, self.paths),
            "--port",
            str(self.port),
            "--state-dir",
            str(self.state_dir),
            *self.extra_args,
        ]
        self.proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"lamina local exited {self.proc.returncode}:\n{self.output()}")
            if "lamina local: serving" in self.output():
                return self
            time.sleep(0.05)
        raise TimeoutError(f"lamina local did not start:\n{self.output()}")

    def output(self) -> str:
        return self.log_path.read_text() if self.log_path and self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGINT, timeout: float = 20.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait()

    def kill(self) -> None:
        """SIGKILL the whole process group: no clean-up runs, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def lambda_client(
        self,
        read_timeout: float = 60,
        key: str = "test",
        secret: str = "test",
        region: str = "us-east-1",
        token: str | None = None,
    ) -> Any:
        return lambda_client(self.url, read_timeout, key=key, secret=secret, region=region, token=token)

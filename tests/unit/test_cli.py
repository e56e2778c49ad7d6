"""The `lamina` command as a user runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def lamina(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lamina.cli", *args], capture_output=True, text=True, cwd=REPO, timeout=120
    )


def test_crds_check_passes_on_the_committed_files() -> None:
    result = lamina("crds", "--check")
    assert result.returncode == 0, result.stdout + result.stderr


def test_crds_check_names_a_drifting_file(tmp_path: Path) -> None:
    out = tmp_path / "crds"
    assert lamina("crds", "--out", str(out)).returncode == 0
    target = next(out.glob("*functions*.yaml"))
    target.write_text(target.read_text().replace("maximum: 900", "maximum: 901"))
    result = lamina("crds", "--check", "--out", str(out))
    assert result.returncode == 1
    assert target.name in result.stdout + result.stderr


def test_local_mode_refuses_bad_manifests_naming_the_field(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(
        "apiVersion: lamina.dev/v1alpha1\nkind: Function\nmetadata: {name: hello}\n"
        "spec: {handler: index.handler, timeoutSeconds: 0, code: {inline: 'x = 1'}}\n"
    )
    result = lamina("local", str(tmp_path / "bad.yaml"), "--port", "0", "--state-dir", str(tmp_path / "s"))
    assert result.returncode == 2
    assert "Function hello: spec.timeoutSeconds: must be between 1 and 900 (got 0)" in result.stderr

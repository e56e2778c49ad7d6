"""The images the real-pod tier runs, from scripts/build-images (cached by the digest of their inputs)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
BUILD = REPO / "scripts" / "build-images"
#: The runtimes the tier builds images for: the examples' and the default (python3.12, also what
#: provided.* functions run on). The others build the same way; scripts/build-images builds them all.
RUNTIMES = ("python3.12",)


def _run(*args: str, env: dict[str, str] | None = None, runtimes: tuple[str, ...] = RUNTIMES) -> str:
    """Run build-images, streaming its progress; return its last output line."""
    proc = subprocess.run(
        ["bash", str(BUILD), f"--runtimes={','.join(runtimes)}", *args],
        stdout=subprocess.PIPE,
        stderr=sys.stderr,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"scripts/build-images {' '.join(args)} failed (exit {proc.returncode})")
    return lines[-1]


def build() -> None:
    """Build (or find in the cache) every image the tier needs; no node is needed for this."""
    _run()


def load(state_dir: Path, python: str | None = None) -> Path:
    """Load the images into the real node of the cluster in ``state_dir``; return the Helm values file.
    ``python`` (a benchmark's choice, e.g. python3.13): the lamina image runs on that runtime's Python
    (``LAMINA_IMAGE_PYTHON``), and its runtime image is built and loaded beside the tier's."""
    env = {"LAMINA_TEST_CLUSTER_DIR": str(state_dir)}
    runtimes = RUNTIMES
    if python is not None:
        env["LAMINA_IMAGE_PYTHON"] = python
        runtimes = tuple(dict.fromkeys((*RUNTIMES, python)))
    return Path(_run("--load", env=env, runtimes=runtimes))


if __name__ == "__main__":  # scripts/test builds the images next to its other builds
    try:
        build()
    except RuntimeError as e:
        sys.exit(str(e))

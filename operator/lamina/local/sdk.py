"""boto3 for local mode's functions: the runtime image's pinned SDK (lamina_runtime.sdk), installed once
into ``~/.cache/lamina/runtime-sdk/<digest of the pins>`` and put on each function's import path after
its code and layers (never lamina's own site-packages, which functions do not see).
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import sys
from pathlib import Path

from lamina.local.artifacts import pip_install
from lamina.local.interpreters import cache_root
from lamina_runtime.sdk import PACKAGES, requirements


class SdkUnavailable(Exception):
    """The SDK could not be installed (no network to PyPI, say)."""


def sdk_dir(root: Path | None = None, python: str = sys.executable) -> Path:
    """The directory holding the pinned SDK, installed with ``python -m pip`` on first use.

    Concurrent callers (several local modes, test workers) wait on a lock for one install."""
    key = hashlib.sha256(requirements().encode()).hexdigest()[:16]
    base = (root or cache_root()) / "runtime-sdk"
    target = base / key
    if target.is_dir():
        return target
    base.mkdir(parents=True, exist_ok=True)
    with (base / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_dir():
            return target
        tmp = base / f".{key}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        failed = pip_install(python, tmp, PACKAGES, "--no-deps")  # every package is pinned
        if failed is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            raise SdkUnavailable(f"pip install {' '.join(PACKAGES[:2])} ... failed: {failed}")
        shutil.rmtree(tmp / "bin", ignore_errors=True)  # console scripts: functions do not run them
        tmp.rename(target)
    return target

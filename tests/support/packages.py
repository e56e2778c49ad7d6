"""PyPI packages for functions under test, installed once into ~/.cache/lamina/test-packages and linked
into a function's code directory (a function that brings its own libraries, with no layer)."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import sys
from pathlib import Path

from lamina.local.artifacts import pip_install
from lamina.local.interpreters import cache_root


def installed(*requirements: str) -> Path:
    """A directory holding ``requirements`` (pip install --target), installed on first use."""
    key = hashlib.sha256("\n".join(sorted(requirements)).encode()).hexdigest()[:16]
    base = cache_root() / "test-packages"
    target = base / key
    if target.is_dir():
        return target
    base.mkdir(parents=True, exist_ok=True)
    with (base / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.is_dir():
            tmp = base / f".{key}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            failed = pip_install(sys.executable, tmp, requirements)
            if failed is not None:
                raise RuntimeError(f"pip install {' '.join(requirements)} failed: {failed}")
            tmp.rename(target)
    return target


def link_into(code_dir: Path, packages: Path) -> None:
    """Make every top-level entry of ``packages`` importable from ``code_dir`` (symlinks)."""
    for entry in packages.iterdir():
        if entry.name in ("bin", "__pycache__"):
            continue
        os.symlink(entry, code_dir / entry.name)

"""Which interpreter runs a ``runtime: python3.X`` function in local mode: a real python3.X, never a
silent substitute.

Looked for, in order: lamina's own interpreter when it is that version; ``python3.X`` on PATH; one that
uv installed (``uv python install 3.X``); one ``scripts/build-python 3.X`` built into
``~/.cache/lamina/python``. Each candidate is asked its version before it is used (a pyenv shim, say,
may exist on PATH without a working interpreter behind it). With none, the function is refused when
local mode starts, with a message that says what to install.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from lamina_runtime.factory import python_version

CHECK_TIMEOUT_S = 20


def cache_root() -> Path:
    """Where lamina's builds are cached (scripts/build-* use the same rule)."""
    explicit = os.environ.get("LAMINA_CACHE")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lamina"


def _uv_roots() -> list[Path]:
    explicit = os.environ.get("UV_PYTHON_INSTALL_DIR")
    if explicit:
        return [Path(explicit)]
    data = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return [data / "uv" / "python"]


def _release(path: Path) -> tuple[int, ...]:
    """Sort key of a directory named after a release (cpython-3.12.7-linux-..., 3.12.14)."""
    match = re.search(r"(\d+)\.(\d+)\.(\d+)", path.name)
    return tuple(int(g) for g in match.groups()) if match else (0,)


def candidates(major: int, minor: int) -> Iterator[str]:
    name = f"python{major}.{minor}"
    if sys.version_info[:2] == (major, minor):
        yield sys.executable
    on_path = shutil.which(name)
    if on_path:
        yield on_path
    for root in _uv_roots():
        found = sorted(root.glob(f"cpython-{major}.{minor}.*"), key=_release, reverse=True)
        yield from (str(d / "bin" / name) for d in found if (d / "bin" / name).exists())
    built = sorted((cache_root() / "python").glob(f"{major}.{minor}.*"), key=_release, reverse=True)
    yield from (str(d / "bin" / name) for d in built if (d / "bin" / name).exists())


def _reports(path: str, major: int, minor: int) -> bool:
    """Does ``path`` run, and is it Python major.minor?"""
    try:
        done = subprocess.run(
            [path, "-S", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=CHECK_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and done.stdout.strip() == f"{major}.{minor}"


class Interpreters:
    """Finds (once per runtime) the interpreter of each ``python3.X`` runtime."""

    def __init__(self) -> None:
        self._found: dict[str, str | None] = {}

    def find(self, runtime: str) -> str | None:
        if runtime not in self._found:
            version = python_version(runtime)
            self._found[runtime] = None
            if version is not None:
                for path in candidates(*version):
                    if _reports(path, *version):
                        self._found[runtime] = path
                        break
        return self._found[runtime]

    def __call__(self, runtime: str) -> str:
        """The interpreter of ``runtime``; LookupError (saying what to install) when there is none."""
        found = self.find(runtime)
        if found is None:
            raise LookupError(missing_message(runtime))
        return found


def missing_message(runtime: str) -> str:
    version = python_version(runtime)
    if version is None:
        return f"{runtime} is not a Python runtime"
    x_y = f"{version[0]}.{version[1]}"
    return (
        f"{runtime} needs a Python {x_y} interpreter and none was found (python{x_y} on PATH, uv's "
        f"Python installs, scripts/build-python's {cache_root() / 'python'}); install one: "
        f"`scripts/build-python {x_y}` (builds CPython {x_y} into that cache), `uv python install {x_y}`, "
        f"or your system's python{x_y} package. lamina never runs a function on another Python version."
    )

"""Where a function's code and layers go on the import path.

Lambda extracts layers into one /opt tree in order, so a later layer's file replaces an earlier one's.
Here each layer keeps its own directory, so the same effect needs the later layer *earlier* on sys.path.
"""

from __future__ import annotations

import os
import sys


def split_layers(value: str | None) -> list[str]:
    return [p for p in (value or "").split(os.pathsep) if p]


def layer_import_paths(layers: list[str], version: tuple[int, int] | None = None) -> list[str]:
    """sys.path entries for `layers` (listed earliest first), highest precedence first."""
    major, minor = version or sys.version_info[:2]
    entries: list[str] = []
    for layer in reversed(layers):
        python_dir = os.path.join(layer, "python")
        site = os.path.join(python_dir, "lib", f"python{major}.{minor}", "site-packages")
        if os.path.isdir(site):
            entries.append(site)
        entries.append(python_dir if os.path.isdir(python_dir) else layer)
    return entries


def layer_dirs(layers: list[str], sub: str) -> list[str]:
    """Existing `sub` dirs (bin, lib) of the layers, later layer first, for PATH / LD_LIBRARY_PATH."""
    return [d for d in (os.path.join(layer, sub) for layer in reversed(layers)) if os.path.isdir(d)]

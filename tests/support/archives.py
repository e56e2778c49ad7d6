"""Zip archives made in memory, as function code and layers are shipped."""

from __future__ import annotations

import io
import zipfile


def make_zip(files: dict[str, str]) -> bytes:
    """A zip of ``{path inside the archive: text}``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return buf.getvalue()

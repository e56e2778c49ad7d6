"""`python -m lamina_runtime fetch URL SHA256 DEST`: an init container's job for url code and layers.

The archive is checked against its declared digest before a single file is written, and extracted into
DEST through a temporary directory, so DEST is either complete or untouched.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import sys
import urllib.request
import zipfile

MAX_BYTES = 250 * 1024 * 1024  # Lambda's unzipped limit bounds what we accept
UNIX = 3  # ZipInfo.create_system of archives made on Unix (the only ones that carry modes)


class FetchError(Exception):
    pass


def download(url: str, limit: int = MAX_BYTES) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            data = response.read(limit + 1)
    except OSError as exc:
        raise FetchError(f"cannot download {url}: {exc}") from None
    if len(data) > limit:
        raise FetchError(f"{url} is larger than {limit} bytes")
    return data


def extract(data: bytes, sha256: str, dest: str) -> int:
    """Check the digest, then unpack; returns the number of files written."""
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256.lower():
        raise FetchError(f"sha256 mismatch: expected {sha256}, got {actual}")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise FetchError("not a zip archive") from None
    members = [m for m in archive.infolist() if not m.is_dir()]
    for member in members:
        parts = member.filename.replace("\\", "/").split("/")
        if member.filename.startswith("/") or ".." in parts:
            raise FetchError(f"unsafe path in archive: {member.filename}")
    staging = dest.rstrip("/") + ".partial"
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    archive.extractall(staging, members)
    keep_exec_bits(staging, members)
    os.makedirs(dest, exist_ok=True)
    for name in os.listdir(staging):
        target = os.path.join(dest, name)
        if os.path.isdir(target):
            shutil.rmtree(target)
        os.replace(os.path.join(staging, name), target)
    shutil.rmtree(staging, ignore_errors=True)
    return len(members)


def keep_exec_bits(root: str, members: list[zipfile.ZipInfo]) -> None:
    """zipfile drops Unix permissions; a custom runtime's ``bootstrap`` (or a bundled binary) needs
    its exec bit, as Lambda keeps it. Only the exec bits are restored (never setuid, never write)."""
    for member in members:
        mode = member.external_attr >> 16
        if member.create_system == UNIX and mode & 0o111:
            path = os.path.join(root, member.filename)
            os.chmod(path, os.stat(path).st_mode | (mode & 0o111))


def main(url: str, sha256: str, dest: str) -> int:
    try:
        count = extract(download(url), sha256, dest)
    except FetchError as exc:
        print(f"lamina_runtime fetch: {exc}", file=sys.stderr)
        return 1
    print(f"lamina_runtime fetch: {count} files from {url} into {dest}")
    return 0

"""`python -m lamina_runtime fetch URL SHA256 DEST`: an init container's job for url code and layers.

The archive is checked against its declared digest before a single file is written, and extracted through
a staging directory on DEST's own filesystem: beside DEST when DEST does not exist yet (then renamed into
place whole), inside DEST when it does (a pod's volume on a read-only root: nothing beside it is
writable). Either way nothing is written outside DEST's filesystem and no partial tree is served.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import sys
import tempfile
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
    if os.path.isdir(dest):
        _extract_into_volume(archive, members, dest)
    else:
        _extract_beside(archive, members, dest)
    return len(members)


#: Prefix of the staging directory made inside a destination that already exists (a volume).
STAGING_PREFIX = ".lamina-fetch-"


def _unpack(archive: zipfile.ZipFile, members: list[zipfile.ZipInfo], staging: str) -> None:
    archive.extractall(staging, members)
    keep_exec_bits(staging, members)


def _extract_beside(archive: zipfile.ZipFile, members: list[zipfile.ZipInfo], dest: str) -> None:
    """DEST does not exist yet (local mode's content-addressed directories): stage beside it and
    rename the whole directory into place, so DEST appears complete or not at all."""
    parent = os.path.dirname(os.path.abspath(dest))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=parent)
    try:
        _unpack(archive, members, staging)
        os.chmod(staging, 0o755)  # mkdtemp's 0700 would hide the code from another user
        os.rename(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _extract_into_volume(archive: zipfile.ZipFile, members: list[zipfile.ZipInfo], dest: str) -> None:
    """DEST exists: in a pod it is the mount point of an emptyDir, on a read-only root filesystem, so
    nothing can be written beside it and DEST itself cannot be replaced. Stage inside DEST (the one
    writable place on the same filesystem, so every move is a rename), then rename each top-level
    entry into place. The main container only starts once this init container has succeeded, so it
    never sees a half-moved tree; an attempt that died half-way (the kubelet restarts the init
    container with the same volume) leaves a stale staging directory, removed here, and entries of
    the same archive, replaced here."""
    for name in os.listdir(dest):
        if name.startswith(STAGING_PREFIX):
            shutil.rmtree(os.path.join(dest, name), ignore_errors=True)
    staging = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=dest)
    try:
        _unpack(archive, members, staging)
        for name in os.listdir(staging):
            target = os.path.join(dest, name)
            if os.path.isdir(target) and not os.path.islink(target):
                shutil.rmtree(target)
            os.replace(os.path.join(staging, name), target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def keep_exec_bits(root: str, members: list[zipfile.ZipInfo]) -> None:
    """zipfile drops Unix permissions; a custom runtime's ``bootstrap`` (or a bundled binary) needs
    its exec bit, as Lambda keeps it. Only the exec bits are restored (never setuid, never write)."""
    for member in members:
        mode = member.external_attr >> 16
        if member.create_system == UNIX and mode & 0o111:
            path = os.path.join(root, member.filename)
            os.chmod(path, os.stat(path).st_mode | (mode & 0o111))


#: Where the kubelet looks for a container's last words (Pod status ...terminated.message).
TERMINATION_LOG = "/dev/termination-log"


def main(url: str, sha256: str, dest: str) -> int:
    try:
        count = extract(download(url), sha256, dest)
    except FetchError as exc:
        return fail(str(exc))
    except OSError as exc:  # the destination cannot be written: say where, not a traceback
        return fail(f"cannot write {url} into {dest}: {exc}")
    print(f"lamina_runtime fetch: {count} files from {url} into {dest}")
    return 0


def fail(message: str) -> int:
    """Report a failed fetch on stderr and as the container's termination message, which the operator
    copies into the Function's status (the kubelet mounts the file; outside a pod it does not exist)."""
    line = f"lamina_runtime fetch: {message}"
    print(line, file=sys.stderr)
    if os.path.exists(TERMINATION_LOG):
        try:
            with open(TERMINATION_LOG, "w") as out:
                out.write(line[:4096])
        except OSError:
            pass
    return 1

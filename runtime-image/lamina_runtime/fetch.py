"""`python -m lamina_runtime fetch URL SHA256 DEST`: an init container's job for url code and layers.

The archive is checked against its declared digest before a single file is written, and extracted through
a staging directory on DEST's own filesystem: beside DEST when DEST does not exist yet (then renamed into
place whole), inside DEST when it does (a pod's volume on a read-only root: nothing beside it is
writable). Either way nothing is written outside DEST's filesystem and no partial tree is served.

What a URL may reach is limited, because a Function's author chooses it and reads the error: only
``http``/``https`` (no ``file://``, ``ftp://`` or ``data:``), and no loopback, link-local (cloud metadata
at 169.254.169.254) or unspecified address, checked on the address actually connected to, for every
redirect too (a DNS name that resolves to 127.0.0.1 is refused the same). ``LAMINA_FETCH_ALLOW_LOCAL=1``
(``lamina local --allow-local-urls``) lifts both limits for a developer's own machine. Errors never say
more than the author may know: a digest mismatch does not print the digest of what was fetched (that
would be a hash oracle for whatever the URL reached), and every connection failure reads the same, so
an error does not tell whether a port is open.

An archive is refused before extraction when its files would unpack to more than Lambda's 250 MB
(262,144,000 bytes, code and layers each), when it has more than ``MAX_FILES`` entries, or when it
unpacks to more than ``MAX_RATIO`` times its size (a zip bomb). The sizes come from the central
directory, and zipfile never writes more than a member's declared size, so the check bounds the disk.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import ipaddress
import os
import shutil
import socket
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile

from .s3 import S3Error, S3Object, credentials_from_env, get

MAX_BYTES = 250 * 1024 * 1024  # Lambda's unzipped limit (262,144,000 bytes) bounds the archive too
MAX_UNZIPPED_BYTES = 250 * 1024 * 1024
MAX_FILES = 50_000
#: Unpacked size over archive size above which an archive is a bomb, not code. Source code and
#: wheels compress 3-10x; a run of zeros compresses ~1000x.
MAX_RATIO = 100
#: Archives smaller than this when unpacked are never refused for their ratio.
RATIO_FLOOR_BYTES = 16 * 1024 * 1024
UNIX = 3  # ZipInfo.create_system of archives made on Unix (the only ones that carry modes)
ALLOW_LOCAL_ENV = "LAMINA_FETCH_ALLOW_LOCAL"
SCHEMES = ("http", "https")


class FetchError(Exception):
    pass


def local_allowed(environ: dict[str, str] | None = None) -> bool:
    value = (os.environ if environ is None else environ).get(ALLOW_LOCAL_ENV, "")
    return value.lower() in ("1", "true", "yes")


def _refused_address(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip.is_multicast


def _connect(host: str, port: int, timeout: float | None, allow_local: bool) -> socket.socket:
    """A socket to ``host``:``port`` whose address was checked (the one connected to, not a second
    lookup that DNS could answer differently)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        raise FetchError(f"cannot resolve host {host!r}") from None
    last: OSError | None = None
    for family, kind, proto, _, address in infos:
        if not allow_local and _refused_address(str(address[0])):
            raise FetchError(
                f"{host} is a loopback, link-local or unspecified address: refused "
                f"(lamina local --allow-local-urls allows it on a developer's machine)"
            )
        sock = socket.socket(family, kind, proto)
        try:
            if timeout is not None:
                sock.settimeout(timeout)
            sock.connect(address)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
    raise last or OSError("no address")


class _CheckedHTTPConnection(http.client.HTTPConnection):
    allow_local = False

    def connect(self) -> None:
        self.sock = _connect(self.host, self.port, self.timeout, self.allow_local)


class _CheckedHTTPSConnection(http.client.HTTPSConnection):
    allow_local = False

    def connect(self) -> None:
        sock = _connect(self.host, self.port, self.timeout, self.allow_local)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


def _opener(allow_local: bool) -> urllib.request.OpenerDirector:
    """http/https only (plus redirects between them): no file://, ftp:// or data: handler exists."""

    class HTTP(urllib.request.HTTPHandler):
        def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            class Connection(_CheckedHTTPConnection):
                pass

            Connection.allow_local = allow_local
            return self.do_open(Connection, req)

    class HTTPS(urllib.request.HTTPSHandler):
        def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            class Connection(_CheckedHTTPSConnection):
                pass

            Connection.allow_local = allow_local
            return self.do_open(Connection, req)

    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler(),  # HTTP(S)_PROXY as urlopen honours it; the proxy's address is checked
        HTTP(),
        HTTPS(),
        urllib.request.HTTPRedirectHandler(),
        urllib.request.HTTPErrorProcessor(),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.UnknownHandler(),
    ):
        opener.add_handler(handler)
    return opener


def _read_file_url(url: str, limit: int) -> bytes:
    path = urllib.request.url2pathname(url[len("file://") :])
    try:
        with open(path, "rb") as f:
            return f.read(limit + 1)
    except OSError:
        raise FetchError(f"cannot read {url}") from None


def download(url: str, limit: int = MAX_BYTES, *, allow_local: bool | None = None) -> bytes:
    allow = local_allowed() if allow_local is None else allow_local
    scheme = url.split(":", 1)[0].lower()
    if scheme == "file" and allow:
        data = _read_file_url(url, limit)
    elif scheme not in SCHEMES:
        raise FetchError(
            f"only http:// and https:// URLs are fetched (got {scheme}://"
            + (")" if scheme != "file" else "; lamina local --allow-local-urls allows file://)")
        )
    else:
        try:
            with _opener(allow).open(url, timeout=60) as response:
                data = response.read(limit + 1)
        except FetchError as exc:
            raise FetchError(f"cannot download {url}: {exc}") from None
        except urllib.error.HTTPError as exc:
            raise FetchError(f"cannot download {url}: HTTP {exc.code}") from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, FetchError):
                raise FetchError(f"cannot download {url}: {exc.reason}") from None
            if isinstance(exc.reason, str) and "unknown url type" in exc.reason:
                why = "redirected to a scheme other than http(s)"
                raise FetchError(f"cannot download {url}: {why}") from None
            raise FetchError(f"cannot download {url}: the connection failed") from None
        except (OSError, http.client.HTTPException, ValueError):
            raise FetchError(f"cannot download {url}: the connection failed") from None
    if len(data) > limit:
        raise FetchError(f"{url} is larger than {limit} bytes")
    return data


def check_archive(archive: zipfile.ZipFile, packed: int) -> list[zipfile.ZipInfo]:
    """The members to extract, once the archive is known to be safe to unpack."""
    infos = archive.infolist()
    if len(infos) > MAX_FILES:
        raise FetchError(f"the archive has {len(infos)} entries (at most {MAX_FILES})")
    members = [m for m in infos if not m.is_dir()]
    for member in members:
        parts = member.filename.replace("\\", "/").split("/")
        if member.filename.startswith("/") or ".." in parts:
            raise FetchError(f"unsafe path in archive: {member.filename}")
    unpacked = sum(m.file_size for m in members)
    if unpacked > MAX_UNZIPPED_BYTES:
        raise FetchError(
            f"the archive unpacks to {unpacked} bytes, more than Lambda's unzipped limit of "
            f"{MAX_UNZIPPED_BYTES} bytes"
        )
    if unpacked > RATIO_FLOOR_BYTES and unpacked > MAX_RATIO * max(packed, 1):
        raise FetchError(
            f"the archive unpacks to {unpacked} bytes from {packed}: a compression ratio over "
            f"{MAX_RATIO} is refused"
        )
    return members


def extract(data: bytes, sha256: str, dest: str) -> int:
    """Check the digest, then unpack; returns the number of files written."""
    if hashlib.sha256(data).hexdigest() != sha256.lower():
        # The actual digest is not shown: it would tell the author the hash of whatever the URL reached.
        raise FetchError(f"sha256 mismatch: the archive's digest is not {sha256}")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = check_archive(archive, len(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError):
        raise FetchError("not a zip archive") from None
    try:
        if os.path.isdir(dest):
            _extract_into_volume(archive, members, dest)
        else:
            _extract_beside(archive, members, dest)
    except (zipfile.BadZipFile, ValueError, EOFError, NotImplementedError) as exc:
        raise FetchError(f"the archive is damaged: {exc}") from None
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


def main_s3(obj: S3Object, sha256: str, dest: str) -> int:
    """``fetch-s3``: the object (pinned to its version when one is given), checked against the digest
    the operator recorded, then extracted. Credentials come from AWS_ACCESS_KEY_ID /
    AWS_SECRET_ACCESS_KEY (/ AWS_SESSION_TOKEN), which the pod takes from a Secret by reference."""
    try:
        count = extract(get(obj, credentials_from_env()).data, sha256, dest)
    except (FetchError, S3Error) as exc:
        return fail(str(exc))
    except OSError as exc:
        return fail(f"cannot write {obj} into {dest}: {exc}")
    print(f"lamina_runtime fetch: {count} files from {obj} into {dest}")
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

"""`python -m lamina_runtime fetch` against a real HTTP server on loopback."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import io
import os
import shutil
import socket
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.archives import make_zip


@pytest.fixture
def serve_bytes(tmp_path: Path) -> Iterator:
    root = tmp_path / "www"
    root.mkdir()
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(root))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def publish(name: str, data: bytes) -> str:
        (root / name).write_bytes(data)
        return f"http://127.0.0.1:{server.server_address[1]}/{name}"

    yield publish
    server.shutdown()


def fetch(*args: str, allow_local: bool = True) -> subprocess.CompletedProcess[str]:
    """The init container's command; the test server is on loopback, which needs the opt-in."""
    env = {**os.environ, "LAMINA_FETCH_ALLOW_LOCAL": "1" if allow_local else "0"}
    return subprocess.run(
        [sys.executable, "-m", "lamina_runtime", "fetch", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_fetch_checks_the_digest_and_extracts(serve_bytes, tmp_path: Path) -> None:
    data = make_zip({"index.py": "def handler(e, c):\n    return 1\n", "lib/util.py": "X = 1\n"})
    url = serve_bytes("code.zip", data)
    dest = tmp_path / "task"
    result = fetch(url, hashlib.sha256(data).hexdigest(), str(dest))
    assert result.returncode == 0, result.stderr
    assert (dest / "index.py").read_text().startswith("def handler")
    assert (dest / "lib" / "util.py").read_text() == "X = 1\n"


def test_a_wrong_digest_writes_nothing(serve_bytes, tmp_path: Path) -> None:
    url = serve_bytes("code.zip", make_zip({"index.py": "x = 1\n"}))
    dest = tmp_path / "task"
    result = fetch(url, "0" * 64, str(dest))
    assert result.returncode == 1
    assert "sha256 mismatch" in result.stderr
    assert not dest.exists()


def test_path_traversal_is_refused(serve_bytes, tmp_path: Path) -> None:
    data = make_zip({"../evil.py": "x = 1\n"})
    url = serve_bytes("evil.zip", data)
    result = fetch(url, hashlib.sha256(data).hexdigest(), str(tmp_path / "task"))
    assert result.returncode == 1
    assert "unsafe path" in result.stderr
    assert not (tmp_path / "evil.py").exists()


def test_exec_bits_survive_extraction_and_nothing_more(serve_bytes, tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for name, mode in (("bootstrap", 0o755), ("data.txt", 0o644), ("setuid", 0o4777)):
            info = zipfile.ZipInfo(name)
            info.create_system = 3  # made on Unix: the mode is in the high half of external_attr
            info.external_attr = mode << 16
            archive.writestr(info, "#!/bin/sh\necho hi\n")
    data = buf.getvalue()
    dest = tmp_path / "task"
    result = fetch(serve_bytes("rt.zip", data), hashlib.sha256(data).hexdigest(), str(dest))
    assert result.returncode == 0, result.stderr
    assert (dest / "bootstrap").stat().st_mode & 0o111 == 0o111
    assert (dest / "data.txt").stat().st_mode & 0o111 == 0
    mode = (dest / "setuid").stat().st_mode
    assert mode & 0o111 == 0o111 and not mode & 0o4000  # exec kept, setuid never
    assert subprocess.run([str(dest / "bootstrap")], capture_output=True, text=True).stdout == "hi\n"


def test_a_read_only_parent_gets_nothing_written_beside_the_volume(serve_bytes, tmp_path: Path) -> None:
    """As in a pod: the root filesystem is read-only and DEST is a writable volume mounted on it.

    A private mount namespace makes the parent read-only and mounts a tmpfs at DEST, then runs the
    init container's command in it."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) for a private mount namespace")
    data = make_zip({"index.py": "X = 1\n", "pkg/mod.py": "Y = 2\n"})
    url = serve_bytes("code.zip", data)
    root = tmp_path / "root"
    dest = root / "var-task"
    dest.mkdir(parents=True)
    listing = tmp_path / "listing"
    script = f"""
set -e
mount --bind {root} {root}
mount -o remount,bind,ro {root}
mount -t tmpfs -o size=16m tmpfs {dest}
if touch {root}/probe 2>/dev/null; then echo "parent is writable" >&2; exit 3; fi
export LAMINA_FETCH_ALLOW_LOCAL=1
{sys.executable} -m lamina_runtime fetch {url} {hashlib.sha256(data).hexdigest()} {dest}
cd {dest} && find . | sort > {listing}
cat index.py pkg/mod.py >> {listing}
"""
    probe = subprocess.run(["unshare", "--mount", "--map-root-user", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"no private mount namespace here: {probe.stderr.decode().strip()}")
    result = subprocess.run(
        ["unshare", "--mount", "--map-root-user", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 files" in result.stdout
    # Everything landed inside the volume, nothing staged was left there.
    assert listing.read_text().splitlines() == [".", "./index.py", "./pkg", "./pkg/mod.py", "X = 1", "Y = 2"]
    assert sorted(p.name for p in root.iterdir()) == ["var-task"]


def test_an_existing_destination_is_filled_in_place_over_an_interrupted_attempt(
    serve_bytes, tmp_path: Path
) -> None:
    """A restarted init container finds its volume with the previous attempt's leftovers."""
    data = make_zip({"index.py": "X = 2\n", "lib/util.py": "Y = 2\n"})
    dest = tmp_path / "task"
    (dest / ".lamina-fetch-dead" / "lib").mkdir(parents=True)
    (dest / "lib").mkdir()
    (dest / "lib" / "util.py").write_text("half")
    result = fetch(serve_bytes("c.zip", data), hashlib.sha256(data).hexdigest(), str(dest))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in dest.iterdir()) == ["index.py", "lib"]
    assert (dest / "lib" / "util.py").read_text() == "Y = 2\n"


def test_an_unwritable_destination_is_named_in_one_line(serve_bytes, tmp_path: Path) -> None:
    data = make_zip({"index.py": "X = 1\n"})
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = fetch(serve_bytes("c.zip", data), hashlib.sha256(data).hexdigest(), str(blocker / "task"))
    assert result.returncode == 1
    assert result.stderr.startswith("lamina_runtime fetch: cannot write ")
    assert "Traceback" not in result.stderr


def test_a_mismatch_does_not_reveal_the_digest_of_what_was_fetched(serve_bytes, tmp_path: Path) -> None:
    data = b"the content of some other file"
    url = serve_bytes("secret.txt", data)
    result = fetch(url, "0" * 64, str(tmp_path / "task"))
    assert result.returncode == 1
    assert "sha256 mismatch" in result.stderr
    assert hashlib.sha256(data).hexdigest() not in result.stderr


def test_file_urls_and_loopback_are_refused_without_the_opt_in(serve_bytes, tmp_path: Path) -> None:
    secret = tmp_path / "secret.zip"
    secret.write_bytes(make_zip({"index.py": "x = 1\n"}))
    digest = hashlib.sha256(secret.read_bytes()).hexdigest()
    refused = fetch(f"file://{secret}", digest, str(tmp_path / "a"), allow_local=False)
    assert refused.returncode == 1 and "only http:// and https://" in refused.stderr
    url = serve_bytes("code.zip", secret.read_bytes())
    refused = fetch(url, digest, str(tmp_path / "b"), allow_local=False)
    assert refused.returncode == 1 and "loopback" in refused.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    # The same DNS name that resolves to loopback is refused: the check is on the connected address.
    by_name = fetch(url.replace("127.0.0.1", "localhost"), digest, str(tmp_path / "c"), allow_local=False)
    assert by_name.returncode == 1 and "loopback" in by_name.stderr
    allowed = fetch(f"file://{secret}", digest, str(tmp_path / "d"), allow_local=True)
    assert allowed.returncode == 0, allowed.stderr


def test_a_redirect_to_loopback_is_refused(tmp_path: Path) -> None:
    """A public-looking server that redirects to 127.0.0.1 gets nothing: every hop is checked. The
    redirecting server itself must be reachable without the opt-in, so it listens on a non-loopback
    address of this machine when there is one."""
    import socket as socket_mod

    target = None
    with contextlib.suppress(OSError):
        probe = socket_mod.socket(socket_mod.AF_INET, socket_mod.SOCK_DGRAM)
        probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing address
        target = probe.getsockname()[0]
        probe.close()
    if target is None or target.startswith("127."):
        pytest.skip("this machine has no non-loopback IPv4 address")

    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", "http://127.0.0.1:1/code.zip")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer((target, 0), Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://{target}:{server.server_address[1]}/code.zip"
        result = fetch(url, "0" * 64, str(tmp_path / "task"), allow_local=False)
    finally:
        server.shutdown()
    assert result.returncode == 1
    assert "loopback" in result.stderr


def test_connection_failures_read_the_same_whatever_the_port(tmp_path: Path) -> None:
    """A closed port and a port that speaks something else give one message: no port scan by error."""
    closed = socket_port()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    garbage = listener.getsockname()[1]

    def answer() -> None:
        conn, _ = listener.accept()
        conn.sendall(b"SSH-2.0-OpenSSH\r\n")
        conn.close()

    threading.Thread(target=answer, daemon=True).start()
    first = fetch(f"http://127.0.0.1:{closed}/x.zip", "0" * 64, str(tmp_path / "a"))
    second = fetch(f"http://127.0.0.1:{garbage}/x.zip", "0" * 64, str(tmp_path / "b"))
    listener.close()
    strip = lambda text, port: text.replace(str(port), "PORT")  # noqa: E731
    assert first.returncode == second.returncode == 1
    assert strip(first.stderr, closed) == strip(second.stderr, garbage)
    assert "the connection failed" in first.stderr


def socket_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_zip_bomb_is_refused_before_anything_is_written(serve_bytes, tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("zeros.bin", b"\0" * (300 * 1024 * 1024))  # 300 MiB in ~300 KB
    data = buf.getvalue()
    assert len(data) < 400 * 1024
    dest = tmp_path / "task"
    result = fetch(serve_bytes("bomb.zip", data), hashlib.sha256(data).hexdigest(), str(dest))
    assert result.returncode == 1
    assert "more than Lambda's unzipped limit" in result.stderr
    assert not dest.exists() and not (tmp_path / "task.partial").exists()


def test_an_absurd_compression_ratio_is_refused(serve_bytes, tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("zeros.bin", b"\0" * (40 * 1024 * 1024))  # under 250 MB, but ~1000:1
    data = buf.getvalue()
    result = fetch(serve_bytes("ratio.zip", data), hashlib.sha256(data).hexdigest(), str(tmp_path / "t"))
    assert result.returncode == 1
    assert "compression ratio" in result.stderr

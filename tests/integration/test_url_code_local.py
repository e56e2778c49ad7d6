"""Code and layers from zip archives at URLs (with sha256), in `lamina local`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tests.runtime.test_fetch import make_zip, serve_bytes  # noqa: F401 - the fixture is reused
from tests.support.local_mode import LocalServer

MANIFEST = """
apiVersion: lamina.dev/v1alpha1
kind: Layer
metadata: {{name: tools}}
spec:
  url: {layer_url}
  sha256: {layer_sha}
---
apiVersion: lamina.dev/v1alpha1
kind: Function
metadata: {{name: zipped}}
spec:
  handler: app.main
  layers: [tools]
  code:
    url: {code_url}
    sha256: {code_sha}
"""


def test_zip_code_and_layer_are_verified_and_used(serve_bytes, tmp_path: Path) -> None:  # noqa: F811
    layer = make_zip({"python/tools.py": "def shout(s):\n    return s.upper()\n"})
    code = make_zip({"app.py": "import tools\n\ndef main(event, context):\n    return tools.shout('hi')\n"})
    (tmp_path / "m").mkdir()
    manifest = MANIFEST.format(
        layer_url=serve_bytes("layer.zip", layer),
        layer_sha=hashlib.sha256(layer).hexdigest(),
        code_url=serve_bytes("code.zip", code),
        code_sha=hashlib.sha256(code).hexdigest(),
    )
    (tmp_path / "m" / "fn.yaml").write_text(manifest)
    server = LocalServer([tmp_path / "m"], tmp_path / "state", extra_args=["--allow-local-urls"]).start()
    try:
        response = server.lambda_client().invoke(FunctionName="zipped", Payload=b"{}")
        assert json.loads(response["Payload"].read()) == "HI"
    finally:
        server.stop()


def test_a_digest_mismatch_is_refused_naming_the_field(serve_bytes, tmp_path: Path) -> None:  # noqa: F811
    code = make_zip({"app.py": "def main(e, c):\n    return 1\n"})
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "fn.yaml").write_text(
        "apiVersion: lamina.dev/v1alpha1\nkind: Function\nmetadata: {name: bad}\nspec:\n"
        f"  handler: app.main\n  code:\n    url: {serve_bytes('c.zip', code)}\n    sha256: {'a' * 64}\n"
    )
    server = LocalServer([tmp_path / "m"], tmp_path / "state", extra_args=["--allow-local-urls"])
    try:
        server.start()
        raise AssertionError("lamina local accepted a code archive with the wrong sha256")
    except RuntimeError as exc:
        assert "Function bad: spec.code.url: sha256 mismatch" in str(exc)


def refused_reason(tmp_path: Path, url: str, sha: str, *extra: str) -> str:
    """Start lamina local on one Function with code at ``url``; return why it refused."""
    folder = tmp_path / f"m{len(list(tmp_path.iterdir()))}"
    folder.mkdir()
    (folder / "fn.yaml").write_text(
        "apiVersion: lamina.dev/v1alpha1\nkind: Function\nmetadata: {name: bad}\nspec:\n"
        f"  handler: app.main\n  code:\n    url: {url}\n    sha256: {sha}\n"
    )
    server = LocalServer([folder], folder / "state", extra_args=list(extra))
    try:
        server.start()
    except RuntimeError as exc:
        return str(exc)
    finally:
        server.stop()
    raise AssertionError(f"lamina local accepted code from {url}")


def test_file_urls_and_loopback_need_the_opt_in(serve_bytes, tmp_path: Path) -> None:  # noqa: F811
    code = make_zip({"app.py": "def main(e, c):\n    return 1\n"})
    sha = hashlib.sha256(code).hexdigest()
    on_disk = tmp_path / "code.zip"
    on_disk.write_bytes(code)
    why = refused_reason(tmp_path, f"file://{on_disk}", sha)
    assert "Function bad: spec.code.url: only http:// and https://" in why
    why = refused_reason(tmp_path, serve_bytes("code.zip", code), sha)
    assert "Function bad: spec.code.url: cannot download" in why and "loopback" in why


def test_a_zip_bomb_is_refused_naming_the_field(serve_bytes, tmp_path: Path) -> None:  # noqa: F811
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("app.py", b"#" * (300 * 1024 * 1024))
    bomb = buf.getvalue()
    why = refused_reason(
        tmp_path, serve_bytes("bomb.zip", bomb), hashlib.sha256(bomb).hexdigest(), "--allow-local-urls"
    )
    assert "Function bad: spec.code.url: the archive unpacks to" in why
    assert not any(p.name == "app.py" for p in tmp_path.rglob("app.py"))

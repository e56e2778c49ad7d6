"""Local mode's stand-in for what the operator does in a cluster: code and layers onto disk.

Each artifact lands in a directory named by its content digest under the state directory, so a restart
reuses it and a change makes a new one (layers are immutable once built, as in Lambda).
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from lamina.api import EnvFrom, Function, Layer, ManifestError
from lamina.api.common import S3Location
from lamina.api.manifests import Manifests
from lamina.api.versions import version_digest
from lamina.environments.base import FunctionConfig, function_config
from lamina.local.interpreters import missing_message
from lamina_runtime import s3
from lamina_runtime.factory import python_version
from lamina_runtime.fetch import FetchError, download, extract
from lamina_runtime.s3 import S3Error, S3Object
from lamina_runtime.sigv4 import Credentials

#: The keys a credentials Secret of an S3 location holds (AWS_SESSION_TOKEN is optional).
S3_SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def _digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()


def _config_map_files(manifests: Manifests, namespace: str, name: str, where: str) -> dict[str, bytes]:
    cm = manifests.config_maps.get((namespace, name))
    if cm is None:
        raise ManifestError([f"{where}: ConfigMap {name!r} not found in namespace {namespace!r}"])
    files = {k: str(v).encode() for k, v in (cm.get("data") or {}).items()}
    files.update({k: base64.b64decode(v) for k, v in (cm.get("binaryData") or {}).items()})
    return files


def _write_tree(target: Path, files: dict[str, bytes]) -> Path:
    """Write once into a temp dir, then rename, so a crash never leaves a half-written artifact."""
    if target.exists():
        return target
    tmp = target.with_name(target.name + ".tmp")
    if tmp.exists():
        _remove(tmp)
    for rel, data in files.items():
        path = tmp / rel
        # Keys were checked when the manifests were loaded; this keeps a future caller honest too.
        if Path(rel).is_absolute() or not path.resolve().is_relative_to(tmp.resolve()):
            raise ManifestError([f"{rel!r}: a file name may not leave its directory"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    tmp.mkdir(parents=True, exist_ok=True)
    tmp.rename(target)
    return target


def _remove(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def fetch_zip(url: str, sha256: str, target: Path, where: str, allow_local: bool = False) -> Path:
    """Download, verify and extract with the init container's own code (lamina_runtime.fetch);
    ``allow_local`` lets file:// and loopback URLs through (``lamina local --allow-local-urls``)."""
    if not target.exists():
        try:
            extract(download(url, allow_local=allow_local), sha256, str(target))
        except FetchError as exc:
            raise ManifestError([f"{where}: {exc}"]) from None
    return target


def pip_install(python: str, target: Path, requirements: Sequence[str], *flags: str) -> str | None:
    """``python -m pip install --target target``; None on success, else pip's last error line."""
    cmd = [
        python,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-input",
        *flags,
        "--target",
        str(target),
        *requirements,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode == 0:
        return None
    return proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit status {proc.returncode}"


class ArtifactBuilder:
    """Turns Function and Layer manifests into directories under `state_dir`."""

    def __init__(
        self,
        manifests: Manifests,
        state_dir: Path,
        python: str = sys.executable,
        allow_local_urls: bool = False,
        interpreters: Callable[[str], str | None] | None = None,
    ) -> None:
        self.manifests = manifests
        self.state_dir = state_dir
        self.python = python
        self.allow_local_urls = allow_local_urls
        #: ``runtime -> interpreter or None`` (lamina.local.interpreters): a python3.X function needs
        #: a python3.X, and a Layer's requirements are installed by the interpreter that will import them.
        self.interpreters = interpreters

    def python_for(self, runtime: str, subject: str) -> str:
        """The interpreter of ``runtime`` (``python`` for a custom runtime, or without a resolver);
        ManifestError saying what to install when there is none."""
        if self.interpreters is None or python_version(runtime) is None:
            return self.python
        found = self.interpreters(runtime)
        if found is None:
            raise ManifestError([f"{subject}: spec.runtime: {missing_message(runtime)}"])
        return found

    def function_config(self, fn: Function) -> FunctionConfig:
        return self.build(fn)[0]

    def build(self, fn: Function) -> tuple[FunctionConfig, str]:
        """The function's $LATEST config and its version digest (what a published version would be)."""
        spec = fn.spec
        subject = f"Function {fn.name}"
        python = self.python_for(spec.runtime, subject)
        code_dir, code_digest = self._code(fn, subject)
        layer_dirs, layer_digests = [], []
        for i, layer_name in enumerate(spec.layers):
            layer = self.manifests.layers.get((fn.metadata.namespace, layer_name))
            where = f"{subject}: spec.layers[{i}]"
            if layer is None:
                raise ManifestError(
                    [f"{where}: Layer {layer_name!r} not found in namespace {fn.metadata.namespace!r}"]
                )
            if not layer.spec.supports(spec.runtime):
                raise ManifestError(
                    [
                        f"{where}: Layer {layer_name!r} is not compatible with "
                        f"{spec.runtime} (compatibleRuntimes: "
                        f"{', '.join(layer.spec.compatible_runtimes)})"
                    ]
                )
            path, digest = self.layer(layer, python)
            layer_dirs.append(str(path))
            layer_digests.append(digest)
        environment = dict(spec.environment)
        environment.update(self.environment_from(fn.metadata.namespace, spec.environment_from, subject))
        config_digest = _digest(spec.model_dump_json(by_alias=True), json.dumps(environment, sort_keys=True))
        config = function_config(
            fn,
            environment=environment,
            code_dir=str(code_dir),
            layer_dirs=layer_dirs,
            revision=_digest(code_digest, *layer_digests, config_digest)[:16],
            code_sha256=code_digest,
        )
        return config, version_digest(spec, code_digest, layer_digests)

    def _code(self, fn: Function, subject: str) -> tuple[Path, str]:
        code = fn.spec.code
        if code.inline is not None:
            files = {"index.py": code.inline.encode()}
        elif code.config_map is not None:
            files = _config_map_files(
                self.manifests, fn.metadata.namespace, code.config_map.name, f"{subject}: spec.code.configMap"
            )
        elif code.s3 is not None:
            base = self.state_dir / "code" / fn.metadata.namespace / fn.name
            return self.s3_zip(code.s3, fn.metadata.namespace, base, f"{subject}: spec.code.s3")
        else:
            assert code.url is not None and code.sha256 is not None
            digest = code.sha256.lower()
            target = self.state_dir / "code" / fn.metadata.namespace / fn.name / digest[:16]
            where = f"{subject}: spec.code.url"
            return fetch_zip(code.url, code.sha256, target, where, self.allow_local_urls), digest
        digest = _digest(*(p for k in sorted(files) for p in (k, files[k])))
        target = self.state_dir / "code" / fn.metadata.namespace / fn.name / digest[:16]
        return _write_tree(target, files), digest

    def layer(self, layer: Layer, python: str | None = None) -> tuple[Path, str]:
        """The layer's directory; ``requirements`` are installed with ``python`` (the interpreter of
        the function that uses it), so compiled packages fit the Python that imports them."""
        python = python or self.python
        spec = layer.spec
        subject = f"Layer {layer.name}"
        base = self.state_dir / "layers" / layer.metadata.namespace / layer.name
        if spec.config_map is not None:
            files = _config_map_files(
                self.manifests, layer.metadata.namespace, spec.config_map.name, f"{subject}: spec.configMap"
            )
            digest = _digest(*(p for k in sorted(files) for p in (k, files[k])))
            return _write_tree(base / digest[:16], {f"python/{k}": v for k, v in files.items()}), digest
        if spec.url is not None:
            assert spec.sha256 is not None
            digest = spec.sha256.lower()
            where = f"{subject}: spec.url"
            return fetch_zip(spec.url, spec.sha256, base / digest[:16], where, self.allow_local_urls), digest
        if spec.s3 is not None:
            return self.s3_zip(spec.s3, layer.metadata.namespace, base, f"{subject}: spec.s3")
        requirements = spec.requirements or []
        digest = _digest(python, *requirements)
        target = base / digest[:16]
        if not target.exists():
            self._pip_install(python, requirements, target, subject)
        return target, digest

    def s3_zip(self, location: S3Location, namespace: str, base: Path, where: str) -> tuple[Path, str]:
        """Get the object (each start: a new upload must become a new digest), extract it into a
        directory named by its SHA-256; errors name the object, never the credentials."""
        credentials = self.s3_credentials(location, namespace, where)
        obj = S3Object(
            location.bucket, location.key, location.object_version, location.endpoint, location.region
        )
        try:
            fetched = s3.get(obj, credentials)
            digest = fetched.sha256
            target = base / digest[:16]
            if not target.exists():
                extract(fetched.data, digest, str(target))
        except (S3Error, FetchError) as exc:
            raise ManifestError([f"{where}: {exc}"]) from None
        return target, digest

    def s3_credentials(self, location: S3Location, namespace: str, where: str) -> Credentials | None:
        ref = location.credentials_secret
        if ref is None:
            return None
        values = {k: self.manifests.secret_value(namespace, ref.name, k) for k in S3_SECRET_KEYS}
        key, secret, token = (
            values["AWS_ACCESS_KEY_ID"],
            values["AWS_SECRET_ACCESS_KEY"],
            values["AWS_SESSION_TOKEN"],
        )
        if not key or not secret:
            raise ManifestError(
                [
                    f"{where}.credentialsSecret: Secret {ref.name!r} in namespace {namespace!r} needs "
                    "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
                ]
            )
        return Credentials(key, secret, token or None)

    def _pip_install(self, python: str, requirements: list[str], target: Path, subject: str) -> None:
        tmp = target.with_name(target.name + ".tmp")
        _remove(tmp)
        failed = pip_install(python, tmp / "python", requirements)
        if failed is not None:
            raise ManifestError([f"{subject}: spec.requirements: pip install failed: {failed}"])
        tmp.rename(target)

    def environment_from(self, namespace: str, items: list[EnvFrom], subject: str) -> dict[str, str]:
        """Values of ``environmentFrom`` references, read from the loaded Secrets and ConfigMaps."""
        values: dict[str, str] = {}
        for i, item in enumerate(items):
            ref = item.secret_key_ref or item.config_map_key_ref
            assert ref is not None
            if item.secret_key_ref is not None:
                value = self.manifests.secret_value(namespace, ref.name, ref.key)
                kind = "Secret"
            else:
                value = self.manifests.config_map_value(namespace, ref.name, ref.key)
                kind = "ConfigMap"
            if value is None:
                raise ManifestError(
                    [
                        f"{subject}: spec.environmentFrom[{i}]: {kind} {ref.name!r} has no "
                        f"key {ref.key!r} in namespace {namespace!r}"
                    ]
                )
            values[item.name] = value
        return values

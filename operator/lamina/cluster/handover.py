"""What a claimed pool pod is given to become one function's environment (``POST /specialize``).

The same things the function's own Deployment gives its pods, read from the API server at the moment
of the claim: the code (inline text, a ConfigMap's files, or a zip URL with its sha256 that the pod
fetches), the layers' ready artifacts in order, and the variables, with the Secret and ConfigMap values
the function names resolved for that one function only. A value that cannot be resolved fails the cold
start with the cause (the function's own pod would fail the same way: CreateContainerConfigError).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from lamina.api import Function
from lamina.api.common import GROUP, VERSION
from lamina.environments.base import EnvironmentFailed, FunctionConfig
from lamina.kubeapi import SecretValues
from lamina.resources.layer import LayerArtifact
from lamina.resources.pod_state import Failure
from lamina.resources.pool import (
    UnresolvedReference,
    handover,
    handover_environment,
    inline_files,
    layer_paths,
    source_doc,
)
from lamina.resources.settings import Settings

#: ``objects(key)``: the Function model as the gateway last saw it (``namespace/name``), or None.
Objects = Callable[[str], Function | None]
SecretFor = Callable[[FunctionConfig], str | None]
#: ``credentials_for(fn)``: the function's execution credentials (AWS_* variables), None without auth.
CredentialsFor = Callable[[FunctionConfig], Mapping[str, str] | None]


def _files(config_map: Any) -> dict[str, str]:
    files = dict(config_map.data or {})
    for name, data in (config_map.binary_data or {}).items():
        files[name] = base64.b64decode(data).decode(errors="surrogateescape")
    return files


class HandoverBuilder:
    """``await builder(fn)``: the hand-over body for ``fn``."""

    def __init__(
        self,
        api: client.ApiClient,
        settings: Settings,
        objects: Objects,
        secret_for: SecretFor | None = None,
        credentials_for: CredentialsFor | None = None,
    ) -> None:
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.settings = settings
        self.objects = objects
        self.secret_for = secret_for
        self.credentials_for = credentials_for
        self.secrets = SecretValues(api, ttl=5.0)

    async def __call__(self, fn: FunctionConfig) -> dict[str, Any]:
        model = self.objects(fn.key)
        if model is None:
            raise EnvironmentFailed(fn.name, "FunctionNotFound", "the Function is gone")
        secrets: dict[str, str] = {}
        for ref in model.spec.environment_from:
            if ref.secret_key_ref is not None:
                key_ref = ref.secret_key_ref
                value = await self.secrets(fn.namespace, key_ref.name, key_ref.key)
                if value is None:
                    raise self._fail(
                        fn, f'secret "{key_ref.name}" (key {key_ref.key}, for {ref.name}) not found'
                    )
                secrets[ref.name] = value
        return await asyncio.to_thread(self._build, fn, model, secrets)

    def _fail(self, fn: FunctionConfig, message: str) -> EnvironmentFailed:
        return EnvironmentFailed(fn.name, Failure.CREATE_CONTAINER_CONFIG_ERROR, message)

    def _config_map(self, fn: FunctionConfig, name: str) -> Any:
        try:
            return self.core.read_namespaced_config_map(name, fn.namespace, _request_timeout=(5, 10))
        except ApiException as exc:
            if exc.status == 404:
                raise self._fail(fn, f'configmap "{name}" not found') from None
            raise

    def _layer(self, fn: FunctionConfig, name: str) -> dict[str, Any]:
        try:
            layer = self.custom.get_namespaced_custom_object(GROUP, VERSION, fn.namespace, "layers", name)
        except ApiException as exc:
            if exc.status == 404:
                raise self._fail(fn, f'layer "{name}" not found') from None
            raise
        try:
            status = layer.get("status") if isinstance(layer, dict) else None
            artifact = LayerArtifact.from_status(name, status or {})
        except ValueError as exc:
            raise self._fail(fn, str(exc)) from None
        if artifact.config_map is not None:
            return source_doc(_files(self._config_map(fn, artifact.config_map)))
        return source_doc(url=artifact.url, sha256=artifact.digest)

    def _resolved(self, fn: FunctionConfig, model: Function, secrets: Mapping[str, str]) -> dict[str, str]:
        values = dict(secrets)
        for ref in model.spec.environment_from:
            if ref.config_map_key_ref is None:
                continue
            key_ref = ref.config_map_key_ref
            data = _files(self._config_map(fn, key_ref.name))
            if key_ref.key not in data:
                raise self._fail(fn, f'configmap "{key_ref.name}" has no key {key_ref.key} (for {ref.name})')
            values[ref.name] = data[key_ref.key]
        return values

    def _build(self, fn: FunctionConfig, model: Function, secrets: Mapping[str, str]) -> dict[str, Any]:
        code = model.spec.code
        if code.inline is not None:
            code_doc = source_doc(inline_files(model))
        elif code.config_map is not None:
            code_doc = source_doc(_files(self._config_map(fn, code.config_map.name)))
        elif code.url is not None:
            code_doc = source_doc(url=code.url, sha256=code.sha256)
        else:
            raise self._fail(fn, "code from S3 does not start in pool pods")  # the status says Deployment
        layers = [self._layer(fn, name) for name in model.spec.layers]
        try:
            env = handover_environment(
                model,
                self.settings,
                layer_paths(list(model.spec.layers)),
                self._resolved(fn, model, secrets),
                credentials=self.credentials_for(fn) if self.credentials_for is not None else None,
            )
        except UnresolvedReference as exc:
            raise self._fail(fn, str(exc)) from None
        secret = self.secret_for(fn) if self.secret_for is not None else None
        return handover(env, code_doc, layers, secret)

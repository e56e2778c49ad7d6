"""Checks across objects: every name a manifest mentions is defined in the same set of manifests.

A cluster may hold the referenced objects already, so this is not part of loading; local mode runs
only what it loaded, and calls it to fail early with the referring field named.
"""

from __future__ import annotations

from collections.abc import Iterator

from lamina.api.common import BrokerChoice
from lamina.api.function import Function
from lamina.api.manifests import Manifests


def _endpoint(m: Manifests, ns: str, where: str, ep: BrokerChoice | None) -> Iterator[str]:
    if ep is None:
        return
    target_fn = getattr(ep, "function", None)
    base = target_fn.name.partition(":")[0] if target_fn is not None else ""
    target_ns = (target_fn.namespace or ns) if target_fn is not None else ns
    if target_fn is not None and (target_ns, base) not in m.functions:
        yield f"{where}.function.name: Function {base!r} not found in namespace {ns}"
    target = ep.target
    url_from = getattr(target, "url_from", None)
    if url_from is not None:
        ref = url_from.secret_key_ref
        if m.secret_value(ns, ref.name, ref.key) is None:
            where_ref = f"{where}.{ep.kind}.urlFrom.secretKeyRef"
            yield f"{where_ref}: key {ref.key!r} of Secret {ref.name!r} not found in namespace {ns}"


def _function(m: Manifests, fn: Function) -> Iterator[str]:
    ns, spec = fn.metadata.namespace, fn.spec
    if spec.code.config_map is not None and (ns, spec.code.config_map.name) not in m.config_maps:
        yield f"spec.code.configMap.name: ConfigMap {spec.code.config_map.name!r} not found in namespace {ns}"
    for i, name in enumerate(spec.layers):
        layer = m.layers.get((ns, name))
        if layer is None:
            yield f"spec.layers[{i}]: Layer {name!r} not found in namespace {ns}"
        elif not layer.spec.supports(spec.runtime):
            yield f"spec.layers[{i}]: Layer {name!r} does not support {spec.runtime}"
    for i, env in enumerate(spec.environment_from):
        if env.secret_key_ref is not None:
            ref, kind, value = env.secret_key_ref, "Secret", m.secret_value
            field = "secretKeyRef"
        else:
            assert env.config_map_key_ref is not None
            ref, kind, value = env.config_map_key_ref, "ConfigMap", m.config_map_value
            field = "configMapKeyRef"
        if value(ns, ref.name, ref.key) is None:
            yield (
                f"spec.environmentFrom[{i}].{field}: key {ref.key!r} of {kind} {ref.name!r} "
                f"not found in namespace {ns}"
            )
    yield from _endpoint(m, ns, "spec.async.onSuccess", spec.async_.on_success)
    yield from _endpoint(m, ns, "spec.async.onFailure", spec.async_.on_failure)


def reference_problems(m: Manifests) -> list[str]:
    """One line per dangling reference, in the same format as validation problems."""
    lines: list[str] = []
    for fn in m.functions.values():
        lines += [f"Function {fn.name}: {p}" for p in _function(m, fn)]
    for layer in m.layers.values():
        ns, cm = layer.metadata.namespace, layer.spec.config_map
        if cm is not None and (ns, cm.name) not in m.config_maps:
            lines.append(
                f"Layer {layer.name}: spec.configMap.name: ConfigMap {cm.name!r} not found in namespace {ns}"
            )
    for esm in m.mappings.values():
        ns, spec = esm.metadata.namespace, esm.spec
        subject = f"EventSourceMapping {esm.name}"
        if (ns, esm.function) not in m.functions:
            lines.append(
                f"{subject}: spec.functionName: Function {esm.function!r} not found in namespace {ns}"
            )
        if spec.source.schedule is None:
            lines += [f"{subject}: {p}" for p in _endpoint(m, ns, "spec.source", spec.source)]
        if spec.destination_config is not None:
            on_failure = spec.destination_config.on_failure
            lines += [
                f"{subject}: {p}" for p in _endpoint(m, ns, "spec.destinationConfig.onFailure", on_failure)
            ]
    return lines

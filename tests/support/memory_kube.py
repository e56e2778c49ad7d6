"""An in-memory stand-in for lamina's own ``Kube`` wrapper (lamina.reconcilers.client), for fast
table-driven reconciler tests (tests/unit/test_reconciler_table.py).

It is not a fake API server: it keeps objects as dicts with the bookkeeping the reconcilers rely on
(``resourceVersion`` bumped on every write, ``generation`` on every spec change, ``uid``,
``managedFields`` naming who last applied ``spec.replicas``, the status subresource apart from the
rest, a ``resourceVersion`` precondition that fails with ``Conflict``), records every write the
reconcilers make, and can be told to fail a chosen call, as Knative's ``InduceFailure`` does. What
it does not do (admission, defaulting, CRD schemas, garbage collection, controllers) is what the
tests against the real control plane (tests/cluster) are for.
"""

from __future__ import annotations

import builtins
import copy
import itertools
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lamina.reconcilers.client import ApiError, Conflict, Ref

Key = tuple[str, str, str, str]  # apiVersion, kind, namespace, name


@dataclass
class Write:
    """One write a reconcile made: ``verb`` is apply, merge-patch, create or delete."""

    verb: str
    kind: str
    name: str
    manager: str = ""
    subresource: str | None = None
    body: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Failure:
    verb: str
    kind: str
    error: Callable[[], ApiError]
    times: int
    subresource: str | None = None


def _key(obj: dict[str, Any]) -> Key:
    meta = obj["metadata"]
    return (obj["apiVersion"], obj["kind"], meta.get("namespace") or "", meta["name"])


def _ref_key(ref: Ref) -> Key:
    return (ref.api_version, ref.kind, ref.namespace, ref.name)


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """JSON merge patch (RFC 7386): nested objects merge, null deletes, anything else replaces."""
    out = copy.deepcopy(base)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _selected(obj: dict[str, Any], selector: str | None) -> bool:
    """``a=b,c``: label a is b and label c exists (the subset of selectors the reconcilers use)."""
    if not selector:
        return True
    labels = obj["metadata"].get("labels") or {}
    for term in selector.split(","):
        name, eq, value = term.partition("=")
        if (eq and labels.get(name) != value) or (not eq and name not in labels):
            return False
    return True


class MemoryKube:
    """lamina's ``Kube`` over a dict; thread-safe (reconciles apply children side by side)."""

    def __init__(self, *objects: dict[str, Any]) -> None:
        self.objects: dict[Key, dict[str, Any]] = {}
        self.writes: list[Write] = []
        self.reads: list[tuple[str, str, str]] = []  # (verb, kind, name)
        self.on_response: Callable[[str, int], None] | None = None
        self._versions = itertools.count(1)
        self._failures: list[_Failure] = []
        self._lock = threading.RLock()
        #: What discovery answers: api version -> resources (name, kind, namespaced).
        self.served: dict[str, list[dict[str, Any]]] = {
            "v1": [
                {"name": "configmaps", "kind": "ConfigMap", "namespaced": True},
                {"name": "secrets", "kind": "Secret", "namespaced": True},
                {"name": "namespaces", "kind": "Namespace", "namespaced": False},
            ],
            "apps/v1": [{"name": "deployments", "kind": "Deployment", "namespaced": True}],
        }
        #: What SubjectAccessReviews allow: (user, verb, group, resource, namespace).
        self.allowed: set[tuple[str, str, str, str, str]] = set()
        for obj in objects:
            self.put(obj)

    # -------------------------------------------------------------------------------- test side

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Store ``obj`` as the API server would have it (uid, generation 1, a resourceVersion)."""
        with self._lock:
            stored = copy.deepcopy(obj)
            meta = stored.setdefault("metadata", {})
            meta.setdefault("namespace", "default")
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("generation", 1)
            meta["resourceVersion"] = str(next(self._versions))
            self.objects[_key(stored)] = stored
            return copy.deepcopy(stored)

    def object(self, kind: str, name: str, namespace: str = "default") -> dict[str, Any] | None:
        found = next(
            (o for (_, k, ns, n), o in self.objects.items() if (k, ns, n) == (kind, namespace, name)), None
        )
        return copy.deepcopy(found) if found is not None else None

    def fail(
        self,
        verb: str,
        kind: str,
        error: Callable[[], ApiError] | None = None,
        *,
        times: int = 1,
        subresource: str | None = None,
    ) -> None:
        """The next ``times`` calls ``verb`` (get, list, apply, merge-patch, create, delete) on ``kind``
        raise ``error()`` (default: 500), as Knative's InduceFailure("update", "deployments"). A write
        that fails is still in :attr:`writes`: it is what the reconciler sent."""
        make = error or (lambda: ApiError(500, "InternalError", f"induced failure of {verb} {kind}"))
        self._failures.append(_Failure(verb, kind, make, times, subresource))

    def writes_of(self, verb: str, kind: str | None = None) -> list[Write]:
        return [w for w in self.writes if w.verb == verb and (kind is None or w.kind == kind)]

    # -------------------------------------------------------------------------------- Kube's API

    def _induced(self, verb: str, kind: str, subresource: str | None = None) -> None:
        for failure in self._failures:
            if failure.verb == verb and failure.kind == kind and failure.subresource == subresource:
                failure.times -= 1
                if failure.times <= 0:
                    self._failures.remove(failure)
                raise failure.error()

    def get(self, ref: Ref) -> dict[str, Any] | None:
        with self._lock:
            self.reads.append(("get", ref.kind, ref.name))
            self._induced("get", ref.kind)
            found = self.objects.get(_ref_key(ref))
            return copy.deepcopy(found) if found is not None else None

    def get_metadata(self, ref: Ref) -> dict[str, Any] | None:
        """As the API server's PartialObjectMetadata: the metadata only, never data or spec."""
        with self._lock:
            self.reads.append(("get_metadata", ref.kind, ref.name))
            self._induced("get_metadata", ref.kind)
            found = self.objects.get(_ref_key(ref))
            if found is None:
                return None
            return {
                "apiVersion": "meta.k8s.io/v1",
                "kind": "PartialObjectMetadata",
                "metadata": copy.deepcopy(found["metadata"]),
            }

    def list(
        self, api_version: str, kind: str, namespace: str | None = None, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        with self._lock:
            self.reads.append(("list", kind, namespace or ""))
            self._induced("list", kind)
            return [
                copy.deepcopy(o)
                for (av, k, ns, _), o in sorted(self.objects.items())
                if (av, k) == (api_version, kind)
                and (namespace is None or ns == namespace)
                and _selected(o, label_selector)
            ]

    def apply(self, obj: dict[str, Any], field_manager: str, force: bool = True) -> dict[str, Any]:
        """Server-side apply, as far as the reconcilers depend on it: the applied fields are set; a
        ``spec.replicas`` the manager stated before and leaves out now goes, unless another manager
        owns it too; ``managedFields`` tells who owns ``spec.replicas``."""
        with self._lock:
            self.writes.append(Write("apply", obj["kind"], obj["metadata"]["name"], field_manager, None, obj))
            self._induced("apply", obj["kind"])
            key = _key(obj)
            existing = self.objects.get(key)
            if existing is None:
                stored = self._new(obj)
            else:
                stored = _merge(existing, {k: v for k, v in obj.items() if k != "status"})
                states = "replicas" in (obj.get("spec") or {})
                owners = _replicas_owners(existing)
                if not states and field_manager in owners and owners == {field_manager}:
                    stored["spec"].pop("replicas", None)
                if stored.get("spec") != existing.get("spec"):
                    stored["metadata"]["generation"] = existing["metadata"].get("generation", 1) + 1
            _own_replicas(stored, field_manager, "replicas" in (obj.get("spec") or {}))
            return self._store(key, stored)

    def merge_patch(
        self, ref: Ref, patch: dict[str, Any], field_manager: str, subresource: str | None = None
    ) -> dict[str, Any]:
        with self._lock:
            self.writes.append(Write("merge-patch", ref.kind, ref.name, field_manager, subresource, patch))
            self._induced("merge-patch", ref.kind, subresource)
            key = _ref_key(ref)
            existing = self.objects.get(key)
            if existing is None:
                raise ApiError(404, "NotFound", f"{ref} not found")
            wanted = (patch.get("metadata") or {}).get("resourceVersion")
            if wanted is not None and wanted != existing["metadata"]["resourceVersion"]:
                raise Conflict(409, "Conflict", f"{ref}: the object has been modified")
            body = {k: v for k, v in patch.items() if k != "metadata"}
            if subresource == "status":
                body = {"status": body.get("status") or {}}
            else:
                body.pop("status", None)
            stored = _merge(existing, body)
            if stored.get("spec") != existing.get("spec"):
                stored["metadata"]["generation"] = existing["metadata"].get("generation", 1) + 1
            return self._store(key, stored)

    def create(self, obj: dict[str, Any], field_manager: str) -> dict[str, Any]:
        with self._lock:
            self._induced("create", obj["kind"])
            if "name" not in obj["metadata"] and "generateName" in obj["metadata"]:  # as Events are
                obj = {
                    **obj,
                    "metadata": {
                        **obj["metadata"],
                        "name": obj["metadata"]["generateName"] + uuid.uuid4().hex[:5],
                    },
                }
            self.writes.append(
                Write("create", obj["kind"], obj["metadata"]["name"], field_manager, None, obj)
            )
            key = _key(obj)
            if key in self.objects:
                raise Conflict(
                    409, "AlreadyExists", f"{obj['kind']} {obj['metadata']['name']} already exists"
                )
            return self._store(key, self._new(obj))

    def allow(self, user: str, verbs: tuple[str, ...], group: str, resource: str, namespace: str) -> None:
        """RBAC for the SubjectAccessReviews: ``user`` may ``verbs`` on ``resource`` in ``namespace``."""
        self.allowed |= {(user, verb, group, resource, namespace) for verb in verbs}

    def resources(self, api_version: str) -> builtins.list[dict[str, Any]]:
        with self._lock:
            if api_version not in self.served:
                raise ApiError(
                    404, "NotFound", f"the server could not find the requested resource ({api_version})"
                )
            return copy.deepcopy(self.served[api_version])

    def review(self, review: dict[str, Any]) -> dict[str, Any]:
        spec = review["spec"]
        attrs = spec["resourceAttributes"]
        key = (spec["user"], attrs["verb"], attrs["group"], attrs["resource"], attrs["namespace"])
        with self._lock:
            self.writes.append(Write("create", review["kind"], attrs["verb"], body=copy.deepcopy(review)))
            return {"allowed": key in self.allowed}

    def delete(self, ref: Ref, uid: str | None = None) -> bool:
        with self._lock:
            self._induced("delete", ref.kind)
            existing = self.objects.get(_ref_key(ref))
            if existing is None or (uid and existing["metadata"].get("uid") != uid):
                return False
            self.writes.append(Write("delete", ref.kind, ref.name))
            del self.objects[_ref_key(ref)]
            return True

    def close(self) -> None:
        return None

    # -------------------------------------------------------------------------------- helpers

    def _new(self, obj: dict[str, Any]) -> dict[str, Any]:
        stored = copy.deepcopy({k: v for k, v in obj.items() if k != "status"})
        meta = stored["metadata"]
        meta.setdefault("namespace", "default")
        meta["uid"] = str(uuid.uuid4())
        meta["generation"] = 1
        return stored

    def _store(self, key: Key, stored: dict[str, Any]) -> dict[str, Any]:
        stored["metadata"]["resourceVersion"] = str(next(self._versions))
        self.objects[key] = stored
        return copy.deepcopy(stored)


def _replicas_owners(obj: dict[str, Any]) -> set[str]:
    return {
        m["manager"]
        for m in obj["metadata"].get("managedFields") or []
        if "f:replicas" in ((m.get("fieldsV1") or {}).get("f:spec") or {})
    }


def _own_replicas(obj: dict[str, Any], manager: str, owns: bool) -> None:
    entries = [m for m in obj["metadata"].get("managedFields") or [] if m.get("manager") != manager]
    fields: dict[str, Any] = {"f:spec": {"f:replicas": {}}} if owns else {"f:spec": {}}
    entries.append({"manager": manager, "operation": "Apply", "fieldsV1": fields})
    obj["metadata"]["managedFields"] = entries

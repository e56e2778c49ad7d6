"""A small, blocking JSON client for the few API calls the reconcilers make.

It sits on the official client's ApiClient (authentication, TLS, token refresh) but speaks plain dicts,
so builders' output goes to the API server unchanged and what comes back is what kubectl shows. It is
thread-safe and is called from kopf's sync handlers, which kopf runs in its thread pool.
"""

from __future__ import annotations

import builtins
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from lamina.kubeapi import api_client

log = logging.getLogger(__name__)

PLURALS = {
    "ConfigMap": "configmaps",
    "Secret": "secrets",
    "Service": "services",
    "Event": "events",
    "Deployment": "deployments",
    "ServiceAccount": "serviceaccounts",
    "Role": "roles",
    "RoleBinding": "rolebindings",
    "Function": "functions",
    "Layer": "layers",
    "EventSourceMapping": "eventsourcemappings",
    "Namespace": "namespaces",
    "Pod": "pods",
    "NetworkPolicy": "networkpolicies",
}


METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"


class ApiError(Exception):
    """The API server refused a request; ``message`` is its own explanation (names the field)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class Conflict(ApiError):
    """409: the object changed since it was read (or already exists)."""


@dataclass(frozen=True)
class Ref:
    """Enough to address one object (``namespace`` None: a cluster-scoped one, such as a Namespace)."""

    api_version: str
    kind: str
    namespace: str | None
    name: str

    @classmethod
    def of(cls, obj: dict[str, Any]) -> Ref:
        meta = obj["metadata"]
        return cls(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"])

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


def collection_path(api_version: str, kind: str, namespace: str | None) -> str:
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    scope = f"/namespaces/{namespace}" if namespace else ""
    return f"{base}{scope}/{PLURALS[kind]}"


def object_path(ref: Ref, subresource: str | None = None) -> str:
    path = f"{collection_path(ref.api_version, ref.kind, ref.namespace)}/{ref.name}"
    return f"{path}/{subresource}" if subresource else path


class KubeApi(Protocol):
    """What the reconcilers call: :class:`Kube` against a cluster, or the in-memory stand-in of the
    table tests (tests/support/memory_kube.py)."""

    on_response: Callable[[str, int], None] | None

    def get(self, ref: Ref) -> dict[str, Any] | None: ...

    def get_metadata(self, ref: Ref) -> dict[str, Any] | None: ...

    def list(
        self, api_version: str, kind: str, namespace: str | None = None, label_selector: str | None = None
    ) -> list[dict[str, Any]]: ...

    def apply(self, obj: dict[str, Any], field_manager: str, force: bool = True) -> dict[str, Any]: ...

    def merge_patch(
        self, ref: Ref, patch: dict[str, Any], field_manager: str, subresource: str | None = None
    ) -> dict[str, Any]: ...

    def create(self, obj: dict[str, Any], field_manager: str) -> dict[str, Any]: ...

    def delete(self, ref: Ref, uid: str | None = None) -> bool: ...

    def resources(self, api_version: str) -> builtins.list[dict[str, Any]]: ...

    def review(self, review: dict[str, Any]) -> dict[str, Any]: ...


class Kube:
    """Blocking JSON calls against one cluster."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self.api: Any = api_client  # the official client, untyped
        #: Called with (verb, HTTP status; 0 when nothing answered) after every request (metrics).
        self.on_response: Callable[[str, int], None] | None = None

    @classmethod
    def from_environment(cls, kubeconfig: str | None = None, pool_size: int = 32) -> Kube:
        """Credentials as every lamina process finds them (:func:`lamina.kubeapi.load_configuration`)."""
        return cls(api_client(kubeconfig, connection_pool_maxsize=pool_size))

    def close(self) -> None:
        self.api.close()

    # ------------------------------------------------------------------------------------- raw

    def request(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        accept: str = "application/json",
    ) -> dict[str, Any] | None:
        """One call; the JSON object the API server answered (None for an empty body)."""
        headers = {"Accept": accept, "Content-Type": content_type}
        params = self.api.param_serialize(
            method=method,
            resource_path=path,
            query_params=query or [],
            header_params=headers,
            body=body,  # the REST layer serialises dicts as JSON (valid YAML for apply)
            auth_settings=["BearerToken"],
        )
        try:
            response = self.api.call_api(*params, _request_timeout=(10, 60))
            response.read()
        except ApiException as e:  # transport-level refusals surface here
            self._observe(method, e.status or 0)
            raise _api_error(e.status or 0, e.reason or "", e.body) from None
        except Exception:
            self._observe(method, 0)
            raise
        self._observe(method, response.status)
        if not 200 <= response.status <= 299:
            raise _api_error(response.status, response.reason or "", response.data)
        doc: dict[str, Any] | None = json.loads(response.data) if response.data else None
        return doc

    def _object(self, doc: dict[str, Any] | None) -> dict[str, Any]:
        if doc is None:
            raise ApiError(0, "EmptyResponse", "the API server answered without an object")
        return doc

    def _observe(self, verb: str, code: int) -> None:
        if self.on_response is not None:
            self.on_response(verb, code)

    # -------------------------------------------------------------------------------- objects

    def get(self, ref: Ref) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            return self.request("GET", object_path(ref))
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    def get_metadata(self, ref: Ref) -> dict[str, Any] | None:
        """The object's metadata only (a PartialObjectMetadata: no data, no spec), or None when it does
        not exist. How the operator checks that a Secret exists without reading it."""
        try:
            return self.request("GET", object_path(ref), accept=METADATA_ONLY)
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    def list(
        self, api_version: str, kind: str, namespace: str | None = None, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        query = [("labelSelector", label_selector)] if label_selector else None
        result = self._object(self.request("GET", collection_path(api_version, kind, namespace), query=query))
        items: list[dict[str, Any]] = result.get("items") or []
        for item in items:  # list items come without these
            item.setdefault("apiVersion", api_version)
            item.setdefault("kind", kind)
        return items

    def apply(self, obj: dict[str, Any], field_manager: str, force: bool = True) -> dict[str, Any]:
        """Server-side apply: ``obj`` states every field ``field_manager`` wants to own."""
        query = [("fieldManager", field_manager)]
        if force:
            query.append(("force", "true"))
        return self._object(
            self.request(
                "PATCH",
                object_path(Ref.of(obj)),
                query=query,
                body=obj,
                content_type="application/apply-patch+yaml",
            )
        )

    def merge_patch(
        self, ref: Ref, patch: dict[str, Any], field_manager: str, subresource: str | None = None
    ) -> dict[str, Any]:
        return self._object(
            self.request(
                "PATCH",
                object_path(ref, subresource),
                query=[("fieldManager", field_manager)],
                body=patch,
                content_type="application/merge-patch+json",
            )
        )

    def create(self, obj: dict[str, Any], field_manager: str) -> dict[str, Any]:
        ns = obj["metadata"].get("namespace")
        return self._object(
            self.request(
                "POST",
                collection_path(obj["apiVersion"], obj["kind"], ns),
                query=[("fieldManager", field_manager)],
                body=obj,
            )
        )

    def resources(self, api_version: str) -> builtins.list[dict[str, Any]]:
        """The resources the API server serves in ``api_version`` (discovery: name, kind, namespaced);
        an :class:`ApiError` 404 when it serves no such version."""
        group, _, version = api_version.rpartition("/")
        doc = self.request("GET", f"/apis/{group}/{version}" if group else f"/api/{version}")
        return list((doc or {}).get("resources") or [])

    def review(self, review: dict[str, Any]) -> dict[str, Any]:
        """Create an (access) review, e.g. a SubjectAccessReview; its ``status``."""
        group_version = review["apiVersion"]
        plural = review["kind"].lower() + "s"
        answer = self.request("POST", f"/apis/{group_version}/{plural}", body=review) or {}
        return dict(answer.get("status") or {})

    def delete(self, ref: Ref, uid: str | None = None) -> bool:
        """Delete (only the object with ``uid`` when given); False when it was already gone."""
        body: dict[str, Any] = {"propagationPolicy": "Background"}
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            self.request("DELETE", object_path(ref), body=body)
            return True
        except ApiError as e:
            if e.status in (404, 409):
                return False
            raise


def _api_error(status: int, reason: str, data: Any) -> ApiError:
    message = ""
    if data:
        try:
            message = json.loads(data).get("message", "")
        except (ValueError, AttributeError):
            message = data.decode(errors="replace") if isinstance(data, bytes) else str(data)
    cls = Conflict if status == 409 else ApiError
    return cls(status, reason, message or reason)

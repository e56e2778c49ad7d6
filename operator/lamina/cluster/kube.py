"""The few Kubernetes API reads, watches and patches the gateway and workers need.

The official client is blocking; each watch runs in its own thread and hands events to the event loop,
so nothing blocks the loop. Objects are plain dicts, as kubectl shows them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)

GROUP, VERSION = "lamina.dev", "v1alpha1"
Handler = Callable[[str, dict[str, Any]], None]  # (ADDED | MODIFIED | DELETED, object)


def api_client(kubeconfig: str | None = None) -> client.ApiClient:
    """In-cluster credentials in a pod, otherwise the kubeconfig (`KUBECONFIG` or ~/.kube/config)."""
    try:
        config.load_incluster_config()
        return client.ApiClient()
    except config.ConfigException:
        return config.new_client_from_config(config_file=kubeconfig)


class ThreadedWatch:
    """List then watch one kind forever (re-listing on expiry); events reach `handler` on the loop."""

    def __init__(
        self, list_fn: Callable[..., Any], handler: Handler, loop: asyncio.AbstractEventLoop, **kwargs: Any
    ) -> None:
        self.list_fn = list_fn
        self.handler = handler
        self.loop = loop
        self.kwargs = kwargs
        self.synced = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"watch-{list_fn.__name__}")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _emit(self, kind: str, obj: Any) -> None:
        if not self._stop.is_set():
            self.loop.call_soon_threadsafe(self.handler, kind, obj)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                listing = self.list_fn(_preload_content=False, **self.kwargs)
                doc = json.loads(listing.data)
                for item in doc.get("items", []):
                    self._emit("ADDED", item)
                self.loop.call_soon_threadsafe(self.synced.set)
                version = doc["metadata"]["resourceVersion"]
                stream = watch.Watch().stream(
                    self.list_fn, resource_version=version, timeout_seconds=60, **self.kwargs
                )
                for event in stream:
                    if self._stop.is_set():
                        return
                    self._emit(event["type"], event["raw_object"])
            except ApiException as exc:
                if exc.status != 410:  # 410 Gone: the version expired; list again
                    log.warning("watch %s: %s", self.list_fn.__name__, exc.reason)
                    self._stop.wait(2)
            except Exception as exc:  # the API server restarted, a network blip: list again shortly
                log.warning("watch %s: %s", self.list_fn.__name__, exc)
                self._stop.wait(2)


def custom_objects(api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


def list_functions_fn(api: client.ApiClient, namespace: str | None) -> Callable[..., Any]:
    objects = custom_objects(api)
    if namespace:

        def list_namespaced(**kw: Any) -> Any:
            return objects.list_namespaced_custom_object(GROUP, VERSION, namespace, "functions", **kw)

        return list_namespaced

    def list_all(**kw: Any) -> Any:
        return objects.list_cluster_custom_object(GROUP, VERSION, "functions", **kw)

    return list_all

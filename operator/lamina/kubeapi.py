"""How every lamina process reaches the Kubernetes API: one way to find credentials, and watches.

Credentials (:func:`load_configuration`) are found in one order for the operator, the gateway and the
mapping workers alike: an explicit kubeconfig (``--kubeconfig``), then the pod's service account
(in-cluster), then ``$KUBECONFIG`` (or ``~/.kube/config``). A process given a kubeconfig uses it even
inside a pod; a pod without one uses its own token.

The official client is blocking; each watch runs in its own thread and hands events to the event loop,
so nothing blocks the loop. Objects are plain dicts, as kubectl shows them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from lamina.api.common import GROUP, VERSION

log = logging.getLogger(__name__)

Handler = Callable[[str, dict[str, Any]], None]  # (ADDED | MODIFIED | DELETED, object)


class NoCredentials(Exception):
    """Neither a kubeconfig nor a pod's service account was found."""


def load_configuration(
    kubeconfig: str | None = None, environ: Mapping[str, str] | None = None
) -> client.Configuration:
    """The client configuration from, in this order: ``kubeconfig`` when given, the pod's service
    account (in-cluster), ``$KUBECONFIG`` of ``environ`` (default: the process's; kubectl's
    ``~/.kube/config`` when unset). Raises :class:`NoCredentials` naming what was tried when none
    works, and the client's ``ConfigException`` when an explicit kubeconfig is unusable."""
    configuration = client.Configuration()
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        return configuration
    try:
        # Re-reads the projected token when the kubelet rotates it.
        config.load_incluster_config(client_configuration=configuration)
        return configuration
    except config.ConfigException as in_cluster:
        environ = os.environ if environ is None else environ
        path = environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
        try:
            config.load_kube_config(config_file=path, client_configuration=configuration)
        except (config.ConfigException, OSError) as from_file:
            raise NoCredentials(
                f"no Kubernetes credentials: not in a pod ({in_cluster}) and no kubeconfig ({from_file})"
            ) from None
    return configuration


def api_client(
    kubeconfig: str | None = None, environ: Mapping[str, str] | None = None, **settings: object
) -> client.ApiClient:
    """An API client with :func:`load_configuration`'s credentials; ``settings`` set attributes of
    the client configuration (``connection_pool_maxsize``, ``retries``...)."""
    configuration = load_configuration(kubeconfig, environ)
    for name, value in settings.items():
        setattr(configuration, name, value)
    return client.ApiClient(configuration)


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


def watched(namespaces: Sequence[str] | None) -> list[str | None]:
    """A watch per namespace, or one (None) of the whole cluster."""
    return list(namespaces) if namespaces else [None]


def list_pods_fn(api: client.ApiClient, namespace: str | None, selector: str) -> Callable[..., Any]:
    """``list_pods(**kw)`` of the pods matching ``selector`` in ``namespace`` (None: all), for a watch."""
    core = client.CoreV1Api(api)
    if namespace:

        def list_namespaced(**kw: Any) -> Any:
            return core.list_namespaced_pod(namespace, label_selector=selector, **kw)

        return list_namespaced

    def list_all(**kw: Any) -> Any:
        return core.list_pod_for_all_namespaces(label_selector=selector, **kw)

    return list_all


class SecretValues:
    """Values of Secrets by key, read through the API and kept ``ttl`` seconds.

    The async dispatcher resolves a destination's ``urlFrom`` on every delivery; within the ``ttl`` a
    burst of records costs one read, and a rotated Secret is seen after at most ``ttl`` seconds.
    Reads are blocking client calls, run in a thread.
    """

    def __init__(
        self, api: client.ApiClient, ttl: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.core = client.CoreV1Api(api)
        self.ttl = ttl
        self._clock = clock
        self._cache: dict[tuple[str, str], tuple[float, dict[str, str] | None]] = {}

    def _data(self, namespace: str, name: str) -> dict[str, str] | None:
        """The Secret's decoded data; None when it does not exist."""
        try:
            secret = self.core.read_namespaced_secret(name, namespace, _request_timeout=(5, 10))
        except ApiException as exc:
            if exc.status == 404:
                return None
            if exc.status == 403:  # the chart grants the gateway Secrets only where it is told to
                raise LookupError(
                    f"the gateway may not read Secret {name} in {namespace}: list {namespace} in the chart's "
                    "gateway.secretNamespaces, or give the destination a url"
                ) from None
            raise
        return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}

    async def __call__(self, namespace: str, name: str, key: str) -> str | None:
        """The value of ``key`` in Secret ``namespace/name``; None when either does not exist."""
        now = self._clock()
        cached = self._cache.get((namespace, name))
        if cached is None or now - cached[0] >= self.ttl:
            data = await asyncio.to_thread(self._data, namespace, name)
            cached = self._cache[(namespace, name)] = (now, data)
        data = cached[1]
        return None if data is None else data.get(key)

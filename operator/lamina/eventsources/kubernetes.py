"""Kubernetes object changes as a mapping source: EventBridge-shaped events in batches.

The worker lists and watches one kind (``apiVersion`` + ``kind``, one namespace or all, an optional
label selector) with the credentials it runs with: in a cluster the ServiceAccount the mapping names
(the operator grants it nothing), in local mode the cluster ``$KUBECONFIG`` names. Each change becomes
one record; the function gets ``{"Records": [<event>, ...]}`` where an event is::

    {"version": "0", "id": "<uuid>", "detail-type": "Kubernetes Object Change",
     "source": "lamina.kubernetes", "account": "", "time": "<when the worker saw it>", "region": "",
     "resources": ["apps/v1/namespaces/shop/deployments/web"],
     "detail": {"type": "MODIFIED", "apiVersion": "apps/v1", "kind": "Deployment",
                "namespace": "shop", "name": "web", "uid": "...", "resourceVersion": "4711",
                "object": {<the object as the API server returned it>}}}

Delivery is at least once, in the API server's order. The position is the ``resourceVersion`` of the
last change that is done (acknowledged, filtered out, or not one of ``eventTypes``), kept in a
:class:`Checkpoint` (the mapping's status in a cluster, a file in local mode): a restarted worker
watches on from there without replaying everything. Watch bookmarks move the position while nothing
matches. When the position is too old for the API server (``410 Gone``), the worker lists again and
sends one ``Kubernetes Watch Gap`` event naming the gap and the objects that exist now, followed by
the changes it can infer by comparing that list with the objects it knew (``detail.resync: true``):
an object removed during the gap is reported DELETED only when this worker had seen it.

A first start (no position) follows ``startingPosition``: TRIM_HORIZON sends every existing object as
ADDED, LATEST only what changes from then on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from lamina.eventsources.base import LATEST, CredentialsError, Source, SourceError, SourceRecord

log = logging.getLogger(__name__)

DETAIL_TYPE = "Kubernetes Object Change"
GAP_DETAIL_TYPE = "Kubernetes Watch Gap"
EVENT_SOURCE = "lamina.kubernetes"
WATCH_SECONDS = 290
_IDS = uuid.UUID("0b7e1c52-7a0d-4b8e-a7c4-55d1c2a9e6f3")


class Checkpoint(Protocol):
    """Where a Kubernetes source keeps the resourceVersion it resumes from."""

    async def load(self) -> str | None: ...

    async def save(self, resource_version: str) -> None: ...


class MemoryCheckpoint:
    def __init__(self, value: str | None = None) -> None:
        self.value = value

    async def load(self) -> str | None:
        return self.value

    async def save(self, resource_version: str) -> None:
        self.value = resource_version


class FileCheckpoint:
    """Local mode: a file in the state directory, replaced atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path

    async def load(self) -> str | None:
        try:
            text = await asyncio.to_thread(self.path.read_text)
        except FileNotFoundError:
            return None
        return text.strip() or None

    async def save(self, resource_version: str) -> None:
        def write() -> None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(resource_version)
            tmp.replace(self.path)

        await asyncio.to_thread(write)


@dataclass(frozen=True)
class Watched:
    """What to watch, from ``source.kubernetes``; ``namespace`` None means every namespace."""

    api_version: str
    kind: str
    namespace: str | None
    label_selector: str | None
    event_types: frozenset[str]
    service_account: str

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def version(self) -> str:
        return self.api_version.rpartition("/")[2]


class _Gone(Exception):
    """410: the resourceVersion is older than the API server keeps."""


class _Forbidden(Exception):
    pass


class _NotFound(Exception):
    pass


def _iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class KubernetesSource(Source):
    kind = "kubernetes"
    ordered = True

    def __init__(
        self,
        watched: Watched,
        *,
        api_client: Callable[[], Any],
        checkpoint: Checkpoint,
        starting_position: str = "TRIM_HORIZON",
        save_interval: float = 1.0,
    ) -> None:
        super().__init__(f"{watched.kind}.{watched.api_version}")
        self.watched = watched
        self._api_factory = api_client
        self.checkpoint = checkpoint
        self.starting_position = starting_position
        self.save_interval = save_interval
        self._api: Any = None
        self._path = ""  # the collection's URL path (namespaced or cluster-wide)
        self._plural = ""
        self._queue: asyncio.Queue[SourceRecord | Exception] = asyncio.Queue()
        self._watcher: _Watcher | None = None
        self._positions: deque[list[Any]] = deque()  # [resourceVersion, done] in watch order
        self._saved: str | None = None
        self._dirty: str | None = None
        self._saver: asyncio.Task[None] | None = None
        self._index: dict[str, dict[str, Any]] = {}  # uid -> last object seen (for 410 diffs)

    @property
    def arn(self) -> str:
        where = self.watched.namespace or "*"
        return f"lamina:kubernetes:{self.watched.api_version}/{self.watched.kind}/{where}"

    # ------------------------------------------------------------------ connection

    def _who(self) -> str:
        return f"ServiceAccount {self.watched.service_account}"

    def _scope(self) -> str:
        w = self.watched
        resource = f"{self._plural or w.kind.lower()}{'.' + w.group if w.group else ''}"
        return f"{resource} in namespace {w.namespace}" if w.namespace else f"{resource} in all namespaces"

    async def connect(self) -> None:
        self._api = await asyncio.to_thread(self._api_factory)
        try:
            await asyncio.to_thread(self._discover)
        except _Forbidden as exc:
            raise CredentialsError(str(exc), None) from None
        position = await self.checkpoint.load()
        self._saved = position
        self._queue = asyncio.Queue()
        self._positions.clear()
        self._watcher = _Watcher(self, asyncio.get_running_loop(), position)
        if position is None:
            # The first list before the mapping says Enabled: LATEST means "changes from now on",
            # and an object created right after Enabled must not pass for one that was there.
            try:
                await asyncio.to_thread(self._watcher.first_list)
            except _Forbidden as exc:
                raise CredentialsError(str(exc), None) from None
        self._watcher.start()
        self._saver = asyncio.create_task(self._save_loop())

    def _arrive(self, watcher: _Watcher, item: Any) -> None:
        """On the loop: queue a record (or an error), or note a position that is done already.
        Items of a watcher that was stopped (a reconnect) are dropped: the next one redelivers."""
        if watcher is not self._watcher:
            return
        if isinstance(item, tuple):  # ("done", resourceVersion): bookmarks, unwanted event types
            self._positions.append([item[1], True])
            self._advance()
            return
        if isinstance(item, SourceRecord):
            item.handle = [item.handle, False]
            self._positions.append(item.handle)
        self._queue.put_nowait(item)

    def _get(self, path: str, **query: Any) -> Any:
        """GET a path of the API server (blocking; the watch thread or a worker thread); the urllib3
        response, unread. Raises _Gone (410), _Forbidden (401/403), _NotFound (404)."""
        params = self._api.param_serialize(
            method="GET",
            resource_path=path,
            query_params=[(k, v) for k, v in query.items() if v is not None],
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        timeout = (10, WATCH_SECONDS + 30) if query.get("watch") else (10, 60)
        response = self._api.call_api(*params, _request_timeout=timeout).response
        if 200 <= response.status <= 299:
            return response
        text = response.data.decode("utf-8", "replace")
        response.release_conn()
        try:
            message = json.loads(text).get("message", text)
        except ValueError:
            message = text
        if response.status == 410:
            raise _Gone(message)
        if response.status in (401, 403):
            verb = "watch" if query.get("watch") else "list"
            raise _Forbidden(
                f"{self._who()} may not {verb} {self._scope()} (missing permission: {verb}); "
                f"the API server said {response.status}: {message}"
            )
        if response.status == 404:
            raise _NotFound(message)
        raise SourceError(f"GET {path}: {response.status} {message}")

    def _discover(self) -> None:
        """Find the resource (plural name, namespaced or not) serving ``kind`` in ``apiVersion``."""
        w = self.watched
        base = f"/apis/{w.group}/{w.version}" if w.group else f"/api/{w.version}"
        try:
            doc = json.loads(self._get(base).data)
        except _NotFound:
            raise SourceError(f"the API server does not serve {w.api_version}") from None
        for resource in doc.get("resources", []):
            if resource.get("kind") == w.kind and "/" not in resource.get("name", ""):
                self._plural = resource["name"]
                namespaced = bool(resource.get("namespaced"))
                break
        else:
            raise SourceError(f"the API server serves no kind {w.kind} in {w.api_version}")
        if namespaced and w.namespace:
            self._path = f"{base}/namespaces/{w.namespace}/{self._plural}"
        else:
            self._path = f"{base}/{self._plural}"

    async def close(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.stop()
        saver, self._saver = self._saver, None
        if saver is not None:
            saver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await saver
        await self._flush()
        if watcher is not None:
            await asyncio.to_thread(watcher.join, 2.0)
        api, self._api = self._api, None
        if api is not None:
            with contextlib.suppress(Exception):
                api.close()

    def entry(self, record: SourceRecord) -> dict[str, Any]:
        return record.source_fields

    async def fetch(
        self, max_records: int, wait_seconds: float, key: str | None = None
    ) -> list[SourceRecord]:
        out: list[SourceRecord] = []
        deadline = time.monotonic() + max(0.0, wait_seconds)
        while len(out) < max_records:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                left = deadline - time.monotonic()
                if out or left <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), left)
                except TimeoutError:
                    break
            if isinstance(item, Exception):
                if out:  # deliver what came before the trouble; report it on the next fetch
                    self._queue = _requeue_first(self._queue, item)
                    break
                raise item
            out.append(item)
        return out

    async def ack(self, records: Sequence[SourceRecord]) -> None:
        for record in records:
            record.handle[1] = True
        self._advance()

    def _advance(self) -> None:
        position = None
        while self._positions and self._positions[0][1]:
            position = self._positions.popleft()[0]
        if position is not None:
            self._dirty = position

    async def release(self, records: Sequence[SourceRecord]) -> None:
        """Given back (the mapping stops or pauses): they are not done, so the position stays before
        them and a new watch from the checkpoint delivers them again."""

    async def _save_loop(self) -> None:
        while True:
            await asyncio.sleep(self.save_interval)
            await self._flush()

    async def _flush(self) -> None:
        position, self._dirty = self._dirty, None
        if position is None or position == self._saved:
            return
        try:
            await self.checkpoint.save(position)
            self._saved = position
        except Exception as exc:  # keep it for the next round; a lost save only means replays
            log.warning("kubernetes source %s: cannot keep resourceVersion %s: %s", self.name, position, exc)
            self._dirty = self._dirty or position


def _requeue_first(queue: asyncio.Queue[Any], item: Any) -> asyncio.Queue[Any]:
    """A queue with ``item`` first and then whatever ``queue`` holds."""
    fresh: asyncio.Queue[Any] = asyncio.Queue()
    fresh.put_nowait(item)
    while not queue.empty():
        fresh.put_nowait(queue.get_nowait())
    return fresh


class _Watcher:
    """The blocking list-and-watch loop of one connection, in its own thread. It hands records,
    positions and errors to the source on the event loop; once stopped it hands nothing more."""

    def __init__(
        self, source: KubernetesSource, loop: asyncio.AbstractEventLoop, position: str | None
    ) -> None:
        self.source = source
        self.loop = loop
        self.position = position
        self.watched = source.watched
        self.starting_position = source.starting_position
        self._stop = threading.Event()
        self._response: Any = None
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"watch-{source.name}")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        response = self._response
        if response is not None:  # unblock a read of the watch stream
            with contextlib.suppress(Exception):
                response.shutdown() if hasattr(response, "shutdown") else response.close()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _get(self, path: str, **query: Any) -> Any:
        return self.source._get(path, **query)

    def _scope(self) -> str:
        return self.source._scope()

    @property
    def _path(self) -> str:
        return self.source._path

    @property
    def _plural(self) -> str:
        return self.source._plural

    @property
    def _index(self) -> dict[str, dict[str, Any]]:
        return self.source._index

    @_index.setter
    def _index(self, value: dict[str, dict[str, Any]]) -> None:
        self.source._index = value

    @property
    def arn(self) -> str:
        return self.source.arn

    def _hand(self, loop: asyncio.AbstractEventLoop, item: Any) -> None:
        if not self._stop.is_set():
            loop.call_soon_threadsafe(self.source._arrive, self, item)

    def _run(self) -> None:
        loop, position = self.loop, self.position
        backoff = 0.5
        while not self._stop.is_set():
            try:
                if position is None:
                    self.first_list()
                    position = self.position
                assert position is not None
                position = self._watch(loop, position)
                backoff = 0.5
            except _Gone:
                position = self._resync(loop, position)
            except _Forbidden as exc:
                self._hand(loop, CredentialsError(str(exc), None))
                self._stop.wait(min(30.0, backoff))
                backoff *= 2
            except Exception as exc:  # the API server restarted, a network blip: go on shortly
                if self._stop.is_set():
                    return
                self._hand(loop, SourceError(f"watching {self._scope()}: {type(exc).__name__}: {exc}"))
                self._stop.wait(min(30.0, backoff))
                backoff *= 2

    def _list(self) -> tuple[list[dict[str, Any]], str]:
        items: list[dict[str, Any]] = []
        token = None
        while True:
            doc = json.loads(
                self._get(
                    self._path, labelSelector=self.watched.label_selector, limit=500, **{"continue": token}
                ).data
            )
            items += doc.get("items") or []
            token = (doc.get("metadata") or {}).get("continue")
            if not token:
                return items, doc["metadata"]["resourceVersion"]

    def first_list(self) -> None:
        """Start from what exists (no position kept yet): TRIM_HORIZON hands it out as ADDED."""
        items, version = self._list()
        for obj in items:
            self._index[obj["metadata"]["uid"]] = obj
            if self.starting_position != LATEST:
                self._emit(self.loop, "ADDED", obj, version)
        self._hand(self.loop, ("done", version))
        self.position = version

    def _watch(self, loop: asyncio.AbstractEventLoop, position: str) -> str:
        log.info("kubernetes source: watching %s from resourceVersion %s", self._scope(), position)
        response = self._response = self._get(
            self._path,
            watch="true",
            resourceVersion=position,
            allowWatchBookmarks="true",
            labelSelector=self.watched.label_selector,
            timeoutSeconds=WATCH_SECONDS,
        )
        try:
            buffer = b""
            for chunk in response.stream(4096, decode_content=True):
                if self._stop.is_set():
                    return position
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        position = self._event(loop, json.loads(line), position)
        finally:
            self._response = None
            with contextlib.suppress(Exception):
                response.release_conn()
        return position

    def _event(self, loop: asyncio.AbstractEventLoop, event: dict[str, Any], position: str) -> str:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise _Gone(obj.get("message", "too old resource version"))
            raise SourceError(f"watch error: {obj.get('message', obj)}")
        version = (obj.get("metadata") or {}).get("resourceVersion") or position
        if kind == "BOOKMARK":
            self._hand(loop, ("done", version))
            return version
        uid = obj["metadata"]["uid"]
        if kind == "DELETED":
            self._index.pop(uid, None)
        else:
            self._index[uid] = obj
        self._emit(loop, str(kind), obj, version)
        return version

    def _resync(self, loop: asyncio.AbstractEventLoop, lost: str | None) -> str:
        """410 Gone: list again, tell the function what it may have missed, watch on from the list."""
        items, version = self._list()
        known, self._index = self._index, {o["metadata"]["uid"]: o for o in items}
        gap = {
            "reason": "ResourceVersionTooOld",
            "message": (
                f"the watch could not resume from resourceVersion {lost} (410 Gone): changes between "
                f"it and {version} are not known one by one. The objects that exist now are listed; "
                "those that differ from what this worker last saw follow as changes with resync=true "
                "(a removal is reported only for objects this worker had seen)."
            ),
            "lastResourceVersion": lost,
            "resourceVersion": version,
            "workerKnewObjects": bool(known),
            "objects": [
                {
                    "namespace": o["metadata"].get("namespace"),
                    "name": o["metadata"]["name"],
                    "uid": o["metadata"]["uid"],
                    "resourceVersion": o["metadata"]["resourceVersion"],
                }
                for o in items
            ],
        }
        self._hand(loop, self._record(GAP_DETAIL_TYPE, gap, version, f"gap/{lost}/{version}"))
        for obj in items:
            before = known.pop(obj["metadata"]["uid"], None)
            if before is None:
                if known or self.starting_position != LATEST:
                    self._emit(loop, "ADDED", obj, version, resync=True)
            elif before["metadata"]["resourceVersion"] != obj["metadata"]["resourceVersion"]:
                self._emit(loop, "MODIFIED", obj, version, resync=True)
        for obj in known.values():
            self._emit(loop, "DELETED", obj, version, resync=True)
        self._hand(loop, ("done", version))
        return version

    # ------------------------------------------------------------------ records

    def _emit(
        self,
        loop: asyncio.AbstractEventLoop,
        kind: str,
        obj: dict[str, Any],
        version: str,
        resync: bool = False,
    ) -> None:
        if kind not in self.watched.event_types:
            self._hand(loop, ("done", version))
            return
        meta = obj.get("metadata") or {}
        detail: dict[str, Any] = {
            "type": kind,
            "apiVersion": obj.get("apiVersion") or self.watched.api_version,
            "kind": obj.get("kind") or self.watched.kind,
            "namespace": meta.get("namespace"),
            "name": meta.get("name"),
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
            "object": obj,
        }
        if resync:
            detail["resync"] = True
        ident = f"{meta.get('uid')}/{meta.get('resourceVersion')}/{kind}"
        self._hand(loop, self._record(DETAIL_TYPE, detail, version, ident))

    def _record(self, detail_type: str, detail: dict[str, Any], version: str, ident: str) -> SourceRecord:
        w = self.watched
        ns = detail.get("namespace")
        path = f"namespaces/{ns}/{self._plural}" if ns else self._plural
        resource = (
            f"{w.api_version}/{path}/{detail['name']}" if detail.get("name") else f"{w.api_version}/{path}"
        )
        event_id = str(uuid.uuid5(_IDS, ident))
        event: dict[str, Any] = {
            "version": "0",
            "id": event_id,
            "detail-type": detail_type,
            "source": EVENT_SOURCE,
            "account": "",
            "time": _iso_now(),
            "region": "",
            "resources": [resource],
            "detail": detail,
        }
        return SourceRecord(
            id=event_id,
            body=b"",
            ordering_key=self.arn,
            source_fields=event,
            handle=version,
        )

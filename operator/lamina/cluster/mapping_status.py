"""The worker's half of its EventSourceMapping's status, written into the cluster.

A runner only knows what it does in memory (``snapshot()``); this module turns that into the status
keys the worker owns and merge-patches them into the mapping's ``/status`` with the worker's own
ServiceAccount (a Role allows exactly that, for exactly this mapping). The operator owns the rest
(``conditions``, ``observedGeneration``, ``source`` and the lifecycle states), so the patch names
only the worker's keys and never clobbers the operator's.

Reporting is best effort: it runs beside the consumer, never in its way. Writes happen when the
projection changed, at most every ``LAMINA_STATUS_INTERVAL`` seconds (0 turns reporting off), and
again every few minutes in case the operator wrote over ``state``. A refused or unreachable API
server is logged once (and once more when it recovers); records keep flowing either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from lamina.cluster.settings import DEFAULT_STATUS_INTERVAL, WorkerSettings
from lamina.kubeapi import NoCredentials, api_client

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = DEFAULT_STATUS_INTERVAL
RESYNC_SECONDS = 300.0
MAX_BACKOFF = 60.0
FIELD_MANAGER = "lamina-worker"
PLURAL = "eventsourcemappings"
#: States only a running worker can tell; Creating, Updating and Disabled are the operator's.
RUNNING_STATES = frozenset({"Enabling", "Enabled"})

Snapshot = Callable[[], Mapping[str, Any]]
#: Blocking write of the status keys (the reporter runs it in a thread).
Patch = Callable[[dict[str, Any]], None]


def _rfc3339(value: str | None) -> str | None:
    """A runner's ISO timestamp as the CRD's ``date-time``: UTC, whole seconds, ``Z``."""
    if not value:
        return None
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def worker_fields(snapshot: Mapping[str, Any]) -> dict[str, Any]:
    """The status keys the worker owns, from a runner's ``snapshot()`` (broker or schedule).

    Each key exists in ``EventSourceMappingStatus`` (the API server prunes unknown ones). ``state``
    is written only while the worker runs: after SIGTERM its "Disabled" would be wrong (a rollout
    is not a disabled mapping), so the operator's view of the Deployment stands. ``lastFireTime``
    is left alone until this worker fired, so a restart does not erase the previous pod's; a
    schedule that is over clears ``nextFireTime`` (null deletes it in a merge patch).
    """
    fields: dict[str, Any] = {}
    if snapshot.get("state") in RUNNING_STATES:
        fields["state"] = snapshot["state"]
    if snapshot.get("lastProcessingResult") is not None:
        fields["lastProcessingResult"] = snapshot["lastProcessingResult"]
    if snapshot.get("iteratorAgeMs") is not None:
        fields["iteratorAgeMs"] = int(snapshot["iteratorAgeMs"])
    if snapshot.get("lastFired"):
        fields["lastFireTime"] = _rfc3339(snapshot["lastFired"])
    if "nextFire" in snapshot:
        fields["nextFireTime"] = _rfc3339(snapshot["nextFire"])
    return fields


def status_api_client(settings: WorkerSettings) -> client.ApiClient | None:
    """A client for the worker's status writes: ``LAMINA_STATUS_KUBECONFIG``, or the token in
    ``LAMINA_STATUS_TOKEN_DIR`` (a Kubernetes source's pod runs as another account) against the
    in-cluster API server, else the credentials every lamina process finds
    (:func:`lamina.kubeapi.api_client`: in a pod its own token, outside one ``$KUBECONFIG``); None when
    there are none (the worker then runs without reporting)."""
    try:
        # Bounded retries: a final write at shutdown must not hold the pod long.
        if settings.status_kubeconfig:
            return api_client(kubeconfig=settings.status_kubeconfig, retries=1)
        if settings.status_token_dir:
            return _token_client(Path(settings.status_token_dir))
        environ = {"KUBECONFIG": settings.kubeconfig} if settings.kubeconfig else {}
        return api_client(environ=environ, retries=1)
    except (NoCredentials, config.ConfigException, OSError) as exc:
        log.info("no Kubernetes credentials (%s): the mapping's status is not written", exc)
        return None


def _token_client(token_dir: Path) -> client.ApiClient:
    configuration = client.Configuration()
    config.load_incluster_config(client_configuration=configuration)  # the API server's address
    token_file = token_dir / "token"

    def refresh(conf: client.Configuration) -> None:
        conf.api_key["authorization"] = "Bearer " + token_file.read_text().strip()

    configuration.refresh_api_key_hook = refresh  # type: ignore[assignment]
    refresh(configuration)
    if (token_dir / "ca.crt").exists():
        configuration.ssl_ca_cert = str(token_dir / "ca.crt")
    configuration.retries = 1
    return client.ApiClient(configuration)


class MappingStatusWriter:
    """Merge-patches one mapping's ``/status`` (blocking; run it off the event loop)."""

    def __init__(self, api: client.ApiClient, group: str, version: str, namespace: str, name: str) -> None:
        self.api = api
        self.objects = client.CustomObjectsApi(api)
        self.group, self.version, self.namespace, self.name = group, version, namespace, name

    def __call__(self, fields: dict[str, Any]) -> None:
        self.objects.patch_namespaced_custom_object_status(
            self.group,
            self.version,
            self.namespace,
            PLURAL,
            self.name,
            {"status": fields},
            field_manager=FIELD_MANAGER,
            _content_type="application/merge-patch+json",
            _request_timeout=(3, 10),
        )

    def read(self) -> dict[str, Any]:
        """The mapping as its ``/status`` subresource returns it (what the Role allows to get)."""
        obj = self.objects.get_namespaced_custom_object_status(
            self.group, self.version, self.namespace, PLURAL, self.name, _request_timeout=(3, 10)
        )
        return dict(obj) if isinstance(obj, dict) else {}

    def close(self) -> None:
        self.api.close()


class StatusCheckpoint:
    """A Kubernetes source's resourceVersion, kept in its mapping's ``status.watchResourceVersion``
    (the worker writes its own status anyway, so a restarted pod finds it there)."""

    def __init__(self, writer: MappingStatusWriter) -> None:
        self.writer = writer

    async def load(self) -> str | None:
        obj = await asyncio.to_thread(self.writer.read)
        return (obj.get("status") or {}).get("watchResourceVersion")

    async def save(self, resource_version: str) -> None:
        await asyncio.to_thread(self.writer, {"watchResourceVersion": resource_version})


def _failure(exc: BaseException) -> tuple[str, str]:
    """(kind, detail): the kind is stable, so a repeated failure is logged once; the detail is the
    API server's own message when it refused (it names the missing permission)."""
    if isinstance(exc, ApiException):
        kind = f"{exc.status} {exc.reason}"
        message = ""
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            message = json.loads(exc.body or "{}").get("message", "")
        return kind, f"{kind}: {message}" if message else kind
    kind = type(exc).__name__
    text = str(exc).splitlines()[0] if str(exc) else ""
    return kind, f"{kind}: {text}" if text else kind


class StatusReporter:
    """Writes ``worker_fields(snapshot())`` through ``patch`` on change, at most every ``interval``."""

    def __init__(
        self,
        snapshot: Snapshot,
        patch: Patch,
        label: str,
        *,
        interval: float = DEFAULT_INTERVAL,
        resync: float = RESYNC_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.snapshot = snapshot
        self.patch = patch
        self.label = label
        self.interval = interval
        self.resync = resync
        self._clock = clock
        self.written: dict[str, Any] | None = None  # what the last successful write said
        self._written_at = 0.0
        self.failure: str | None = None  # the failure being reported, until a write succeeds
        self.failures = 0
        self._task: asyncio.Task[None] | None = None

    async def report(self) -> bool:
        """Write if the projection changed (or the resync is due); True when a write succeeded.

        Never raises (except cancellation): a status write must not stop record processing.
        """
        try:
            fields = worker_fields(self.snapshot())
        except Exception:
            log.exception("esm %s: cannot read the worker's status", self.label)
            return False
        due = self._clock() - self._written_at >= self.resync
        if not fields or (fields == self.written and not due):
            return False
        try:
            await asyncio.to_thread(self.patch, fields)
        except Exception as exc:
            self.failures += 1
            failure, detail = _failure(exc)
            if failure != self.failure:
                self.failure = failure
                log.warning(
                    "esm %s: cannot write the mapping's status (records are still processed; "
                    "retrying quietly): %s",
                    self.label,
                    detail,
                )
            return False
        if self.failure is not None:
            log.info("esm %s: writing the mapping's status works again", self.label)
        self.failure, self.failures = None, 0
        self.written, self._written_at = fields, self._clock()
        return True

    def delay(self) -> float:
        """The interval, doubled per consecutive failure up to a minute (a refusing server is not
        asked every few seconds forever)."""
        if not self.failures:
            return self.interval
        return max(self.interval, min(MAX_BACKOFF, self.interval * 2**self.failures))

    async def run(self) -> None:
        while True:
            await self.report()
            await asyncio.sleep(self.delay())

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name=f"esm-status-{self.label}")

    async def stop(self, flush_timeout: float = 15.0) -> None:
        """Stop the loop and write the final result (e.g. the last batch's) once, bounded."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.report(), flush_timeout)


def mapping_reporter(
    snapshot: Snapshot, api_version: str, namespace: str, name: str, settings: WorkerSettings
) -> tuple[StatusReporter, MappingStatusWriter] | None:
    """A reporter for one mapping, or None when reporting is off or there are no credentials."""
    interval = settings.status_interval
    if interval <= 0:
        log.info("LAMINA_STATUS_INTERVAL=%s: the mapping's status is not written", interval)
        return None
    api = status_api_client(settings)
    if api is None:
        return None
    group, version = api_version.split("/", 1)
    writer = MappingStatusWriter(api, group, version, namespace, name)
    return StatusReporter(snapshot, writer, f"{namespace}/{name}", interval=interval), writer

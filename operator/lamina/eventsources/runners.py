"""An EventSourceMapping object turned into something that runs: a broker consumer or a schedule.

Shared by local mode and the cluster worker; they differ only in how a function is invoked, how an
async invocation is queued and where broker URLs from Secrets come from, which are passed in.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from lamina.api import EventSourceMapping
from lamina.eventsources.config import MappingConfig
from lamina.eventsources.factory import make_sink, make_source
from lamina.eventsources.mapping import MappingWorker
from lamina.eventsources.status import MappingStatus
from lamina.invocation.invoker import Enqueue, Invoker
from lamina.schedule.event import event_id, scheduled_event
from lamina.schedule.expressions import parse_schedule
from lamina.schedule.stores import TickStore
from lamina.schedule.ticker import ScheduleTicker, utc_now
from lamina_runtime.protocol import InvocationResult

log = logging.getLogger(__name__)

#: One key of a Secret: (namespace, name, key) -> value, None when the Secret or the key is missing.
#: Local mode reads the loaded manifests; the cluster worker reads what the kubelet put in its env.
SecretValue = Callable[[str, str, str], str | None]


def broker_url(target: Any, namespace: str, secret_value: SecretValue) -> str | None:
    """The URL of an endpoint: literal ``url``, or ``urlFrom`` read from its Secret. None for kinds
    without a URL (kafka, sqs: their settings are the endpoint itself)."""
    if getattr(target, "url", None):
        return str(target.url)
    url_from = getattr(target, "url_from", None)
    if url_from is None:
        return None
    ref = url_from.secret_key_ref
    value = secret_value(namespace, ref.name, ref.key)
    if value is None:
        raise LookupError(f"Secret {ref.name!r} has no key {ref.key!r} in namespace {namespace}")
    return value


class FunctionSink:
    """A failure destination that is a Function: each record becomes an Event invocation."""

    def __init__(self, enqueue: Enqueue, function_key: str) -> None:
        self.enqueue = enqueue
        self.function_key = function_key

    async def connect(self) -> None:
        return None

    async def publish(self, body: bytes, headers: dict[str, str] | None = None) -> None:
        await self.enqueue(self.function_key, body, None)

    async def close(self) -> None:
        return None


class BrokerMapping:
    """One mapping over a queue or stream; prints each change of state.

    ``spec.scalingConfig.maximumConcurrency`` workers consume side by side (rabbitmq and sqs: each is a
    consumer of its own on the queue, so the broker spreads the messages, SQS FIFO one group to one
    worker at a time; kafka: each is a member of the consumer group and gets its own partitions);
    otherwise one worker keeps the source's order. Each worker has its own connections, and its own
    dead-letter sink.
    """

    def __init__(
        self,
        esm: EventSourceMapping,
        invoke: Invoker,
        enqueue: Enqueue,
        secret_value: SecretValue,
        on_change: Callable[[MappingStatus], Any] | None = None,
        source_options: dict[str, Any] | None = None,
    ) -> None:
        ns, spec = esm.metadata.namespace, esm.spec
        self.esm = esm
        self.label = f"{esm.name} ({spec.source.describe()} -> {spec.function_name})"

        def secret(name: str, key: str) -> str | None:
            return secret_value(ns, name, key)

        source_url = broker_url(spec.source.target, ns, secret_value)
        on_failure = spec.destination_config.on_failure if spec.destination_config else None
        dlq_url = (
            broker_url(on_failure.target, ns, secret_value)
            if on_failure is not None and on_failure.function is None
            else None
        )
        stamp = spec.starting_position_timestamp
        function_key = f"{ns}/{spec.function_name}"

        async def invoke_function(_: str, payload: bytes, request_id: str | None = None) -> InvocationResult:
            return await invoke(function_key, payload, request_id=request_id)

        def dead_letters() -> Any:
            if on_failure is None:
                return None
            if on_failure.function is not None:
                target = on_failure.function
                return FunctionSink(enqueue, f"{target.namespace or ns}/{target.name}")
            return make_sink(on_failure, dlq_url, secret)

        self._statuses: list[MappingStatus] = [MappingStatus() for _ in range(spec.concurrency)]
        self._shown = ""
        self._on_change = on_change
        self.workers = [
            MappingWorker(
                MappingConfig.from_spec(esm.name, spec),
                make_source(
                    spec.source,
                    source_url,
                    esm_name=esm.name,
                    batch_size=spec.batch_size,
                    starting_position=spec.starting_position,
                    starting_timestamp=stamp.timestamp() if stamp is not None else None,
                    secret=secret,
                    **(source_options or {}),
                ),
                invoke_function,
                dlq=dead_letters(),
                on_status=functools.partial(self._on_status, i),
            )
            for i in range(spec.concurrency)
        ]

    @property
    def status(self) -> MappingStatus:
        """The workers' statuses as one: counters summed, the latest result, the oldest record's age."""
        return MappingStatus.merged(self._statuses)

    def _on_status(self, index: int, status: MappingStatus) -> None:
        self._statuses[index] = status
        combined = self.status
        shown = f"{combined.state}: {combined.last_processing_result}"
        if shown != self._shown:
            self._shown = shown
            print(f"mapping {self.label}: {shown}", flush=True)
            if self._on_change is not None:
                self._on_change(combined)

    async def start(self) -> None:
        for worker in self.workers:
            worker.start()

    async def stop(self, grace_seconds: float = 5.0) -> None:
        """Stop fetching; a batch in flight gets ``grace_seconds`` to finish and be acknowledged, else
        it is abandoned unacknowledged (the broker delivers its records again)."""
        await asyncio.gather(*(worker.stop(grace_seconds=grace_seconds) for worker in self.workers))

    async def wait(self) -> None:
        await asyncio.gather(*(worker.start() for worker in self.workers))

    def snapshot(self) -> dict[str, Any]:
        return {
            "name": self.esm.name,
            "source": self.esm.spec.source.describe(),
            "function": self.esm.spec.function_name,
            "concurrency": len(self.workers),
            **self.status.to_dict(),
        }


class ScheduleMapping:
    """A schedule: each tick, claimed once in `ticks`, becomes an Event invocation of the function."""

    def __init__(self, esm: EventSourceMapping, enqueue: Enqueue, ticks: TickStore) -> None:
        schedule = esm.spec.source.schedule
        assert schedule is not None
        self.esm = esm
        self.schedule = schedule
        self.enqueue = enqueue
        self.ticks = ticks
        self.function_key = f"{esm.metadata.namespace}/{esm.spec.function_name}"
        self.ticker = ScheduleTicker(
            f"{esm.metadata.namespace}/{esm.name}", parse_schedule(schedule.expression, schedule.timezone)
        )
        self.fired = 0
        self.last_fired: str | None = None
        self._task: asyncio.Task[None] | None = None

    async def _fire(self, tick: datetime) -> None:
        payload = json.dumps(scheduled_event(self.esm.name, tick, self.schedule.input)).encode()
        # The request id is derived from (rule, tick): a tick queued twice is stored once.
        await self.enqueue(self.function_key, payload, event_id(self.esm.name, tick))
        self.fired += 1
        self.last_fired = tick.isoformat()
        print(
            f"schedule {self.esm.name}: fired {self.schedule.expression} at {self.last_fired} -> "
            f"{self.esm.spec.function_name}",
            flush=True,
        )

    async def start(self) -> None:
        if self.esm.spec.enabled:
            self._task = asyncio.create_task(self.ticker.run(self._fire, self.ticks))

    async def wait(self) -> None:
        await self.start()
        if self._task is not None:
            await self._task

    async def stop(self, grace_seconds: float = 0.0) -> None:
        """Stop ticking (a tick only enqueues an event: no invocation of it runs here to wait for)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def snapshot(self) -> dict[str, Any]:
        return {
            "name": self.esm.name,
            "source": self.esm.spec.source.describe(),
            "function": self.esm.spec.function_name,
            "state": "Enabled" if self.esm.spec.enabled else "Disabled",
            "fired": self.fired,
            "lastFired": self.last_fired,
            "nextFire": self.next_fire(),
        }

    def next_fire(self) -> str | None:
        """The next tick after now (ISO, UTC), or None once the schedule is over (``at``)."""
        upcoming = self.ticker.schedule.next_after(utc_now(), self.ticker.anchor)
        return upcoming.isoformat() if upcoming is not None else None


@dataclass(frozen=True)
class KubernetesAccess:
    """What a Kubernetes source needs from where it runs: the credentials it watches with (a
    blocking factory of API clients) and where each mapping keeps its resourceVersion."""

    api_client: Callable[[], Any]
    checkpoint: Callable[[EventSourceMapping], Any]


def mapping_runner(
    esm: EventSourceMapping,
    invoke: Invoker,
    enqueue: Enqueue,
    secret_value: SecretValue,
    ticks: TickStore,
    kubernetes: KubernetesAccess | None = None,
) -> BrokerMapping | ScheduleMapping:
    if esm.spec.source.schedule is not None:
        return ScheduleMapping(esm, enqueue, ticks)
    options: dict[str, Any] = {}
    if esm.spec.source.kubernetes is not None:
        if kubernetes is None:
            raise ValueError(f"mapping {esm.name}: a Kubernetes source needs Kubernetes credentials here")
        options = {
            "namespace": esm.metadata.namespace,
            "api_client": kubernetes.api_client,
            "checkpoint": kubernetes.checkpoint(esm),
        }
    return BrokerMapping(esm, invoke, enqueue, secret_value, source_options=options)

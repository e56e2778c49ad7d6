"""Local mode's EventSourceMappings: broker consumers and schedules, from the same manifests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

from lamina.api import EventSourceMapping
from lamina.eventsources.factory import make_sink, make_source
from lamina.eventsources.mapping import MappingConfig, MappingStatus, MappingWorker
from lamina.schedule.event import event_id, scheduled_event
from lamina.schedule.expressions import parse_schedule
from lamina.schedule.stores import SqliteTickStore
from lamina.schedule.ticker import ScheduleTicker

if TYPE_CHECKING:
    from lamina.asyncinvoke.dispatcher import AsyncDispatcher
    from lamina.local.components import LocalInvoker, SecretUrls

log = logging.getLogger(__name__)


class FunctionSink:
    """A failure destination that is a Function: each record becomes an async (Event) invocation."""

    def __init__(self, dispatcher: AsyncDispatcher, function_key: str) -> None:
        self.dispatcher = dispatcher
        self.function_key = function_key

    async def connect(self) -> None:
        return None

    async def publish(self, body: bytes, headers: dict[str, str] | None = None) -> None:
        await self.dispatcher.enqueue(self.function_key, body)

    async def close(self) -> None:
        return None


class BrokerMapping:
    """One mapping over a queue or stream; prints each change of state."""

    def __init__(self, esm: EventSourceMapping, invoker: LocalInvoker, urls: SecretUrls,
                 dispatcher: AsyncDispatcher) -> None:
        ns, spec = esm.metadata.namespace, esm.spec
        self.esm = esm
        self.label = f"{esm.name} ({spec.source.describe()} -> {spec.function_name})"
        endpoint = spec.source
        url = self._url(endpoint.target, ns, urls)
        source = make_source(endpoint, url, esm_name=esm.name, batch_size=spec.batch_size,
                             starting_position=spec.starting_position)
        dlq = None
        on_failure = spec.destination_config.on_failure if spec.destination_config else None
        if on_failure is not None:
            if on_failure.function is not None:
                dlq = FunctionSink(dispatcher, f"{ns}/{on_failure.function.name}")
            else:
                dlq = make_sink(on_failure, self._url(on_failure.target, ns, urls))
        function_key = f"{ns}/{spec.function_name}"

        async def invoke(_: str, payload: bytes) -> Any:
            return await invoker(function_key, payload)

        self.status = MappingStatus()
        self._shown = ""
        self.worker = MappingWorker(MappingConfig.from_spec(esm.name, spec), source, invoke, dlq=dlq,
                                    on_status=self._on_status)

    @staticmethod
    def _url(target: Any, namespace: str, urls: SecretUrls) -> str:
        if target.url:
            return target.url
        return urls(namespace, target.url_from.model_dump(by_alias=True))

    def _on_status(self, status: MappingStatus) -> None:
        self.status = status
        shown = f"{status.state}: {status.last_processing_result}"
        if shown != self._shown:
            self._shown = shown
            print(f"mapping {self.label}: {shown}", flush=True)

    async def start(self) -> None:
        self.worker.start()

    async def stop(self) -> None:
        await self.worker.stop(grace_seconds=5)

    def snapshot(self) -> dict[str, Any]:
        return {"name": self.esm.name, "source": self.esm.spec.source.describe(),
                "function": self.esm.spec.function_name, **self.status.to_dict()}


class ScheduleMapping:
    """A schedule: each tick, once, becomes an async invocation of the function."""

    def __init__(self, esm: EventSourceMapping, dispatcher: AsyncDispatcher, ticks: SqliteTickStore) -> None:
        schedule = esm.spec.source.schedule
        assert schedule is not None
        self.esm = esm
        self.schedule = schedule
        self.dispatcher = dispatcher
        self.ticks = ticks
        self.function_key = f"{esm.metadata.namespace}/{esm.spec.function_name}"
        self.ticker = ScheduleTicker(f"{esm.metadata.namespace}/{esm.name}",
                                     parse_schedule(schedule.expression, schedule.timezone))
        self.fired = 0
        self.last_fired: str | None = None
        self._task: asyncio.Task[None] | None = None

    async def _fire(self, tick: datetime) -> None:
        event = scheduled_event(self.esm.name, tick, self.schedule.input)
        # The request id is derived from (rule, tick): a tick enqueued twice is stored once.
        await self.dispatcher.enqueue(self.function_key, json.dumps(event).encode(),
                                      request_id=event_id(self.esm.name, tick))
        self.fired += 1
        self.last_fired = tick.isoformat()
        print(f"schedule {self.esm.name}: fired {self.schedule.expression} at {self.last_fired} -> "
              f"{self.esm.spec.function_name}", flush=True)

    async def start(self) -> None:
        if self.esm.spec.enabled:
            self._task = asyncio.create_task(self.ticker.run(self._fire, self.ticks))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def snapshot(self) -> dict[str, Any]:
        return {"name": self.esm.name, "source": self.esm.spec.source.describe(),
                "function": self.esm.spec.function_name,
                "state": "Enabled" if self.esm.spec.enabled else "Disabled",
                "fired": self.fired, "lastFired": self.last_fired}

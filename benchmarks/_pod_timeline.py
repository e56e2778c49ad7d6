"""Where a cold start's time goes on a real node, hop by hop, as the API and the pods' logs show it.

A watch on the functions' pods notes (host wall clock, on arrival of the event) when each pod was
created, scheduled, given an address, seen running, and Ready by the kubelet. The container's own log,
read with containerd's timestamps, says when the runtime listened and when its INIT was over; the
gateway's log says when it asked for a pod and when its own probe of the starting pod got 200. With the
time the client sent the invoke and got the answer, one cold start reads as:

    invoke sent -> pod created (gateway scales the Deployment; Deployment and ReplicaSet controllers)
    -> scheduled -> running/address (kubelet: volumes, sandbox, container start, status)
    -> runtime listening -> INIT over -> gateway's probe 200 -> answer at the client
"""

from __future__ import annotations

import datetime as dt
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class PodMarks:
    """Host wall-clock seconds at which a pod reached each stage (None: not seen)."""

    function: str
    created: float | None = None
    scheduled: float | None = None
    address: float | None = None
    running: float | None = None
    ready: float | None = None


@dataclass
class Timeline:
    """A pod watch in a thread; ``marks`` by pod name."""

    core: Any
    namespace: str
    selector: str
    marks: dict[str, PodMarks] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _synced: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        """Start watching; returns once the watch is established (nothing after this is missed)."""
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._synced.wait(60):
            raise TimeoutError("the pod watch did not start")

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        from kubernetes import watch

        listed = self.core.list_namespaced_pod(self.namespace, label_selector=self.selector)
        for pod in listed.items:
            self._note(pod, time.time())
        version = listed.metadata.resource_version
        self._synced.set()
        while not self._stop.is_set():
            w = watch.Watch()
            for event in w.stream(
                self.core.list_namespaced_pod,
                self.namespace,
                label_selector=self.selector,
                resource_version=version,
                timeout_seconds=30,
            ):
                version = event["object"].metadata.resource_version
                self._note(event["object"], time.time())
                if self._stop.is_set():
                    w.stop()
                    break

    def _note(self, pod: Any, now: float) -> None:
        name = pod.metadata.name
        m = self.marks.get(name)
        if m is None:
            m = self.marks[name] = PodMarks((pod.metadata.labels or {}).get("lamina.dev/function", ""))
            m.created = now
        status = pod.status
        if m.scheduled is None and pod.spec.node_name:
            m.scheduled = now
        if m.address is None and status.pod_ip:
            m.address = now
        running = any(c.state and c.state.running for c in status.container_statuses or [])
        if m.running is None and running:
            m.running = now
        if m.ready is None and any(c.type == "Ready" and c.status == "True" for c in status.conditions or []):
            m.ready = now

    def of_function(self, function: str) -> list[tuple[str, PodMarks]]:
        return [(n, m) for n, m in list(self.marks.items()) if m.function == function]


def log_times(text: str) -> list[tuple[float, str]]:
    """``(epoch seconds, line)`` of a log read with ``timestamps=True`` (RFC 3339, nanoseconds)."""
    out = []
    for line in text.splitlines():
        stamp, _, rest = line.partition(" ")
        out.append((parse_stamp(stamp), rest))
    return out


_FRACTION = re.compile(r"\.(\d+)")


def parse_stamp(stamp: str) -> float:
    stamp = _FRACTION.sub(lambda m: "." + m.group(1)[:6].ljust(6, "0"), stamp.replace("Z", "+00:00"))
    return dt.datetime.fromisoformat(stamp).timestamp()


def first(lines: list[tuple[float, str]], *needles: str) -> float | None:
    """When the first line holding every one of ``needles`` was written."""
    return next((t for t, line in lines if all(n in line for n in needles)), None)

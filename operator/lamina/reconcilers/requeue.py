"""Reconcile again later: the operator's own retry queue for objects that wait on something.

A Function waiting for a Secret is not a failed handler: kopf would hold the object's later changes
back until the retry is due. So handlers succeed after writing Ready=False, and the object is put
here instead; a newer change is handled at once, and the requeued reconcile finds it already done.
Delays double per key up to a cap, and reset once the key reconciles. A reconcile that succeeds
leaves a pending entry in place (another reconcile of the same key, running beside it, may have put
it there to look again; one more reconcile is harmless, a lost one leaves a status stale). A
requeued reconcile that raises is tried again later, never dropped. The queue is in memory: after a
restart, kopf's resume handlers reconcile everything anyway.
"""

from __future__ import annotations

import contextvars
import heapq
import logging
import threading
import time
from collections.abc import Callable, Hashable

log = logging.getLogger(__name__)


class Requeue:
    """Calls ``callback(key)`` (on one worker thread) when a key's delay has passed."""

    def __init__(self, callback: Callable[[Hashable], None], max_delay: float = 300.0) -> None:
        self._callback = callback
        self._max_delay = max_delay
        self._heap: list[tuple[float, int, Hashable]] = []
        self._due: dict[Hashable, float] = {}
        self._attempts: dict[Hashable, int] = {}
        self._seq = 0
        self._cv = threading.Condition()
        self._stopped = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        # Run inside a copy of the caller's context (kopf keeps its Event poster in context variables).
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run, args=(self._run,), name="lamina-requeue", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def add(self, key: Hashable, base_delay: float) -> float:
        """Schedule ``key`` after ``base_delay`` doubled per earlier attempt; returns the delay."""
        with self._cv:
            attempt = self._attempts.get(key, 0)
            self._attempts[key] = attempt + 1
            delay = min(self._max_delay, base_delay * 2.0 ** min(attempt, 16))
            due = time.monotonic() + delay
            if key not in self._due or due < self._due[key]:
                self._due[key] = due
                self._seq += 1
                heapq.heappush(self._heap, (due, self._seq, key))
                self._cv.notify_all()
            return delay

    def forget(self, key: Hashable) -> None:
        """``key`` is gone: drop its pending retry and its backoff."""
        with self._cv:
            self._attempts.pop(key, None)
            self._due.pop(key, None)

    def reset(self, key: Hashable) -> None:
        """``key`` reconciled: its next retry starts from the base delay again. A pending one stays."""
        with self._cv:
            self._attempts.pop(key, None)

    def pending(self) -> dict[Hashable, float]:
        """Seconds until each pending key is due (for tests and debugging)."""
        now = time.monotonic()
        with self._cv:
            return {k: max(0.0, t - now) for k, t in self._due.items()}

    def _next(self) -> Hashable | None:
        with self._cv:
            while not self._stopped:
                while self._heap and self._due.get(self._heap[0][2]) != self._heap[0][0]:
                    heapq.heappop(self._heap)  # superseded or forgotten
                if not self._heap:
                    self._cv.wait()
                    continue
                due, _, key = self._heap[0]
                wait = due - time.monotonic()
                if wait > 0:
                    self._cv.wait(wait)
                    continue
                heapq.heappop(self._heap)
                del self._due[key]
                return key
            return None

    def _run(self) -> None:
        while (key := self._next()) is not None:
            try:
                self._callback(key)
            except Exception:
                delay = self.add(key, FAILED_RETRY_SECONDS)
                log.exception("requeued reconcile of %s failed; trying again in %.0fs", key, delay)


#: First delay before a requeued reconcile that raised is tried again (doubling per failure).
FAILED_RETRY_SECONDS = 5.0

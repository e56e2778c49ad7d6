"""A future that resumes the task awaiting it in the callback that settles it.

A plain asyncio future, once settled, schedules its waiter (the awaiting task's wake-up) for the
loop's *next* turn. On a request/reply hot path that settles the future from a protocol callback
(the bytes of the reply were just read), that is one more turn of the loop per call: another
``epoll_wait`` and another pass of the pure-Python loop before the task writes its answer. A
:class:`PromptFuture` settled with :meth:`PromptFuture.settle` outside any task runs its waiter right
there, in the turn that read the reply. The pod's server uses it for the worker's reply
(``process._Channel``), the gateway for the pod's reply (``lamina.environments.pod_client``).

Everything else is a plain future's behaviour: a waiter is never run while another task's step runs
(the settle came from inside a task), a cancellation (a timeout, a caller that went away) schedules
the waiter as usual, and callbacks other than the first waiter are scheduled as usual.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class PromptFuture(asyncio.Future[T]):
    _waiter: tuple[Callable[[Any], object], contextvars.Context | None] | None = None

    def add_done_callback(
        self, fn: Callable[[Any], object], *, context: contextvars.Context | None = None
    ) -> None:
        if self._waiter is None and not self.done():
            self._waiter = (fn, context)  # the task that awaits it (a Task's wake-up)
        else:
            super().add_done_callback(fn, context=context)

    def remove_done_callback(self, fn: Callable[[Any], object]) -> int:
        if self._waiter is not None and self._waiter[0] == fn:
            self._waiter = None
            return 1 + super().remove_done_callback(fn)
        return super().remove_done_callback(fn)

    def settle(self, result: T | None = None, error: BaseException | None = None) -> None:
        """Set the result (or ``error``) and run the waiter now, unless a task is running."""
        if error is None:
            self.set_result(result)  # type: ignore[arg-type]
        else:
            self.set_exception(error)
        self._resume(now=asyncio.current_task(self.get_loop()) is None)

    def cancel(self, msg: Any | None = None) -> bool:
        if not super().cancel(msg):
            return False
        self._resume(now=False)
        return True

    def _resume(self, *, now: bool) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is None:
            return
        fn, context = waiter
        if now:
            (context or contextvars.copy_context()).run(fn, self)
        else:
            self.get_loop().call_soon(fn, self, context=context)

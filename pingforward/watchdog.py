"""Deadlines for many tasks with one timer: the pingback endpoint's limit on reading a request body.

`asyncio.timeout` arms and cancels a timer per use: 4.5 µs with uvloop, a twentieth of what a junk
request may cost (bench/README.md). A `Watchdog` keeps the deadlines in a dict and checks them with
one timer per worker, every `tick` seconds while any are pending: 0.5 µs per use, and a deadline
fires up to one tick late. Like `asyncio.timeout`, an overdue task is cancelled and `TimeoutError`
raised in it; a cancellation from elsewhere (shutdown) still goes through as `CancelledError`.
"""

from __future__ import annotations

import asyncio
from types import TracebackType


class Watchdog:
    def __init__(self, tick: float = 1.0) -> None:
        self._tick = tick
        self._deadlines: dict[asyncio.Task[object], float] = {}
        self._overdue: set[asyncio.Task[object]] = set()
        self._timer: asyncio.TimerHandle | None = None

    def limit(self, seconds: float) -> _Limit:
        """`with watchdog.limit(5):` around awaits in one task, not nested; TimeoutError once overdue."""
        return _Limit(self, seconds)

    def _start(self, seconds: float) -> asyncio.Task[object]:
        task = asyncio.current_task()
        assert task is not None and task not in self._deadlines, "one limit at a time per task"
        loop = asyncio.get_running_loop()
        self._deadlines[task] = loop.time() + seconds
        if self._timer is None:
            self._timer = loop.call_later(self._tick, self._check)
        return task

    def _check(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for task, deadline in list(self._deadlines.items()):
            if deadline <= now and task not in self._overdue:
                # The task is waiting inside its limit (it leaves the dict on the way out), so the
                # cancellation arrives at an await inside it, where `_Limit.__exit__` sees it.
                self._overdue.add(task)
                task.cancel()
        self._timer = loop.call_later(self._tick, self._check) if self._deadlines else None

    def _stop(self, task: asyncio.Task[object]) -> bool:
        """Forget `task`'s deadline; True if it was cancelled for being overdue."""
        del self._deadlines[task]
        if task not in self._overdue:
            return False
        self._overdue.discard(task)
        return True

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class _Limit:
    def __init__(self, watchdog: Watchdog, seconds: float) -> None:
        self._watchdog = watchdog
        self._seconds = seconds
        self._task: asyncio.Task[object] | None = None
        self._cancelling = 0

    def __enter__(self) -> None:
        self._task = self._watchdog._start(self._seconds)
        self._cancelling = self._task.cancelling()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        assert self._task is not None
        if self._watchdog._stop(self._task) and kind is asyncio.CancelledError:
            # Ours: take it back, unless someone else cancelled the task too (asyncio.timeout does the same).
            if self._task.uncancel() <= self._cancelling:
                raise TimeoutError from error

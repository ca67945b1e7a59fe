"""Deadlines for many tasks with one timer: the pingback endpoint's body reads and forwards.

`deadline(seconds)` is the one seam the rest of the code uses: `with deadline(5):` around awaits, like
`asyncio.timeout(5)`, kept by the event loop's own `Watchdog`. Only this module knows there is one.

`asyncio.timeout` arms and cancels a timer per use, and each ping needs two: on the hot path that
cost more than the rest of the deadline handling (bench/README.md). A `Watchdog` keeps the deadlines
in a dict and one timer, armed at the earliest of them. A new deadline re-arms it only when it falls
before that, and limits of a few fixed lengths (the endpoint has two) come in deadline order, so that
happens a few times per limit's length, not per use. When the timer fires it cancels what is overdue and re-arms for the
earliest deadline left, but not sooner than `INTERVAL` later: each firing walks every deadline, and
when thousands of requests hang until theirs (slow receivers, slow senders), one firing per request
would cost CPU growing with the square of their number. So a deadline fires at most `INTERVAL` late,
and at most `SLACK` early. Like `asyncio.timeout`, an overdue task is cancelled and `TimeoutError`
raised in it; a cancellation from elsewhere (shutdown) still goes through as `CancelledError`.
"""

from __future__ import annotations

import asyncio
import math
import weakref
from types import TracebackType
from typing import Final

# A deadline this close is due: timers fire on the loop's clock, which may round (uvloop: to 1 ms).
SLACK: Final = 0.001
# The shortest time between two walks over the deadlines (above); a fiftieth of the 5 s body limit.
INTERVAL: Final = 0.1


class Watchdog:
    def __init__(self) -> None:
        self._deadlines: dict[asyncio.Task[object], float] = {}
        self._overdue: set[asyncio.Task[object]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._due = math.inf  # when the timer fires
        self._loop: asyncio.AbstractEventLoop | None = None  # the timer's

    def limit(self, seconds: float) -> _Limit:
        """`with watchdog.limit(5):` around awaits in one task, not nested; TimeoutError once overdue."""
        return _Limit(self, seconds)

    def _start(self, seconds: float) -> asyncio.Task[object]:
        task = asyncio.current_task()
        assert task is not None and task not in self._deadlines, "one limit at a time per task"
        loop = task.get_loop()
        deadline = loop.time() + seconds
        self._deadlines[task] = deadline
        if deadline < self._due or loop is not self._loop:  # another loop: a watchdog that outlived its own
            self._arm(loop, deadline)
        return task

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._due, self._loop = loop.call_at(when, self._check), when, loop

    def _check(self) -> None:
        self._timer, self._due = None, math.inf
        loop = asyncio.get_running_loop()
        now = loop.time() + SLACK
        due = math.inf
        for task, deadline in self._deadlines.items():
            if deadline > now:
                due = min(due, deadline)
            elif task not in self._overdue:
                # The task is waiting inside its limit (it leaves the dict on the way out), so the
                # cancellation arrives at an await inside it, where `_Limit.__exit__` sees it.
                self._overdue.add(task)
                task.cancel()
        if due < math.inf:
            self._arm(loop, max(due, now + INTERVAL))

    def _stop(self, task: asyncio.Task[object]) -> bool:
        """Forget `task`'s deadline; True if it was cancelled for being overdue."""
        del self._deadlines[task]
        if task not in self._overdue:
            return False
        self._overdue.discard(task)
        return True

    def close(self) -> None:
        """Stop the timer (at shutdown): deadlines still pending are no longer enforced."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._due, self._loop = None, math.inf, None


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
        if self._watchdog._stop(self._task):
            # Ours: take the cancellation back whatever ended the block, and turn it into TimeoutError
            # unless someone else cancelled the task too (asyncio.timeout does both the same way).
            if self._task.uncancel() <= self._cancelling and kind is asyncio.CancelledError:
                raise TimeoutError from error


# One watchdog per event loop: a worker has one loop, tests have one per test.
_watchdogs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Watchdog] = weakref.WeakKeyDictionary()


def deadline(seconds: float) -> _Limit:
    """`with deadline(5):` around awaits in one task (not nested); TimeoutError once overdue.

    The running loop's watchdog keeps it (see the module's docstring for why not `asyncio.timeout`).
    """
    loop = asyncio.get_running_loop()
    watchdog = _watchdogs.get(loop)
    if watchdog is None:
        watchdog = _watchdogs[loop] = Watchdog()
    return watchdog.limit(seconds)


def stop() -> None:
    """Stop the running loop's watchdog timer (at shutdown); a later `deadline` starts a new one."""
    watchdog = _watchdogs.pop(asyncio.get_running_loop(), None)
    if watchdog is not None:
        watchdog.close()

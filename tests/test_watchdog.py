from __future__ import annotations

import asyncio

import pytest

from pingforward.watchdog import Watchdog

pytestmark = pytest.mark.anyio


async def test_an_overdue_task_gets_timeout_error_and_is_not_left_cancelled() -> None:
    watchdog = Watchdog(tick=0.01)
    with pytest.raises(TimeoutError):
        with watchdog.limit(0.02):
            await asyncio.sleep(5)  # cut off by the watchdog, long before
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    await asyncio.sleep(0)  # no cancellation is left pending for the next await
    watchdog.close()


async def test_a_task_within_its_limit_is_left_alone_and_the_timer_stops() -> None:
    watchdog = Watchdog(tick=0.01)
    with watchdog.limit(10):
        await asyncio.sleep(0.03)  # several ticks: checked, not overdue
    assert watchdog._timer is not None
    await asyncio.sleep(0.03)
    assert watchdog._timer is None and not watchdog._deadlines  # nothing pending, no timer


async def test_only_the_overdue_task_is_cut_off() -> None:
    watchdog = Watchdog(tick=0.01)

    async def read(seconds: float, limit: float) -> str:
        try:
            with watchdog.limit(limit):
                await asyncio.sleep(seconds)
        except TimeoutError:
            return "timed out"
        return "done"

    results = await asyncio.gather(read(5, 0.02), read(0.05, 10), read(0, 10))
    assert list(results) == ["timed out", "done", "done"]
    watchdog.close()


@pytest.mark.parametrize("overdue_too", [False, True])
async def test_a_cancellation_from_elsewhere_goes_through(overdue_too: bool) -> None:
    watchdog = Watchdog(tick=100)  # checked by hand below

    async def read() -> None:
        with watchdog.limit(10):
            await asyncio.sleep(5)

    task = asyncio.create_task(read())
    await asyncio.sleep(0)  # the task is waiting inside its limit
    if overdue_too:  # the watchdog cancels it in the same loop turn as someone else does
        watchdog._deadlines[task] = 0.0
        watchdog._check()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not watchdog._deadlines and not watchdog._overdue
    watchdog.close()

from __future__ import annotations

import asyncio

import pytest

from pingforward.watchdog import INTERVAL, SLACK, Watchdog

pytestmark = pytest.mark.anyio


async def test_an_overdue_task_gets_timeout_error_and_is_not_left_cancelled() -> None:
    watchdog = Watchdog()
    with pytest.raises(TimeoutError):
        with watchdog.limit(0.02):
            await asyncio.sleep(5)  # cut off by the watchdog, long before
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    await asyncio.sleep(0)  # no cancellation is left pending for the next await
    watchdog.close()


async def test_a_task_within_its_limit_is_left_alone_and_the_timer_stops() -> None:
    watchdog = Watchdog()
    with watchdog.limit(0.02):
        await asyncio.sleep(0)
    assert watchdog._timer is not None  # armed at the deadline, not cancelled per use
    await asyncio.sleep(0.05)
    assert watchdog._timer is None and not watchdog._deadlines  # fired, found nothing, stopped


async def test_one_timer_for_many_limits_rearmed_only_for_an_earlier_deadline() -> None:
    watchdog = Watchdog()

    async def hold(limit: float) -> None:
        with watchdog.limit(limit):
            await asyncio.sleep(0.01)

    await hold(10)
    timer = watchdog._timer
    assert timer is not None
    await asyncio.gather(*(hold(10) for _ in range(50)))
    assert watchdog._timer is timer and not timer.cancelled()  # later deadlines: the same timer
    await hold(5)
    assert watchdog._timer is not timer and timer.cancelled()  # an earlier one: armed anew
    watchdog.close()


async def test_only_the_overdue_task_is_cut_off_and_each_at_its_own_deadline() -> None:
    watchdog = Watchdog()
    loop = asyncio.get_running_loop()

    async def read(seconds: float, limit: float) -> tuple[str, float]:
        started = loop.time()
        try:
            with watchdog.limit(limit):
                await asyncio.sleep(seconds)
        except TimeoutError:
            return "timed out", loop.time() - started
        return "done", loop.time() - started

    results = await asyncio.gather(read(5, 0.2), read(5, 0.05), read(0.1, 10), read(0, 10))
    assert [outcome for outcome, _ in results] == ["timed out", "timed out", "done", "done"]
    # Not before its deadline: the later limit is not cut off with the earlier one.
    assert results[0][1] >= 0.2 - 0.002 and results[1][1] >= 0.05 - 0.002
    watchdog.close()


@pytest.mark.parametrize("overdue_too", [False, True])
async def test_a_cancellation_from_elsewhere_goes_through(overdue_too: bool) -> None:
    watchdog = Watchdog()

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


async def test_many_hanging_tasks_are_checked_a_few_times_not_once_each() -> None:
    # 100 requests hang until their deadlines, 2 ms apart: one walk over all of them per deadline
    # would make the CPU grow with the square of their number. The limit is longer than INTERVAL, as
    # the endpoint's are, so an arrival never needs the timer sooner.
    watchdog = Watchdog()
    checks = 0
    check = watchdog._check

    def counted() -> None:
        nonlocal checks
        checks += 1
        check()

    watchdog._check = counted  # type: ignore[method-assign]
    loop = asyncio.get_running_loop()

    async def hang() -> float:
        started = loop.time()
        with pytest.raises(TimeoutError):
            with watchdog.limit(0.15):
                await asyncio.sleep(30)
        return loop.time() - started

    began = loop.time()
    tasks = []
    for _ in range(100):
        tasks.append(asyncio.create_task(hang()))
        await asyncio.sleep(0.002)
    waited = await asyncio.gather(*tasks)
    assert min(waited) >= 0.15 - SLACK  # none cut off early
    assert checks <= (loop.time() - began) / INTERVAL + 2, checks
    watchdog.close()


async def test_a_cancellation_turned_into_another_error_is_still_taken_back() -> None:
    watchdog = Watchdog()
    with pytest.raises(ValueError):
        with watchdog.limit(0.02):
            try:
                await asyncio.sleep(5)
            except asyncio.CancelledError:
                raise ValueError("cleanup failed") from None
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0  # as asyncio.timeout leaves it
    watchdog.close()


def test_a_watchdog_that_outlived_its_event_loop_still_keeps_deadlines() -> None:
    watchdog = Watchdog()

    async def short() -> None:
        with watchdog.limit(0.01):  # due before the next loop's deadline, so that one would not re-arm
            await asyncio.sleep(0)

    async def overdue() -> str:
        try:
            with watchdog.limit(0.05):
                await asyncio.sleep(5)
        except TimeoutError:
            return "timed out"
        return "not cut off"

    asyncio.run(short())  # leaves its timer armed on a loop that is gone
    assert asyncio.run(overdue()) == "timed out"
    watchdog.close()

"""Worker loops: restarted after failures, with a back-off that a healthy run resets."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from relay.errors import StorageUnavailable
from relay.loops import CANCEL_WAIT, finish, keep_running, shut_down, wait_event


async def test_the_back_off_grows_to_its_cap_and_a_healthy_run_starts_it_afresh() -> None:
    starts: list[float] = []
    ends: list[float] = []

    async def loop() -> None:
        starts.append(time.monotonic())
        if len(starts) == 6:
            await asyncio.sleep(0.3)  # a healthy stretch, then the next outage
        ends.append(time.monotonic())
        if len(starts) < 8:
            raise StorageUnavailable("down")

    await asyncio.wait_for(keep_running(loop, "test", lambda: False, first=0.02, cap=0.16,
                                        healthy=0.25), 10)
    gaps = [start - end for end, start in zip(ends, starts[1:], strict=False)]
    assert len(starts) == 8
    assert gaps[3] >= 0.15 and gaps[4] >= 0.15  # grown to the cap during the first outage
    assert gaps[5] < 0.1  # the outage after the healthy run starts again from the first delay


async def test_a_loop_that_returns_is_not_restarted_and_stopping_ends_the_retries() -> None:
    calls = 0

    async def failing() -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("bug")

    stopping = False

    async def stop_soon() -> None:
        nonlocal stopping
        await asyncio.sleep(0.2)
        stopping = True

    await asyncio.gather(keep_running(failing, "test", lambda: stopping, first=0.01, cap=0.02),
                         stop_soon())
    assert 3 <= calls < 30

    async def done() -> None:
        nonlocal calls
        calls = -1

    await keep_running(done, "test", lambda: False)
    assert calls == -1


async def test_a_cancellation_that_lands_as_the_event_is_set_is_never_swallowed() -> None:
    # asyncio.wait_for on 3.11 returns normally here, and a worker loop then never stops.
    for _ in range(50):
        event = asyncio.Event()
        task = asyncio.create_task(wait_event(event, 5.0))
        await asyncio.sleep(0)
        event.set()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert task.cancelled()


async def test_wait_event_returns_when_set_or_when_the_time_is_up() -> None:
    event = asyncio.Event()
    started = time.monotonic()
    await wait_event(event, 0.05)
    assert 0.04 <= time.monotonic() - started < 1.0
    asyncio.get_running_loop().call_later(0.01, event.set)
    started = time.monotonic()
    await wait_event(event, 5.0)
    assert time.monotonic() - started < 1.0


async def test_shutdown_cuts_the_read_of_a_loop_deaf_to_cancellation_and_drains_in_the_grace(
        ) -> None:
    stop, interrupted = asyncio.Event(), asyncio.Event()
    seen: list[str] = []

    async def stuck() -> None:
        # As redis-py can in a blocking read: the cancellation is lost, the read goes on.
        while not interrupted.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await interrupted.wait()
        seen.append("loop ended")

    async def interrupt() -> None:
        seen.append("interrupt")
        interrupted.set()

    async def drain(left: float) -> None:
        seen.append(f"drain {left:.1f}")

    loop = asyncio.create_task(stuck())
    await asyncio.sleep(0.05)  # reading
    stop.set()
    signalled = time.monotonic()
    await shut_down(stop, [loop], grace=3.0, on_stop=lambda: seen.append("on_stop"),
                    interrupt=interrupt, drain=drain)
    assert time.monotonic() - signalled == pytest.approx(CANCEL_WAIT, abs=0.3)
    # The grace counts from the signal: the second spent waiting for the loop is gone.
    assert seen == ["on_stop", "interrupt", "loop ended", f"drain {3.0 - CANCEL_WAIT:.1f}"]


async def test_shutdown_of_loops_that_end_when_cancelled_interrupts_nothing() -> None:
    stop = asyncio.Event()
    interrupts: list[None] = []

    async def interrupt() -> None:
        interrupts.append(None)

    async def drain(left: float) -> None:
        assert left > 2.9

    loop = asyncio.create_task(asyncio.sleep(30))
    await asyncio.sleep(0.05)
    stop.set()
    await shut_down(stop, [loop], grace=3.0, on_stop=lambda: None, interrupt=interrupt,
                    drain=drain)
    assert loop.cancelled() and interrupts == []


async def test_finish_waits_for_work_in_flight_and_cancels_what_outlasts_it() -> None:
    quick = asyncio.create_task(asyncio.sleep(0.05))
    slow = asyncio.create_task(asyncio.sleep(30))
    started = time.monotonic()
    await finish({quick, slow}, 0.3)
    assert time.monotonic() - started < 1.0
    assert quick.done() and not quick.cancelled() and slow.cancelled()

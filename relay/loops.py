"""Worker loops: kept running through Redis outages, and stopped in one shutdown sequence."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection

import structlog

from relay.errors import StorageUnavailable

log = structlog.get_logger("relay.loops")

FIRST_DELAY = 0.1
MAX_DELAY = 5.0
# A loop that ran this long before failing was healthy: its next outage starts the back-off
# afresh, so a Redis restart hours after the last one is picked up in 0.1 s, not 5 s.
HEALTHY_RUN = 10.0
# At shutdown, how long cancelled loops get to end, then how long once their reads are cut.
CANCEL_WAIT = 1.0
INTERRUPT_WAIT = 2.0


async def keep_running(loop: Callable[[], Awaitable[None]], name: str,
                       stopping: Callable[[], bool], *, first: float = FIRST_DELAY,
                       cap: float = MAX_DELAY, healthy: float = HEALTHY_RUN) -> None:
    """Run `loop` until it returns or `stopping()`; log and back off on every failure."""
    delay = first
    while not stopping():
        started = time.monotonic()
        try:
            await loop()
            return
        except asyncio.CancelledError:
            raise
        except StorageUnavailable as exc:
            log.warning("storage_unavailable", loop=name, error=str(exc))
        except Exception:
            log.exception("worker_loop_crashed", loop=name)
        if time.monotonic() - started >= healthy:
            delay = first
        await asyncio.sleep(delay)
        delay = min(delay * 2, cap)


async def wait_event(event: asyncio.Event, seconds: float) -> None:
    """Wait until `event` is set or `seconds` pass.

    Not `asyncio.wait_for`: on Python 3.11 it can swallow a cancellation that lands as the wait
    ends, and a worker loop that loses its cancellation never stops.
    """
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({waiter}, timeout=seconds)
    finally:
        waiter.cancel()


async def shut_down(stop: asyncio.Event, loops: Collection[asyncio.Task[None]], *,
                    grace: float, on_stop: Callable[[], None],
                    interrupt: Callable[[], Awaitable[None]],
                    drain: Callable[[float], Awaitable[None]]) -> None:
    """Wait for `stop`, then end a worker's loops and give `drain` what is left of `grace`
    for the work in flight: the shutdown of the poller and of the delivery worker alike.

    `on_stop` tells the loops to take no more work before they are cancelled.
    """
    await stop.wait()
    # The grace counts from the signal, not from when the loops have ended: the process must
    # be gone within SHUTDOWN_GRACE plus a little, before the platform's SIGKILL.
    now = asyncio.get_running_loop().time
    ends = now() + grace
    on_stop()
    for task in loops:
        task.cancel()
    _, pending = await asyncio.wait(loops, timeout=CANCEL_WAIT)
    if pending:
        # redis-py can swallow a cancellation that lands while a blocking read connects;
        # closing the connection under it ends the read for certain.
        await interrupt()
        await asyncio.wait(pending, timeout=INTERRUPT_WAIT)
    await drain(max(ends - now(), 0.0))


async def finish(tasks: Collection[asyncio.Task[None]], within: float) -> None:
    """Wait up to `within` seconds for the tasks in flight, then cancel those still running."""
    if not tasks:
        return
    _, left = await asyncio.wait(set(tasks), timeout=within)
    for task in left:
        task.cancel()
    await asyncio.gather(*left, return_exceptions=True)

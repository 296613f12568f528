"""Worker loops: restarted through Redis outages with a capped back-off, and stoppable."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog

from relay.errors import StorageUnavailable

log = structlog.get_logger("relay.loops")

FIRST_DELAY = 0.1
MAX_DELAY = 5.0
# A loop that ran this long before failing was healthy: its next outage starts the back-off
# afresh, so a Redis restart hours after the last one is picked up in 0.1 s, not 5 s.
HEALTHY_RUN = 10.0


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

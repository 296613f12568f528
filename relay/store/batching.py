"""Group commit: concurrent writes of one kind share a single Redis round trip."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class GroupCommit(Generic[Item, Result]):
    """Hand items to `write` in batches; each caller awaits its own item's result.

    A write starts at once while fewer than `in_flight` are running, so a lone caller waits
    for nothing but its own round trip; under load the items that arrive meanwhile go out
    together in the next write (at most `max_batch`). Redis then runs one script for many
    items, and the client's per-command cost is paid once per batch instead of per item.
    A failed write fails every caller of its batch, and only those. An item that could not
    start within `max_wait` (the writes in flight hang) fails with `overdue()`, as a request
    that finds no free connection in the pool would.
    """

    def __init__(self, write: Callable[[list[Item]], Awaitable[list[Result]]], *,
                 overdue: Callable[[], Exception], max_wait: float,
                 max_batch: int = 64, in_flight: int = 2) -> None:
        self._write = write
        self._overdue = overdue
        self._max_wait = max_wait
        self._max_batch = max_batch
        self._in_flight = in_flight
        self._running = 0
        self._waiting: list[tuple[Item, asyncio.Future[Result], float]] = []
        self._expiry: asyncio.TimerHandle | None = None
        # Strong references: the event loop keeps only weak ones to its tasks.
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, item: Item) -> Result:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        self._waiting.append((item, future, loop.time()))
        if self._running < self._in_flight:
            self._running += 1
            task = asyncio.create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif self._expiry is None:
            self._expiry = loop.call_later(self._max_wait, self._expire)
        return await future

    def _expire(self) -> None:
        """Fail the items that have waited `max_wait`; look again when the next one will have."""
        self._expiry = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        overdue = [w for w in self._waiting if now - w[2] >= self._max_wait]
        if overdue:
            self._waiting = self._waiting[len(overdue):]
            for _, future, _ in overdue:
                if not future.done():
                    future.set_exception(self._overdue())
        if self._waiting:
            self._expiry = loop.call_later(self._max_wait - (now - self._waiting[0][2]),
                                           self._expire)

    async def _drain(self) -> None:
        try:
            while self._waiting:
                batch = self._waiting[:self._max_batch]
                del self._waiting[:self._max_batch]
                try:
                    results = await self._write([item for item, _, _ in batch])
                except BaseException as exc:
                    for _, future, _ in batch:
                        if not future.done():
                            future.set_exception(exc)
                    if not isinstance(exc, Exception):
                        # Cancelled (the loop is closing): nobody is left to write the rest.
                        for _, future, _ in self._waiting:
                            future.cancel()
                        self._waiting.clear()
                        raise
                    continue
                for (_, future, _), result in zip(batch, results, strict=True):
                    if not future.done():  # its caller may have been cancelled
                        future.set_result(result)
        finally:
            self._running -= 1

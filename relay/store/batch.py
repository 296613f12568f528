"""Coalescing many small Redis calls into one round trip, for the poller's hot path."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

# One call carries at most this many items, so one script never holds Redis for long.
MAX_BATCH = 256

Item = tuple[list[str], list[Any]]  # (keys, args) of one item
Send = Callable[[list[Item]], Awaitable[list[Any]]]


class Batcher:
    """Queue items and send whatever has queued up as one call, one call at a time.

    The first item starts a flush on the next pass of the event loop; items that come while a
    call is in flight wait for the next one, so under load a call carries as many items as
    arrived during the previous round trip, and at low load an item goes out at once. Every
    caller gets its own item's answer, or the call's exception.
    """

    def __init__(self, send: Send, max_batch: int = MAX_BATCH) -> None:
        self._send = send
        self._max = max_batch
        self._queue: list[tuple[Item, asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def submit(self, keys: list[str], args: list[Any]) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append(((keys, args), future))
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush(), name="redis-batch")
        return await future

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # let the callers woken in this same pass join the first call
        while self._queue:
            batch, self._queue = self._queue[:self._max], self._queue[self._max:]
            try:
                answers = await self._send([item for item, _ in batch])
            except asyncio.CancelledError:
                for _, future in batch + self._queue:
                    future.cancel()
                self._queue = []
                raise
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), answer in zip(batch, answers, strict=True):
                if not future.done():  # its caller may have been cancelled meanwhile
                    future.set_result(answer)

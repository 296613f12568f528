"""The delivery queue in Redis: claim, load, settle, park and retry deliveries."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from redis import exceptions as rexc

from relay import clock
from relay.config import Settings
from relay.store import queue_scripts
from relay.store.base import StoreBase
from relay.store.batching import GroupCommit
from relay.store.client import POOL_WAIT, storage_op, writes_ahead_hang
from relay.store.deliveries import FIELDS, Delivery
from relay.store.keys import GROUP, retry_member

T = TypeVar("T")

# Attempts kept per delivery; a subscriber retried for days would otherwise grow without bound.
ATTEMPT_LOG_CAP = 50


@dataclass(frozen=True)
class QueueEntry:
    """A delivery handed to this worker by the queue."""

    entry_id: str
    delivery_id: str
    event_id: str
    generation: str = "0"

    @property
    def retry_member(self) -> str:
        return retry_member(self.delivery_id, self.event_id, self.generation)


class Outcome(StrEnum):
    """How an attempt ends, as queue_scripts.FINISH_MANY takes it (and the metric counts it)."""

    OK = "ok"
    """A 2xx answer: the delivery succeeded."""
    RETRY = "retry"
    """A failure with attempts left: retried when its next delay has passed."""
    DEAD = "dead"
    """A failure with the retry schedule spent: the delivery is dead."""
    CANCEL = "cancel"
    """No attempt made: the subscription or event is gone, or the entry is stale."""
    GONE = "gone"
    """A 410 answer: the delivery is cancelled and the subscription disabled."""


@dataclass(frozen=True)
class Finish:
    """One attempt's result, waiting to be written with the others of its batch."""

    entry: QueueEntry
    sub_id: str
    outcome: Outcome
    attempt: dict[str, Any] | None
    next_due_ms: int


class QueueMixin(StoreBase):
    """Store methods for the delivery queue: its consumer group, reads, settling, retries."""

    def __init__(self, settings: Settings, url: str) -> None:
        super().__init__(settings, url)
        r = self.redis
        self._load = r.register_script(queue_scripts.LOAD)
        self._finish_many = r.register_script(queue_scripts.FINISH_MANY)
        # Attempts ending together are settled in one script call; see batching.py.
        self._finishes: GroupCommit[Finish, str] = GroupCommit(
            self._finish_batch, max_wait=POOL_WAIT, overdue=writes_ahead_hang)
        self._defer = r.register_script(queue_scripts.DEFER)
        self._promote = r.register_script(queue_scripts.PROMOTE)
        self._requeue = r.register_script(queue_scripts.REQUEUE)

    @storage_op
    async def ensure_groups(self) -> None:
        """Create the delivery consumer group; from entry 0 so nothing queued earlier is skipped."""
        try:
            await self.redis.xgroup_create(self.keys.queue, GROUP, id="0", mkstream=True)
        except rexc.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _with_group(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run a consumer-group command, recreating the group if Redis lost it (restart
        without persistence answers NOGROUP; Svix workers spun forever on exactly that)."""
        try:
            return await call()
        except rexc.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self.ensure_groups()
            return await call()

    @storage_op
    async def read_queue(self, consumer: str, count: int, block_ms: int) -> list[QueueEntry]:
        """Wait up to `block_ms` for new deliveries and claim up to `count` of them."""

        async def call() -> Any:
            return await self.blocking.xreadgroup(
                GROUP, consumer, {self.keys.queue: ">"}, count=count, block=block_ms or None
            )

        answer = await self._with_group(call)
        return [
            QueueEntry(entry_id, fields["d"], fields["e"], fields.get("g", "0"))
            for _stream, entries in (answer or [])
            for entry_id, fields in entries
            if fields
        ]

    @storage_op
    async def reclaim(self, consumer: str, min_idle_ms: int, count: int = 100) -> list[QueueEntry]:
        """Take over deliveries that a dead or stuck worker has held for `min_idle_ms`."""

        async def call() -> Any:
            return await self.redis.xautoclaim(
                self.keys.queue, GROUP, consumer, min_idle_ms, "0-0", count=count
            )

        answer = await self._with_group(call)
        return [QueueEntry(i, f["d"], f["e"], f.get("g", "0")) for i, f in answer[1] if f]

    @storage_op
    async def load_for_attempt(
        self, entries: list[QueueEntry]
    ) -> tuple[str, list[tuple[Delivery | None, str | None]]]:
        """The subscriptions version, then each entry's delivery (None when it has expired)
        and event body."""
        keys = [self.keys.subs_version]
        for e in entries:
            keys += [self.keys.delivery(e.delivery_id), self.keys.event(e.event_id)]
        # One script instead of a pipeline of 2n+1 commands: redis-py's per-command cost
        # was a fifth of a delivery's CPU.
        version, *rows = await self._load(keys=keys, args=FIELDS)
        return str(version or "0"), [
            (Delivery.from_row(e.delivery_id, rows[2 * i]), rows[2 * i + 1] or None)
            for i, e in enumerate(entries)]

    @storage_op
    async def finish(
        self,
        entry: QueueEntry,
        *,
        sub_id: str,
        outcome: Outcome,
        attempt: dict[str, Any] | None,
        next_due_ms: int = 0,
    ) -> str:
        """Record an attempt and settle the delivery; returns its new status. Concurrent
        calls share one script (the group commit of batching.py)."""
        return await self._finishes.submit(Finish(entry, sub_id, outcome, attempt, next_due_ms))

    async def _finish_batch(self, batch: list[Finish]) -> list[str]:
        k = self.keys
        keys = [k.queue, k.retry, k.dead, k.subs_version]
        args: list[Any] = [self._retention, int(self.settings.disable_after * 1000),
                           ATTEMPT_LOG_CAP, clock.now_ms()]
        for f in batch:
            e = f.entry
            keys += [k.delivery(e.delivery_id), k.attempts(e.delivery_id), k.sub(f.sub_id)]
            args += [e.entry_id, e.retry_member, f.outcome,
                     json.dumps(f.attempt, separators=(",", ":")) if f.attempt else "",
                     f.next_due_ms, e.generation]
        return [str(s) for s in await self._finish_many(keys=keys, args=args)]

    @storage_op
    async def defer(self, parked: list[tuple[QueueEntry, int]]) -> None:
        """Put entries back in the retry set, each due at its ms time, in one step."""
        if not parked:
            return
        args: list[str | int] = []
        for entry, due_ms in parked:
            args += [entry.entry_id, entry.retry_member, due_ms]
        await self._defer(keys=[self.keys.queue, self.keys.retry], args=args)

    @storage_op
    async def promote_due(self, limit: int = 1000) -> tuple[int, float | None]:
        """Queue due retries; returns how many moved and when the next one is due (seconds)."""
        moved, head = await self._promote(
            keys=[self.keys.retry, self.keys.queue], args=[clock.now_ms(), limit]
        )
        return int(moved), (float(head) / 1000 if head else None)

    @storage_op
    async def requeue(self, delivery_id: str) -> str | None:
        """Queue a delivery now with a fresh retry schedule; returns its previous status."""
        k = self.keys
        previous = await self._requeue(
            keys=[k.delivery(delivery_id), k.queue, k.retry, k.dead],
            args=[delivery_id, clock.now_ms()],
        )
        return str(previous) if previous else None

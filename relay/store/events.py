"""Events in Redis: accepting one with its deliveries (the accept layout), reading, listing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from relay import clock
from relay.config import Settings
from relay.providers import names
from relay.store import scripts
from relay.store.base import StoreBase
from relay.store.batching import GroupCommit
from relay.store.client import POOL_WAIT, storage_op, writes_ahead_hang
from relay.store.keys import Keys, run_member
from relay.store.paging import Page, page_index
from relay.store.scripts import REPLIES, Reply

# Providers whose runs have their own event index, for `run_id` lookups without a provider.
PROVIDERS = (*names(), "relay")


@dataclass(frozen=True)
class EventWrite:
    """One event to store, with how it is deduplicated and whom it goes to."""

    event_id: str
    body: bytes
    event_type: str
    provider: str
    subject: str
    # The dedupe key's kind ("terminal", or the event type); None: no dedupe key at all.
    dedupe_kind: str | None
    # "1" refuse a duplicate and claim the key, "g" only refuse (guarded by it), "0" neither.
    dedupe_mode: str
    ends_run: bool = False
    run_status: str | None = None
    deliveries: tuple[tuple[str, str], ...] = ()
    subs_version: str = "*"


def shared_keys(k: Keys) -> list[str]:
    """The keys that every event of one accept script call shares, in scripts.accept()'s S."""
    return [k.events, k.subs_version, k.queue, k.deliveries]


def pack_event(keys: list[str], args: list[Any], k: Keys, w: EventWrite) -> None:
    """Append one event's KEYS and ARGV in the layout that scripts.accept() reads."""
    keys += [k.dedupe(w.provider, w.subject, w.dedupe_kind or "-"), k.event(w.event_id),
             k.run_events(w.provider, w.subject), k.event_deliveries(w.event_id),
             k.run(w.provider, w.subject), k.poll_due(w.provider)]
    args += [len(w.deliveries), w.event_id, w.body, w.event_type, w.provider, w.subject,
             w.subs_version, w.dedupe_mode, "1" if w.ends_run else "0", w.run_status or "",
             run_member(w.provider, w.subject)]
    for delivery_id, sub_id in w.deliveries:
        keys += [k.delivery(delivery_id), k.sub_deliveries(sub_id)]
        args += [delivery_id, sub_id]


class EventsMixin(StoreBase):
    """Store methods for events: the accept step (batched) and the reads."""

    def __init__(self, settings: Settings, url: str) -> None:
        super().__init__(settings, url)
        self._accept_many = self.redis.register_script(scripts.ACCEPT_MANY)
        # Concurrent callbacks share one script call; see batching.py.
        self._accepts: GroupCommit[EventWrite, tuple[Reply, str]] = GroupCommit(
            self._accept_batch, max_wait=POOL_WAIT, overdue=writes_ahead_hang)

    @storage_op
    async def accept_event(self, w: EventWrite) -> tuple[Reply, str]:
        """Store an event and queue its deliveries: (STORED, id), (DUPLICATE, existing id), or
        (STALE, version) when `subs_version` is stale and the caller must match again."""
        return await self._accepts.submit(w)

    async def _accept_batch(self, writes: list[EventWrite]) -> list[tuple[Reply, str]]:
        k = self.keys
        keys = shared_keys(k)
        args: list[Any] = [clock.now_ms(), self._retention]
        for w in writes:
            pack_event(keys, args, k, w)
        flat = await self._accept_many(keys=keys, args=args)
        return [(REPLIES[int(flat[i])], str(flat[i + 1])) for i in range(0, len(flat), 2)]

    @storage_op
    async def get_event(self, event_id: str) -> dict[str, str] | None:
        h: dict[str, str] = await self.redis.hgetall(self.keys.event(event_id))
        return h or None

    @storage_op
    async def get_event_bodies(self, event_ids: list[str]) -> list[str | None]:
        pipe = self.redis.pipeline(transaction=False)
        for event_id in event_ids:
            pipe.hget(self.keys.event(event_id), "body")
        return list(await pipe.execute())

    @storage_op
    async def list_events(
        self,
        *,
        provider: str | None,
        run_id: str | None,
        event_type: str | None,
        limit: int,
        cursor: str | None,
    ) -> Page:
        index = self.keys.events
        if run_id:
            # A run's own index answers at once; without a provider, the first one that has it.
            for name in [provider] if provider else list(PROVIDERS):
                candidate = self.keys.run_events(name, run_id)
                if provider or await self.redis.exists(candidate):
                    index = candidate
                    break

        async def keep(ids: list[str]) -> list[bool]:
            pipe = self.redis.pipeline(transaction=False)
            for i in ids:
                pipe.hmget(self.keys.event(i), "type", "provider", "subject")
            rows = await pipe.execute()
            return [
                row[0] is not None
                and (event_type is None or row[0] == event_type)
                and (provider is None or row[1] == provider)
                and (run_id is None or row[2] == run_id)
                for row in rows
            ]

        return await page_index(self.redis, index, limit, cursor, keep)

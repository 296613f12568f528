"""Deliveries in Redis: the typed delivery record, reading and listing deliveries, cancelling."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from relay import clock
from relay.config import Settings
from relay.models import DeliveryStatus
from relay.store import queue_scripts
from relay.store.base import StoreBase
from relay.store.client import storage_op
from relay.store.paging import Page, page_index

# The delivery hash's field names, in the order Delivery.from_row reads them. Short, because a
# delivery is kept for the whole retention; the Lua scripts write the same names.
FIELDS = ("ev", "sub", "run", "st", "n", "base", "g", "ts", "up", "next")

# A dict lookup: DeliveryStatus(value) costs ten times as much, once per delivery attempted.
_STATUSES = {s.value: s for s in DeliveryStatus}


@dataclass(frozen=True, slots=True)
class Delivery:
    """One delivery of an event to a subscription, as its Redis hash holds it."""

    id: str
    event_id: str
    subscription_id: str
    subject: str  # the run (or batch) its event is about
    status: DeliveryStatus
    attempts: int  # attempts made, over every retry cycle
    cycle_base: int  # attempts made before the last manual requeue restarted the schedule
    generation: str  # bumped by each requeue: a queue entry of an older one is stale
    created_ms: int
    updated_ms: int
    next_ms: int  # when its retry is due (ms); 0 when none was scheduled

    @classmethod
    def from_row(cls, delivery_id: str, row: list[str | None]) -> Delivery | None:
        """The record from the values of FIELDS, in order; None when the delivery expired."""
        ev, sub, run, st, n, base, g, ts, up, nxt = row
        if st is None:
            return None
        return cls(delivery_id, ev or "", sub or "", run or "", _STATUSES[st], int(n or 0),
                   int(base or 0), g or "0", int(ts or 0), int(up or 0), int(nxt or 0))


class DeliveriesMixin(StoreBase):
    """Store methods that read deliveries and their attempts, and cancel pending ones."""

    def __init__(self, settings: Settings, url: str) -> None:
        super().__init__(settings, url)
        self._cancel = self.redis.register_script(queue_scripts.CANCEL)

    @storage_op
    async def get_deliveries(self, ids: list[str]) -> list[Delivery | None]:
        pipe = self.redis.pipeline(transaction=False)
        for i in ids:
            pipe.hmget(self.keys.delivery(i), FIELDS)
        rows = await pipe.execute()
        return [Delivery.from_row(i, row) for i, row in zip(ids, rows, strict=True)]

    @storage_op
    async def get_attempts(self, delivery_id: str) -> list[dict[str, Any]]:
        rows = await self.redis.lrange(self.keys.attempts(delivery_id), 0, -1)
        return [json.loads(r) for r in rows]

    @storage_op
    async def list_deliveries(
        self,
        *,
        subscription_id: str | None,
        event_id: str | None,
        status: str | None,
        limit: int,
        cursor: str | None,
        since_ms: int | None = None,
    ) -> Page:
        k = self.keys
        index = k.sub_deliveries(subscription_id) if subscription_id else k.deliveries

        async def keep(ids: list[str]) -> list[bool]:
            return [
                d is not None
                and (status is None or d.status == status)
                and (event_id is None or d.event_id == event_id)
                and (subscription_id is None or d.subscription_id == subscription_id)
                for d in await self.get_deliveries(ids)
            ]

        if event_id and not subscription_id:
            # An event's deliveries are a short list in creation order: page it by offset.
            start = int(cursor[1:]) if cursor and cursor[:1] == "o" and cursor[1:].isdigit() else 0
            ids = list(reversed(await self.event_delivery_ids(event_id)))
            out: list[str] = []
            position = start
            while position < len(ids) and len(out) < limit:
                chunk = ids[position:position + limit]
                flags = await keep(chunk)
                for delivery_id, ok in zip(chunk, flags, strict=True):
                    position += 1
                    if ok:
                        out.append(delivery_id)
                        if len(out) == limit:
                            break
            return Page(out, f"o{position}" if position < len(ids) else None)
        return await page_index(self.redis, index, limit, cursor, keep, min_score=since_ms)

    @storage_op
    async def event_delivery_ids(self, event_id: str) -> list[str]:
        """An event's deliveries, in creation order."""
        return list(await self.redis.lrange(self.keys.event_deliveries(event_id), 0, -1))

    @storage_op
    async def cancel_pending(self, sub_id: str) -> int:
        """Cancel every pending delivery of a subscription (deleted or disabled)."""
        k, total, now = self.keys, 0, clock.now_ms()
        start = 0
        while True:
            ids = await self.redis.zrange(k.sub_deliveries(sub_id), start, start + 499)
            if not ids:
                return total
            start += len(ids)
            keys = [k.retry] + [k.delivery(i) for i in ids]
            args = [now, *ids]
            total += int(await self._cancel(keys=keys, args=args))

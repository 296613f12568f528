"""Deliveries in Redis: reading and listing deliveries and their attempts, cancelling."""

from __future__ import annotations

import json
from typing import Any

from relay import clock
from relay.config import Settings
from relay.store import queue_scripts
from relay.store.base import StoreBase
from relay.store.client import storage_op
from relay.store.paging import Page, page_index


class DeliveriesMixin(StoreBase):
    """Store methods that read deliveries and their attempts, and cancel pending ones."""

    def __init__(self, settings: Settings, url: str) -> None:
        super().__init__(settings, url)
        self._cancel = self.redis.register_script(queue_scripts.CANCEL)

    @storage_op
    async def get_deliveries(self, ids: list[str]) -> list[dict[str, str] | None]:
        pipe = self.redis.pipeline(transaction=False)
        for i in ids:
            pipe.hgetall(self.keys.delivery(i))
        return [row or None for row in await pipe.execute()]

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
            pipe = self.redis.pipeline(transaction=False)
            for i in ids:
                pipe.hmget(k.delivery(i), "st", "ev", "sub")
            return [
                row[0] is not None
                and (status is None or row[0] == status)
                and (event_id is None or row[1] == event_id)
                and (subscription_id is None or row[2] == subscription_id)
                for row in await pipe.execute()
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

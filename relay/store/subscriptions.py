"""Subscriptions in Redis: their hashes, the index, and the version that keeps caches honest."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable

from relay.models import Subscription, SubscriptionStatus
from relay.store.base import StoreBase
from relay.store.client import storage_op
from relay.store.paging import Page, page_index
from relay.store.scripts import Atomic


def _sub_to_hash(sub: Subscription) -> dict[str, str]:
    return {
        "id": sub.id,
        "url": sub.url,
        "events": json.dumps(sub.events),
        "providers": json.dumps(sub.providers),
        "channels": json.dumps(sub.channels),
        "description": json.dumps(sub.description),
        "status": sub.status.value,
        "disabled_reason": sub.disabled_reason or "",
        "created_at": str(int(sub.created_at * 1000)),
        "updated_at": str(int(sub.updated_at * 1000)),
        "secret": sub.secret,
        "old_secret": sub.old_secret or "",
        "old_secret_until": str(int((sub.old_secret_until or 0) * 1000)),
    }


def _sub_from_hash(h: dict[str, str]) -> Subscription:
    return Subscription(
        id=h["id"],
        url=h["url"],
        events=json.loads(h["events"]),
        providers=json.loads(h["providers"]),
        channels=json.loads(h["channels"]),
        description=json.loads(h["description"]),
        status=SubscriptionStatus(h["status"]),
        disabled_reason=h.get("disabled_reason") or None,
        created_at=int(h["created_at"]) / 1000,
        updated_at=int(h["updated_at"]) / 1000,
        secret=h["secret"],
        old_secret=h.get("old_secret") or None,
        old_secret_until=(int(h.get("old_secret_until") or 0) / 1000) or None,
    )


class SubscriptionsMixin(StoreBase):
    """Store methods for subscriptions; every change bumps the subscriptions version."""

    def _bump_version(self, tx: Atomic) -> None:
        """Add a change of the subscriptions version to `tx`.

        A missing counter starts at a random value, not 1: after Redis loses its data (restart
        without persistence) a process whose cache read "1" before the loss must not take the
        new "1" for the same set of subscriptions, or events fan out to subscriptions that no
        longer exist and miss the new ones.
        """
        tx.call("SET", self.keys.subs_version, secrets.randbits(48), "NX")
        tx.call("INCR", self.keys.subs_version)

    @storage_op
    async def save_subscription(self, sub: Subscription, *, new: bool = False,
                                reset_failures: bool = False) -> None:
        key = self.keys.sub(sub.id)
        tx = Atomic().call("HSET", key, *(x for pair in _sub_to_hash(sub).items() for x in pair))
        if reset_failures:
            tx.call("HDEL", key, "fail_since")
        if new:
            tx.call("ZADD", self.keys.subs, int(sub.created_at * 1000), sub.id)
        self._bump_version(tx)
        await self.run_atomic(tx)

    @storage_op
    async def get_subscription(self, sub_id: str) -> Subscription | None:
        h = await self.redis.hgetall(self.keys.sub(sub_id))
        return _sub_from_hash(h) if h.get("id") else None

    @storage_op
    async def delete_subscription(self, sub_id: str) -> bool:
        tx = Atomic().call("DEL", self.keys.sub(sub_id)).call("ZREM", self.keys.subs, sub_id)
        # Its deliveries stay readable for the retention, then the index goes with them.
        tx.call("EXPIRE", self.keys.sub_deliveries(sub_id), self._retention)
        self._bump_version(tx)
        deleted, *_ = await self.run_atomic(tx)
        return bool(deleted)

    @storage_op
    async def list_subscriptions(self, limit: int, cursor: str | None) -> Page:
        async def keep(ids: list[str]) -> list[bool]:
            return [True] * len(ids)

        return await page_index(self.redis, self.keys.subs, limit, cursor, keep)

    @storage_op
    async def load_subscriptions(self) -> tuple[str, list[Subscription]]:
        """Every subscription and the version they were read at (read first, so a change made
        meanwhile makes the version look stale rather than the data)."""
        version = await self.redis.get(self.keys.subs_version) or "0"
        ids = await self.redis.zrange(self.keys.subs, 0, -1)
        subs = await self.get_subscriptions(ids)
        return version, [s for s in subs.values() if s is not None]

    @storage_op
    async def get_subscriptions(self, ids: Iterable[str]) -> dict[str, Subscription | None]:
        ids = list(dict.fromkeys(ids))
        pipe = self.redis.pipeline(transaction=False)
        for i in ids:
            pipe.hgetall(self.keys.sub(i))
        rows = await pipe.execute()
        return {i: (_sub_from_hash(h) if h.get("id") else None)
                for i, h in zip(ids, rows, strict=True)}

"""Worker heartbeats in Redis: which worker processes are live, and which providers they poll."""

from __future__ import annotations

from collections.abc import Collection

from relay import clock
from relay.providers import poll_names
from relay.store.base import StoreBase
from relay.store.client import storage_op
from relay.store.scripts import Atomic


class WorkersMixin(StoreBase):
    """Store methods for heartbeats."""

    @storage_op
    async def beat(self, name: str, providers: Collection[str], live_ms: int) -> None:
        """Worker `name` is live for `live_ms` more and polls `providers`; heartbeats that have
        ended are dropped in the same step."""
        k, now = self.keys, clock.now_ms()
        tx = Atomic().call("ZADD", k.workers, now + live_ms, name)
        for provider in providers:
            tx.call("ZADD", k.pollers(provider), now + live_ms, name)
        for key in (k.workers, *(k.pollers(provider) for provider in poll_names())):
            tx.call("ZREMRANGEBYSCORE", key, "-inf", now)
        await self.run_atomic(tx)

    @storage_op
    async def live_pollers(self) -> set[str]:
        """The providers that at least one live worker polls."""
        names, now = poll_names(), clock.now_ms()
        pipe = self.redis.pipeline(transaction=False)
        for provider in names:
            pipe.zcount(self.keys.pollers(provider), f"({now}", "+inf")
        return {p for p, live in zip(names, await pipe.execute(), strict=True) if live}

    @storage_op
    async def live_workers(self) -> int:
        return int(await self.redis.zcount(self.keys.workers, f"({clock.now_ms()}", "+inf"))

    @storage_op
    async def sweep_turn(self, seconds: float) -> bool:
        """True for one caller per `seconds` in the whole deployment: its turn to sweep."""
        return bool(await self.redis.set(self.keys.sweep_lock, "1", nx=True,
                                         px=max(1, int(seconds * 1000))))

"""The store: the only module that talks to Redis. Events, subscriptions and deliveries."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from redis import exceptions as rexc

from relay import clock
from relay.config import Settings
from relay.models import Subscription, SubscriptionStatus
from relay.providers import names
from relay.store import scripts
from relay.store.batching import GroupCommit
from relay.store.client import (
    POOL_WAIT,
    drop_connections,
    make_client,
    storage_op,
    writes_ahead_hang,
)
from relay.store.keys import GROUP, Keys, run_member
from relay.store.paging import Page, page_index
from relay.store.queue import Finish, QueueEntry, QueueMixin
from relay.store.runs import Claim, RunsMixin
from relay.store.scripts import Atomic
from relay.store.workers import WorkersMixin

__all__ = ["Atomic", "Claim", "EventWrite", "Page", "QueueEntry", "Store", "open_store"]


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


class Store(QueueMixin, RunsMixin, WorkersMixin):
    """Redis-backed storage for one key prefix."""

    # Longest a queue read blocks; an idle worker sends one read per this many seconds.
    block_seconds = 60.0

    def __init__(self, settings: Settings, url: str) -> None:
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        # Typed Any on purpose: redis-py's annotations cannot express decode_responses=True, so
        # every reply would be typed bytes | str although this client only ever returns str.
        # REDIS_MAX_CONNECTIONS caps the process: one connection for blocking queue reads, one
        # for the poller's doorbell, the rest for everything else.
        self.redis: Any = make_client(settings, url,
                                      max_connections=max(settings.redis_max_connections - 2, 1))
        # Blocking queue reads hold their connection for the whole BLOCK; a separate client with
        # a longer socket timeout keeps them from tripping the 5 s timeout of ordinary commands.
        # No health-check PING before each read: a failed blocking read already says as much.
        self.blocking: Any = make_client(settings, url, max_connections=1,
                                         socket_timeout=self.block_seconds + 10,
                                         health_check_interval=0, retries=0)
        self.poll_blocking: Any = make_client(settings, url, max_connections=1,
                                              socket_timeout=self.block_seconds + 10,
                                              health_check_interval=0, retries=0)
        self._retention = max(1, int(settings.event_retention))
        r = self.redis
        self._accept_many = r.register_script(scripts.ACCEPT_MANY)
        # Concurrent callbacks share one script call; see batching.py.
        self._accepts: GroupCommit[EventWrite, tuple[int, str]] = GroupCommit(
            self._accept_batch, max_wait=POOL_WAIT, overdue=writes_ahead_hang)
        self._finish_many = r.register_script(scripts.FINISH_MANY)
        self._finishes: GroupCommit[Finish, str] = GroupCommit(
            self._finish_batch, max_wait=POOL_WAIT, overdue=writes_ahead_hang)
        self._load = r.register_script(scripts.LOAD)
        self._defer = r.register_script(scripts.DEFER)
        self._promote = r.register_script(scripts.PROMOTE)
        self._requeue = r.register_script(scripts.REQUEUE)
        self._cancel = r.register_script(scripts.CANCEL)
        self._exec_all = r.register_script(scripts.EXEC_ALL)
        self._register_run_scripts()

    async def interrupt_reads(self) -> None:
        """Close the blocking-read connections, ending any read in progress."""
        await drop_connections(self.blocking)
        await drop_connections(self.poll_blocking)

    async def aclose(self) -> None:
        for client in (self.redis, self.blocking, self.poll_blocking):
            await client.aclose()

    # ---- health -------------------------------------------------------------------------

    @storage_op
    async def ping(self) -> bool:
        return bool(await self.redis.ping())

    async def _home(self) -> dict[str, Any]:
        """Where a keyless command goes: on a cluster, the node that holds relay's slot."""
        if not self.settings.redis_cluster:
            return {}
        await self.redis.initialize()  # the slot map; a no-op once it is known
        return {"target_nodes": self.redis.get_node_from_key(self.keys.queue)}

    @storage_op
    async def server_info(self) -> dict[str, str]:
        home = await self._home()
        info = await self.redis.info("server", **home)
        cluster = await self.redis.info("cluster", **home)
        try:
            policy = (await self.redis.config_get("maxmemory-policy", **home)
                      ).get("maxmemory-policy")
        except rexc.ResponseError:
            policy = None  # managed Redis often disables CONFIG
        return {
            "redis_version": str(info.get("redis_version", "0")),
            "maxmemory_policy": str(policy or "unknown (CONFIG GET is not allowed)"),
            "cluster_enabled": str(cluster.get("cluster_enabled", 0)),
        }

    @storage_op
    async def stats(self) -> dict[str, int]:
        """Redis' memory in use, commands processed so far, and calls per command name."""
        home = await self._home()
        memory = await self.redis.info("memory", **home)
        stats = await self.redis.info("stats", **home)
        calls = await self.redis.info("commandstats", **home)
        out = {"used_memory": int(memory["used_memory"]),
               "commands": int(stats["total_commands_processed"])}
        out.update({name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in calls.items()})
        return out

    @storage_op
    async def ensure_groups(self) -> None:
        """Create the delivery consumer group; from entry 0 so nothing queued earlier is skipped."""
        try:
            await self.redis.xgroup_create(self.keys.queue, GROUP, id="0", mkstream=True)
        except rexc.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    # ---- events -------------------------------------------------------------------------

    def _accept_parts(self, w: EventWrite) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of the Lua accept() function (scripts.py) for one event."""
        k = self.keys
        keys = [
            k.dedupe(w.provider, w.subject, w.dedupe_kind or "-"),
            k.event(w.event_id),
            k.events,
            k.run_events(w.provider, w.subject),
            k.subs_version,
            k.queue,
            k.deliveries,
            k.event_deliveries(w.event_id),
            k.run(w.provider, w.subject),
            k.poll_due(w.provider),
        ]
        args: list[Any] = [
            w.event_id, w.body, w.event_type, w.provider, w.subject, clock.now_ms(),
            self._retention, w.subs_version, w.dedupe_mode, "1" if w.ends_run else "0",
            w.run_status or "", run_member(w.provider, w.subject),
        ]
        for delivery_id, sub_id in w.deliveries:
            keys += [k.delivery(delivery_id), k.sub_deliveries(sub_id)]
            args += [delivery_id, sub_id]
        return keys, args

    @storage_op
    async def accept_event(self, w: EventWrite) -> tuple[int, str]:
        """Store an event and queue its deliveries: (1, id) stored, (0, id) duplicate,
        (2, version) when `subs_version` is stale and the caller must re-match."""
        return await self._accepts.submit(w)

    async def _accept_batch(self, writes: list[EventWrite]) -> list[tuple[int, str]]:
        k = self.keys
        keys = [k.events, k.subs_version, k.queue, k.deliveries]
        args: list[Any] = [clock.now_ms(), self._retention]
        for w in writes:
            keys += [k.dedupe(w.provider, w.subject, w.dedupe_kind or "-"), k.event(w.event_id),
                     k.run_events(w.provider, w.subject), k.event_deliveries(w.event_id),
                     k.run(w.provider, w.subject), k.poll_due(w.provider)]
            args += [len(w.deliveries), w.event_id, w.body, w.event_type, w.provider, w.subject,
                     w.subs_version, w.dedupe_mode, "1" if w.ends_run else "0",
                     w.run_status or "", run_member(w.provider, w.subject)]
            for delivery_id, sub_id in w.deliveries:
                keys += [k.delivery(delivery_id), k.sub_deliveries(sub_id)]
                args += [delivery_id, sub_id]
        flat = await self._accept_many(keys=keys, args=args)
        return [(int(flat[i]), str(flat[i + 1])) for i in range(0, len(flat), 2)]

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
    async def event_delivery_ids(self, event_id: str) -> list[str]:
        return list(await self.redis.lrange(self.keys.event_deliveries(event_id), 0, -1))

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

    # ---- subscriptions ------------------------------------------------------------------

    def _bump_version(self, tx: Atomic) -> None:
        """Add a change of the subscriptions version to `tx`.

        A missing counter starts at a random value, not 1: after Redis loses its data (restart
        without persistence) a process whose cache read "1" before the loss must not take the
        new "1" for the same set of subscriptions, or events fan out to subscriptions that no
        longer exist and miss the new ones.
        """
        tx.call("SET", self.keys.subs_version, secrets.randbits(48), "NX")
        tx.call("INCR", self.keys.subs_version)

    async def run_atomic(self, tx: Atomic) -> list[Any]:
        return list(await self._exec_all(keys=tx.keys, args=tx.args))

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

    @storage_op
    async def subscriptions_version(self) -> str:
        return str(await self.redis.get(self.keys.subs_version) or "0")

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

    # ---- deliveries: reading ------------------------------------------------------------

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

    # ---- metrics and maintenance --------------------------------------------------------

    @storage_op
    async def depths(self) -> dict[str, int]:
        """Queue depths for /metrics: pending (queued or in flight), scheduled retries, dead."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.xlen(self.keys.queue)
        pipe.zcard(self.keys.retry)
        pipe.zcard(self.keys.dead)
        pipe.zcard(self.keys.subs)
        queued, retry, dead, subs = await pipe.execute()
        return {"pending": queued, "scheduled_retries": retry, "dead": dead, "subscriptions": subs}

    @storage_op
    async def trim(self, every: float = 300.0) -> bool:
        """Drop index entries older than the retention, at most once per `every` seconds per
        deployment however many workers ask."""
        if not await self.redis.set(self.keys.maintenance_lock, "1", nx=True,
                                    ex=max(1, int(every))):
            return False
        cutoff = clock.now_ms() - self._retention * 1000
        pipe = self.redis.pipeline(transaction=False)
        for index in (self.keys.events, self.keys.deliveries, self.keys.dead):
            pipe.zremrangebyscore(index, "-inf", cutoff)
        # A tracked run ends by RELAY_POLL_MAX_AGE at the latest, then is kept for the retention.
        pipe.zremrangebyscore(self.keys.runs, "-inf",
                              cutoff - int(self.settings.poll_max_age * 1000))
        for sub_id in await self.redis.zrange(self.keys.subs, 0, -1):
            pipe.zremrangebyscore(self.keys.sub_deliveries(sub_id), "-inf", cutoff)
        await pipe.execute()
        return True



@asynccontextmanager
async def open_store(settings: Settings, url: str) -> AsyncIterator[Store]:
    store = Store(settings, url)
    try:
        yield store
    finally:
        await store.aclose()

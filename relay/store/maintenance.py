"""Health and upkeep of the store: ping, what the server is, counters, depths, index trimming."""

from __future__ import annotations

from typing import Any

from redis import exceptions as rexc

from relay import clock
from relay.store.base import StoreBase
from relay.store.client import storage_op


class MaintenanceMixin(StoreBase):
    """Store methods for preflight, /metrics and the periodic trim of the indexes."""

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

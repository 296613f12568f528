"""Worker heartbeats (who polls which provider) and the sweep that ends every run at max age."""

from __future__ import annotations

import asyncio
from collections.abc import Collection

import structlog

from relay import clock, metrics
from relay.loops import keep_running, wait_event
from relay.runs import TrackedRun, max_age_event
from relay.service import Relay
from relay.store import EventWrite, Reply

log = structlog.get_logger("relay.heartbeat")

# One heartbeat per worker process this often: cheap, and not per poll.
BEAT_EVERY = 5.0
# A worker counts as live this long after its last heartbeat: three missed beats.
LIVE_FOR = 3 * BEAT_EVERY
# Active runs read per round trip of the sweep.
SWEEP_BATCH = 500


class Heartbeat:
    """One worker process's heartbeat, and its share of the sweep."""

    def __init__(self, relay: Relay, name: str, providers: Collection[str], *,
                 every: float = BEAT_EVERY, live_for: float = LIVE_FOR) -> None:
        self.relay = relay
        self.store = relay.store
        self.name = name
        self.providers = sorted(providers)
        self.every = every
        self.live_for = live_for

    async def beat(self) -> None:
        await self.store.beat(self.name, self.providers, int(self.live_for * 1000))

    async def run(self, stop: asyncio.Event) -> None:
        """Beat, and sweep when it is this process's turn, every `every` seconds until `stop`."""
        log.info("heartbeat_started", consumer=self.name, providers=self.providers)

        async def loop() -> None:
            while not stop.is_set():
                await self.beat()
                if await self.store.sweep_turn(self.every):
                    await self.sweep(stop)
                await wait_event(stop, self.every)

        await keep_running(loop, "heartbeat", stop.is_set)

    async def sweep(self, stop: asyncio.Event | None = None) -> int:
        """End every run tracked longer ago than RELAY_POLL_MAX_AGE that is still active, as a
        poller ends those it polls: the runs of a provider no live worker polls get there too.

        A poller ends its runs on time, and its lease on one lasts at most RELAY_CLAIM_TIMEOUT:
        the sweep waits that much longer, so it never takes a run from a poll in flight.
        """
        settings = self.relay.settings
        until_ms = clock.now_ms() - int((settings.poll_max_age + settings.claim_timeout) * 1000)
        ended = 0
        while stop is None or not stop.is_set():
            runs, position, more = await self.store.runs_to_sweep(until_ms, SWEEP_BATCH)
            for provider, run_id in runs:
                ended += await self._end(provider, run_id)
            await self.store.swept_to(position)
            if not more:
                break
        return ended

    async def _end(self, provider: str, run_id: str) -> bool:
        settings = self.relay.settings
        fields = await self.store.lease_run(provider, run_id, token=self.name,
                                            lease_ms=int(settings.claim_timeout * 1000))
        if fields is None:
            return False  # ended meanwhile
        event = max_age_event(TrackedRun.from_hash(fields), observed_at=clock.now())

        async def write(w: EventWrite) -> tuple[Reply, str]:
            return await self.store.settle_run(provider, run_id, token=self.name,
                                               next_poll_ms=0, fields={}, event=w)

        code, value = await self.relay.store_matched(event, write=write)
        if code != Reply.STORED:
            return False
        metrics.labelled(metrics.EVENTS, provider, event.event, event.source).inc()
        log.info("run_event", provider=provider, run_id=run_id, event_id=value,
                 event_type=event.event, status=event.status, swept=True)
        return True

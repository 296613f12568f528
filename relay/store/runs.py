"""Tracked runs in Redis: the poll schedule, leases, shared request budgets and poll results."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from relay import clock
from relay.config import Settings
from relay.providers import poll_names
from relay.runs import RunState
from relay.store import scripts
from relay.store.base import StoreBase
from relay.store.batching import GroupCommit
from relay.store.client import POOL_WAIT, storage_op, writes_ahead_hang
from relay.store.events import EventWrite, pack_event, shared_keys
from relay.store.keys import run_member, split_member
from relay.store.paging import Page, page_index
from relay.store.scripts import REPLIES, Atomic, Reply

# One poll's record: the keys and arguments of its step in scripts.SETTLE_MANY.
Settle = tuple[list[str], list[Any]]


@dataclass(frozen=True)
class Claim:
    """Runs leased to this worker from one provider's schedule, each with its request slot."""

    runs: list[tuple[float, dict[str, str]]]  # (slot time in s, the run's hash)
    next_due: float | None  # seconds: when the schedule's head comes due (a lease counts)
    next_slot: float  # seconds: the provider's next free request slot


class RunsMixin(StoreBase):
    """Store methods for tracked runs: tracking, the poll schedule, budgets, poll results."""

    def __init__(self, settings: Settings, url: str) -> None:
        super().__init__(settings, url)
        r = self.redis
        self._track = r.register_script(scripts.TRACK)
        self._claim = r.register_script(scripts.CLAIM)
        self._reserve = r.register_script(scripts.RESERVE)
        self._pause = r.register_script(scripts.PAUSE)
        self._settle_many = r.register_script(scripts.SETTLE_MANY)
        # Polls finishing together are recorded in one script call (SETTLE_MANY).
        self._settles: GroupCommit[Settle, Any] = GroupCommit(
            self._send_settles, max_wait=POOL_WAIT, overdue=writes_ahead_hang, max_batch=256)
        self._pending = r.register_script(scripts.CALLBACK_PENDING)
        self._lease = r.register_script(scripts.LEASE_RUN)

    # ---- tracking -----------------------------------------------------------------------

    @storage_op
    async def track_run(self, provider: str, run_id: str, fields: dict[str, str],
                        first_poll_ms: int) -> bool:
        """Start tracking; False (and nothing changed) when the run is tracked already."""
        k = self.keys
        flat = [x for pair in fields.items() for x in pair]
        created = await self._track(
            keys=[k.run(provider, run_id), k.runs, k.poll_due(provider),
                  k.dedupe(provider, run_id, "terminal"), k.poll_wake],
            args=[run_member(provider, run_id), clock.now_ms(), first_poll_ms, self._retention,
                  *flat],
        )
        return bool(created)

    @storage_op
    async def get_run(self, provider: str, run_id: str) -> dict[str, str] | None:
        h: dict[str, str] = await self.redis.hgetall(self.keys.run(provider, run_id))
        return h or None

    @storage_op
    async def get_runs(self, members: list[str]) -> list[dict[str, str] | None]:
        pipe = self.redis.pipeline(transaction=False)
        for m in members:
            pipe.hgetall(self.keys.run(*split_member(m)))
        return [row or None for row in await pipe.execute()]

    @storage_op
    async def run_event_ids(self, provider: str, run_id: str) -> list[str]:
        return list(await self.redis.zrange(self.keys.run_events(provider, run_id), 0, -1))

    @storage_op
    async def untrack_run(self, provider: str, run_id: str) -> bool:
        k = self.keys
        member = run_member(provider, run_id)
        tx = Atomic().call("DEL", k.run(provider, run_id))
        tx.call("ZREM", k.poll_due(provider), member).call("ZREM", k.runs, member)
        deleted, _, _ = await self.run_atomic(tx)
        return bool(deleted)

    @storage_op
    async def list_runs(self, *, provider: str | None, state: str | None, limit: int,
                        cursor: str | None) -> Page:
        async def keep(members: list[str]) -> list[bool]:
            pipe = self.redis.pipeline(transaction=False)
            for m in members:
                pipe.hget(self.keys.run(*split_member(m)), "st")
            states = await pipe.execute()
            return [
                st is not None
                and (provider is None or split_member(m)[0] == provider)
                and (state is None or st == state)
                for m, st in zip(members, states, strict=True)
            ]

        return await page_index(self.redis, self.keys.runs, limit, cursor, keep)

    @storage_op
    async def active_runs(self) -> dict[str, int]:
        """Runs on each provider's schedule (active ones), for /metrics."""
        names = poll_names()
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.zcard(self.keys.poll_due(name))
        return dict(zip(names, await pipe.execute(), strict=True))

    # ---- the scheduler ------------------------------------------------------------------

    @storage_op
    async def claim_runs(self, wants: dict[str, tuple[int, float]], *, token: str,
                         lease_ms: int, horizon_ms: int) -> dict[str, Claim]:
        """Lease due runs for each provider in `wants` ({provider: (max runs, slot spacing
        ms)}), in one round trip."""
        k = self.keys
        now = clock.now_ms()
        calls = [([k.poll_due(provider), k.rate(provider)],
                  [now, count, spacing, horizon_ms, lease_ms, token, k.run_prefix])
                 for provider, (count, spacing) in wants.items()]
        if self.settings.redis_cluster or len(calls) == 1:
            # redis-py refuses scripts inside cluster pipelines: send them side by side instead.
            # One provider needs no pipeline either (nor the SCRIPT EXISTS a pipeline sends).
            answers = await asyncio.gather(*(self._claim(keys=keys, args=args)
                                             for keys, args in calls))
        else:
            pipe = self.redis.pipeline(transaction=False)
            for keys, args in calls:
                # Queued on the pipeline; the awaited call only adds it there.
                await self._claim(keys=keys, args=args, client=pipe)
            answers = await pipe.execute()
        out: dict[str, Claim] = {}
        for provider, (head, free, rows) in zip(wants, answers, strict=True):
            runs = [(float(slot) / 1000, _pairs(flat)) for slot, flat in rows]
            out[provider] = Claim(runs, float(head) / 1000 if head else None, float(free) / 1000)
        return out

    @storage_op
    async def wait_for_runs(self, seconds: float) -> bool:
        """Block until a run is tracked somewhere (the doorbell) or `seconds` pass."""
        answer = await self.poll_blocking.blpop([self.keys.poll_wake], timeout=max(seconds, 0.01))
        return answer is not None

    @storage_op
    async def reserve_slot(self, provider: str, spacing_ms: float, horizon_ms: int
                           ) -> tuple[float, bool]:
        """One request slot from the provider's budget: (slot s, True), or (next free s, False)."""
        at, granted = await self._reserve(keys=[self.keys.rate(provider)],
                                          args=[clock.now_ms(), spacing_ms, horizon_ms])
        return float(at) / 1000, bool(int(granted))

    @storage_op
    async def pause_provider(self, provider: str, until: float) -> None:
        """No worker gets a request slot for `provider` before `until` (seconds)."""
        await self._pause(keys=[self.keys.rate(provider)],
                          args=[clock.now_ms(), int(until * 1000)])

    @storage_op
    async def settle_run(self, provider: str, run_id: str, *, token: str, next_poll_ms: int,
                         fields: dict[str, str], event: EventWrite | None
                         ) -> tuple[Reply, str]:
        """Record a poll and reschedule, with its event: (LEASE_LOST, ''), (FINISHED, '') when
        the run had finished, (NO_EVENT, '') without an event, else accept_event()'s answer.
        Polls settled at the same time share one round trip; each is recorded as if alone
        (scripts.SETTLE_MANY)."""
        k = self.keys
        keys = [k.run(provider, run_id), k.poll_due(provider)]
        # Strings throughout: the batch goes to Lua as JSON (scripts.SETTLE_MANY).
        args: list[Any] = [token, run_member(provider, run_id), str(next_poll_ms),
                           str(clock.now_ms()), str(self._retention), str(len(fields))]
        for pair in fields.items():
            args += pair
        if event is not None:
            eargs: list[Any] = []
            keys += shared_keys(k)
            pack_event(keys, eargs, k, event)
            args += [a.decode() if isinstance(a, bytes) else str(a) for a in eargs]
        code, value = await self._settles.submit((keys, args))
        return REPLIES[int(code)], str(value)

    async def _send_settles(self, items: list[Settle]) -> list[Any]:
        keys: list[str] = []
        for item_keys, _ in items:
            keys += item_keys
        payload = json.dumps([[len(k), a] for k, a in items], separators=(",", ":"))
        answers: list[Any] = await self._settle_many(keys=keys, args=[payload])
        return answers

    # ---- the sweep of runs past RELAY_POLL_MAX_AGE -------------------------------------

    @storage_op
    async def runs_to_sweep(self, until_ms: int, limit: int
                            ) -> tuple[list[tuple[str, str]], str, bool]:
        """The active runs tracked before `until_ms` that the sweep has not read yet, oldest
        first: ((provider, run id) each, the sweep's position after them, whether more may
        follow)."""
        k = self.keys
        start = await self.redis.get(k.sweep) or "-inf"
        rows = await self.redis.zrangebyscore(k.runs, start, until_ms, start=0, num=limit,
                                              withscores=True)
        if not rows:
            return [], start, False
        more = len(rows) == limit
        last = rows[-1][1]
        if more:
            # Runs tracked in the same millisecond go together, so the position can pass them.
            rows = [r for r in rows if r[1] < last] + await self.redis.zrangebyscore(
                k.runs, last, last, withscores=True)
        runs = [split_member(member) for member, _ in rows]
        pipe = self.redis.pipeline(transaction=False)
        for provider, run_id in runs:
            pipe.hget(k.run(provider, run_id), "st")
        states = await pipe.execute()
        active = [run for run, st in zip(runs, states, strict=True) if st == RunState.ACTIVE]
        return active, f"({int(last)}", more

    @storage_op
    async def swept_to(self, position: str) -> None:
        await self.redis.set(self.keys.sweep, position)

    @storage_op
    async def lease_run(self, provider: str, run_id: str, *, token: str, lease_ms: int
                        ) -> dict[str, str] | None:
        """Lease one active run to `token` outside the schedule: its fields, or None when it
        is gone or finished (scripts.LEASE_RUN)."""
        flat = await self._lease(keys=[self.keys.run(provider, run_id), self.keys.poll_due(
            provider)], args=[token, run_member(provider, run_id), clock.now_ms() + lease_ms])
        return _pairs(flat) if flat else None

    # ---- callbacks that read their run (FLORA) ------------------------------------------

    @storage_op
    async def delivery_event(self, provider: str, delivery_id: str) -> str | None:
        value = await self.redis.get(self.keys.callback_delivery(provider, delivery_id))
        return str(value) if value else None

    @storage_op
    async def remember_delivery(self, provider: str, delivery_id: str, event_id: str) -> None:
        await self.redis.set(self.keys.callback_delivery(provider, delivery_id), event_id,
                             ex=self._retention)

    @storage_op
    async def callback_pending(self, provider: str, run_id: str, *, event_id: str,
                               callback: dict[str, Any], fields: dict[str, str]
                               ) -> tuple[Reply, str]:
        """Keep a callback on its tracked run for the poller to finish: (STORED, event id)
        kept, (DUPLICATE, id) when its terminal event (or an earlier pending one) exists."""
        k = self.keys
        flat = [x for pair in fields.items() for x in pair]
        code, value = await self._pending(
            keys=[k.run(provider, run_id), k.runs, k.poll_due(provider),
                  k.dedupe(provider, run_id, "terminal"), k.poll_wake],
            args=[run_member(provider, run_id), clock.now_ms(), event_id,
                  json.dumps(callback, separators=(",", ":")), *flat],
        )
        return REPLIES[int(code)], str(value)


def _pairs(flat: list[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))

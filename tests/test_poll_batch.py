"""Poll results recorded in batches (one SETTLE_MANY call) keep every per-run rule."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from relay.providers.base import Observation
from relay.runs import TrackedRun, run_event
from relay.service import Relay
from relay.store import EventWrite, Reply, Store

pytestmark = pytest.mark.both_redis


async def _track(store: Store, run_id: str) -> TrackedRun:
    run = TrackedRun("betterprompt", run_id, since=time.time(), next_poll=time.time() - 1)
    assert await store.track_run("betterprompt", run_id, run.new_fields(),
                                 int((time.time() - 1) * 1000))
    return run


async def test_settles_sent_together_share_a_call_and_keep_per_run_answers(
        store: Store, relay: Relay) -> None:
    ids = [f"b{i}" for i in range(8)]
    runs = {r: await _track(store, r) for r in ids}
    claims = await store.claim_runs({"betterprompt": (100, 0.0)}, token="me", lease_ms=30_000,
                                    horizon_ms=1000)
    assert sorted(f["r"] for _, f in claims["betterprompt"].runs) == ids
    # b6 already ended by a callback (its terminal event exists); b7 was untracked.
    done = run_event(runs["b6"], Observation("succeeded"), raw=b"{}", observed_at=time.time(),
                     wraps_outputs=True, source="callback")
    assert (await relay.accept(done)).duplicate is False
    assert await store.untrack_run("betterprompt", "b7")

    calls: list[int] = []
    send = store._send_settles

    async def counted(items: list[Any]) -> list[Any]:
        calls.append(len(items))
        return await send(items)

    store._settles._write = counted
    next_ms = int((time.time() + 60) * 1000)

    def plain(run_id: str, token: str = "me") -> Any:
        return store.settle_run("betterprompt", run_id, token=token, next_poll_ms=next_ms,
                                fields={"n": "1", "s": "running"}, event=None)

    def with_event(run_id: str, status: str) -> Any:
        event = run_event(runs[run_id], Observation(status), raw=b"{}",
                          observed_at=time.time(), wraps_outputs=True)

        async def write(w: EventWrite) -> tuple[Reply, str]:
            return await store.settle_run("betterprompt", run_id, token="me",
                                          next_poll_ms=next_ms, fields={"n": "1", "s": status},
                                          event=w)

        return relay.store_matched(event, write=write)

    answers = await asyncio.gather(
        plain("b0"), plain("b1"), plain("b2", token="someone-else"),
        with_event("b3", "succeeded"), with_event("b4", "running"),
        with_event("b6", "running"), plain("b7"))
    assert calls == [7]  # one round trip for all of them
    codes = [code for code, _ in answers]
    assert codes == [Reply.NO_EVENT, Reply.NO_EVENT, Reply.LEASE_LOST, Reply.STORED,
                     Reply.STORED, Reply.LEASE_LOST, Reply.LEASE_LOST]  # b6: its end took the lease
    views = {r: await store.get_run("betterprompt", r) for r in ids}
    for r in ("b0", "b1", "b4"):
        v = views[r]
        assert v is not None and v["st"] == "active" and v["np"] == str(next_ms)
        assert v["n"] == "1" and v["s"] == "running"
    b2 = views["b2"]
    assert b2 is not None and b2["n"] == "0"  # not the lease holder: nothing recorded
    b3, b6 = views["b3"], views["b6"]
    assert b3 is not None and b3["st"] == "finished" and b3["np"] == "" and "lk" not in b3
    assert b6 is not None and b6["st"] == "finished" and b6["n"] == "0"  # nothing recorded
    assert await store.run_event_ids("betterprompt", "b6") == [done.id]  # no run.updated
    assert views["b7"] is None
    due = await store.redis.zrange(store.keys.poll_due("betterprompt"), 0, -1,
                                   withscores=True)
    leased = pytest.approx(time.time() * 1000 + 30_000, abs=5000)  # b5 was never settled
    assert dict(due) == {f"betterprompt:{r}": float(next_ms) for r in ("b0", "b1", "b4")} | {
        "betterprompt:b2": leased, "betterprompt:b5": leased}
    assert (await plain("b3"))[0] is Reply.LEASE_LOST  # a finished run's lease went with its end
    assert len(await store.run_event_ids("betterprompt", "b3")) == 1


async def test_a_failing_batch_call_fails_each_of_its_polls(store: Store) -> None:
    await _track(store, "f0")
    await store.claim_runs({"betterprompt": (10, 0.0)}, token="me", lease_ms=30_000,
                           horizon_ms=1000)

    async def broken(items: list[Any]) -> list[Any]:
        raise ConnectionError("Redis went away")

    store._settles._write = broken
    results = await asyncio.gather(*(store.settle_run(
        "betterprompt", "f0", token="me", next_poll_ms=1, fields={}, event=None)
        for _ in range(3)), return_exceptions=True)
    assert [type(r).__name__ for r in results] == ["StorageUnavailable"] * 3


async def test_claim_reads_only_as_many_due_runs_as_the_budget_has_slots(store: Store) -> None:
    for i in range(6):
        await _track(store, f"s{i}")
    # 100 ms apart within a 250 ms horizon: three slots now.
    claims = await store.claim_runs({"betterprompt": (10, 100.0)}, token="me", lease_ms=30_000,
                                    horizon_ms=250)
    claim = claims["betterprompt"]
    assert len(claim.runs) == 3
    slots = [slot for slot, _ in claim.runs]
    assert slots[1] - slots[0] == pytest.approx(0.1, abs=1e-3)
    assert slots[2] - slots[1] == pytest.approx(0.1, abs=1e-3)
    assert claim.next_slot == pytest.approx(slots[0] + 0.3, abs=1e-3)
    leased = [f["r"] for _, f in claim.runs]
    for r in leased:
        h = await store.get_run("betterprompt", r)
        assert h is not None and h["lk"] == "me"
    again = await store.claim_runs({"betterprompt": (10, 100.0)}, token="other",
                                   lease_ms=30_000, horizon_ms=250)
    assert again["betterprompt"].runs == []  # the budget is spent within the horizon


async def test_an_event_body_goes_through_the_batch_byte_for_byte(
        store: Store, relay: Relay) -> None:
    run = await _track(store, "u1")
    await store.claim_runs({"betterprompt": (10, 0.0)}, token="me", lease_ms=30_000,
                           horizon_ms=1000)
    raw = '{"data":{"runStatus":"running","note":"é 😀 \\u00e9 \\n \\"q\\" \\\\"}}'.encode()
    event = run_event(run, Observation("running", progress=0.5), raw=raw,
                      observed_at=time.time(), wraps_outputs=True)

    async def write(w: EventWrite) -> tuple[Reply, str]:
        return await store.settle_run("betterprompt", "u1", token="me", next_poll_ms=1,
                                      fields={"s": "running", "pg": "0.5"}, event=w)

    code, event_id = await relay.store_matched(event, write=write)
    assert (code, event_id) == (Reply.STORED, event.id)
    stored = await store.get_event_bodies([event.id])
    assert stored[0] is not None and stored[0].encode() == event.to_json()
    assert raw in stored[0].encode()

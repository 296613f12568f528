"""Group commit: concurrent writes share a round trip, each caller gets its own answer."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.errors import StorageUnavailable
from relay.store import Store
from relay.store.batching import GroupCommit
from tests.helpers import admin_headers, runflow_body, runflow_signature


def overdue() -> Exception:
    return StorageUnavailable("overdue", reason="timeout")


class Recorder:
    """A write that doubles its items after `delay`, failing batches that hold `poison`."""

    def __init__(self, delay: float = 0.001, poison: int | None = None) -> None:
        self.delay, self.poison = delay, poison
        self.batches: list[list[int]] = []

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        await asyncio.sleep(self.delay)
        if self.poison in items:
            raise StorageUnavailable("boom", reason="unreachable")
        return [2 * i for i in items]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 10**6), min_size=1, max_size=200), st.integers(1, 16),
       st.integers(1, 3))
def test_every_caller_gets_the_result_of_its_own_item(items: list[int], max_batch: int,
                                                      in_flight: int) -> None:
    async def main() -> list[int]:
        write = Recorder()
        commit = GroupCommit(write, overdue=overdue, max_wait=5, max_batch=max_batch,
                             in_flight=in_flight)
        results = await asyncio.gather(*(commit.submit(i) for i in items))
        assert sorted(i for b in write.batches for i in b) == sorted(items)
        assert all(len(b) <= max_batch for b in write.batches)
        return list(results)

    assert asyncio.run(main()) == [2 * i for i in items]


async def test_concurrent_items_share_writes_and_a_lone_item_goes_at_once() -> None:
    write = Recorder(delay=0.01)
    commit = GroupCommit(write, overdue=overdue, max_wait=5, max_batch=64, in_flight=2)
    await asyncio.gather(*(commit.submit(i) for i in range(100)))
    assert len(write.batches) <= 4, [len(b) for b in write.batches]
    started = time.monotonic()
    assert await commit.submit(7) == 14
    assert time.monotonic() - started < 0.1
    assert write.batches[-1] == [7]


async def test_a_failed_write_fails_only_the_callers_of_its_batch() -> None:
    write = Recorder(delay=0.01, poison=3)
    commit = GroupCommit(write, overdue=overdue, max_wait=5, max_batch=4, in_flight=1)
    results = await asyncio.gather(*(commit.submit(i) for i in range(12)),
                                   return_exceptions=True)
    failed = {i for i, r in enumerate(results) if isinstance(r, StorageUnavailable)}
    assert failed == {0, 1, 2, 3}
    assert [r for i, r in enumerate(results) if i not in failed] == [2 * i for i in range(4, 12)]


async def test_items_behind_hung_writes_fail_within_max_wait() -> None:
    write = Recorder(delay=3.0)
    commit = GroupCommit(write, overdue=overdue, max_wait=0.2, in_flight=1)
    first = asyncio.create_task(commit.submit(1))
    await asyncio.sleep(0)
    started = time.monotonic()
    results = await asyncio.gather(*(commit.submit(i) for i in range(2, 6)),
                                   return_exceptions=True)
    waited = time.monotonic() - started
    assert all(isinstance(r, StorageUnavailable) for r in results), results
    assert 0.15 < waited < 1.0
    assert write.batches == [[1]]  # the overdue ones were never written
    first.cancel()


@pytest.mark.both_redis
async def test_concurrent_copies_of_one_callback_store_one_event(
        client: httpx.AsyncClient, store: Store) -> None:
    """Copies that land in one batch still dedupe: one is stored, the rest are duplicates."""
    body = runflow_body("run-batched")
    headers = {"runflow-signature": runflow_signature(body)}
    answers = await asyncio.gather(*(client.post("/callbacks/runflow", content=body,
                                                 headers=headers) for _ in range(20)))
    docs = [a.json() for a in answers]
    assert {a.status_code for a in answers} == {200}
    assert sum(not d["duplicate"] for d in docs) == 1
    assert len({d["event_id"] for d in docs}) == 1
    assert await store.get_event(docs[0]["event_id"]) is not None


@pytest.mark.both_redis
async def test_concurrent_callbacks_each_get_their_event_and_deliveries(
        client: httpx.AsyncClient, store: Store) -> None:
    """Distinct callbacks stored together each keep their own body, run and deliveries."""
    for url in ("http://127.0.0.1:9/a", "http://127.0.0.1:9/b"):
        r = await client.post("/v1/subscriptions", json={"url": url}, headers=admin_headers())
        assert r.status_code == 201
    bodies = [runflow_body(f"run-many-{i}") for i in range(40)]
    scripts_before = (await store.stats()).get("evalsha", 0)
    answers = await asyncio.gather(*(client.post(
        "/callbacks/runflow", content=b, headers={"runflow-signature": runflow_signature(b)})
        for b in bodies))
    assert {a.status_code for a in answers} == {200}
    assert (await store.stats()).get("evalsha", 0) - scripts_before < 40  # they were batched
    for i, answer in enumerate(answers):
        event_id = answer.json()["event_id"]
        stored = await store.get_event(event_id)
        assert stored is not None and stored["subject"] == f"run-many-{i}"
        assert len(await store.event_delivery_ids(event_id)) == 2
    assert (await store.depths())["pending"] == 80

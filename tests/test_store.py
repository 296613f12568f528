"""The store's records and layouts: the delivery record, reply codes, the shared accept layout."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.models import DeliveryStatus
from relay.providers.base import Observation
from relay.runs import TrackedRun, run_event
from relay.service import Relay
from relay.store import Delivery, EventWrite, Outcome, Reply, Store
from relay.store.deliveries import FIELDS
from relay.store.events import pack_event
from relay.store.keys import Keys
from relay.store.scripts import REPLIES

pytestmark = pytest.mark.both_redis

ids = st.text("abcdefghij_0123456789", min_size=1, max_size=12)
ms = st.integers(0, 2**45)


@given(ids, ids, ids, st.text(max_size=12), st.sampled_from(DeliveryStatus),
       st.integers(0, 500), st.integers(0, 500), st.integers(0, 99), ms, ms, ms)
def test_a_delivery_hash_reads_back_field_by_field(
        delivery_id: str, event_id: str, sub_id: str, subject: str, status: DeliveryStatus,
        attempts: int, base: int, generation: int, created: int, updated: int,
        due: int) -> None:
    # The hash as the Lua scripts write it: their field names, every value a string.
    h = {"ev": event_id, "sub": sub_id, "run": subject, "st": status.value, "n": str(attempts),
         "base": str(base), "g": str(generation), "ts": str(created), "up": str(updated),
         "next": str(due)}
    assert set(FIELDS) == set(h)
    assert Delivery.from_row(delivery_id, [h[f] for f in FIELDS]) == Delivery(
        delivery_id, event_id, sub_id, subject, status, attempts, base, str(generation),
        created, updated, due)


def test_an_expired_delivery_reads_as_none_and_missing_counters_as_zero() -> None:
    assert Delivery.from_row("dlv_x", [None] * len(FIELDS)) is None
    row = {"ev": "evt_1", "sub": "sub_1", "st": "succeeded", "ts": "1", "up": "2"}
    d = Delivery.from_row("dlv_x", [row.get(f) for f in FIELDS])
    assert d is not None
    assert (d.attempts, d.cycle_base, d.generation, d.next_ms) == (0, 0, "0", 0)


def test_every_reply_code_indexes_its_member() -> None:
    assert [int(r) for r in REPLIES] == list(range(len(Reply)))
    assert all(REPLIES[r] is r for r in Reply)


@given(st.lists(st.tuples(ids, ids), max_size=5), st.booleans())
def test_one_event_packs_the_counts_that_accept_steps_over(
        deliveries: list[tuple[str, str]], ends_run: bool) -> None:
    keys: list[str] = ["before"]
    args: list[object] = ["before"]
    w = EventWrite(event_id="evt_1", body=b"{}", event_type="run.completed", provider="runflow",
                   subject="r1", dedupe_kind="terminal", dedupe_mode="1", ends_run=ends_run,
                   deliveries=tuple(deliveries))
    pack_event(keys, args, Keys("p"), w)
    n = len(deliveries)
    # scripts.accept() reads 6 keys and 11 args, then a pair of each per delivery.
    assert (len(keys) - 1, len(args) - 1) == (6 + 2 * n, 11 + 2 * n)
    assert args[1] == n and args[9] == ("1" if ends_run else "0")
    assert keys[7::2] == [Keys("p").delivery(d) for d, _ in deliveries]
    assert args[12::2] == [d for d, _ in deliveries]


async def _subscribe(relay: Relay, count: int) -> list[str]:
    subs = [(await relay.create_subscription({"url": f"http://127.0.0.1:9/{i}"}))[0].id
            for i in range(count)]
    await relay.subs.refresh()
    return subs


def _write(event_id: str, subject: str, deliveries: tuple[tuple[str, str], ...],
           version: str = "*") -> EventWrite:
    return EventWrite(event_id=event_id, body=b'{"id":"' + event_id.encode() + b'"}',
                      event_type="run.completed", provider="runflow", subject=subject,
                      dedupe_kind="terminal", dedupe_mode="1", deliveries=deliveries,
                      subs_version=version)


async def test_one_batch_of_events_with_different_delivery_counts_keeps_each_apart(
        store: Store, relay: Relay) -> None:
    subs = await _subscribe(relay, 3)
    version = relay.subs.version
    writes = [
        _write("evt_a", "ra", ()),
        _write("evt_b", "rb", tuple((f"dlv_b{i}", s) for i, s in enumerate(subs))),
        _write("evt_c", "ra", (("dlv_c0", subs[0]),)),  # run ra's terminal event again
        _write("evt_d", "rd", (("dlv_d0", subs[1]),), version="stale"),
        _write("evt_e", "re", (("dlv_e0", subs[2]),), version=version),
    ]
    answers = await store._accept_batch(writes)
    assert answers == [(Reply.STORED, "evt_a"), (Reply.STORED, "evt_b"),
                       (Reply.DUPLICATE, "evt_a"), (Reply.STALE, version),
                       (Reply.STORED, "evt_e")]
    assert all(type(code) is Reply for code, _ in answers)
    assert await store.event_delivery_ids("evt_b") == ["dlv_b0", "dlv_b1", "dlv_b2"]
    assert await store.event_delivery_ids("evt_e") == ["dlv_e0"]
    for missing in ("evt_c", "evt_d"):
        assert await store.get_event(missing) is None
    bodies = await store.get_event_bodies(["evt_a", "evt_b", "evt_e"])
    assert bodies == ['{"id":"evt_a"}', '{"id":"evt_b"}', '{"id":"evt_e"}']
    (e0,) = await store.get_deliveries(["dlv_e0"])
    assert e0 is not None and (e0.event_id, e0.subscription_id, e0.subject) == (
        "evt_e", subs[2], "re")


async def test_a_delivery_reads_back_as_each_script_leaves_it(
        store: Store, relay: Relay) -> None:
    (sub_id,) = await _subscribe(relay, 1)
    event_id, delivery_id = await relay.send_test(sub_id)
    (created,) = await store.get_deliveries([delivery_id])
    assert created is not None
    assert created == Delivery(delivery_id, event_id, sub_id, event_id, DeliveryStatus.PENDING,
                               0, 0, "0", created.created_ms, created.created_ms, 0)
    assert created.created_ms == pytest.approx(time.time() * 1000, abs=10_000)

    (entry,) = await store.read_queue("me", 10, 0)
    version, [(loaded, body)] = await store.load_for_attempt([entry])
    assert version == relay.subs.version and loaded == created and body is not None

    due = int(time.time() * 1000) + 60_000
    status = await store.finish(entry, sub_id=sub_id, outcome=Outcome.RETRY,
                                attempt={"attempt": 1}, next_due_ms=due)
    assert status == DeliveryStatus.PENDING
    key = store.keys.delivery(delivery_id)
    assert set(await store.redis.hkeys(key)) == set(FIELDS)  # every field the record reads
    (retried,) = await store.get_deliveries([delivery_id])
    assert retried is not None and (retried.attempts, retried.next_ms) == (1, due)

    assert await store.requeue(delivery_id) == DeliveryStatus.PENDING
    (requeued,) = await store.get_deliveries([delivery_id])
    assert requeued is not None
    assert (requeued.generation, requeued.cycle_base, requeued.attempts) == ("1", 1, 1)

    (entry,) = await store.read_queue("me", 10, 0)
    assert entry.generation == "1"
    status = await store.finish(entry, sub_id=sub_id, outcome=Outcome.OK,
                                attempt={"attempt": 2})
    assert status == DeliveryStatus.SUCCEEDED
    (done,) = await store.get_deliveries([delivery_id])
    assert done is not None and (done.status, done.attempts) == (DeliveryStatus.SUCCEEDED, 2)
    assert await store.get_deliveries(["dlv_nothing"]) == [None]


async def test_a_poll_result_queues_its_events_deliveries_through_the_shared_layout(
        store: Store, relay: Relay) -> None:
    subs = await _subscribe(relay, 2)
    run = TrackedRun("betterprompt", "p1", since=time.time(), next_poll=time.time() - 1)
    assert await store.track_run("betterprompt", "p1", run.new_fields(),
                                 int((time.time() - 1) * 1000))
    await store.claim_runs({"betterprompt": (10, 0.0)}, token="me", lease_ms=30_000,
                           horizon_ms=1000)
    event = run_event(run, Observation("succeeded"), raw=b"{}", observed_at=time.time(),
                      wraps_outputs=True)

    async def write(w: EventWrite) -> tuple[Reply, str]:
        return await store.settle_run("betterprompt", "p1", token="me", next_poll_ms=1,
                                      fields={"s": "succeeded"}, event=w)

    assert await relay.store_matched(event, write=write) == (Reply.STORED, event.id)
    deliveries = await store.get_deliveries(await store.event_delivery_ids(event.id))
    assert sorted(d.subscription_id for d in deliveries if d is not None) == sorted(subs)
    finished = await store.get_run("betterprompt", "p1")
    assert finished is not None and finished["st"] == "finished" and finished["s"] == "succeeded"

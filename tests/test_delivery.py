"""Delivery: signing, retry schedule, 410/429/3xx rules, attempt log, replay and rotation."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from relay.delivery import DeliveryWorker
from relay.outbound import Outbound
from relay.service import Relay
from relay.store import Store
from tests.helpers import (
    RedisServer,
    Subscriber,
    admin_headers,
    eventually,
    runflow_body,
    runflow_signature,
)

pytestmark = pytest.mark.both_redis


@pytest.fixture
async def worker(relay: Relay) -> AsyncIterator[DeliveryWorker]:
    outbound = Outbound(allow_private=True)
    yield DeliveryWorker(relay, outbound, name="test-worker")
    await outbound.aclose()


async def subscribe(client: httpx.AsyncClient, url: str, **spec: object) -> dict[str, str]:
    r = await client.post("/v1/subscriptions", json={"url": url, **spec}, headers=admin_headers())
    assert r.status_code == 201, r.text
    return dict(r.json())


async def callback(client: httpx.AsyncClient, run_id: str, path: str = "/callbacks/runflow",
                   **fields: Any) -> str:
    body = runflow_body(run_id, **fields)
    headers = {"runflow-signature": runflow_signature(body)}
    r = await client.post(path, content=body, headers=headers)
    assert r.status_code == 200, r.text
    return str(r.json()["event_id"])


async def deliveries_of(client: httpx.AsyncClient, event_id: str) -> list[dict[str, object]]:
    r = await client.get(f"/v1/events/{event_id}", headers=admin_headers())
    return list(r.json()["deliveries"])


async def pass_until(worker: DeliveryWorker, done: object, within: float = 5.0) -> None:
    """Run single worker passes until `done()` holds (retries come due in real time)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        await worker.run_once()
        result = done()  # type: ignore[operator]
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met")


async def test_delivery_is_signed_per_standard_webhooks_and_verifies_with_the_reference_library(
        client: httpx.AsyncClient, worker: DeliveryWorker, subscriber: Subscriber) -> None:
    """The standardwebhooks package accepts relay's signature; body is the normalized event."""
    sub = await subscribe(client, subscriber.url)
    event_id = await callback(client, "run-sig", metadata={"job": 7})
    await worker.run_once()
    (got,) = subscriber.received
    assert got.headers["webhook-id"] == event_id
    assert got.headers["content-type"] == "application/json"
    assert got.headers["user-agent"].startswith("relay/")
    verified = Webhook(sub["secret"]).verify(got.body, got.headers)
    assert verified["id"] == event_id
    assert verified["provider"] == "runflow" and verified["source"] == "callback"
    assert verified["metadata"] == {"job": 7}
    assert verified["provider_payload"]["run_id"] == "run-sig"
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + "A" * 43 + "=").verify(got.body, got.headers)


async def test_failed_attempts_retry_on_schedule_then_die_with_every_attempt_logged(
        client: httpx.AsyncClient, worker: DeliveryWorker) -> None:
    """500 three times with schedule 0.2,0.4: three attempts, then `dead`."""
    failing = Subscriber(behaviour=lambda n: (500, {}, 0.0)).start()
    try:
        await subscribe(client, failing.url)
        event_id = await callback(client, "run-500")

        async def dead() -> bool:
            return (await deliveries_of(client, event_id))[0]["status"] == "dead"

        await pass_until(worker, dead)
        assert len(failing.received) == 3
        assert len(set(failing.ids())) == 1, "webhook-id must not change between attempts"
        gaps = [b.at - a.at for a, b in zip(failing.received, failing.received[1:], strict=False)]
        assert gaps[0] >= 0.19 and gaps[1] >= 0.39
        (delivery,) = await deliveries_of(client, event_id)
        detail = (await client.get(f"/v1/deliveries/{delivery['id']}",
                                   headers=admin_headers())).json()
        assert [a["attempt"] for a in detail["attempts"]] == [1, 2, 3]
        assert all(a["status_code"] == 500 for a in detail["attempts"])
        assert detail["attempts"][0]["response_body"] == '{"ok":true}'
        assert detail["attempts"][0]["error"] == "HTTP 500"
    finally:
        failing.stop()


async def test_410_disables_the_subscription_and_cancels_the_delivery(
        client: httpx.AsyncClient, worker: DeliveryWorker) -> None:
    gone = Subscriber(behaviour=lambda n: (410, {}, 0.0)).start()
    try:
        sub = await subscribe(client, gone.url)
        event_id = await callback(client, "run-410")
        await worker.run_once()
        shown = (await client.get(f"/v1/subscriptions/{sub['id']}", headers=admin_headers())).json()
        assert shown["status"] == "disabled" and "410" in shown["disabled_reason"]
        assert (await deliveries_of(client, event_id))[0]["status"] == "cancelled"
        await callback(client, "run-410-b")
        await worker.run_once()
        assert len(gone.received) == 1, "a disabled subscription receives nothing more"
    finally:
        gone.stop()


async def test_429_retry_after_delays_the_next_attempt(
        client: httpx.AsyncClient, worker: DeliveryWorker) -> None:
    """Retry-After: 1 overrides the 0.2 s schedule entry."""
    limited = Subscriber(behaviour=lambda n: (429, {"retry-after": "1"}, 0.0) if n == 0
                         else (200, {}, 0.0)).start()
    try:
        await subscribe(client, limited.url)
        event_id = await callback(client, "run-429")
        await worker.run_once()
        (d,) = await deliveries_of(client, event_id)
        assert d["status"] == "pending"
        await asyncio.sleep(0.5)
        await worker.run_once()
        assert len(limited.received) == 1, "retried before Retry-After elapsed"

        async def succeeded() -> bool:
            return (await deliveries_of(client, event_id))[0]["status"] == "succeeded"

        await pass_until(worker, succeeded)
        assert limited.received[1].at - limited.received[0].at >= 0.95
    finally:
        limited.stop()


async def test_a_redirect_is_a_failure_and_is_not_followed(
        client: httpx.AsyncClient, worker: DeliveryWorker, subscriber: Subscriber) -> None:
    redirecting = Subscriber(behaviour=lambda n: (302, {"location": subscriber.url}, 0.0)).start()
    try:
        await subscribe(client, redirecting.url)
        event_id = await callback(client, "run-302")
        await worker.run_once()
        (d,) = await deliveries_of(client, event_id)
        detail = (await client.get(f"/v1/deliveries/{d['id']}", headers=admin_headers())).json()
        assert detail["status"] == "pending"
        assert detail["attempts"][0]["status_code"] == 302
        assert "redirect" in detail["attempts"][0]["error"]
        assert subscriber.received == []
    finally:
        redirecting.stop()


async def test_filters_choose_subscriptions_by_event_provider_and_channel(
        client: httpx.AsyncClient, worker: DeliveryWorker) -> None:
    subs = [Subscriber().start() for _ in range(4)]
    try:
        await subscribe(client, subs[0].url, events=["run.fail*"])
        await subscribe(client, subs[1].url, providers=["flora"])
        await subscribe(client, subs[2].url, channels=["tenant-*"])
        await subscribe(client, subs[3].url, events=["run.*"], providers=["run*"])
        minted = await client.post("/v1/callback-urls", headers=admin_headers(),
                                   json={"provider": "runflow", "channels": ["tenant-a"]})
        path = minted.json()["url"].removeprefix("http://localhost:8000")
        await callback(client, "run-filter-1")
        await callback(client, "run-filter-2", path=path, event="run.failed")
        await worker.run_once()
        got = [[r.json()["run_id"] for r in s.received] for s in subs]
        assert got[0] == ["run-filter-2"]
        assert got[1] == []
        assert got[2] == ["run-filter-2"]
        assert sorted(got[3]) == ["run-filter-1", "run-filter-2"]
        channelled = subs[2].received[0].json()
        assert channelled["channels"] == ["tenant-a"]
    finally:
        for s in subs:
            s.stop()


async def test_rotated_secret_signs_alongside_the_old_one(
        client: httpx.AsyncClient, worker: DeliveryWorker, subscriber: Subscriber) -> None:
    sub = await subscribe(client, subscriber.url)
    rotated = await client.post(f"/v1/subscriptions/{sub['id']}/rotate-secret",
                                headers=admin_headers())
    new_secret = rotated.json()["secret"]
    assert new_secret != sub["secret"]
    await callback(client, "run-rotate")
    await worker.run_once()
    (got,) = subscriber.received
    assert len(got.headers["webhook-signature"].split(" ")) == 2
    Webhook(sub["secret"]).verify(got.body, got.headers)
    Webhook(new_secret).verify(got.body, got.headers)
    shown = await client.get(f"/v1/subscriptions/{sub['id']}/secret", headers=admin_headers())
    assert shown.json() == {"secret": new_secret}


async def test_redeliver_retry_and_recover_send_the_same_webhook_id_again(
        client: httpx.AsyncClient, worker: DeliveryWorker, store: Store) -> None:
    flaky_ok = False
    flaky = Subscriber(behaviour=lambda n: (200 if flaky_ok else 500, {}, 0.0)).start()
    try:
        sub = await subscribe(client, flaky.url)
        event_id = await callback(client, "run-replay")

        async def dead() -> bool:
            return (await deliveries_of(client, event_id))[0]["status"] == "dead"

        await pass_until(worker, dead)
        flaky_ok = True
        r = await client.post(f"/v1/subscriptions/{sub['id']}/recover", headers=admin_headers(),
                              json={"since": "2000-01-01T00:00:00Z"})
        assert r.json() == {"requeued": 1}
        await worker.run_once()
        (d,) = await deliveries_of(client, event_id)
        assert d["status"] == "succeeded"
        r = await client.post(f"/v1/deliveries/{d['id']}/retry", headers=admin_headers())
        assert r.status_code == 202
        await worker.run_once()
        r = await client.post(f"/v1/events/{event_id}/redeliver", headers=admin_headers())
        assert r.status_code == 202 and len(r.json()["deliveries"]) == 1
        await worker.run_once()
        assert set(flaky.ids()) == {event_id}
        assert len(flaky.received) == 3 + 1 + 1 + 1
        assert len(await deliveries_of(client, event_id)) == 2
    finally:
        flaky.stop()


async def test_test_endpoint_sends_relay_test_to_that_subscription_only(
        client: httpx.AsyncClient, worker: DeliveryWorker, subscriber: Subscriber) -> None:
    other = Subscriber().start()
    try:
        sub = await subscribe(client, subscriber.url)
        await subscribe(client, other.url)
        r = await client.post(f"/v1/subscriptions/{sub['id']}/test", headers=admin_headers())
        assert r.status_code == 202
        await worker.run_once()
        assert [x.json()["event"] for x in subscriber.received] == ["relay.test"]
        assert other.received == []
    finally:
        other.stop()


async def test_deleting_a_subscription_cancels_its_pending_deliveries(
        client: httpx.AsyncClient, worker: DeliveryWorker) -> None:
    failing = Subscriber(behaviour=lambda n: (500, {}, 0.0)).start()
    try:
        sub = await subscribe(client, failing.url)
        event_id = await callback(client, "run-delete")
        await worker.run_once()
        assert (await deliveries_of(client, event_id))[0]["status"] == "pending"
        r = await client.delete(f"/v1/subscriptions/{sub['id']}", headers=admin_headers())
        assert r.status_code == 204
        assert (await deliveries_of(client, event_id))[0]["status"] == "cancelled"
        await asyncio.sleep(0.3)
        await worker.run_once()
        assert len(failing.received) == 1
    finally:
        failing.stop()


async def test_a_hanging_subscriber_does_not_delay_another(
        client: httpx.AsyncClient, relay: Relay, subscriber: Subscriber) -> None:
    """With one subscriber hanging for seconds, the other gets every event within 1 s."""
    hanging = Subscriber(behaviour=lambda n: (200, {}, 5.0)).start()
    outbound = Outbound(allow_private=True)
    stop = asyncio.Event()
    worker = DeliveryWorker(relay, outbound, name="w-hang", per_subscription=4)
    task = asyncio.create_task(worker.run(stop, grace=0.1))
    try:
        await subscribe(client, hanging.url)
        await subscribe(client, subscriber.url)
        sent = {}
        for i in range(20):
            sent[await callback(client, f"run-hang-{i}")] = time.time()
            await asyncio.sleep(0.02)
        await eventually(lambda: len(subscriber.received) == 20, within=5)
        lags = [r.at - sent[r.headers["webhook-id"]] for r in subscriber.received]
        assert max(lags) < 1.0, lags
    finally:
        stop.set()
        await task
        await outbound.aclose()
        hanging.stop()


async def test_attempt_log_keeps_only_the_first_4_kib_of_the_answer(
        client: httpx.AsyncClient, worker: DeliveryWorker) -> None:
    class Big(Subscriber):
        async def app(self, scope: dict[str, object], receive: object, send: object) -> None:
            if scope["type"] != "http":
                return
            await receive()  # type: ignore[operator]
            await send({"type": "http.response.start", "status": 200,  # type: ignore[operator]
                        "headers": []})
            await send({"type": "http.response.body", "body": b"x" * 100_000})  # type: ignore[operator]

    big = Big().start()
    try:
        await subscribe(client, big.url)
        event_id = await callback(client, "run-big")
        await worker.run_once()
        (d,) = await deliveries_of(client, event_id)
        detail = (await client.get(f"/v1/deliveries/{d['id']}", headers=admin_headers())).json()
        assert detail["status"] == "succeeded"
        assert len(detail["attempts"][0]["response_body"]) == 4096
    finally:
        big.stop()


async def test_events_read_api_shows_envelope_and_deliveries(
        client: httpx.AsyncClient, worker: DeliveryWorker, subscriber: Subscriber) -> None:
    await subscribe(client, subscriber.url)
    event_id = await callback(client, "run-read", event="run.failed", failure_code="OOM",
                              failure_message="out of memory", failure_stage="inference")
    await worker.run_once()
    doc = (await client.get(f"/v1/events/{event_id}", headers=admin_headers())).json()
    assert doc["error"] == {"code": "OOM", "message": "out of memory", "stage": "inference"}
    assert doc["deliveries"][0]["status"] == "succeeded"
    listed = (await client.get("/v1/deliveries?status=succeeded", headers=admin_headers())).json()
    assert [d["event_id"] for d in listed["data"]] == [event_id]
    assert json.loads(subscriber.received[0].body)["error"]["code"] == "OOM"


async def test_failing_longer_than_disable_after_disables_the_subscription(
        client: httpx.AsyncClient, relay: Relay, redis_server: RedisServer) -> None:
    """Failures with no success for RELAY_DISABLE_AFTER (0.3 s here) disable it."""
    failing = Subscriber(behaviour=lambda n: (500, {}, 0.0)).start()
    strict = relay.settings.with_overrides(disable_after=0.3, retry_schedule=(0.2, 0.2, 0.2))
    outbound = Outbound(allow_private=True)
    store = Store(strict, redis_server.url)
    worker = DeliveryWorker(Relay(strict, store), outbound, name="w-disable")
    try:
        sub = await subscribe(client, failing.url)
        event_id = await callback(client, "run-disable-after")

        async def cancelled() -> bool:
            return (await deliveries_of(client, event_id))[0]["status"] == "cancelled"

        await pass_until(worker, cancelled)
        shown = (await client.get(f"/v1/subscriptions/{sub['id']}", headers=admin_headers()))
        assert shown.json()["status"] == "disabled"
        assert "RELAY_DISABLE_AFTER" in shown.json()["disabled_reason"]
        assert 2 <= len(failing.received) <= 3
    finally:
        await outbound.aclose()
        await store.aclose()
        failing.stop()


async def test_a_success_resets_the_failure_clock(
        client: httpx.AsyncClient, relay: Relay, redis_server: RedisServer) -> None:
    """Alternating failure and success never reaches RELAY_DISABLE_AFTER."""
    flip = Subscriber(behaviour=lambda n: (500 if n % 2 == 0 else 200, {}, 0.0)).start()
    strict = relay.settings.with_overrides(disable_after=0.3, retry_schedule=(0.25,))
    outbound = Outbound(allow_private=True)
    store = Store(strict, redis_server.url)
    worker = DeliveryWorker(Relay(strict, store), outbound, name="w-reset")
    try:
        sub = await subscribe(client, flip.url)
        for i in range(3):
            event_id = await callback(client, f"run-reset-{i}")

            async def succeeded(event_id: str = event_id) -> bool:
                return (await deliveries_of(client, event_id))[0]["status"] == "succeeded"

            await pass_until(worker, succeeded)
        shown = await client.get(f"/v1/subscriptions/{sub['id']}", headers=admin_headers())
        assert shown.json()["status"] == "enabled"
    finally:
        await outbound.aclose()
        await store.aclose()
        flip.stop()


async def test_worker_stops_promptly_with_deliveries_in_flight(
        client: httpx.AsyncClient, relay: Relay) -> None:
    """Stop with slow attempts in flight: they are handed back, none is lost or counted."""
    slow = Subscriber(behaviour=lambda n: (200, {}, 3.0)).start()
    outbound = Outbound(allow_private=True)
    stop = asyncio.Event()
    worker = DeliveryWorker(relay, outbound, name="w-stop")
    task = asyncio.create_task(worker.run(stop, grace=0.2))
    try:
        await subscribe(client, slow.url)
        ids = [await callback(client, f"run-stop-{i}") for i in range(5)]
        await eventually(lambda: len(slow.received) == 5, within=5)
        started = time.monotonic()
        stop.set()
        await asyncio.wait_for(task, 5)
        assert time.monotonic() - started < 3
        for event_id in ids:
            (d,) = await deliveries_of(client, event_id)
            assert d["status"] == "pending" and d["attempts_made"] == 0
    finally:
        await outbound.aclose()
        slow.stop()


async def test_a_fast_subscribers_backlog_beyond_its_slots_waits_in_memory_not_parked(
        client: httpx.AsyncClient, relay: Relay, store: Store, subscriber: Subscriber) -> None:
    """60 deliveries read at once for a subscriber with 4 slots and 1 ms attempts: all of them
    go out in one pass, the 56 beyond its slots started as slots free. Parked, they would sit
    in the retry set for a second (and one pass would deliver 8)."""
    sub = await subscribe(client, subscriber.url)
    for i in range(60):
        await callback(client, f"run-held-{i}")
    outbound = Outbound(allow_private=True)
    try:
        worker = DeliveryWorker(relay, outbound, name="w-held", per_subscription=4)
        worker._attempt_seconds[sub["id"]] = 0.001  # as measured by its earlier attempts
        assert await worker.run_once() == 60
        assert len(subscriber.received) == 60
        assert (await store.depths())["scheduled_retries"] == 0
    finally:
        await outbound.aclose()


async def make_delivery(client: httpx.AsyncClient, url: str, run_id: str) -> tuple[str, str]:
    """A subscription and the one delivery a callback makes for it: (subscription, delivery)."""
    sub = await subscribe(client, url)
    (delivery,) = await deliveries_of(client, await callback(client, run_id))
    return sub["id"], str(delivery["id"])


async def test_a_delivery_retried_after_its_subscription_is_disabled_and_reenabled_is_sent_once(
        client: httpx.AsyncClient, worker: DeliveryWorker, subscriber: Subscriber) -> None:
    """The cancelled delivery's old queue entry must not be sent alongside the new one."""
    sub_id, delivery_id = await make_delivery(client, subscriber.url, "dup-1")
    headers = admin_headers()
    await client.patch(f"/v1/subscriptions/{sub_id}", headers=headers, json={"enabled": False})
    await client.patch(f"/v1/subscriptions/{sub_id}", headers=headers, json={"enabled": True})
    await client.post(f"/v1/deliveries/{delivery_id}/retry", headers=headers)
    await worker.run_once()
    assert len(subscriber.received) == 1
    shown = (await client.get(f"/v1/deliveries/{delivery_id}", headers=headers)).json()
    assert shown["status"] == "succeeded" and len(shown["attempts"]) == 1


async def test_reenabling_restarts_the_disable_after_clock(
        client: httpx.AsyncClient, store: Store) -> None:
    sub_id, _ = await make_delivery(client, "http://127.0.0.1:9/x", "reenable-1")
    await store.redis.hset(store.keys.sub(sub_id), "fail_since", 1)
    headers = admin_headers()
    await client.patch(f"/v1/subscriptions/{sub_id}", headers=headers, json={"enabled": False})
    await client.patch(f"/v1/subscriptions/{sub_id}", headers=headers, json={"enabled": True})
    assert await store.redis.hget(store.keys.sub(sub_id), "fail_since") is None


async def test_deleting_a_subscription_lets_its_delivery_index_expire(
        client: httpx.AsyncClient, store: Store) -> None:
    sub_id, _ = await make_delivery(client, "http://127.0.0.1:9/x", "delete-ttl")
    await client.delete(f"/v1/subscriptions/{sub_id}", headers=admin_headers())
    assert await store.redis.ttl(store.keys.sub_deliveries(sub_id)) > 0


async def test_recover_finds_dead_deliveries_behind_many_successes(
        client: httpx.AsyncClient, store: Store, relay: Relay) -> None:
    """The scan cap can return an empty page with a cursor; recover must keep walking."""
    sub_id, delivery_id = await make_delivery(client, "http://127.0.0.1:9/x", "recover-deep")
    await store.redis.hset(store.keys.delivery(delivery_id), "st", "dead")
    pipe = store.redis.pipeline(transaction=False)
    for i in range(2100):  # newer successes in front of the dead one
        pipe.zadd(store.keys.sub_deliveries(sub_id), {f"dlv_fake{i:05d}": 9_000_000_000_000 + i})
        pipe.hset(store.keys.delivery(f"dlv_fake{i:05d}"), mapping={
            "st": "succeeded", "ev": "evt_x", "sub": sub_id, "ts": 1, "up": 1})
    await pipe.execute()
    assert await relay.recover(sub_id, 0) == 1

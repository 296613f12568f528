"""Defects found in review, each pinned by the input or sequence that exposed it."""

from __future__ import annotations

import base64

import httpx
import pytest
import redis

from relay.delivery import DeliveryWorker
from relay.outbound import Outbound
from relay.service import Relay
from relay.store import Store
from tests.helpers import RedisServer, Subscriber, admin_headers, runflow_signature

H = admin_headers()


async def post_signed(client: httpx.AsyncClient, body: bytes) -> httpx.Response:
    return await client.post("/callbacks/runflow", content=body,
                             headers={"runflow-signature": runflow_signature(body)})


@pytest.mark.parametrize("body", [
    rb'{"run_id":"\ud800","event":"run.completed"}',
    rb'{"run_id":"r","event":"run.completed","metadata":{"x":"\udfff"}}',
    b'{"run_id":"r","event":"run.completed","output":{"x":1e400}}',
    b'{"run_id":"r","event":"run.completed","duration_ms":1e400}',
])
async def test_signed_bodies_no_subscriber_could_read_are_400(
        client: httpx.AsyncClient, body: bytes) -> None:
    """Lone surrogates and overflowing numbers are refused, never stored or a 500."""
    r = await post_signed(client, body)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    assert (await client.get("/v1/events", headers=H)).json()["data"] == []


async def test_absurd_duration_is_422_not_500(client: httpx.AsyncClient) -> None:
    r = await post_signed(client, b'{"run_id":"r","event":"run.completed","duration_ms":1e300}')
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "duration_ms"


@pytest.mark.parametrize("url", ["http://[x/", "http://a\u0000b/", "http://a b/",
                                 "http://example.com:99999/"])
async def test_unparsable_subscription_urls_are_invalid_url(
        client: httpx.AsyncClient, url: str) -> None:
    r = await client.post("/v1/subscriptions", headers=H, json={"url": url})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_url"


async def test_lone_surrogates_in_admin_bodies_are_refused(client: httpx.AsyncClient) -> None:
    body = rb'{"url":"http://127.0.0.1:9/","description":"\ud800"}'
    r = await client.post("/v1/subscriptions", headers=H, content=body)
    assert r.status_code == 400
    assert (await client.get("/v1/subscriptions", headers=H)).status_code == 200


@pytest.mark.parametrize("score", ["nan", "inf", "-inf"])
async def test_doctored_cursors_are_ignored_not_500(
        client: httpx.AsyncClient, score: str) -> None:
    cursor = base64.urlsafe_b64encode(f"{score}:x".encode()).decode().rstrip("=")
    for path in ("/v1/events", "/v1/subscriptions", "/v1/deliveries"):
        r = await client.get(f"{path}?cursor={cursor}", headers=H)
        assert r.status_code == 200, path


async def test_redis_out_of_memory_is_503_not_500(
        client: httpx.AsyncClient, redis_server: RedisServer) -> None:
    admin = redis.Redis.from_url(redis_server.url)
    admin.config_set("maxmemory", "1")
    try:
        r = await post_signed(client, b'{"run_id":"oom","event":"run.completed"}')
        assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable"
    finally:
        admin.config_set("maxmemory", "0")


async def make_delivery(client: httpx.AsyncClient, url: str, run_id: str) -> tuple[str, str]:
    sub = (await client.post("/v1/subscriptions", headers=H, json={"url": url})).json()
    event_id = (await post_signed(
        client, f'{{"run_id":"{run_id}","event":"run.completed"}}'.encode())).json()["event_id"]
    event = (await client.get(f"/v1/events/{event_id}", headers=H)).json()
    return sub["id"], event["deliveries"][0]["id"]


async def test_requeue_after_cancel_and_reenable_sends_once(
        client: httpx.AsyncClient, relay: Relay, subscriber: Subscriber) -> None:
    """The cancelled delivery's old queue entry must not be sent alongside the new one."""
    sub_id, delivery_id = await make_delivery(client, subscriber.url, "dup-1")
    await client.patch(f"/v1/subscriptions/{sub_id}", headers=H, json={"enabled": False})
    await client.patch(f"/v1/subscriptions/{sub_id}", headers=H, json={"enabled": True})
    await client.post(f"/v1/deliveries/{delivery_id}/retry", headers=H)
    outbound = Outbound(allow_private=True)
    try:
        await DeliveryWorker(relay, outbound, name="w-dup").run_once()
    finally:
        await outbound.aclose()
    assert len(subscriber.received) == 1
    shown = (await client.get(f"/v1/deliveries/{delivery_id}", headers=H)).json()
    assert shown["status"] == "succeeded" and len(shown["attempts"]) == 1


async def test_reenabling_restarts_the_disable_after_clock(
        client: httpx.AsyncClient, store: Store, relay: Relay) -> None:
    sub_id, _ = await make_delivery(client, "http://127.0.0.1:9/x", "reenable-1")
    await store.redis.hset(store.keys.sub(sub_id), "fail_since", 1)
    await client.patch(f"/v1/subscriptions/{sub_id}", headers=H, json={"enabled": False})
    await client.patch(f"/v1/subscriptions/{sub_id}", headers=H, json={"enabled": True})
    assert await store.redis.hget(store.keys.sub(sub_id), "fail_since") is None


async def test_deleting_a_subscription_lets_its_delivery_index_expire(
        client: httpx.AsyncClient, store: Store) -> None:
    sub_id, _ = await make_delivery(client, "http://127.0.0.1:9/x", "delete-ttl")
    await client.delete(f"/v1/subscriptions/{sub_id}", headers=H)
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


async def test_event_deliveries_page_past_the_limit(client: httpx.AsyncClient) -> None:
    for i in range(3):
        await client.post("/v1/subscriptions", headers=H, json={"url": f"http://127.0.0.1:9/{i}"})
    event_id = (await post_signed(
        client, b'{"run_id":"paged","event":"run.completed"}')).json()["event_id"]
    seen: list[str] = []
    cursor = ""
    while True:
        page = (await client.get(f"/v1/deliveries?event_id={event_id}&limit=2{cursor}",
                                 headers=H)).json()
        seen += [d["id"] for d in page["data"]]
        if not page["next_cursor"]:
            break
        cursor = f"&cursor={page['next_cursor']}"
    assert len(seen) == len(set(seen)) == 3


async def test_ip_literal_targets_are_checked_at_every_attempt() -> None:
    """aiohttp skips the resolver for IP literals; the guard must not be skipped with it."""
    outbound = Outbound(allow_private=False)
    try:
        for url in ("http://127.0.0.1:9/", "http://10.0.0.5/", "http://[::1]/",
                    "http://169.254.169.254/"):
            answer = await outbound.post(url, b"{}", {}, 2)
            assert answer.status is None and answer.error and "refused" in answer.error, url
    finally:
        await outbound.aclose()


def test_preflight_survives_a_redis_without_config(prefix: str) -> None:
    import subprocess
    import sys

    from tests.helpers import ROOT, relay_env

    locked = RedisServer(extra=["--rename-command", "CONFIG", ""]).start()
    try:
        proc = subprocess.run([sys.executable, "-m", "relay", "preflight"], cwd=ROOT,
                              env=relay_env(locked.url, prefix), capture_output=True, text=True,
                              timeout=30)
        assert proc.returncode == 0, proc.stderr
        assert "WARNING" in proc.stderr and "CONFIG" in proc.stderr
    finally:
        locked.stop()

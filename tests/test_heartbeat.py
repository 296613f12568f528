"""Worker heartbeats: which providers live workers poll, stalled runs, and the sweep that ends
every run at RELAY_POLL_MAX_AGE."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from relay import clock
from relay.config import Settings
from relay.delivery import DeliveryWorker
from relay.heartbeat import Heartbeat
from relay.outbound import Outbound
from relay.providers import Observation
from relay.runs import TrackedRun, run_event
from relay.service import Relay
from relay.store import Reply, Store
from relay.tracking import Tracking
from tests.helpers import RedisServer, Subscriber, admin_headers, eventually, relay_env

pytestmark = pytest.mark.both_redis


@pytest.fixture
def hsettings(redis_server: RedisServer, prefix: str) -> Settings:
    """BetterPrompt configured here: what counts is whether a live worker polls it."""
    return Settings.from_env(relay_env(redis_server, prefix, BETTERPROMPT_API_KEY="bp-key",
                                       RELAY_POLL_MAX_AGE="1", RELAY_CLAIM_TIMEOUT="0.5"))


@pytest.fixture
async def hrelay(hsettings: Settings, redis_server: RedisServer) -> AsyncIterator[Relay]:
    store = Store(hsettings, redis_server.url)
    await store.ensure_groups()
    relay = Relay(hsettings, store)
    await relay.subs.refresh()
    yield relay
    await store.aclose()


@pytest.fixture
async def api(hsettings: Settings, redis_server: RedisServer
              ) -> AsyncIterator[httpx.AsyncClient]:
    from relay.web.app import create_app

    app = create_app(hsettings, redis_server.url)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://relay") as c:
            yield c


async def track(api: httpx.AsyncClient, provider: str, run_id: str) -> httpx.Response:
    return await api.post("/v1/runs", headers=admin_headers(),
                          json={"provider": provider, "run_id": run_id})


async def test_heartbeats_say_which_providers_live_workers_poll_until_they_end(
        hrelay: Relay) -> None:
    store = hrelay.store
    assert await store.live_pollers() == set() and await store.live_workers() == 0
    await store.beat("w1", ["betterprompt", "flora"], 300)
    await store.beat("w2", [], 10_000)
    assert await store.live_pollers() == {"betterprompt", "flora"}
    assert await store.live_workers() == 2
    await asyncio.sleep(0.4)
    assert await store.live_pollers() == set() and await store.live_workers() == 1
    await store.beat("w2", [], 10_000)  # drops w1's ended heartbeats
    assert await store.redis.zrange(store.keys.workers, 0, -1) == ["w2"]
    assert await store.redis.exists(store.keys.pollers("betterprompt")) == 0


async def test_tracking_is_refused_unless_a_live_worker_polls_the_provider(
        hrelay: Relay, api: httpx.AsyncClient) -> None:
    refused = await track(api, "betterprompt", "r1")  # the key is set here, on the web process
    assert refused.status_code == 422
    error = refused.json()["error"]
    assert error["code"] == "provider_not_configured"
    assert error["details"] == [{"field": "provider",
                                 "problem": "no live worker polls this provider"}]
    await Heartbeat(hrelay, "w-flora", ["flora"]).beat()
    assert (await track(api, "betterprompt", "r1")).status_code == 422  # flora is not enough
    await Heartbeat(hrelay, "w-bp", ["betterprompt"]).beat()
    assert (await track(api, "betterprompt", "r1")).status_code == 201


async def test_a_run_whose_last_poller_stops_heartbeating_is_stalled_and_counted(
        hrelay: Relay, api: httpx.AsyncClient) -> None:
    worker = Heartbeat(hrelay, "w-bp", ["betterprompt"], every=0.05, live_for=0.3)
    stop = asyncio.Event()
    beating = asyncio.create_task(worker.run(stop))
    try:
        await worker.beat()
        assert (await track(api, "betterprompt", "r-stall")).status_code == 201
        shown = (await api.get("/v1/runs/betterprompt/r-stall", headers=admin_headers())).json()
        assert shown["state"] == "active" and shown["next_poll_at"]
        assert 'relay_stalled_runs{provider="betterprompt"} 0.0' in (
            await api.get("/metrics")).text
    finally:
        stop.set()
        await beating
    tracking = Tracking(hrelay)

    async def stalled() -> bool:
        return bool((await tracking.show("betterprompt", "r-stall"))["state"] == "stalled")

    await eventually(stalled, within=3)
    shown = (await api.get("/v1/runs/betterprompt/r-stall", headers=admin_headers())).json()
    assert shown["state"] == "stalled" and shown["next_poll_at"] is None
    listed = (await api.get("/v1/runs?provider=betterprompt", headers=admin_headers())).json()
    assert [r["state"] for r in listed["data"]] == ["stalled"]
    text = (await api.get("/metrics")).text
    assert 'relay_stalled_runs{provider="betterprompt"} 1.0' in text
    assert 'relay_tracked_runs{provider="betterprompt"} 1.0' in text
    assert "relay_workers 0.0" in text
    await Heartbeat(hrelay, "w-bp2", ["betterprompt"]).beat()  # a poller is back
    assert (await tracking.show("betterprompt", "r-stall"))["state"] == "active"


async def test_an_unpolled_run_past_max_age_ends_with_run_expired_and_it_is_delivered(
        hrelay: Relay, subscriber: Subscriber) -> None:
    """The worker that could poll it is gone; one that cannot poll it sweeps it at max age."""
    await hrelay.create_subscription({"url": subscriber.url})
    await hrelay.subs.refresh()
    await Heartbeat(hrelay, "gone", ["betterprompt"], live_for=0.5).beat()
    tracking = Tracking(hrelay)
    view, _ = await tracking.track("betterprompt", "r-old", metadata={"job": 3})
    stop = asyncio.Event()
    outbound = Outbound(allow_private=True)
    survivor = Heartbeat(hrelay, "survivor", [], every=0.1)
    delivery = DeliveryWorker(hrelay, outbound, name="survivor")
    jobs = asyncio.gather(survivor.run(stop), delivery.run(stop, grace=1))
    try:
        await eventually(lambda: subscriber.received, within=10)
    finally:
        stop.set()
        await jobs
        await outbound.aclose()
    (got,) = [r.json() for r in subscriber.received]
    assert got["event"] == "run.expired" and got["run_id"] == "r-old"
    assert got["error"]["code"] == "max_age" and got["metadata"] == {"job": 3}
    # Not before RELAY_POLL_MAX_AGE (1 s) plus the longest lease a poller holds (0.5 s).
    assert clock.parse_time(got["observed_at"]) - clock.parse_time(view["tracked_since"]) >= 1.5
    shown = await tracking.show("betterprompt", "r-old")
    assert shown["state"] == "finished" and shown["events"] == [got["id"]]


async def test_the_sweep_ends_a_pending_callback_on_its_word_and_skips_ended_runs(
        hrelay: Relay, monkeypatch: pytest.MonkeyPatch) -> None:
    store = hrelay.store
    old = time.time() - 10
    monkeypatch.setattr(clock, "now_ms", lambda: int(old * 1000))  # tracked 10 s ago
    fields = TrackedRun("flora", "pending", since=old, technique_id="t").new_fields()
    code, answered = await store.callback_pending(
        "flora", "pending", event_id="evt_answered", fields=fields, callback={
            "d": "whd_1", "s": "failed", "e": {"code": "X", "message": "m", "stage": "provider"},
            "c": "2026-05-06T10:01:01.234+00:00", "raw": '{"id": "whd_1"}'})
    assert (code, answered) == (Reply.STORED, "evt_answered")
    done = TrackedRun("betterprompt", "done", since=old)
    assert await store.track_run("betterprompt", "done", done.new_fields(), int(old * 1000))
    monkeypatch.undo()
    ended = await hrelay.accept(run_event(done, Observation("succeeded"), raw=b"{}",
                                          observed_at=old + 1, wraps_outputs=True))
    assert not ended.duplicate
    swept = await Heartbeat(hrelay, "sweeper", []).sweep()
    assert swept == 1
    (body,) = await store.get_event_bodies(await store.run_event_ids("flora", "pending"))
    assert body is not None
    event = json.loads(body)
    assert (event["id"], event["event"], event["source"]) == (
        "evt_answered", "run.failed", "callback")
    assert event["error"]["code"] == "X" and event["provider_payload"] == {"id": "whd_1"}
    assert await store.run_event_ids("betterprompt", "done") == [ended.event_id]
    assert await Heartbeat(hrelay, "again", []).sweep() == 0  # read once: the position moved


async def test_the_sweep_takes_runs_tracked_in_one_millisecond_together(
        hrelay: Relay, monkeypatch: pytest.MonkeyPatch) -> None:
    store = hrelay.store
    at = clock.now_ms() - 60_000
    monkeypatch.setattr(clock, "now_ms", lambda: at)
    for i in range(5):
        run = TrackedRun("betterprompt", f"tie-{i}", since=at / 1000)
        assert await store.track_run("betterprompt", f"tie-{i}", run.new_fields(), at)
    monkeypatch.undo()
    until = clock.now_ms()
    runs, position, more = await store.runs_to_sweep(until, 3)
    assert sorted(r for _, r in runs) == [f"tie-{i}" for i in range(5)] and more
    await store.swept_to(position)
    assert await store.runs_to_sweep(until, 3) == ([], position, False)


async def test_the_sweep_takes_a_run_over_from_a_poller_and_only_one_of_them_ends_it(
        hrelay: Relay, monkeypatch: pytest.MonkeyPatch) -> None:
    store = hrelay.store
    old = time.time() - 10
    monkeypatch.setattr(clock, "now_ms", lambda: int(old * 1000))  # tracked 10 s ago
    run = TrackedRun("betterprompt", "contested", since=old, next_poll=old)
    assert await store.track_run("betterprompt", "contested", run.new_fields(),
                                 int(old * 1000))
    monkeypatch.undo()
    claims = await store.claim_runs({"betterprompt": (10, 0.0)}, token="poller",
                                    lease_ms=60_000, horizon_ms=1000)
    assert [f["r"] for _, f in claims["betterprompt"].runs] == ["contested"]
    assert await Heartbeat(hrelay, "sweeper", []).sweep() == 1
    late = await store.settle_run("betterprompt", "contested", token="poller", next_poll_ms=1,
                                  fields={"s": "running"}, event=None)
    assert late[0] == 3  # the poller's lease is gone: its result is dropped
    assert len(await store.run_event_ids("betterprompt", "contested")) == 1

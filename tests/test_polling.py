"""The poll scheduler in-process against fake providers on real HTTP and a real Redis."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from relay.config import Settings
from relay.heartbeat import Heartbeat
from relay.outbound import ProviderClient
from relay.poller import Poller
from relay.providers import poll_providers
from relay.service import Relay
from relay.store import Store
from relay.tracking import Tracking
from tests.fakes import (
    FLORA_SECRET,
    FakeProvider,
    Step,
    bp,
    flora,
    flora_callback,
    flora_signature,
    runflow,
)
from tests.helpers import (
    API_KEY,
    RUNFLOW_SECRET,
    SECRET_KEY,
    RedisClusterServer,
    RedisServer,
    admin_headers,
    eventually,
    runflow_body,
    runflow_signature,
)
from tests.test_openapi import assert_matches

pytestmark = pytest.mark.both_redis


def poll_env(redis: RedisServer | RedisClusterServer, prefix: str, fake_url: str, **extra: str
             ) -> dict[str, str]:
    env = {
        "REDIS_URL": redis.url, "REDIS_CLUSTER": "true" if redis.cluster else "false",
        "RELAY_KEY_PREFIX": prefix, "RELAY_SECRET_KEY": SECRET_KEY,
        "RELAY_API_KEYS": API_KEY, "RUNFLOW_CALLBACK_SECRETS": RUNFLOW_SECRET,
        "RELAY_ALLOW_PRIVATE_TARGETS": "true", "RELAY_LOG_FORMAT": "json",
        "RELAY_RETRY_SCHEDULE": "0.2,0.4", "RELAY_RETRY_JITTER": "0",
        "RELAY_CLAIM_TIMEOUT": "4", "RELAY_POLL_MIN_INTERVAL": "0.05",
        "RELAY_POLL_MAX_INTERVAL": "0.2",
        "BETTERPROMPT_API_KEY": "bp-key", "BETTERPROMPT_BASE_URL": fake_url,
        "BETTERPROMPT_RATE_LIMIT": "1000",
        "FLORA_API_KEY": "flora-key", "FLORA_BASE_URL": fake_url, "FLORA_RATE_LIMIT": "1000",
        "FLORA_WEBHOOK_SECRETS": FLORA_SECRET,
        "RUNFLOW_API_KEY": "rf-key", "RUNFLOW_BASE_URL": fake_url,
    }
    env.update(extra)
    return env


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    provider = FakeProvider().start()
    yield provider
    provider.stop()


@pytest.fixture
def psettings(redis_server: RedisServer, prefix: str, fake: FakeProvider) -> Settings:
    return Settings.from_env(poll_env(redis_server, prefix, fake.url))


class Rig:
    """Store, relay, tracking and a running worker's poller and heartbeat, in this event loop."""

    def __init__(self, settings: Settings, url: str) -> None:
        self.settings = settings
        self.store = Store(settings, url)
        self.relay = Relay(settings, self.store)
        self.client = ProviderClient(max_bytes=settings.max_body_bytes)
        self.tracking = Tracking(self.relay)
        self.poller = Poller(self.relay, poll_providers(settings), self.client)
        self.heartbeat = Heartbeat(self.relay, self.poller.name, self.poller.providers)
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> Rig:
        await self.store.ensure_groups()
        await self.relay.subs.refresh()
        await self.heartbeat.beat()
        self.tasks = [asyncio.create_task(self.poller.run(self.stop, grace=1)),
                      asyncio.create_task(self.heartbeat.run(self.stop))]
        return self

    async def close(self) -> None:
        self.stop.set()
        await asyncio.gather(*self.tasks)
        await self.client.aclose()
        await self.store.aclose()

    async def events(self, provider: str, run_id: str) -> list[dict[str, Any]]:
        ids = await self.store.run_event_ids(provider, run_id)
        bodies = await self.store.get_event_bodies(ids)
        return [json.loads(b) for b in bodies if b]

    async def finished(self, provider: str, run_id: str) -> bool:
        return bool((await self.tracking.show(provider, run_id))["state"] == "finished")


@pytest.fixture
async def rig(psettings: Settings, redis_server: RedisServer) -> AsyncIterator[Rig]:
    r = await Rig(psettings, redis_server.url).start()
    yield r
    await r.close()


async def test_betterprompt_run_is_polled_to_completion_with_updates_and_mapped_outputs(
        rig: Rig, fake: FakeProvider) -> None:
    fake.script("bp1", bp("queued"), bp("queued"), bp("running"),
                bp("succeeded", [{"type": "text", "data": "a caption"},
                                 {"type": "image", "data": "https://cdn.bp/img.png"},
                                 {"type": "video", "data": "https://cdn.bp/v.mp4"}], tokens=132))
    started = time.time()
    view, created = await rig.tracking.track("betterprompt", "bp1", metadata={"k": 1},
                                             channels=["tenant-a"])
    assert created and view["state"] == "active" and view["status"] is None
    await eventually(lambda: rig.finished("betterprompt", "bp1"), within=10)
    events = await rig.events("betterprompt", "bp1")
    assert [e["event"] for e in events] == ["run.updated", "run.updated", "run.completed"]
    assert [e["status"] for e in events] == ["queued", "running", "succeeded"]
    done = events[-1]
    assert done["source"] == "poll" and done["error"] is None
    assert done["metadata"] == {"k": 1} and done["channels"] == ["tenant-a"]
    outputs = done["output"]["outputs"]
    assert outputs[0] == {"type": "text", "text": "a caption"}
    assert outputs[1]["type"] == "image" and outputs[1]["url"] == "https://cdn.bp/img.png"
    assert outputs[2]["type"] == "video"
    expires = time.mktime(time.strptime(outputs[1]["expires_at"][:19], "%Y-%m-%dT%H:%M:%S"))
    assert abs(expires - time.timezone - (time.time() + 86_400)) < 60
    assert done["cost"] == {"amount": 132, "unit": "credits"}
    assert done["provider_payload"]["data"]["runStatus"] == "succeeded"
    assert done["duration_ms"] >= 0 and done["created_at"] < done["completed_at"]
    assert done["created_at"] >= time.strftime("%Y-%m-%dT%H:%M", time.gmtime(started - 60))
    # Polling stops the moment the run is finished: not one request after that.
    polls = len(fake.requests_for("bp1"))
    assert polls == 4
    await asyncio.sleep(0.6)
    assert len(fake.requests_for("bp1")) == polls
    shown = await rig.tracking.show("betterprompt", "bp1")
    assert shown["polls"] == 4 and shown["status"] == "succeeded"
    assert shown["events"] == [e["id"] for e in events]
    assert fake.requests_for("bp1")[0].authorization == "Bearer bp-key"


async def test_flora_run_is_terminal_only_from_status_and_maps_failure(
        rig: Rig, fake: FakeProvider) -> None:
    fake.script("run_f1", flora("pending"), flora("running", progress=40),
                # progress 100 and completed_at on a running run do not make it terminal
                flora("running", progress=100, completed_at=1_778_061_700_000),
                flora("failed", progress=100, completed_at=1_778_061_700_000,
                      error_code="GENERATION_PROMPT_MODERATED", error_message="refused"))
    await rig.tracking.track("flora", "run_f1", technique_id="tech_portrait")
    await eventually(lambda: rig.finished("flora", "run_f1"), within=10)
    events = await rig.events("flora", "run_f1")
    assert [(e["event"], e["status"], e.get("progress")) for e in events] == [
        ("run.updated", "queued", 0), ("run.updated", "running", 40),
        ("run.updated", "running", 100), ("run.failed", "failed", 100)]
    failed = events[-1]
    assert failed["output"] is None
    assert failed["error"] == {"code": "GENERATION_PROMPT_MODERATED", "message": "refused",
                               "stage": "provider"}
    assert failed["created_at"] == "2026-05-06T10:00:00.000+00:00"
    assert failed["completed_at"] == "2026-05-06T10:01:40.000+00:00"
    assert failed["duration_ms"] == 100_000
    seen = fake.requests_for("run_f1")
    assert {r.technique_id for r in seen} == {"tech_portrait"}
    assert seen[0].path == "/techniques/tech_portrait/runs/run_f1"


async def test_flora_outputs_map_every_type_and_times_in_seconds(
        rig: Rig, fake: FakeProvider) -> None:
    fake.script("run_f2", flora("completed", progress=100, created_at=1_778_061_600,
                                started_at=1_778_061_610, completed_at=1_778_061_661,
                                charged_cost=0.873, outputs=[
        {"output_id": "o1", "type": "imageUrl", "url": "https://media.flora.ai/i.png"},
        {"output_id": "o2", "type": "videoUrl", "url": "https://media.flora.ai/v.mp4"},
        {"output_id": "o3", "type": "audioUrl", "url": "https://media.flora.ai/a.mp3"},
        {"output_id": "o4", "type": "text", "url": "the text itself"},
        {"output_id": "o5", "type": "documentUrl", "url": "https://media.flora.ai/d.pdf"}]))
    await rig.tracking.track("flora", "run_f2", technique_id="tech_1")
    await eventually(lambda: rig.finished("flora", "run_f2"), within=10)
    (done,) = await rig.events("flora", "run_f2")
    assert done["event"] == "run.completed" and done["status"] == "succeeded"
    assert done["output"] == {"outputs": [
        {"type": "image", "url": "https://media.flora.ai/i.png"},
        {"type": "video", "url": "https://media.flora.ai/v.mp4"},
        {"type": "audio", "url": "https://media.flora.ai/a.mp3"},
        {"type": "text", "text": "the text itself"},
        {"type": "document", "url": "https://media.flora.ai/d.pdf"}]}
    assert done["created_at"] == "2026-05-06T10:00:00.000+00:00"
    assert done["completed_at"] == "2026-05-06T10:01:01.000+00:00"
    assert done["duration_ms"] == 51_000
    assert done["cost"] == {"amount": 0.873, "unit": "usd"}


async def test_runflow_run_is_tracked_as_a_safety_net_with_failure_fields(
        rig: Rig, fake: FakeProvider) -> None:
    fake.script("rf1", runflow("queued"), runflow("dispatching"), runflow("running"),
                runflow("failed", failure_code="INPUT_VALIDATION_FAILED",
                        failure_message="image too large", failure_stage_code="preprocess",
                        completed_at="2026-05-06T10:01:42.000+00:00", duration_ms=102345))
    await rig.tracking.track("runflow", "rf1")
    await eventually(lambda: rig.finished("runflow", "rf1"), within=10)
    events = await rig.events("runflow", "rf1")
    assert [e["event"] for e in events] == ["run.updated", "run.updated", "run.failed"]
    failed = events[-1]
    assert failed["error"] == {"code": "INPUT_VALIDATION_FAILED", "message": "image too large",
                               "stage": "preprocess"}
    assert failed["completed_at"] == "2026-05-06T10:01:42.000+00:00"
    assert failed["duration_ms"] == 102345 and failed["output"] is None
    assert fake.requests_for("rf1")[0].path == "/v1/runs/rf1"


async def test_runflow_success_relays_runflow_output_as_given(
        rig: Rig, fake: FakeProvider) -> None:
    output = {"image_urls": ["https://cdn.runflow.io/a.png"]}
    fake.script("rf2", runflow("succeeded", output=output, duration_ms=5,
                               completed_at="2026-05-06T10:00:05.000+00:00"))
    await rig.tracking.track("runflow", "rf2")
    await eventually(lambda: rig.finished("runflow", "rf2"), within=10)
    (done,) = await rig.events("runflow", "rf2")
    assert done["event"] == "run.completed" and done["output"] == output


async def test_three_404s_in_a_row_end_the_run_with_run_expired(
        rig: Rig, fake: FakeProvider) -> None:
    await rig.tracking.track("betterprompt", "ghost")  # unscripted: the fake answers 404
    await eventually(lambda: rig.finished("betterprompt", "ghost"), within=10)
    (expired,) = await rig.events("betterprompt", "ghost")
    assert expired["event"] == "run.expired"
    assert expired["error"]["code"] == "not_found" and expired["error"]["stage"] == "relay"
    assert len(fake.requests_for("ghost")) == 3
    await asyncio.sleep(0.5)
    assert len(fake.requests_for("ghost")) == 3


async def test_a_404_between_answers_does_not_count_towards_expiry(
        rig: Rig, fake: FakeProvider) -> None:
    missing = Step(404, {"status": "NOT_FOUND_ERROR", "message": "no", "data": None})
    fake.script("flaky", missing, missing, bp("running"), missing, missing,
                bp("succeeded", [{"type": "text", "data": "ok"}]))
    await rig.tracking.track("betterprompt", "flaky")
    await eventually(lambda: rig.finished("betterprompt", "flaky"), within=10)
    events = await rig.events("betterprompt", "flaky")
    assert [e["event"] for e in events] == ["run.updated", "run.completed"]


async def test_auth_errors_keep_the_run_tracked_and_show_in_it(
        rig: Rig, fake: FakeProvider, capsys: pytest.CaptureFixture[str]) -> None:
    denied = Step(401, {"status": "UNAUTHORIZED_ERROR", "message": "bad key", "data": None})
    fake.script("locked", denied, denied, denied)
    await rig.tracking.track("betterprompt", "locked")
    await eventually(lambda: len(fake.requests_for("locked")) >= 2, within=10)
    view = await rig.tracking.show("betterprompt", "locked")
    assert view["state"] == "active"
    assert view["last_error"]["code"] == "provider_auth"
    assert view["last_error"]["status_code"] == 401
    assert "poll_failed" in capsys.readouterr().out
    fake.script("locked", bp("succeeded", []))
    await eventually(lambda: rig.finished("betterprompt", "locked"), within=10)
    assert (await rig.tracking.show("betterprompt", "locked"))["last_error"] is None


async def test_betterprompt_429_honours_retry_after(rig: Rig, fake: FakeProvider) -> None:
    fake.script("busy", Step(429, {"status": "TOO_MANY_REQUESTS_ERROR", "message": "slow down",
                                   "data": None}, headers={"retry-after": "1"}),
                bp("succeeded", []))
    await rig.tracking.track("betterprompt", "busy")
    await eventually(lambda: rig.finished("betterprompt", "busy"), within=10)
    first, second = fake.requests_for("busy")
    assert second.at - first.at >= 0.95


async def test_flora_429_without_retry_after_backs_off(
        redis_server: RedisServer, prefix: str, fake: FakeProvider) -> None:
    settings = Settings.from_env(poll_env(redis_server, prefix, fake.url,
                                          RELAY_POLL_MIN_INTERVAL="0.1",
                                          RELAY_POLL_MAX_INTERVAL="2"))
    limited = Step(429, {"error": {"code": "rate_limited", "message": "slow"}})
    fake.script("run_busy", flora("running"), limited, limited, limited, flora("completed"))
    rig = await Rig(settings, redis_server.url).start()
    try:
        await rig.tracking.track("flora", "run_busy", technique_id="t1")
        await eventually(lambda: rig.finished("flora", "run_busy"), within=15)
    finally:
        await rig.close()
    at = [r.at for r in fake.requests_for("run_busy")]
    gaps = [b - a for a, b in itertools.pairwise(at)]
    # Each 429 doubles the wait: 0.1 -> 0.2 -> 0.4 -> 0.8 (with 10 % jitter either way).
    assert gaps[1] > gaps[0] * 1.5 and gaps[2] > gaps[1] * 1.5 and gaps[3] > gaps[2] * 1.5


async def test_server_errors_and_slow_answers_back_off_and_the_run_still_finishes(
        redis_server: RedisServer, prefix: str, fake: FakeProvider) -> None:
    settings = Settings.from_env(poll_env(redis_server, prefix, fake.url,
                                          RELAY_CLAIM_TIMEOUT="1"))  # request deadline 0.5 s
    fake.script("shaky", Step(500, {"status": "SERVER_ERROR", "message": "oops"}),
                Step(503, b"<html>unavailable</html>"),
                Step(200, {"status": "SUCCESS", "data": {}}),  # not the documented shape
                Step(200, b"{not json"),
                Step(delay=2.0, body={"status": "SUCCESS", "data": {"runStatus": "running"}}),
                bp("succeeded", [{"type": "text", "data": "finally"}]))
    rig = await Rig(settings, redis_server.url).start()
    try:
        await rig.tracking.track("betterprompt", "shaky")
        await eventually(lambda: rig.finished("betterprompt", "shaky"), within=15)
        (done,) = await rig.events("betterprompt", "shaky")
        assert done["output"] == {"outputs": [{"type": "text", "text": "finally"}]}
        assert len(fake.requests_for("shaky")) == 6
    finally:
        await rig.close()


async def test_a_run_older_than_max_age_ends_with_run_expired_without_a_request(
        redis_server: RedisServer, prefix: str, fake: FakeProvider) -> None:
    settings = Settings.from_env(poll_env(redis_server, prefix, fake.url,
                                          RELAY_POLL_MAX_AGE="0.5"))
    fake.script("slowpoke", bp("running"))
    rig = await Rig(settings, redis_server.url).start()
    try:
        await rig.tracking.track("betterprompt", "slowpoke")
        await eventually(lambda: rig.finished("betterprompt", "slowpoke"), within=10)
        events = await rig.events("betterprompt", "slowpoke")
        assert events[0]["event"] == "run.updated"
        assert events[-1]["event"] == "run.expired"
        assert events[-1]["error"]["code"] == "max_age"
        count = len(fake.requests_for("slowpoke"))
        await asyncio.sleep(0.5)
        assert len(fake.requests_for("slowpoke")) == count
    finally:
        await rig.close()


@pytest.fixture
async def app_client(psettings: Settings, redis_server: RedisServer
                     ) -> AsyncIterator[httpx.AsyncClient]:
    from relay.web.app import create_app

    app = create_app(psettings, redis_server.url)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://relay") as c:
            yield c


async def post_flora(client: httpx.AsyncClient, body: bytes, *, path: str = "/callbacks/flora",
                     signature: str | None = None) -> httpx.Response:
    return await client.post(path, content=body, headers={
        "flora-signature": signature or flora_signature(body), "content-type": "application/json"})


async def test_flora_callback_fetches_the_tracked_run_and_emits_outputs_once(
        rig: Rig, fake: FakeProvider, app_client: httpx.AsyncClient) -> None:
    fake.script("run_cb", flora("running", progress=10), flora("completed", outputs=[
        {"output_id": "o1", "type": "imageUrl", "url": "https://media.flora.ai/x.png"}]))
    await rig.tracking.track("flora", "run_cb", technique_id="tech_cb", metadata={"job": 7})
    await eventually(lambda: len(fake.requests_for("run_cb")) >= 1)
    body = flora_callback("run_cb", delivery_id="whd_cb1")
    r = await post_flora(app_client, body)
    assert r.status_code == 200, r.text
    first = r.json()
    # FLORA redelivers the same delivery: same answer, nothing new.
    again = await post_flora(app_client, body)
    assert again.json() == {**first, "duplicate": True}
    await eventually(lambda: rig.finished("flora", "run_cb"))
    terminal = [e for e in await rig.events("flora", "run_cb") if e["event"] != "run.updated"]
    assert len(terminal) == 1 and terminal[0]["id"] == first["event_id"]
    done = terminal[0]
    assert done["event"] == "run.completed" and done["source"] == "callback"
    assert done["output"] == {"outputs": [{"type": "image", "url": "https://media.flora.ai/x.png"}]}
    assert done["metadata"] == {"job": 7}
    assert done["provider_payload"]["status"] == "completed"
    count = len(fake.requests_for("run_cb"))
    await asyncio.sleep(0.5)
    assert len(fake.requests_for("run_cb")) == count


async def test_flora_callback_for_an_unknown_run_without_technique_is_emitted_alone(
        fake: FakeProvider, app_client: httpx.AsyncClient, rig: Rig) -> None:
    body = flora_callback("run_unknown", kind="run.failed", delivery_id="whd_u",
                          error_code="GPU_PROVIDER_ERROR", error_message="boom")
    r = await post_flora(app_client, body)
    assert r.status_code == 200 and r.json()["duplicate"] is False
    (event,) = await rig.events("flora", "run_unknown")
    assert event["event"] == "run.failed" and event["output"] is None
    assert event["error"] == {"code": "GPU_PROVIDER_ERROR", "message": "boom",
                              "stage": "provider"}
    assert event["completed_at"] == "2026-05-06T10:01:01.234+00:00"
    assert event["provider_payload"]["id"] == "whd_u"
    assert fake.requests_for("run_unknown") == []


async def test_flora_callback_url_carries_the_technique_id_for_an_untracked_run(
        fake: FakeProvider, app_client: httpx.AsyncClient, rig: Rig) -> None:
    fake.script("run_tok", flora("completed", outputs=[
        {"output_id": "o", "type": "text", "url": "hello"}]))
    minted = await app_client.post("/v1/callback-urls", headers=admin_headers(), json={
        "provider": "flora", "technique_id": "tech_tok", "channels": ["team-x"]})
    path = minted.json()["url"].removeprefix(rig.settings.public_url)
    r = await post_flora(app_client, flora_callback("run_tok", delivery_id="whd_t"), path=path)
    assert r.status_code == 200, r.text
    (event,) = await rig.events("flora", "run_tok")
    assert event["output"] == {"outputs": [{"type": "text", "text": "hello"}]}
    assert event["channels"] == ["team-x"]
    assert fake.requests_for("run_tok")[0].technique_id == "tech_tok"


async def test_flora_callback_whose_run_cannot_be_read_is_finished_by_the_poller(
        rig: Rig, fake: FakeProvider, app_client: httpx.AsyncClient) -> None:
    fake.script("run_late", Step(500, {"error": {"code": "internal_error", "message": "x"}}),
                Step(500, {"error": {"code": "internal_error", "message": "x"}}),
                flora("completed", outputs=[{"output_id": "o", "type": "imageUrl",
                                             "url": "https://media.flora.ai/late.png"}]))
    minted = await app_client.post("/v1/callback-urls", headers=admin_headers(), json={
        "provider": "flora", "technique_id": "tech_late"})
    path = minted.json()["url"].removeprefix(rig.settings.public_url)
    r = await post_flora(app_client, flora_callback("run_late", delivery_id="whd_l"), path=path)
    assert r.status_code == 200, r.text
    answered = r.json()["event_id"]
    await eventually(lambda: rig.finished("flora", "run_late"), within=10)
    (event,) = await rig.events("flora", "run_late")
    assert event["id"] == answered and event["source"] == "callback"
    assert event["output"]["outputs"][0]["url"] == "https://media.flora.ai/late.png"


async def test_flora_signatures_are_checked_with_a_300_second_window(
        app_client: httpx.AsyncClient, rig: Rig) -> None:
    body = flora_callback("run_sig", delivery_id="whd_s")
    now = int(time.time())
    for signature in (flora_signature(body, t=now - 310), flora_signature(body, t=now + 310),
                      flora_signature(body, secret="whsec_other"), "t=abc,v1=00",
                      f"t={now}", flora_signature(body + b" ")):
        r = await post_flora(app_client, body, signature=signature)
        assert r.status_code == 401, signature
        assert r.json()["error"]["code"] == "invalid_signature"
    # Rotation: any v1 may match, and any configured secret.
    good = flora_signature(body, t=now - 299).split("v1=")[1]
    r = await post_flora(app_client, body, signature=f"t={now - 299},v1={'0' * 64},v1={good}")
    assert r.status_code == 200, r.text
    bad = await post_flora(app_client, b'{"id": "whd_x", "type": "run.started", "data": {}}')
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_envelope"
    token = await app_client.post("/callbacks/flora/not-a-token", content=body,
                                  headers={"flora-signature": flora_signature(body)})
    assert token.status_code == 401 and token.json()["error"]["code"] == "invalid_token"


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.15])
async def test_callback_and_poll_racing_give_exactly_one_terminal_event(
        rig: Rig, fake: FakeProvider, app_client: httpx.AsyncClient, delay: float) -> None:
    run_id = f"race{int(delay * 100)}"
    fake.script(run_id, runflow("running"),
                Step(delay=delay, body=runflow("succeeded").body))
    await rig.tracking.track("runflow", run_id)
    await eventually(lambda: len(fake.requests_for(run_id)) >= 2)
    body = runflow_body(run_id)
    r = await app_client.post("/callbacks/runflow", content=body,
                              headers={"runflow-signature": runflow_signature(body)})
    assert r.status_code == 200
    await eventually(lambda: rig.finished("runflow", run_id))
    await asyncio.sleep(max(delay, 0.1) + 0.2)
    terminal = [e for e in await rig.events("runflow", run_id) if e["event"] != "run.updated"]
    assert len(terminal) == 1
    view = await rig.tracking.show("runflow", run_id)
    assert view["state"] == "finished"


async def test_a_callback_stops_polling_of_its_tracked_run(
        rig: Rig, fake: FakeProvider, app_client: httpx.AsyncClient) -> None:
    fake.script("stopper", runflow("running"))
    await rig.tracking.track("runflow", "stopper")
    await eventually(lambda: len(fake.requests_for("stopper")) >= 1)
    body = runflow_body("stopper")
    await app_client.post("/callbacks/runflow", content=body,
                          headers={"runflow-signature": runflow_signature(body)})
    await asyncio.sleep(0.3)  # a poll already in flight may still land
    count = len(fake.requests_for("stopper"))
    await asyncio.sleep(0.6)
    assert len(fake.requests_for("stopper")) == count
    events = await rig.events("runflow", "stopper")
    assert events[-1]["event"] == "run.completed" and events[-1]["source"] == "callback"
    assert [e for e in events if e["event"] == "run.updated"][-1:] == events[:-1][-1:]


async def test_tracked_runs_api(app_client: httpx.AsyncClient, rig: Rig,
                                fake: FakeProvider) -> None:
    h = admin_headers()
    fake.script("api1", bp("running"))
    r = await app_client.post("/v1/runs", headers=h, json={
        "provider": "betterprompt", "run_id": "api1", "channels": ["a"], "metadata": {"x": 1}})
    assert r.status_code == 201, r.text
    run = r.json()
    assert_matches(run, "TrackedRun")
    assert run["provider"] == "betterprompt" and run["state"] == "active"
    assert run["polls"] == 0 and run["events"] == [] and run["next_poll_at"]
    again = await app_client.post("/v1/runs", headers=h, json={
        "provider": "betterprompt", "run_id": "api1"})
    assert again.status_code == 200 and again.json()["tracked_since"] == run["tracked_since"]
    missing_technique = await app_client.post("/v1/runs", headers=h, json={
        "provider": "flora", "run_id": "f"})
    assert missing_technique.status_code == 422
    assert missing_technique.json()["error"]["details"][0]["field"] == "technique_id"
    unknown = await app_client.post("/v1/runs", headers=h, json={"provider": "x", "run_id": "r"})
    assert unknown.status_code == 422
    spaced = await app_client.post("/v1/runs", headers=h, json={
        "provider": "betterprompt", "run_id": "a b"})
    assert spaced.status_code == 422
    await eventually(lambda: rig.tracking.show("betterprompt", "api1"))
    await eventually(lambda: _polled(app_client, "betterprompt/api1"))
    shown = (await app_client.get("/v1/runs/betterprompt/api1", headers=h)).json()
    assert_matches(shown, "TrackedRun")
    assert shown["status"] == "running" and shown["last_polled_at"] and len(shown["events"]) == 1
    listed = (await app_client.get("/v1/runs?state=active&provider=betterprompt",
                                   headers=h)).json()
    assert_matches(listed, "TrackedRunPage")
    assert [x["run_id"] for x in listed["data"]] == ["api1"]
    assert (await app_client.get("/v1/runs?state=finished", headers=h)).json()["data"] == []
    assert (await app_client.get("/v1/runs?state=odd", headers=h)).status_code == 422
    assert (await app_client.delete("/v1/runs/betterprompt/api1", headers=h)).status_code == 204
    assert (await app_client.get("/v1/runs/betterprompt/api1", headers=h)).status_code == 404
    assert (await app_client.delete("/v1/runs/betterprompt/api1", headers=h)).status_code == 404
    count = len(fake.requests_for("api1"))
    await asyncio.sleep(0.5)
    assert len(fake.requests_for("api1")) == count  # untracked: no more polls


async def _polled(client: httpx.AsyncClient, path: str) -> bool:
    r = await client.get(f"/v1/runs/{path}", headers=admin_headers())
    return r.status_code == 200 and r.json()["polls"] >= 1


async def test_tracking_a_provider_that_no_live_worker_polls_is_refused(
        client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/runs", headers=admin_headers(), json={
        "provider": "betterprompt", "run_id": "r1"})
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "provider_not_configured"
    flora_cb = flora_callback("r2")
    refused = await client.post("/callbacks/flora", content=flora_cb,
                                headers={"flora-signature": flora_signature(flora_cb)})
    assert refused.status_code == 401  # no FLORA_WEBHOOK_SECRETS: refuse everything

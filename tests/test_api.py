"""Admin API, callback tokens, operations endpoints and the 503 path, in-process."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

import httpx
import pytest
import redis

from relay.config import Settings
from tests.helpers import (
    RedisClusterServer,
    RedisServer,
    admin_headers,
    free_port,
    runflow_body,
    runflow_signature,
)

pytestmark = pytest.mark.both_redis

H = admin_headers()


@asynccontextmanager
async def app_client(settings: Settings, redis_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """The app in-process with its lifespan, for settings other than the fixture's."""
    from relay.web.app import create_app

    app = create_app(settings, redis_url)
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=transport, base_url="http://relay") as c:
        yield c


async def test_admin_routes_need_a_valid_bearer_key(client: httpx.AsyncClient) -> None:
    for headers in ({}, {"authorization": "Bearer nope"}, {"authorization": "Basic x"},
                    {"authorization": "Bearer "}):
        r = await client.get("/v1/subscriptions", headers=headers)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "unauthorized"
    assert (await client.get("/v1/subscriptions", headers=H)).status_code == 200


async def test_subscription_lifecycle(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/subscriptions", headers=H, json={
        "url": "http://127.0.0.1:9/hook", "events": ["run.*"], "description": "ci"})
    assert r.status_code == 201
    created = r.json()
    assert created["id"].startswith("sub_") and created["secret"].startswith("whsec_")
    assert created["status"] == "enabled" and created["events"] == ["run.*"]
    sub_id = created["id"]
    shown = (await client.get(f"/v1/subscriptions/{sub_id}", headers=H)).json()
    assert "secret" not in shown and shown["description"] == "ci"
    r = await client.patch(f"/v1/subscriptions/{sub_id}", headers=H,
                           json={"enabled": False, "channels": ["a"]})
    assert r.json()["status"] == "disabled" and r.json()["disabled_reason"]
    assert r.json()["channels"] == ["a"]
    r = await client.patch(f"/v1/subscriptions/{sub_id}", headers=H, json={"enabled": True})
    assert r.json()["status"] == "enabled" and r.json()["disabled_reason"] is None
    listed = (await client.get("/v1/subscriptions", headers=H)).json()
    assert [s["id"] for s in listed["data"]] == [sub_id] and listed["next_cursor"] is None
    assert (await client.delete(f"/v1/subscriptions/{sub_id}", headers=H)).status_code == 204
    r = await client.get(f"/v1/subscriptions/{sub_id}", headers=H)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


async def test_lists_page_newest_first_with_a_cursor(client: httpx.AsyncClient) -> None:
    made = []
    for i in range(5):
        r = await client.post("/v1/subscriptions", headers=H,
                              json={"url": f"http://127.0.0.1:9/{i}"})
        made.append(r.json()["id"])
    seen: list[str] = []
    cursor = None
    while True:
        q = "?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = (await client.get(f"/v1/subscriptions{q}", headers=H)).json()
        seen += [s["id"] for s in page["data"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == list(reversed(made))
    for bad in ("0", "101", "x"):
        r = await client.get(f"/v1/subscriptions?limit={bad}", headers=H)
        assert r.status_code == 422 and r.json()["error"]["details"]


@pytest.mark.parametrize("body", [
    {"url": "ftp://example.com/hook"}, {"url": "not a url"}, {"url": "http:///nohost"},
])
async def test_non_http_urls_are_invalid_url(client: httpx.AsyncClient, body: object) -> None:
    r = await client.post("/v1/subscriptions", headers=H, json=body)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_url"


async def test_private_targets_are_refused_unless_allowed(
        settings: Settings, redis_server: RedisServer) -> None:
    strict = settings.with_overrides(allow_private_targets=False)
    async with app_client(strict, redis_server.url) as c:
        for url in ("http://127.0.0.1/x", "http://10.1.2.3/x", "http://169.254.169.254/",
                    "http://[::1]/x", "http://0x7f000001/x", "http://2130706433/x",
                    "http://100.64.0.1/x", "http://localhost/x"):
            r = await c.post("/v1/subscriptions", headers=H, json={"url": url})
            assert r.status_code == 422, url
            assert r.json()["error"]["code"] == "invalid_url"


@pytest.mark.parametrize(("body", "field"), [
    ({}, "url"), ({"url": "http://127.0.0.1/x", "events": "run.*"}, "events"),
    ({"url": "http://127.0.0.1/x", "enabled": "yes"}, "enabled"),
    ({"url": "http://127.0.0.1/x", "colour": "red"}, "colour"),
    ({"url": "http://127.0.0.1/x", "channels": []}, "channels"),
])
async def test_invalid_subscription_bodies_are_422_with_details(
        client: httpx.AsyncClient, body: object, field: str) -> None:
    r = await client.post("/v1/subscriptions", headers=H, json=body)
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["code"] == "validation_error"
    assert [d["field"] for d in error["details"]] == [field]


async def test_admin_body_that_is_not_json_is_400(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/subscriptions", headers=H, content=b"{nope")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"


async def test_callback_token_carries_channels_and_metadata(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/callback-urls", headers=H, json={
        "provider": "runflow", "channels": ["tenant-a"], "metadata": {"order": 42}})
    url = r.json()["url"]
    assert url.startswith("http://localhost:8000/callbacks/runflow/")
    path = url.removeprefix("http://localhost:8000")
    body = runflow_body("tok-1", metadata={"job": "x"})
    r = await client.post(path, content=body, headers={"runflow-signature":
                                                        runflow_signature(body)})
    assert r.status_code == 200
    event = (await client.get(f"/v1/events/{r.json()['event_id']}", headers=H)).json()
    assert event["channels"] == ["tenant-a"]
    assert event["metadata"] == {"order": 42, "job": "x"}
    unsigned = await client.post(path, content=body)
    assert unsigned.status_code == 401 and unsigned.json()["error"]["code"] == "invalid_signature"


async def test_forged_or_foreign_tokens_are_invalid_token(client: httpx.AsyncClient) -> None:
    flora = (await client.post("/v1/callback-urls", headers=H,
                               json={"provider": "flora"})).json()["url"]
    foreign = flora.rsplit("/", 1)[1]
    body = runflow_body("tok-2")
    headers = {"runflow-signature": runflow_signature(body)}
    for token in ("garbage", foreign, foreign[:-2] + "xx"):
        r = await client.post(f"/callbacks/runflow/{token}", content=body, headers=headers)
        assert r.status_code == 401, token
        assert r.json()["error"]["code"] == "invalid_token"


async def test_callback_url_request_is_validated(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/callback-urls", headers=H, json={"provider": "replicate"})
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "provider"


async def test_runflow_route_refuses_everything_without_secrets(
        settings: Settings, redis_server: RedisServer) -> None:
    runflow = replace(settings.provider("runflow"), callback_secrets=())
    bare = settings.with_overrides(providers={**settings.providers, "runflow": runflow})
    async with app_client(bare, redis_server.url) as c:
        body = runflow_body("no-secret")
        r = await c.post("/callbacks/runflow", content=body,
                         headers={"runflow-signature": runflow_signature(body)})
        assert r.status_code == 401


@pytest.fixture
async def dead_redis_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(settings, f"redis://127.0.0.1:{free_port()}/0") as c:
        yield c


async def test_unreachable_redis_gives_503_unavailable_never_a_silent_200(
        dead_redis_client: httpx.AsyncClient) -> None:
    body = runflow_body("down-1")
    r = await dead_redis_client.post("/callbacks/runflow", content=body,
                                     headers={"runflow-signature": runflow_signature(body)})
    assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable"
    r = await dead_redis_client.get("/v1/subscriptions", headers=H)
    assert r.status_code == 503
    assert (await dead_redis_client.get("/readyz")).status_code == 503
    assert (await dead_redis_client.get("/healthz")).status_code == 200


async def test_ops_endpoints(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"ok": True}
    assert (await client.get("/readyz")).status_code == 200
    body = runflow_body("metrics-1")
    await client.post("/callbacks/runflow", content=body,
                      headers={"runflow-signature": runflow_signature(body)})
    text = (await client.get("/metrics")).text
    assert 'relay_callbacks_total{outcome="accepted",provider="runflow"}' in text
    assert 'relay_queue_depth{state="pending"} 0.0' in text


async def test_unknown_routes_and_methods_use_the_error_shape(client: httpx.AsyncClient) -> None:
    r = await client.get("/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = await client.get("/callbacks/runflow")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


async def test_events_filter_by_run_id_without_provider_and_by_type(
        client: httpx.AsyncClient) -> None:
    ids = {}
    for run_id, event in (("f-1", "run.completed"), ("f-2", "run.failed"), ("f-3", "run.failed")):
        body = runflow_body(run_id, event=event)
        r = await client.post("/callbacks/runflow", content=body,
                              headers={"runflow-signature": runflow_signature(body)})
        ids[run_id] = r.json()["event_id"]
    by_run = (await client.get("/v1/events?run_id=f-2", headers=H)).json()["data"]
    assert [e["id"] for e in by_run] == [ids["f-2"]]
    failed = (await client.get("/v1/events?type=run.failed", headers=H)).json()["data"]
    assert [e["id"] for e in failed] == [ids["f-3"], ids["f-2"]]
    none = (await client.get("/v1/events?provider=flora", headers=H)).json()
    assert none == {"data": [], "next_cursor": None}


async def test_the_last_page_has_no_cursor(client: httpx.AsyncClient) -> None:
    for i in range(2):
        await client.post("/v1/subscriptions", headers=H, json={"url": f"http://127.0.0.1:9/{i}"})
    first = (await client.get("/v1/subscriptions?limit=1", headers=H)).json()
    assert first["next_cursor"]
    second = (await client.get(f"/v1/subscriptions?limit=1&cursor={first['next_cursor']}",
                               headers=H)).json()
    assert len(second["data"]) == 1 and second["next_cursor"] is None
    both = (await client.get("/v1/subscriptions?limit=2", headers=H)).json()
    assert len(both["data"]) == 2 and both["next_cursor"] is None


@pytest.mark.parametrize("url", ["http://[x/", "http://a\u0000b/", "http://a b/",
                                 "http://example.com:99999/"])
async def test_unparsable_subscription_urls_are_invalid_url(
        client: httpx.AsyncClient, url: str) -> None:
    r = await client.post("/v1/subscriptions", headers=H, json={"url": url})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_url"


async def test_lone_surrogates_in_admin_bodies_are_400(client: httpx.AsyncClient) -> None:
    body = rb'{"url":"http://127.0.0.1:9/","description":"\ud800"}'
    r = await client.post("/v1/subscriptions", headers=H, content=body)
    assert r.status_code == 400
    assert (await client.get("/v1/subscriptions", headers=H)).status_code == 200


@pytest.mark.parametrize("score", ["nan", "inf", "-inf"])
async def test_doctored_list_cursors_are_ignored_not_500(
        client: httpx.AsyncClient, score: str) -> None:
    cursor = base64.urlsafe_b64encode(f"{score}:x".encode()).decode().rstrip("=")
    for path in ("/v1/events", "/v1/subscriptions", "/v1/deliveries"):
        r = await client.get(f"{path}?cursor={cursor}", headers=H)
        assert r.status_code == 200, path


async def test_redis_out_of_memory_gives_503_unavailable(
        client: httpx.AsyncClient, redis_server: RedisServer | RedisClusterServer) -> None:
    nodes = redis_server.nodes if isinstance(redis_server, RedisClusterServer) else [redis_server]
    admins = [redis.Redis.from_url(node.url) for node in nodes]
    for admin in admins:
        admin.config_set("maxmemory", "1")
    try:
        body = b'{"run_id":"oom","event":"run.completed"}'
        r = await client.post("/callbacks/runflow", content=body,
                              headers={"runflow-signature": runflow_signature(body)})
        assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable"
    finally:
        for admin in admins:
            admin.config_set("maxmemory", "0")


async def test_an_events_deliveries_page_past_the_limit_with_a_cursor(
        client: httpx.AsyncClient) -> None:
    for i in range(3):
        await client.post("/v1/subscriptions", headers=H, json={"url": f"http://127.0.0.1:9/{i}"})
    body = b'{"run_id":"paged","event":"run.completed"}'
    event_id = (await client.post("/callbacks/runflow", content=body, headers={
        "runflow-signature": runflow_signature(body)})).json()["event_id"]
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

"""POST /callbacks/runflow: verification, validation, deduplication and storage."""

from __future__ import annotations

import json

import httpx
import pytest

from relay.store import Store
from tests.helpers import admin_headers, runflow_body, runflow_signature

pytestmark = pytest.mark.both_redis


async def post_runflow(client: httpx.AsyncClient, body: bytes, *, signature: str | None = None,
                       path: str = "/callbacks/runflow") -> httpx.Response:
    headers = {"runflow-signature": signature if signature is not None
               else runflow_signature(body), "content-type": "application/json"}
    return await client.post(path, content=body, headers=headers)


async def test_signed_callback_is_stored_and_answered_with_event_id(
        client: httpx.AsyncClient, store: Store) -> None:
    """A correctly signed envelope gets 200 with an evt_ id, and the event is in Redis."""
    r = await post_runflow(client, runflow_body("run-1"))
    assert r.status_code == 200
    doc = r.json()
    assert doc["ok"] is True and doc["duplicate"] is False
    assert doc["event_id"].startswith("evt_")
    stored = await store.get_event(doc["event_id"])
    assert stored is not None
    event = json.loads(stored["body"])
    assert event["event"] == "run.completed" and event["run_id"] == "run-1"
    assert event["output"] == {"image_urls": ["https://cdn.example.com/a.png"]}


async def test_same_run_and_event_twice_is_a_duplicate_with_the_same_id(
        client: httpx.AsyncClient) -> None:
    first = await post_runflow(client, runflow_body("run-2"))
    again = await post_runflow(client, runflow_body("run-2", duration_ms=5))
    assert again.status_code == 200
    assert again.json() == {"ok": True, "event_id": first.json()["event_id"], "duplicate": True}


async def test_wrong_signature_is_401_whatever_the_body(client: httpx.AsyncClient) -> None:
    for body in (runflow_body("run-3"), b"not json at all", b"{}"):
        r = await post_runflow(client, body, signature="0" * 64)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "invalid_signature"


async def test_missing_signature_is_401(client: httpx.AsyncClient) -> None:
    r = await client.post("/callbacks/runflow", content=runflow_body("run-4"))
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_signature"


async def test_unparsable_json_is_400(client: httpx.AsyncClient) -> None:
    r = await post_runflow(client, b'{"event": ')
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_json"


async def test_json_that_is_not_an_envelope_is_422_with_details(client: httpx.AsyncClient) -> None:
    for body in (b"[]", b'{"event": "run.completed"}', b'{"run_id": "x"}',
                 b'{"run_id": "x", "event": "run.exploded"}', b'{"run_id": 5, "status": "failed"}'):
        r = await post_runflow(client, body)
        assert r.status_code == 422, body
        error = r.json()["error"]
        assert error["code"] == "invalid_envelope"
        assert error["details"], body


async def test_oversized_body_is_413(client: httpx.AsyncClient) -> None:
    body = b'{"run_id": "' + b"x" * 1_100_000 + b'"}'
    r = await post_runflow(client, body)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"


async def test_events_api_lists_the_stored_event(client: httpx.AsyncClient) -> None:
    r = await post_runflow(client, runflow_body("run-5"))
    event_id = r.json()["event_id"]
    listed = await client.get("/v1/events?run_id=run-5&provider=runflow", headers=admin_headers())
    assert [e["id"] for e in listed.json()["data"]] == [event_id]


@pytest.mark.parametrize("body", [
    rb'{"run_id":"\ud800","event":"run.completed"}',
    rb'{"run_id":"r","event":"run.completed","metadata":{"x":"\udfff"}}',
    b'{"run_id":"r","event":"run.completed","output":{"x":1e400}}',
    b'{"run_id":"r","event":"run.completed","duration_ms":1e400}',
])
async def test_signed_bodies_with_lone_surrogates_or_overflowing_numbers_are_400_not_stored(
        client: httpx.AsyncClient, body: bytes) -> None:
    """Lone surrogates and overflowing numbers are refused, never stored or a 500."""
    r = await post_runflow(client, body)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    assert (await client.get("/v1/events", headers=admin_headers())).json()["data"] == []


async def test_a_duration_too_large_for_a_time_is_422_naming_duration_ms(
        client: httpx.AsyncClient) -> None:
    r = await post_runflow(client, b'{"run_id":"r","event":"run.completed","duration_ms":1e300}')
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "duration_ms"


def batch_body(batch_id: str, event: str, **fields: object) -> bytes:
    return json.dumps({"batch_id": batch_id, "event": event, "output": None,
                       **fields}).encode()


async def test_a_batch_gets_one_terminal_event_whatever_ends_it_next(
        client: httpx.AsyncClient, store: Store) -> None:
    h = admin_headers()
    sub = await client.post("/v1/subscriptions", headers=h, json={"url": "http://127.0.0.1:9/x"})
    assert sub.status_code == 201
    first = await post_runflow(client, batch_body("batch-1", "batch.succeeded"))
    assert first.json()["duplicate"] is False
    for late in ("batch.failed", "batch.cancelled", "batch.partial_succeeded"):
        again = await post_runflow(client, batch_body("batch-1", late))
        assert again.status_code == 200
        assert again.json() == {**first.json(), "duplicate": True}, late
    listed = await client.get("/v1/events?run_id=batch-1", headers=h)
    assert [e["id"] for e in listed.json()["data"]] == [first.json()["event_id"]]
    deliveries = await client.get("/v1/deliveries", headers=h)
    assert len(deliveries.json()["data"]) == 1  # the first event's; the duplicates fan out none


async def test_batch_canceled_is_stored_as_batch_cancelled(
        client: httpx.AsyncClient, store: Store) -> None:
    r = await post_runflow(client, batch_body("batch-2", "batch.canceled"))
    assert r.status_code == 200
    stored = await store.get_event(r.json()["event_id"])
    assert stored is not None
    event = json.loads(stored["body"])
    assert (event["event"], event["status"], event["batch_id"]) == (
        "batch.cancelled", "canceled", "batch-2")
    again = await post_runflow(client, batch_body("batch-2", "batch.cancelled"))
    assert again.json()["duplicate"] is True

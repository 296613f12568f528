"""End to end with real processes: relay web and worker, embedded serve, kills and restarts."""

from __future__ import annotations

import json
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from tests.helpers import (
    RedisServer,
    RelayProcess,
    Subscriber,
    admin_headers,
    free_port,
    relay_env,
    runflow_body,
    runflow_signature,
    wait_until,
)

pytestmark = pytest.mark.both_redis


def send_callback(base_url: str, run_id: str, **fields: Any) -> httpx.Response:
    body = runflow_body(run_id, **fields)
    return httpx.post(f"{base_url}/callbacks/runflow", content=body,
                      headers={"runflow-signature": runflow_signature(body)}, timeout=5)


def subscribe(base_url: str, url: str, key_headers: dict[str, str] | None = None) -> dict[str, str]:
    r = httpx.post(f"{base_url}/v1/subscriptions", json={"url": url},
                   headers=key_headers or admin_headers(), timeout=5)
    assert r.status_code == 201, r.text
    return dict(r.json())


def lines_of(proc: RelayProcess) -> list[dict[str, Any]]:
    return [json.loads(line) for line in proc.log().splitlines() if line.startswith("{")]


@pytest.fixture
def web(redis_server: RedisServer, prefix: str) -> Iterator[RelayProcess]:
    proc = RelayProcess("web", relay_env(redis_server, prefix)).start()
    yield proc
    proc.stop()


def test_runflow_callback_reaches_subscriber_signed_through_web_and_worker_processes(
        web: RelayProcess, redis_server: RedisServer, prefix: str, subscriber: Subscriber) -> None:
    """The whole path across real processes, checked by the standardwebhooks verifier."""
    worker = RelayProcess("worker", relay_env(redis_server, prefix)).start()
    try:
        sub = subscribe(web.base_url, subscriber.url)
        sent = time.time()
        r = send_callback(web.base_url, "e2e-1")
        assert r.status_code == 200
        event_id = r.json()["event_id"]
        wait_until(lambda: len(subscriber.received) == 1, 10)
        got = subscriber.received[0]
        assert got.at - sent < 2.0
        event = Webhook(sub["secret"]).verify(got.body, got.headers)
        assert event["id"] == got.headers["webhook-id"] == event_id
        assert event["event"] == "run.completed" and event["status"] == "succeeded"
        wait_until(lambda: httpx.get(f"{web.base_url}/v1/deliveries?event_id={event_id}",
                                     headers=admin_headers()).json()["data"][0]["status"]
                   == "succeeded")
        assert send_callback(web.base_url, "e2e-1").json()["duplicate"] is True
        time.sleep(0.5)
        assert len(subscriber.received) == 1, "a duplicate callback must not fan out again"
        lines = lines_of(worker)
        attempt = next(x for x in lines if x.get("event") == "delivery_attempt")
        assert attempt["event_id"] == event_id and attempt["subscription_id"] == sub["id"]
        assert attempt["run_id"] == "e2e-1" and attempt["delivery_id"].startswith("dlv_")
        accepted = next(x for x in lines_of(web) if x.get("event") == "callback_accepted")
        assert accepted["event_id"] == event_id and accepted["run_id"] == "e2e-1"
        assert sub["secret"] not in worker.log() and sub["secret"] not in web.log()
    finally:
        worker.stop()


def test_worker_killed_mid_delivery_is_taken_over_with_the_same_webhook_id(
        web: RelayProcess, redis_server: RedisServer, prefix: str) -> None:
    """SIGKILL while the subscriber holds the request; a new worker delivers after the claim
    timeout, with the same webhook-id."""
    slow_first = Subscriber(behaviour=lambda n: (200, {}, 8.0 if n == 0 else 0.0)).start()
    env = relay_env(redis_server, prefix, RELAY_DELIVERY_TIMEOUT="15",
                    RELAY_CLAIM_TIMEOUT="2")
    first = RelayProcess("worker", env).start()
    second: RelayProcess | None = None
    try:
        subscribe(web.base_url, slow_first.url)
        event_id = send_callback(web.base_url, "e2e-kill").json()["event_id"]
        wait_until(lambda: len(slow_first.received) == 1, 10)
        first.signal(signal.SIGKILL)
        first.wait(5)
        second = RelayProcess("worker", env).start()
        wait_until(lambda: len(slow_first.received) >= 2, 20)
        assert slow_first.ids()[:2] == [event_id, event_id]
        wait_until(lambda: httpx.get(f"{web.base_url}/v1/deliveries?event_id={event_id}",
                                     headers=admin_headers()).json()["data"][0]["status"]
                   == "succeeded", 10)
    finally:
        first.stop()
        if second is not None:
            second.stop()
        slow_first.stop()


def test_worker_exits_zero_soon_after_sigterm(redis_server: RedisServer, prefix: str) -> None:
    worker = RelayProcess("worker", relay_env(redis_server, prefix)).start()
    started = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait(20) == 0
    assert time.monotonic() - started < 20


def test_web_exits_zero_soon_after_sigterm(web: RelayProcess) -> None:
    started = time.monotonic()
    web.signal(signal.SIGTERM)
    assert web.wait(20) == 0
    assert time.monotonic() - started < 20


def test_web_and_worker_refuse_to_start_without_redis_url() -> None:
    env = relay_env("", "x")
    del env["REDIS_URL"]
    for command in ("web", "worker"):
        proc = RelayProcess(command, env).start(wait=False)
        assert proc.wait(15) == 2
        lines = proc.log().strip().splitlines()
        assert len(lines) == 1 and "REDIS_URL" in lines[0]


def test_invalid_configuration_stops_with_one_line_naming_the_variable(
        redis_server: RedisServer) -> None:
    env = relay_env(redis_server, "x", RELAY_RETRY_JITTER="lots")
    proc = RelayProcess("worker", env).start(wait=False)
    assert proc.wait(15) == 2
    (line,) = proc.log().strip().splitlines()
    assert "RELAY_RETRY_JITTER" in line


def test_serve_on_the_embedded_store_delivers_end_to_end(subscriber: Subscriber) -> None:
    """No REDIS_URL: relay serve starts its own Redis under ./relay-data and prints an API key."""
    workdir = Path(tempfile.mkdtemp(prefix="relay-embedded-"))
    env = relay_env("", "relay")
    for name in ("REDIS_URL", "RELAY_SECRET_KEY", "RELAY_API_KEYS", "RELAY_KEY_PREFIX"):
        del env[name]
    serve = RelayProcess("serve", env, port=free_port(), cwd=workdir).start()
    try:
        key = (workdir / "relay-data" / "api-key").read_text().strip()
        assert key in serve.log(), "the generated API key is printed once for the operator"
        assert "embedded_store" in serve.log()
        assert (workdir / "relay-data" / "redis.sock").exists()
        headers = {"authorization": f"Bearer {key}"}
        sub = subscribe(serve.base_url, subscriber.url, headers)
        r = send_callback(serve.base_url, "embedded-1")
        assert r.status_code == 200
        wait_until(lambda: len(subscriber.received) == 1, 10)
        Webhook(sub["secret"]).verify(subscriber.received[0].body, subscriber.received[0].headers)
    finally:
        serve.stop()
    assert serve.proc is not None and serve.proc.returncode == 0
    assert list((workdir / "relay-data").glob("appendonly*")), "the append-only file is kept"


def test_redis_outage_gives_503_and_relay_recovers_without_a_restart(
        subscriber: Subscriber) -> None:
    """Redis killed: ingest and /readyz answer 503 at once; Redis back (AOF): callbacks are
    accepted and delivered again by the same web and worker processes."""
    redis_server = RedisServer(appendonly=True).start()
    env = relay_env(redis_server, "outage")
    web = RelayProcess("web", env).start()
    worker = RelayProcess("worker", env).start()
    try:
        subscribe(web.base_url, subscriber.url)
        assert send_callback(web.base_url, "outage-1").status_code == 200
        wait_until(lambda: len(subscriber.received) == 1)
        redis_server.kill()
        started = time.monotonic()
        down = send_callback(web.base_url, "outage-2")
        assert down.status_code == 503 and down.json()["error"]["code"] == "unavailable"
        assert time.monotonic() - started < 2
        assert httpx.get(f"{web.base_url}/readyz", timeout=5).status_code == 503
        redis_server.start()
        wait_until(lambda: httpx.get(f"{web.base_url}/readyz", timeout=5).status_code == 200, 10)
        assert [send_callback(web.base_url, f"outage-3-{i}").status_code
                for i in range(3)] == [200, 200, 200]
        wait_until(lambda: len(subscriber.received) == 4, 30)
        assert {r.json()["run_id"] for r in subscriber.received} == {
            "outage-1", "outage-3-0", "outage-3-1", "outage-3-2"}
    finally:
        web.stop()
        worker.stop()
        redis_server.stop()

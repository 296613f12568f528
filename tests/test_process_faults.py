"""Process faults: workers SIGKILLed or SIGTERMed with work in flight, web SIGTERMed mid-request."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.fakes import (
    FLORA_SECRET,
    FakeProvider,
    Step,
    bp,
    flora,
    flora_callback,
    flora_signature,
    succeeding_betterprompt,
)
from tests.helpers import (
    RedisServer,
    RelayProcess,
    Subscriber,
    admin_headers,
    relay_env,
    wait_until,
)
from tests.test_e2e import send_callback, subscribe


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    provider = succeeding_betterprompt()
    yield provider
    provider.stop()


def polling_env(redis_server: RedisServer, prefix: str, fake: FakeProvider, *,
                delivery_timeout: str, claim_timeout: str) -> dict[str, str]:
    """Web and worker with BetterPrompt polled against `fake` at a quick pace."""
    return relay_env(redis_server, prefix, RELAY_DELIVERY_TIMEOUT=delivery_timeout,
                     RELAY_CLAIM_TIMEOUT=claim_timeout, BETTERPROMPT_API_KEY="bp-key",
                     BETTERPROMPT_BASE_URL=fake.url, RELAY_POLL_MIN_INTERVAL="0.1",
                     RELAY_POLL_MAX_INTERVAL="0.5")


def track(base_url: str, run_id: str) -> None:
    r = httpx.post(f"{base_url}/v1/runs", headers=admin_headers(), timeout=5,
                   json={"provider": "betterprompt", "run_id": run_id})
    assert r.status_code == 201, r.text


def slow_poll(fake: FakeProvider, run_id: str, delay: float) -> None:
    """The first read of `run_id` takes `delay`; later reads say it succeeded."""
    fake.script(run_id, Step(delay=delay, body={"status": "SUCCESS", "data": {
        "runId": run_id, "outputs": [], "runStatus": "running"}}),
        bp("succeeded", [{"type": "text", "data": f"done {run_id}"}], run_id=run_id))


def received_events(subscriber: Subscriber) -> dict[str, set[str]]:
    """Event types the subscriber was sent, by run id (whatever it answered)."""
    out: dict[str, set[str]] = {}
    for r in subscriber.received:
        doc = r.json()
        out.setdefault(str(doc["run_id"]), set()).add(str(doc["event"]))
    return out


def log_lines(proc: RelayProcess) -> list[dict[str, Any]]:
    return [json.loads(x) for x in proc.log().splitlines() if x.startswith("{")]


def delivery_status(base_url: str, run_id: str) -> list[str]:
    events = httpx.get(f"{base_url}/v1/events?run_id={run_id}", headers=admin_headers(),
                       timeout=5).json()["data"]
    out = []
    for e in events:
        got = httpx.get(f"{base_url}/v1/deliveries?event_id={e['id']}", headers=admin_headers(),
                        timeout=5).json()["data"]
        out += [d["status"] for d in got]
    return out


def test_a_worker_sigkilled_with_deliveries_and_polls_in_flight_loses_nothing(
        redis_server: RedisServer, prefix: str, fake: FakeProvider) -> None:
    """SIGKILL a worker while it holds ten deliveries and three polls; a worker that was not
    there before takes everything over: every event is delivered, every run finishes."""
    # The first ten requests hang longer than the test waits before the kill.
    hold = Subscriber(behaviour=lambda n: (200, {}, 10.0 if n < 10 else 0.0)).start()
    env = polling_env(redis_server, prefix, fake, delivery_timeout="15", claim_timeout="4")
    web = RelayProcess("web", env).start()
    first = RelayProcess("worker", env).start()
    second: RelayProcess | None = None
    try:
        subscribe(web.base_url, hold.url)
        runs = [f"kill-run-{i}" for i in range(3)]
        for run_id in runs:
            slow_poll(fake, run_id, 10.0)
            track(web.base_url, run_id)
        callbacks = [f"kill-cb-{i}" for i in range(10)]
        assert {send_callback(web.base_url, c).status_code for c in callbacks} == {200}
        wait_until(lambda: len(hold.received) >= 10
                   and all(fake.requests_for(r) for r in runs), 15)
        first.signal(signal.SIGKILL)
        first.wait(5)
        second = RelayProcess("worker", env).start()
        wait_until(lambda: all(delivery_status(web.base_url, c) == ["succeeded"]
                               for c in callbacks), 30)
        wait_until(lambda: all("run.completed" in received_events(hold).get(r, set())
                               for r in runs), 30)
        for run_id in runs:
            assert len(fake.requests_for(run_id)) >= 2, "polled again by the survivor"
            assert delivery_status(web.base_url, run_id) == ["succeeded"]
        assert set(callbacks) <= set(received_events(hold))
    finally:
        first.stop()
        if second is not None:
            second.stop()
        web.stop()
        hold.stop()


def test_web_sigterm_lets_in_flight_requests_finish_with_their_real_answers(
        redis_server: RedisServer, prefix: str) -> None:
    """FLORA callbacks whose run read takes 3 s are in flight when web gets SIGTERM: web stops
    accepting new connections, answers each in-flight callback 200 with the outputs it read,
    and exits 0."""
    provider = FakeProvider().start()
    env = relay_env(redis_server, prefix, FLORA_API_KEY="fl-key", FLORA_BASE_URL=provider.url,
                    FLORA_WEBHOOK_SECRETS=FLORA_SECRET, FLORA_RATE_LIMIT="100")
    web = RelayProcess("web", env).start()
    try:
        minted = httpx.post(f"{web.base_url}/v1/callback-urls", headers=admin_headers(),
                            timeout=5, json={"provider": "flora", "technique_id": "tech_slow"})
        url = f"{web.base_url}{httpx.URL(minted.json()['url']).path}"
        runs = [f"run_term_{i}" for i in range(4)]
        for run_id in runs:
            step = flora("completed", progress=100, run_id=run_id,
                         outputs=[{"type": "imageUrl", "url": f"https://cdn.example/{run_id}"}])
            step.delay = 3.0
            provider.script(run_id, step)

        def post(run_id: str) -> httpx.Response:
            body = flora_callback(run_id, delivery_id=f"whd_{run_id}")
            return httpx.post(url, content=body, timeout=20, headers={
                "flora-signature": flora_signature(body), "content-type": "application/json"})

        with ThreadPoolExecutor(len(runs)) as pool:
            answers = [pool.submit(post, run_id) for run_id in runs]
            wait_until(lambda: all(provider.requests_for(r) for r in runs), 10)
            signalled = time.monotonic()
            web.signal(signal.SIGTERM)
            time.sleep(0.5)
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"{web.base_url}/healthz", timeout=2)
            results = [a.result() for a in answers]
        assert [r.status_code for r in results] == [200] * len(runs), [r.text for r in results]
        assert all(r.json()["duplicate"] is False for r in results)
        assert web.wait(20) == 0
        assert time.monotonic() - signalled < 20
    finally:
        web.stop()
        provider.stop()
    # The answers were real: each event is stored with the outputs read during the shutdown.
    check = RelayProcess("web", env).start()
    try:
        for run_id, r in zip(runs, results, strict=True):
            event = httpx.get(f"{check.base_url}/v1/events/{r.json()['event_id']}",
                              headers=admin_headers(), timeout=5).json()
            assert event["run_id"] == run_id and event["event"] == "run.completed"
            assert event["output"]["outputs"][0]["url"] == f"https://cdn.example/{run_id}"
    finally:
        check.stop()


def test_worker_sigterm_stops_claiming_finishes_or_hands_back_in_flight_work_and_exits_zero(
        redis_server: RedisServer, prefix: str, fake: FakeProvider) -> None:
    """SIGTERM with four quick deliveries, one that hangs past the grace and a poll in flight:
    the worker claims nothing new, finishes the quick ones and the poll, hands the hanging one
    back, and exits 0 within 20 s; the next worker delivers everything, nothing twice that had
    succeeded."""
    # Request 0 hangs past the shutdown grace; 1-4 take 2 s; everything later answers at once.
    subscriber = Subscriber(behaviour=lambda n: (200, {}, 40.0 if n == 0 else
                                                 2.0 if n < 5 else 0.0)).start()
    env = polling_env(redis_server, prefix, fake, delivery_timeout="30", claim_timeout="10")
    web = RelayProcess("web", env).start()
    first = RelayProcess("worker", env).start()
    second: RelayProcess | None = None
    try:
        subscribe(web.base_url, subscriber.url)
        slow_poll(fake, "term-run", 2.0)
        track(web.base_url, "term-run")
        before = [f"term-before-{i}" for i in range(5)]
        assert {send_callback(web.base_url, c).status_code for c in before} == {200}
        wait_until(lambda: len(subscriber.received) >= 5
                   and bool(fake.requests_for("term-run")), 15)
        signalled = time.monotonic()
        first.signal(signal.SIGTERM)
        time.sleep(0.3)
        after = [f"term-after-{i}" for i in range(3)]
        assert {send_callback(web.base_url, c).status_code for c in after} == {200}
        assert first.wait(20) == 0
        took = time.monotonic() - signalled
        assert took < 20, took
        lines = log_lines(first)
        attempts = [x for x in lines if x.get("event") == "delivery_attempt"]
        assert len(attempts) == 4 and {a["outcome"] for a in attempts} == {"ok"}, attempts
        attempted = {a["run_id"] for a in attempts}
        assert not attempted & set(after), "nothing claimed after SIGTERM"
        assert any(x.get("event") == "run_event" for x in lines), "the poll in flight finished"
        assert len(fake.requests_for("term-run")) == 1
        second = RelayProcess("worker", env).start()
        second_up = time.time()
        wait_until(lambda: all(delivery_status(web.base_url, c) == ["succeeded"]
                               for c in before + after), 30)
        received = [r.json()["run_id"] for r in subscriber.received]
        for run_id in attempted:
            assert received.count(run_id) == 1, "a finished delivery is not sent again"
        (handed_back,) = set(before) - attempted
        assert received.count(handed_back) == 2, "handed back, then delivered by the next worker"
        again = [r.at for r in subscriber.received if r.json()["run_id"] == handed_back][1]
        # Handed back: due at once for the next worker, not left for a takeover, which would
        # wait for RELAY_CLAIM_TIMEOUT (10 s) of idleness and the first reclaim pass (5 s).
        assert again - second_up < 3.5, again - second_up
        wait_until(lambda: "run.completed" in received_events(subscriber).get("term-run", set())
                   and set(delivery_status(web.base_url, "term-run")) == {"succeeded"}, 15)
        print(f"\nworker SIGTERM with a delivery hanging past the grace: exit 0 after {took:.1f}s")
    finally:
        first.stop()
        if second is not None:
            second.stop()
        web.stop()
        subscriber.stop()

"""Workers announce what they poll: a run nobody can poll is refused, and every run expires.

Real worker and serve processes on a single Redis (the heartbeat's Redis steps run on a cluster
too, in test_heartbeat.py).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.fakes import FakeProvider, bp
from tests.helpers import API_KEY, RedisServer, RelayProcess, Subscriber, wait_until
from tests.test_cli import cli, cli_json
from tests.test_polling_processes import worker_env


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    provider = FakeProvider(default=lambda run_id: bp("running", run_id=run_id)).start()
    yield provider
    provider.stop()


def test_tracking_is_refused_when_no_live_worker_polls_the_provider_whatever_the_caller_has(
        redis_server: RedisServer, prefix: str, fake: FakeProvider) -> None:
    """The command line has BETTERPROMPT_API_KEY; the only worker has not: nothing would ever
    poll the run, so it is refused rather than left active forever."""
    with_key = worker_env(redis_server, prefix, fake)
    without = {k: v for k, v in with_key.items() if k != "BETTERPROMPT_API_KEY"}
    worker = RelayProcess("worker", without).start()
    try:
        refused = cli(with_key, "runs", "track", "betterprompt", "nobody-polls", code=1)
        assert "provider_not_configured" in refused.stderr
        assert "no live worker polls betterprompt" in refused.stderr
        gone = cli(with_key, "runs", "show", "betterprompt", "nobody-polls", code=1)
        assert "not_found" in gone.stderr  # nothing was stored
    finally:
        worker.stop()


def test_a_run_whose_only_poller_died_is_expired_at_max_age_by_a_worker_that_cannot_poll_it(
        redis_server: RedisServer, prefix: str, fake: FakeProvider) -> None:
    """RELAY_POLL_MAX_AGE ends every run, polled or not: the worker left sweeps it, and the
    run.expired it emits is delivered."""
    subscriber = Subscriber().start()
    env = worker_env(redis_server, prefix, fake, RELAY_POLL_MAX_AGE="2")
    without = {k: v for k, v in env.items() if k != "BETTERPROMPT_API_KEY"}
    poller = RelayProcess("worker", env).start()
    survivor: RelayProcess | None = None
    try:
        cli(env, "subscriptions", "create", "--url", subscriber.url)
        tracked = time.time()
        cli(env, "runs", "track", "betterprompt", "orphan")
        wait_until(lambda: bool(fake.requests_for("orphan")), 10)
        poller.signal(signal.SIGKILL)
        poller.wait(5)
        killed = time.time()
        survivor = RelayProcess("worker", without).start()
        wait_until(lambda: any(r.json()["event"] == "run.expired" for r in subscriber.received),
                   30)
        expired = next(r.json() for r in subscriber.received if r.json()["event"] == "run.expired")
        assert expired["run_id"] == "orphan" and expired["error"]["code"] == "max_age"
        # Not before RELAY_POLL_MAX_AGE and the dead poller's lease (RELAY_CLAIM_TIMEOUT 3 s).
        assert time.time() - tracked >= 5.0
        run = cli_json(env, "runs", "show", "betterprompt", "orphan")
        assert run["state"] == "finished"
        # The survivor never polled it (a request the dead one sent may land just after).
        assert all(r.at < killed + 0.5 for r in fake.requests_for("orphan"))
        assert [r.json()["event"] for r in subscriber.received].count("run.expired") == 1
    finally:
        poller.stop()
        if survivor is not None:
            survivor.stop()
        subscriber.stop()


def test_relay_serve_heartbeats_so_runs_it_can_poll_are_tracked_and_polled(
        redis_server: RedisServer, prefix: str, fake: FakeProvider) -> None:
    fake.script("served", bp("running", run_id="served"),
                bp("succeeded", [{"type": "text", "data": "by serve"}], run_id="served"))
    serve = RelayProcess("serve", worker_env(redis_server, prefix, fake)).start()
    try:
        h = {"authorization": f"Bearer {API_KEY}"}
        made = httpx.post(f"{serve.base_url}/v1/runs", headers=h, timeout=5,
                          json={"provider": "betterprompt", "run_id": "served"})
        assert made.status_code == 201, made.text
        refused = httpx.post(f"{serve.base_url}/v1/runs", headers=h, timeout=5, json={
            "provider": "flora", "run_id": "f", "technique_id": "t"})
        assert refused.json()["error"]["code"] == "provider_not_configured"
        wait_until(lambda: httpx.get(f"{serve.base_url}/v1/runs/betterprompt/served", headers=h,
                                     timeout=5).json()["state"] == "finished", 15)
    finally:
        serve.stop()

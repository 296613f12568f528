"""The poll scheduler across real `relay worker` processes: shared budgets, kills, the CLI."""

from __future__ import annotations

import itertools
import json
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.fakes import FakeProvider, Step, bp
from tests.helpers import (
    RedisClusterServer,
    RedisServer,
    RelayProcess,
    relay_env,
    wait_until,
)
from tests.test_cli import cli, cli_json

pytestmark = pytest.mark.both_redis


def worker_env(redis: RedisServer | RedisClusterServer, prefix: str, fake: FakeProvider,
               **extra: str) -> dict[str, str]:
    return relay_env(redis, prefix, BETTERPROMPT_API_KEY="bp-key",
                     BETTERPROMPT_BASE_URL=fake.url, RELAY_POLL_MIN_INTERVAL="0.05",
                     RELAY_POLL_MAX_INTERVAL="0.2", **extra)


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    provider = FakeProvider(default=lambda run_id: bp("running", run_id=run_id)).start()
    yield provider
    provider.stop()


def most_in_one_second(times: list[float]) -> int:
    """The largest number of requests that arrived within any window [t, t + 1 s)."""
    times = sorted(times)
    best, j = 0, 0
    for i, start in enumerate(times):
        while j < len(times) and times[j] < start + 1.0:
            j += 1
        best = max(best, j - i)
    return best


def run_events_logged(proc: RelayProcess) -> int:
    return sum(1 for line in proc.log().splitlines()
               if line.startswith("{") and json.loads(line).get("event") == "run_event")


def test_three_workers_never_exceed_the_shared_rate_limit(
        redis_server: RedisServer, prefix: str, fake: FakeProvider) -> None:
    rate = 10
    # A generous lease: on a loaded CI machine a poll must never outlive it (a takeover would
    # legitimately poll the run again, which this test would read as double polling).
    env = worker_env(redis_server, prefix, fake, BETTERPROMPT_RATE_LIMIT=str(rate),
                     RELAY_CLAIM_TIMEOUT="10")
    workers = [RelayProcess("worker", env).start() for _ in range(3)]
    try:
        # Tracking 300 runs through the CLI one process each is slow; the store is the same.
        _track_many(env, [f"many-{i}" for i in range(300)])
        started = time.time()
        time.sleep(5.0)
    finally:
        for w in workers:
            w.stop()
    times = [r.at for r in fake.requests if r.at >= started]
    assert most_in_one_second(times) <= rate, sorted(times)
    # The budget is used, not just respected: close to the limit over the whole run.
    assert len(times) >= rate * 5 * 0.8, len(times)
    shares = [run_events_logged(w) for w in workers]
    assert all(shares), f"every worker took a share: {shares}"
    # One run is polled by one worker at a time: never two requests for it at once.
    by_run: dict[str, list[float]] = {}
    for r in fake.requests:
        by_run.setdefault(r.run_id, []).append(r.at)
    for run_id, at in by_run.items():
        gaps = [b - a for a, b in itertools.pairwise(sorted(at))]
        assert all(g >= 0.04 for g in gaps), (run_id, gaps)


def _track_many(env: dict[str, str], run_ids: list[str]) -> None:
    """Track runs straight on the store, as `relay runs track` does, in one process."""
    import asyncio

    from relay.config import Settings
    from relay.service import Relay
    from relay.store import open_store
    from relay.tracking import Tracking

    settings = Settings.from_env(env)

    async def go() -> None:
        assert settings.redis_url is not None
        async with open_store(settings, settings.redis_url.reveal()) as store:
            tracking = Tracking(Relay(settings, store))
            for run_id in run_ids:
                await tracking.track("betterprompt", run_id)

    asyncio.run(go())


def test_a_worker_killed_mid_poll_loses_its_lease_and_another_finishes_the_run(
        redis_server: RedisServer, prefix: str, fake: FakeProvider) -> None:
    # The claim timeout is the lease: 4 s, so a poll's own deadline is 2 s.
    env = worker_env(redis_server, prefix, fake, RELAY_CLAIM_TIMEOUT="4")
    fake.script("victim", Step(delay=10.0, body={"status": "SUCCESS", "data": {
        "runId": "victim", "outputs": [], "runStatus": "running"}}),
        bp("succeeded", [{"type": "text", "data": "survived"}], run_id="victim"))
    first = RelayProcess("worker", env).start()
    cli(env, "runs", "track", "betterprompt", "victim")
    wait_until(lambda: len(fake.requests_for("victim")) == 1, 10)
    first.signal(signal.SIGKILL)
    first.wait(5)
    killed_at = time.time()
    second = RelayProcess("worker", env).start()
    try:
        wait_until(lambda: cli_json(env, "runs", "show", "betterprompt", "victim")["state"]
                   == "finished", 20)
    finally:
        second.stop()
    requests = fake.requests_for("victim")
    assert len(requests) == 2
    # Nobody polled the run while the dead worker's lease lasted.
    assert requests[1].at - requests[0].at >= 3.5
    assert requests[1].at >= killed_at
    run = cli_json(env, "runs", "show", "betterprompt", "victim")
    events = [cli_json(env, "events", "show", e) for e in run["events"]]
    assert [e["event"] for e in events] == ["run.completed"]
    assert events[0]["output"] == {"outputs": [{"type": "text", "text": "survived"}]}


def test_runs_cli_tracks_lists_shows_and_untracks(
        redis_server: RedisServer, prefix: str, fake: FakeProvider) -> None:
    env = worker_env(redis_server, prefix, fake)
    worker = RelayProcess("worker", env).start()
    try:
        _runs_cli(env)
    finally:
        worker.stop()


def _runs_cli(env: dict[str, str]) -> None:
    made: dict[str, Any] = cli_json(env, "runs", "track", "betterprompt", "cli-1",
                                    "--channel", "ops", "--metadata", '{"a": 1}')
    assert made["state"] == "active" and made["channels"] == ["ops"]
    assert made["metadata"] == {"a": 1}
    again = cli(env, "runs", "track", "betterprompt", "cli-1")
    assert "already tracked" in again.stderr
    listed = cli_json(env, "runs", "list", "--state", "active")
    assert [r["run_id"] for r in listed["data"]] == ["cli-1"]
    table = cli(env, "runs", "list").stdout
    assert "PROVIDER" in table and "cli-1" in table
    shown = cli_json(env, "runs", "show", "betterprompt", "cli-1")
    assert shown["tracked_since"] == made["tracked_since"]
    no_technique = cli(env, "runs", "track", "flora", "run_x", code=1)
    assert "provider_not_configured" in no_technique.stderr  # no FLORA_API_KEY on the worker
    assert no_technique.stderr.count("\n") == 1
    cli(env, "runs", "untrack", "betterprompt", "cli-1")
    gone = cli(env, "runs", "show", "betterprompt", "cli-1", code=1)
    assert "not_found" in gone.stderr

"""Redis faults against real processes: killed, restarted empty, hung, full; relay recovers."""

from __future__ import annotations

import re
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis

from relay.store.keys import GROUP, Keys
from tests.fakes import FakeProvider, succeeding_betterprompt
from tests.helpers import (
    RedisServer,
    RelayProcess,
    Subscriber,
    admin_headers,
    relay_env,
    runflow_body,
    runflow_signature,
    wait_until,
)
from tests.test_e2e import send_callback, subscribe


@dataclass
class Stack:
    """A dedicated Redis (this test breaks it) with one `relay web` and one `relay worker`."""

    redis: RedisServer
    web: RelayProcess
    worker: RelayProcess

    def pids(self) -> tuple[int, int]:
        assert self.web.proc is not None and self.worker.proc is not None
        return self.web.proc.pid, self.worker.proc.pid

    def alive(self) -> bool:
        return all(p.proc is not None and p.proc.poll() is None for p in (self.web, self.worker))


def start_stack(redis_server: RedisServer, **extra: str) -> Stack:
    env = relay_env(redis_server, "faults", **extra)
    return Stack(redis_server, RelayProcess("web", env).start(),
                 RelayProcess("worker", env).start())


def stop_stack(stack: Stack) -> None:
    stack.web.stop()
    stack.worker.stop()
    stack.redis.stop()


@dataclass
class Sender:
    """Posts callbacks from a thread until stopped, recording every answer."""

    base_url: str
    tag: str
    answers: list[tuple[str, int, float]] = field(default_factory=list)  # run id, status, s

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            run_id = f"{self.tag}-{n}"
            n += 1
            started = time.monotonic()
            try:
                status = send_callback(self.base_url, run_id).status_code
            except httpx.HTTPError:
                status = 0
            self.answers.append((run_id, status, time.monotonic() - started))
            time.sleep(0.01)

    def start(self) -> Sender:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def accepted(self) -> set[str]:
        return {run_id for run_id, status, _ in self.answers if status == 200}


def delivered_runs(subscriber: Subscriber) -> set[str]:
    return {str(r.json().get("run_id")) for r in subscriber.received}


def rss_kib(proc: RelayProcess) -> int:
    assert proc.proc is not None
    status = Path(f"/proc/{proc.proc.pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    assert match, status
    return int(match.group(1))


def metric(base_url: str, line_start: str) -> float:
    text = httpx.get(f"{base_url}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    provider = succeeding_betterprompt()
    yield provider
    provider.stop()


def test_every_acknowledged_callback_is_delivered_after_redis_is_killed_and_restarted_from_its_aof(
        subscriber: Subscriber) -> None:
    """SIGKILL Redis (appendfsync everysec) while callbacks pour in, restart it on the same
    append-only file: every callback answered 200 reaches the subscriber, and the same web and
    worker processes carry on."""
    stack = start_stack(RedisServer(appendonly=True).start())
    try:
        pids = stack.pids()
        subscribe(stack.web.base_url, subscriber.url)
        sender = Sender(stack.web.base_url, "aof").start()
        try:
            wait_until(lambda: len(sender.accepted()) >= 20, 20)
            stack.redis.kill()
            killed_at = len(sender.answers)
            time.sleep(1.5)
            stack.redis.start()
            wait_until(lambda: len(sender.accepted()) >= killed_at + 20, 20)
        finally:
            sender.stop()
        accepted = sender.accepted()
        refused = [s for _, s, _ in sender.answers[killed_at:] if s != 200]
        assert refused and set(refused) <= {503}, "while Redis was down: 503, never 200"
        wait_until(lambda: accepted <= delivered_runs(subscriber), 40)
        assert stack.pids() == pids and stack.alive(), "recovered without a restart"
        after = send_callback(stack.web.base_url, "aof-after")
        assert after.status_code == 200
        wait_until(lambda: "aof-after" in delivered_runs(subscriber), 15)
        lost = len(accepted - delivered_runs(subscriber))
        print(f"\nredis killed and restarted on its AOF: {len(accepted)} callbacks answered 200, "
              f"{len(refused)} refused while it was down, {lost} of the accepted lost")
    finally:
        stop_stack(stack)


def test_workers_recreate_their_state_and_carry_on_after_redis_restarts_empty(
        subscriber: Subscriber, fake: FakeProvider) -> None:
    """Redis restarted without persistence: the consumer group is gone (NOGROUP), every key is
    gone. Web keeps accepting; the worker recreates the group and delivers new events within
    seconds, and runs tracked after the restart are polled and their events delivered."""
    stack = start_stack(RedisServer(appendonly=False).start(), BETTERPROMPT_API_KEY="bp-key",
                        BETTERPROMPT_BASE_URL=fake.url, RELAY_POLL_MIN_INTERVAL="0.2",
                        RELAY_POLL_MAX_INTERVAL="1")
    base = stack.web.base_url
    try:
        subscribe(base, subscriber.url)
        assert send_callback(base, "empty-before").status_code == 200
        wait_until(lambda: "empty-before" in delivered_runs(subscriber), 10)
        stack.redis.kill()
        stack.redis.start()
        restarted = time.monotonic()
        r = redis.Redis.from_url(stack.redis.url)
        assert r.dbsize() == 0, "restarted empty"
        wait_until(lambda: httpx.get(f"{base}/readyz", timeout=5).status_code == 200, 10)
        # Web keeps accepting (nobody is subscribed any more: the subscriptions went too).
        assert send_callback(base, "empty-orphan").status_code == 200
        subscribe(base, subscriber.url)
        assert send_callback(base, "empty-after").status_code == 200
        # Until the worker's next heartbeat the empty Redis knows no worker that polls it.
        wait_until(lambda: httpx.post(f"{base}/v1/runs", headers=admin_headers(), timeout=5, json={
            "provider": "betterprompt", "run_id": "empty-run"}).status_code == 201, 10)
        wait_until(lambda: {"empty-after", "empty-run"} <= delivered_runs(subscriber), 15)
        took = time.monotonic() - restarted
        assert took < 15, took
        assert fake.requests_for("empty-run"), "the poll scheduler polls runs tracked after"
        groups = r.xinfo_groups(Keys("faults").queue)
        assert [g["name"].decode() for g in groups] == [GROUP], "the worker recreated its group"
        assert "empty-orphan" not in delivered_runs(subscriber)
        assert stack.alive()
        print(f"\nredis restarted empty: new events delivered {took:.2f}s after the restart")
    finally:
        stop_stack(stack)


def test_hung_redis_gives_fast_503s_without_memory_growth_and_everything_resumes_on_sigcont(
        ) -> None:
    """SIGSTOP Redis: ingest and /readyz answer 503 within 2 s while callbacks keep arriving,
    the web process does not grow; SIGCONT: new callbacks are accepted and delivered, and the
    ones acknowledged before the stop are delivered too, by the same processes."""
    # A slow subscriber, so that deliveries are in flight when Redis stops.
    slow = Subscriber(behaviour=lambda n: (200, {}, 0.5)).start()
    stack = start_stack(RedisServer(appendonly=False).start())
    base = stack.web.base_url
    try:
        pids = stack.pids()
        subscribe(base, slow.url)
        before = {f"hung-before-{i}" for i in range(10)}
        assert {send_callback(base, run_id).status_code for run_id in before} == {200}
        assert stack.redis.proc is not None
        stack.redis.proc.send_signal(signal.SIGSTOP)
        try:
            # Warm up: the first timeouts allocate what they allocate once.
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(lambda i: send_callback(base, f"hung-warm-{i}"), range(16)))
            rss_start = rss_kib(stack.web)
            answers: list[tuple[int, str, float]] = []
            ready: list[tuple[int, float]] = []
            deadline = time.monotonic() + 5

            def keep_sending(lane: int) -> None:
                with httpx.Client(base_url=base, timeout=10) as http:
                    n = 0
                    while time.monotonic() < deadline:
                        started = time.monotonic()
                        if lane == 0:
                            code = http.get("/readyz").status_code
                            ready.append((code, time.monotonic() - started))
                        else:
                            body = runflow_body(f"hung-{lane}-{n}")
                            got = http.post("/callbacks/runflow", content=body, headers={
                                "runflow-signature": runflow_signature(body)})
                            answers.append((got.status_code, got.json()["error"]["code"],
                                            time.monotonic() - started))
                        n += 1
                        time.sleep(0.05)

            with ThreadPoolExecutor(8) as pool:
                list(pool.map(keep_sending, range(8)))
            rss_end = rss_kib(stack.web)
        finally:
            stack.redis.proc.send_signal(signal.SIGCONT)
        assert len(answers) >= 25, len(answers)
        assert {(status, code) for status, code, _ in answers} == {(503, "unavailable")}
        slowest = max(t for _, _, t in answers)
        assert slowest < 2.0, sorted(round(t, 2) for _, _, t in answers)
        assert {code for code, _ in ready} == {503}
        assert max(t for _, t in ready) < 2.0
        growth = rss_end - rss_start
        assert growth < 8 * 1024, f"web RSS grew {growth} KiB over {len(answers)} refusals"
        print(f"\nredis hung: {len(answers)} callbacks refused, slowest 503 {slowest:.2f}s, "
              f"slowest /readyz {max(t for _, t in ready):.2f}s, web RSS {rss_start} -> "
              f"{rss_end} KiB")
        wait_until(lambda: httpx.get(f"{base}/readyz", timeout=5).status_code == 200, 10)
        after = {f"hung-after-{i}" for i in range(5)}
        assert {send_callback(base, run_id).status_code for run_id in after} == {200}
        wait_until(lambda: before | after <= delivered_runs(slow), 30)
        assert stack.pids() == pids and stack.alive()
    finally:
        stop_stack(stack)
        slow.stop()


def test_redis_out_of_memory_gives_503_and_a_metric_and_callbacks_are_accepted_once_it_has_room(
        subscriber: Subscriber) -> None:
    """maxmemory reached under noeviction: callbacks get 503 `unavailable` (never 200 and
    dropped), relay_storage_errors_total{reason="oom"} counts them; once Redis has room again
    the same processes accept and deliver, including everything answered 200 before."""
    stack = start_stack(RedisServer(appendonly=False).start())
    base = stack.web.base_url
    r = redis.Redis.from_url(stack.redis.url)
    try:
        subscribe(base, subscriber.url)
        assert send_callback(base, "oom-warm").status_code == 200
        used = int(r.info("memory")["used_memory"])
        r.config_set("maxmemory", str(used + 256 * 1024))
        padding = {"pad": "x" * 16384}
        answers: list[tuple[str, int, str | None]] = []
        for i in range(200):
            got = send_callback(base, f"oom-{i}", metadata=padding)
            code = got.json().get("error", {}).get("code") if got.status_code != 200 else None
            answers.append((f"oom-{i}", got.status_code, code))
            if sum(1 for _, s, _ in answers if s == 503) >= 5:
                break
        refused = [a for a in answers if a[1] != 200]
        assert refused, "Redis never filled up"
        assert {(s, c) for _, s, c in refused} == {(503, "unavailable")}
        counted = metric(base, 'relay_storage_errors_total{reason="oom"}')
        assert counted >= len(refused), counted
        r.config_set("maxmemory", "0")
        assert send_callback(base, "oom-after").status_code == 200
        accepted = {"oom-warm", "oom-after"} | {run_id for run_id, s, _ in answers if s == 200}
        wait_until(lambda: accepted <= delivered_runs(subscriber), 30)
        assert not {run_id for run_id, _, _ in refused} & delivered_runs(subscriber)
        print(f"\nredis out of memory: {len(accepted)} accepted and delivered, {len(refused)} "
              f"refused with 503, relay_storage_errors_total{{reason=\"oom\"}} {counted:g}")
        assert stack.alive()
    finally:
        stop_stack(stack)

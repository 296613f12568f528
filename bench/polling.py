"""`python -m bench.polling`: one `relay worker` polling 10,000 tracked runs.

Against a fast local fake BetterPrompt it measures (1) the polls per second one worker
process sustains when every run is always due, with Redis commands per poll and Redis memory
per tracked run, and (2) the lag from each run's due time to its poll at the steady load the
issue sets (10,000 runs every 5 s: 2,000 polls/s; `--rate`). Lag is read from Redis itself: two
snapshots of every run's `next poll` and `last polled` times, so the worker is not
instrumented and the lag counts until the poll's answer was recorded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.procs import (
    BenchError,
    Child,
    Children,
    clean_env,
    free_port,
    http_ready,
    python_module,
    start_redis,
    wait_until,
)
from bench.report import Row, median, verdict
from bench.stacks import redis_binary
from relay.config import Settings
from relay.runs import TrackedRun
from relay.store import Store, open_store
from relay.store.keys import run_member


@dataclass
class Result:
    runs: int
    capacity_polls_per_second: float = 0.0
    capacity_worker_cpu: float = 0.0  # CPUs the worker used while saturated
    capacity_cpu_us_per_poll: float = 0.0  # worker CPU time per poll: steadier than the rate
    redis_round_trips_per_poll: float = 0.0
    redis_commands_per_poll: float = 0.0  # inside Lua scripts included
    redis_calls_per_poll: dict[str, float] = field(default_factory=dict)
    redis_bytes_per_tracked_run: float = 0.0
    steady_target_polls_per_second: float = 0.0
    steady_polls_per_second: float = 0.0
    lag_samples: int = 0
    lag_p50_ms: float = 0.0
    lag_p99_ms: float = 0.0
    lag_max_ms: float = 0.0
    notes: list[str] = field(default_factory=list)


def _env(redis_url: str, fake_url: str, prefix: str, interval: float) -> dict[str, str]:
    return clean_env(
        REDIS_URL=redis_url, RELAY_KEY_PREFIX=prefix,
        RELAY_SECRET_KEY="bench-secret-key-0123456789",
        RELAY_API_KEYS="bench-api-key", RELAY_LOG_LEVEL="warning", RELAY_LOG_FORMAT="json",
        BETTERPROMPT_API_KEY="bench-key", BETTERPROMPT_BASE_URL=fake_url,
        BETTERPROMPT_RATE_LIMIT="1000000", RELAY_POLL_MIN_INTERVAL=str(interval),
        RELAY_POLL_MAX_INTERVAL=str(interval),
    )


def _start_worker(children: Children, env: dict[str, str]) -> Child:
    worker = children.start("worker", python_module("relay", "worker"), env)
    time.sleep(1.0)
    if not worker.alive():
        raise BenchError(f"relay worker exited:\n{worker.log_tail()}")
    return worker


def _served(fake_url: str) -> int:
    return int(httpx.get(f"{fake_url}/stats", timeout=5).json()["served"])


async def _track(store: Store, settings: Settings, run_ids: list[str],
                 per_second: float | None) -> None:
    """Track runs as `POST /v1/runs` does; all at once, or paced at `per_second`."""
    batch = 100
    started = time.monotonic()
    for i in range(0, len(run_ids), batch):
        await asyncio.gather(*(store.track_run(
            "betterprompt", r, TrackedRun("betterprompt", r, since=time.time(),
                                          next_poll=time.time() + settings.poll_min_interval
                                          ).new_fields(),
            int((time.time() + settings.poll_min_interval) * 1000))
            for r in run_ids[i:i + batch]))
        if per_second:
            ahead = started + (i + batch) / per_second - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)


async def _clocks(store: Store, members: list[str]) -> dict[str, tuple[int, float, float]]:
    """Each run's (polls, last polled s, next poll s)."""
    out = {}
    for i in range(0, len(members), 2000):
        chunk = members[i:i + 2000]
        for m, h in zip(chunk, await store.get_runs(chunk), strict=True):
            if h:
                out[m] = (int(h.get("n") or 0), int(h.get("lp") or 0) / 1000,
                          int(h.get("np") or 0) / 1000)
    return out


def _profile(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling the worker for `seconds`, written to `out` (raw or speedscope)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    fmt = "speedscope" if out.suffix == ".json" else "raw"
    return subprocess.Popen([spy, "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "200",
                             "-f", fmt, "-o", str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


async def capacity(children: Children, redis_url: str, fake_url: str, n: int,
                   window: float, result: Result, profile: Path | None = None) -> None:
    """Every run due every second: the worker polls as fast as it can."""
    env = _env(redis_url, fake_url, "cap", 1.0)
    settings = Settings.from_env(env)
    async with open_store(settings, redis_url) as store:
        # Open the connections first: their buffers must not count as the runs' memory.
        await asyncio.gather(*(store.ping() for _ in range(100)))
        before = (await store.stats())["used_memory"]
        await _track(store, settings, [f"cap-{i}" for i in range(n)], None)
        after = (await store.stats())["used_memory"]
        result.redis_bytes_per_tracked_run = round((after - before) / n, 1)
        worker = _start_worker(children, env)
        # Warm up: connections, and the first poll of every run (it emits run.updated, which
        # would count an event store in some polls of the window and not in others).
        warm = time.monotonic() + 60
        for _ in range(120):
            if _served(fake_url) >= n or time.monotonic() > warm:
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(1.0)
        stats0 = await store.stats()
        served0, cmds0 = _served(fake_url), stats0["commands"]
        cpu0, t0 = worker.cpu_seconds(), time.monotonic()
        spy = None if profile is None else _profile(worker.proc.pid, window, profile)
        await asyncio.sleep(window)
        stats1 = await store.stats()
        served1, cmds1 = _served(fake_url), stats1["commands"]
        cpu1, t1 = worker.cpu_seconds(), time.monotonic()
        children.stop(worker)
    if spy is not None:
        spy.wait(30)
    polls = served1 - served0
    result.capacity_polls_per_second = round(polls / (t1 - t0), 1)
    result.capacity_worker_cpu = round((cpu1 - cpu0) / (t1 - t0), 2)
    result.capacity_cpu_us_per_poll = round((cpu1 - cpu0) / max(polls, 1) * 1e6, 1)
    # Redis counts the commands a script runs as well; the client's own commands (one per round
    # trip: EVALSHA, pipelines' SCRIPT EXISTS, the blocking reads, health checks) are these.
    direct = ("evalsha", "script|exists", "blpop", "ping", "xreadgroup", "xautoclaim")
    result.redis_round_trips_per_poll = round(
        sum(stats1.get(c, 0) - stats0.get(c, 0) for c in direct) / max(polls, 1), 3)
    result.redis_commands_per_poll = round((cmds1 - cmds0 - 3) / max(polls, 1), 3)
    result.redis_calls_per_poll = {
        name: round((stats1[name] - stats0.get(name, 0)) / max(polls, 1), 3)
        for name in stats1 if name not in ("used_memory", "commands")
        and stats1[name] != stats0.get(name, 0)}


async def steady(children: Children, redis_url: str, fake_url: str, n: int, rate: float,
                 window: float, result: Result) -> None:
    """Runs arriving at `rate` per second and polled every n / rate seconds: what lag?"""
    interval = n / rate
    env = _env(redis_url, fake_url, "lag", interval)
    settings = Settings.from_env(env)
    result.steady_target_polls_per_second = rate
    members = [run_member("betterprompt", f"lag-{i}") for i in range(n)]
    async with open_store(settings, redis_url) as store:
        worker = _start_worker(children, env)
        await _track(store, settings, [m.split(":", 1)[1] for m in members], rate)
        await asyncio.sleep(interval + 1.0)  # every run has been polled at least once
        lags: list[float] = []
        served0, t0 = _served(fake_url), time.monotonic()
        previous = await _clocks(store, members)
        step = min(2.5, interval * 0.4)
        deadline = time.monotonic() + window
        while time.monotonic() < deadline:
            await asyncio.sleep(step)
            current = await _clocks(store, members)
            for m, (count, polled, _) in current.items():
                old = previous.get(m)
                if old is not None and count == old[0] + 1:
                    lags.append(max(polled - old[2], 0.0))
            previous = current
        served1, t1 = _served(fake_url), time.monotonic()
        children.stop(worker)
    result.steady_polls_per_second = round((served1 - served0) / (t1 - t0), 1)
    if not lags:
        raise BenchError("no poll was observed between two snapshots")
    lags.sort()
    result.lag_samples = len(lags)
    result.lag_p50_ms = round(statistics.median(lags) * 1000, 1)
    result.lag_p99_ms = round(lags[min(len(lags) - 1, int(len(lags) * 0.99))] * 1000, 1)
    result.lag_max_ms = round(lags[-1] * 1000, 1)


def render(r: Result) -> str:
    rows = [
        ("tracked runs", f"{r.runs:,}"),
        ("polls/s, one worker, every run always due", f"{r.capacity_polls_per_second:,.0f}"
         f" (worker used {r.capacity_worker_cpu:.2f} CPU, "
         f"{r.capacity_cpu_us_per_poll:,.0f} µs CPU per poll)"),
        ("Redis round trips per poll", f"{r.redis_round_trips_per_poll:.2f}"
         f" ({r.redis_commands_per_poll:.1f} commands, those inside Lua included)"),
        ("Redis bytes per tracked run", f"{r.redis_bytes_per_tracked_run:,.0f}"),
        (f"steady load {r.steady_target_polls_per_second:,.0f} polls/s: achieved",
         f"{r.steady_polls_per_second:,.0f} polls/s"),
        ("due-to-poll lag p50 / p99 / max", f"{r.lag_p50_ms:,.0f} / {r.lag_p99_ms:,.0f} / "
         f"{r.lag_max_ms:,.0f} ms ({r.lag_samples:,} polls)"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


TARGET_POLLS = 2000.0
TARGET_LAG_P99_MS = 500.0


def measure_once(children: Children, workdir: Path, runs: int, rate: float,
                 window: float, *, capacity_only: bool = False,
                 profile: Path | None = None) -> Result:
    """Capacity, then lag at a steady `rate`, on a fresh redis and fake BetterPrompt."""
    result = Result(runs=runs)
    redis, redis_url = start_redis(children, redis_binary(), workdir / "redis")
    port = free_port()
    fake = children.start("fake-provider", python_module(
        "bench.fakeprovider", "--port", str(port)), clean_env())
    try:
        fake_url = f"http://127.0.0.1:{port}"
        wait_until(http_ready(f"{fake_url}/stats", fake), 30, "fake provider")
        asyncio.run(capacity(children, redis_url, fake_url, runs, window, result, profile))
        if not capacity_only:
            asyncio.run(steady(children, redis_url, fake_url, runs, rate, window * 2, result))
    finally:
        children.stop(fake)
        children.stop(redis)
    return result


def measure(children: Children, workdir: Path, *, runs: int, tracked: int, rate: float,
            window: float, progress: Callable[[str], None]) -> dict[str, Any]:
    """The polling figures for the one table: `runs` repetitions, medians."""
    out = []
    for i in range(runs):
        progress(f"polling: run {i + 1}/{runs}, {tracked:,} tracked runs, one worker; "
                 f"capacity over {window:g} s, then lag at {rate:,.0f} polls/s")
        r = measure_once(children, workdir / f"polling-{i}", tracked, rate, window)
        out.append(asdict(r))
        progress(f"  {r.capacity_polls_per_second:,.0f} polls/s; at {rate:,.0f}/s lag p50 "
                 f"{r.lag_p50_ms:,.0f} ms, p99 {r.lag_p99_ms:,.0f} ms")
    keys = ("capacity_polls_per_second", "capacity_worker_cpu", "redis_round_trips_per_poll",
            "redis_bytes_per_tracked_run", "steady_polls_per_second", "lag_p50_ms",
            "lag_p99_ms", "lag_max_ms")
    med: dict[str, Any] = {k: median([r[k] for r in out]) for k in keys}
    med["valid"] = all(r["lag_samples"] > 0 for r in out)
    return {"tracked_runs": tracked, "steady_rate": rate, "window": window, "runs": out,
            "median": med}


def rows(doc: dict[str, Any]) -> list[Row]:
    med, runs = doc["median"], doc["runs"]
    valid = verdict(med["valid"])
    cap = med["capacity_polls_per_second"]
    rate = doc["steady_rate"]
    return [
        Row(f"polling: polls/s one worker sustains ({doc['tracked_runs']:,} runs, always due)",
            f"{cap:,.0f} polls/s", valid=valid, target=f">= {TARGET_POLLS:,.0f} polls/s",
            met=verdict(cap >= TARGET_POLLS),
            notes=["runs: " + " / ".join(f"{r['capacity_polls_per_second']:,.0f}"
                                         for r in runs)
                   + f"; worker used {med['capacity_worker_cpu']:.2f} CPU; "
                   f"{med['redis_round_trips_per_poll']:.2f} Redis round trips per poll"]),
        Row(f"polling: due-to-poll lag at a steady {rate:,.0f} polls/s", "",
            f"{med['lag_p50_ms']:,.0f} ms", f"{med['lag_p99_ms']:,.0f} ms", valid,
            target=f"p99 < {TARGET_LAG_P99_MS:,.0f} ms",
            met=verdict(med["lag_p99_ms"] < TARGET_LAG_P99_MS and rate >= TARGET_POLLS),
            notes=[f"achieved {med['steady_polls_per_second']:,.0f} polls/s, max lag "
                   f"{med['lag_max_ms']:,.0f} ms; runs p99: "
                   + " / ".join(f"{r['lag_p99_ms']:,.0f}" for r in runs) + " ms"
                   + ("" if rate >= TARGET_POLLS else
                      f"; the target is for {TARGET_POLLS:,.0f} polls/s, not {rate:,.0f}")]),
        Row("polling: Redis bytes per tracked run",
            f"{med['redis_bytes_per_tracked_run']:,.0f} B", valid=valid),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.polling", description=__doc__)
    parser.add_argument("--runs", type=int, default=10_000, help="tracked runs (10,000)")
    parser.add_argument("--rate", type=float, default=2000.0,
                        help="steady-load polls per second for the lag figure (2,000)")
    parser.add_argument("--window", type=float, default=10.0,
                        help="seconds each figure is measured over (10)")
    parser.add_argument("--tiny", action="store_true", help="500 runs, short windows")
    parser.add_argument("--out", type=Path, help="write the result as JSON here")
    parser.add_argument("--capacity-only", action="store_true",
                        help="measure the saturated rate only, not the steady-load lag")
    parser.add_argument("--profile", type=Path,
                        help="py-spy the worker over the capacity window into this file "
                        "(.json: speedscope, else raw collapsed stacks)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.runs, args.rate, args.window = 500, 250.0, 3.0
    with tempfile.TemporaryDirectory(prefix="relay-bench-poll-") as tmp:
        children = Children(Path(tmp))
        try:
            result = measure_once(children, Path(tmp), args.runs, args.rate, args.window,
                                  capacity_only=args.capacity_only, profile=args.profile)
        except BenchError as exc:
            print(f"bench.polling: {exc}", file=sys.stderr)
            return 1
        finally:
            children.close()
    print(render(result), flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps(asdict(result), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

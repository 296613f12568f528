"""Delivery: how fast `relay worker` processes drain a stored backlog to a fast subscriber.

Each run stores N events for one subscription to the sink while no worker runs (through
relay's own service API, as `relay web` would store them), then starts the worker(s) and times
the sink's first to N-th arrival. In the same run, a plain aiohttp loop (one session, the same
bodies, signed the same way, the worker's per-subscription concurrency of 64) posts to the
same sink: the worker's rate is reported as a ratio of that loop's.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.fleet import Fleet, start_fleet
from bench.procs import BenchError, Children, clean_env, python_module
from bench.report import Row, median, verdict
from relay.delivery import DeliveryWorker

# The slots one worker gives one subscription (DeliveryWorker's default per_subscription).
CONCURRENCY = int((DeliveryWorker.__init__.__kwdefaults__ or {})["per_subscription"])
TARGET_RATE = 4000.0
TARGET_RATIO = 0.33


@dataclass
class Drain:
    workers: int
    events: int
    arrived: int = 0
    events_per_second: float = 0.0
    seconds: float = 0.0
    cpu_us_per_event: float = 0.0  # all workers' CPU from the first arrival to the last
    # Redis work per event over the whole drain: commands (inside Lua included), script calls.
    redis_commands_per_event: float = 0.0
    redis_scripts_per_event: float = 0.0
    problems: list[str] = field(default_factory=list)


def drain(fleet: Fleet, events: int, workers: int, timeout: float) -> Drain:
    """Start `workers` workers on a stored backlog of `events` and time it to the sink."""
    out = Drain(workers, events)
    fleet.sink_reset()
    stats0 = fleet.redis_stats()
    started = [fleet.start_worker() for _ in range(workers)]
    try:
        first = fleet.wait_for_sink(1, 60, "the first delivery", interval=0.005)
        cpu0 = sum(w.cpu_seconds() for w in started)
        doc = fleet.wait_for_sink(events, timeout, f"{events:,} deliveries")
        cpu1 = sum(w.cpu_seconds() for w in started)
        time.sleep(0.3)
        out.arrived = fleet.sink_count()["count"]
    finally:
        fleet.stop_workers()
    stats1 = fleet.redis_stats()
    out.redis_commands_per_event = round(
        (stats1["commands"] - stats0["commands"]) / max(events, 1), 2)
    out.redis_scripts_per_event = round(
        (stats1.get("evalsha", 0) - stats0.get("evalsha", 0)) / max(events, 1), 2)
    seconds = (doc["last_ns"] - doc["first_ns"]) / 1e9
    out.seconds = round(seconds, 3)
    out.events_per_second = round((doc["count"] - 1) / seconds, 1) if seconds > 0 else 0.0
    out.cpu_us_per_event = round((cpu1 - cpu0) * 1e6 / max(doc["count"] - first["count"], 1), 1)
    if out.arrived != events:
        out.problems.append(f"the sink counted {out.arrived:,} deliveries of {events:,} events")
    return out


@dataclass
class Plain:
    events: int
    events_per_second: float = 0.0
    cpu_us_per_event: float = 0.0
    errors: int = 0
    first_error: str = ""


def plain_loop(fleet: Fleet, bodies: list[tuple[str, str]], workdir: Path,
               concurrency: int = CONCURRENCY) -> Plain:
    """The same bodies from one aiohttp session in a process of its own."""
    path = workdir / "bodies.jsonl"
    path.write_text("".join(json.dumps({"id": i, "body": b}) + "\n" for i, b in bodies))
    fleet.sink_reset()
    child = fleet.children.start("plain-aiohttp", python_module(
        "bench.plainloop", "--url", f"{fleet.sink_url}/d", "--bodies", str(path),
        "--concurrency", str(concurrency)), clean_env())
    try:
        child.proc.wait(120 + len(bodies) / 200)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"the plain aiohttp loop did not finish:\n{child.log_tail()}") from exc
    finally:
        fleet.children.stop(child)
    lines = [ln for ln in child.log_path.read_text().splitlines() if ln.startswith("BENCH_JSON ")]
    if not lines or child.proc.returncode != 0:
        raise BenchError(f"the plain aiohttp loop failed:\n{child.log_tail()}")
    report = json.loads(lines[-1].removeprefix("BENCH_JSON "))
    doc = fleet.sink_count()
    seconds = (doc["last_ns"] - doc["first_ns"]) / 1e9
    return Plain(len(bodies),
                 events_per_second=round((doc["count"] - 1) / seconds, 1) if seconds else 0.0,
                 cpu_us_per_event=round(report["cpu_seconds"] * 1e6 / max(len(bodies), 1), 1),
                 errors=int(report["errors"]), first_error=str(report["first_error"]))


@dataclass
class DeliveryRun:
    worker: Drain
    plain: Plain
    ratio: float
    body_bytes: int
    log_problems: dict[str, list[str]]

    def as_dict(self) -> dict[str, Any]:
        problems = list(self.worker.problems)
        if self.plain.errors:
            problems.append(f"plain loop: {self.plain.errors} errors ({self.plain.first_error})")
        return {**asdict(self), "problems": problems, "valid": not problems}


def run_once(children: Children, workdir: Path, events: int,
             extra_env: dict[str, str]) -> DeliveryRun:
    fleet = start_fleet(children, workdir, extra_env)
    try:
        fleet.subscribe(["/d"])
        bodies = fleet.store_events(events, "delivery")
        worker = drain(fleet, events, 1, timeout=60 + events / 100)
        problems = fleet.log_problems()
        plain = plain_loop(fleet, bodies, workdir)
    finally:
        fleet.stop()
    ratio = worker.events_per_second / plain.events_per_second if plain.events_per_second else 0
    size = sum(len(b) for _, b in bodies) // max(len(bodies), 1)
    return DeliveryRun(worker, plain, round(ratio, 3), size, problems)


def measure(children: Children, workdir: Path, *, runs: int, events: int,
            extra_env: dict[str, str], progress: Any) -> dict[str, Any]:
    out = []
    for i in range(runs):
        progress(f"delivery: run {i + 1}/{runs}, {events:,} stored events, one relay worker, "
                 f"then a plain aiohttp loop at concurrency {CONCURRENCY}")
        run = run_once(children, workdir / f"delivery-{i}", events, extra_env)
        out.append(run.as_dict())
        progress(f"  worker {run.worker.events_per_second:,.0f} ev/s "
                 f"({run.worker.cpu_us_per_event:.0f} us CPU/event), plain aiohttp "
                 f"{run.plain.events_per_second:,.0f} ev/s, ratio {run.ratio:.2f}")
    med = {
        "worker_events_per_second": median([r["worker"]["events_per_second"] for r in out]),
        "plain_events_per_second": median([r["plain"]["events_per_second"] for r in out]),
        "ratio": median([r["ratio"] for r in out]),
        "worker_cpu_us_per_event": median([r["worker"]["cpu_us_per_event"] for r in out]),
        "plain_cpu_us_per_event": median([r["plain"]["cpu_us_per_event"] for r in out]),
        "valid": all(r["valid"] for r in out),
    }
    return {"events": events, "concurrency": CONCURRENCY, "runs": out, "median": med}


def rows(doc: dict[str, Any]) -> list[Row]:
    med, runs = doc["median"], doc["runs"]
    notes = [f"{doc['events']:,} stored events of ~{runs[0]['body_bytes']} bytes to one "
             "subscription (the sink); runs: " + " / ".join(
                 f"{r['worker']['events_per_second']:,.0f}" for r in runs) + " ev/s",
             f"CPU per event: worker {med['worker_cpu_us_per_event']:.0f} us, plain loop "
             f"{med['plain_cpu_us_per_event']:.0f} us; Redis per event (worker): "
             + " / ".join(f"{r['worker']['redis_scripts_per_event']:.2f} scripts, "
                          f"{r['worker']['redis_commands_per_event']:.1f} commands"
                          for r in runs)]
    notes.extend(f"run {i + 1}: {p}" for i, r in enumerate(runs) for p in r["problems"])
    notes.extend(_log_notes(runs))
    valid = verdict(med["valid"])
    rate = med["worker_events_per_second"]
    return [
        Row("delivery: one relay worker -> fast sink", f"{rate:,.0f} ev/s", valid=valid,
            target=f">= {TARGET_RATE:,.0f} ev/s", met=verdict(rate >= TARGET_RATE),
            notes=notes),
        Row(f"delivery: plain aiohttp loop, concurrency {doc['concurrency']}",
            f"{med['plain_events_per_second']:,.0f} ev/s", valid=valid),
        Row("delivery: relay worker / plain aiohttp", f"{med['ratio']:.2f}",
            target=f">= {TARGET_RATIO:.2f}", met=verdict(med["ratio"] >= TARGET_RATIO)),
    ]


def _log_notes(runs: list[dict[str, Any]]) -> list[str]:
    out = []
    for r in runs:
        for name, lines in r["log_problems"].items():
            out.append(f"{name} logged {len(lines)} warnings/errors, first: {lines[0][:200]}")
    return out

"""Scaling: ingest and delivery with two `relay web` and two `relay worker` processes.

Ingest: two web processes on two ports of one Redis, two workers delivering to the sink
meanwhile, one wrk per port (each with its own unique callbacks) run at the same time; the
figure is the sum of their accepted rates. Delivery: a stored backlog drained by two workers
started together, total events per second from the sink's first to its N-th arrival.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from bench import delivery, payloads, wrk
from bench.fleet import start_fleet
from bench.procs import Children
from bench.report import Row, median, rps, verdict
from bench.stacks import CALLBACK_PATH

PROCESSES = 2


def ingest_once(children: Children, workdir: Path, *, files: list[Path], secret: str,
                script: Path, threads: int, connections: int, duration: float,
                extra_env: dict[str, str]) -> dict[str, Any]:
    fleet = start_fleet(children, workdir, extra_env, runflow_secret=secret)
    try:
        fleet.subscribe(["/i"])
        for _ in range(PROCESSES):
            fleet.start_web()
            fleet.start_worker()
        fleet.warm_up(10)
        running = [wrk.start(children, base_url=url, path=CALLBACK_PATH, script=script,
                             requests_file=file, threads=threads, connections=connections,
                             duration=duration)
                   for url, file in zip(fleet.web_urls, files, strict=True)]
        results = [wrk.collect(children, child, base_url=url, duration=duration)
                   for child, url in zip(running, fleet.web_urls, strict=True)]
        fleet.check_alive()
        log_problems = fleet.log_problems()
    finally:
        fleet.stop()
    problems = [p for r in results for p in r.problems()]
    return {"rps": round(sum(r.rps for r in results), 1),
            "per_process_rps": [round(r.rps, 1) for r in results],
            "p99_us": max(r.p99_us for r in results), "p50_us": max(r.p50_us for r in results),
            "problems": problems, "log_problems": log_problems, "valid": not problems}


def delivery_once(children: Children, workdir: Path, events: int,
                  extra_env: dict[str, str]) -> dict[str, Any]:
    fleet = start_fleet(children, workdir, extra_env)
    try:
        fleet.subscribe(["/d"])
        fleet.store_events(events, "scaling")
        result = delivery.drain(fleet, events, PROCESSES, timeout=60 + events / 100)
        log_problems = fleet.log_problems()
    finally:
        fleet.stop()
    return {"events_per_second": result.events_per_second,
            "cpu_us_per_event": result.cpu_us_per_event, "problems": result.problems,
            "log_problems": log_problems, "valid": not result.problems}


def measure(children: Children, workdir: Path, *, runs: int, duration: float, threads: int,
            connections: int, lines: int, events: int,
            extra_env: dict[str, str], progress: Any) -> dict[str, Any]:
    script = wrk.write_script(workdir)
    ingest, deliveries = [], []
    for i in range(runs):
        run_dir = workdir / f"scaling-{i}"
        run_dir.mkdir(parents=True, exist_ok=True)
        progress(f"scaling: run {i + 1}/{runs}, ingest into {PROCESSES} relay web + "
                 f"{PROCESSES} workers, one wrk -t{threads} -c{connections} per port")
        ingest.append(_ingest_with_files(children, run_dir, script, threads, connections,
                                         duration, lines, extra_env))
        progress(f"  {rps(ingest[-1]['rps'])} in all ("
                 + " + ".join(rps(r) for r in ingest[-1]["per_process_rps"]) + ")")
        progress(f"scaling: run {i + 1}/{runs}, {events:,} stored events drained by "
                 f"{PROCESSES} workers")
        deliveries.append(delivery_once(children, run_dir / "delivery", events, extra_env))
        progress(f"  {deliveries[-1]['events_per_second']:,.0f} ev/s in all")
    med = {"ingest_rps": median([r["rps"] for r in ingest]),
           "delivery_events_per_second": median([r["events_per_second"] for r in deliveries]),
           "valid": all(r["valid"] for r in [*ingest, *deliveries])}
    return {"processes": PROCESSES, "events": events, "ingest": ingest,
            "delivery": deliveries, "median": med}


def _ingest_with_files(children: Children, run_dir: Path, script: Path, threads: int,
                       connections: int, duration: float, lines: int,
                       extra_env: dict[str, str]) -> dict[str, Any]:
    # One wrk per web process, each replaying callbacks of its own: none is a duplicate.
    secret = "runflow_bench_" + secrets.token_hex(16)
    files = []
    for n in range(PROCESSES):
        path = run_dir / f"requests-{n}.tsv"
        payloads.write_request_file(path, lines, secret, f"scale{n}")
        files.append(path)
    try:
        return ingest_once(children, run_dir / "ingest", files=files, secret=secret,
                           script=script, threads=threads, connections=connections,
                           duration=duration, extra_env=extra_env)
    finally:
        for path in files:
            path.unlink(missing_ok=True)


def rows(doc: dict[str, Any], single_ingest: float | None,
         single_delivery: float | None) -> list[Row]:
    med, n = doc["median"], doc["processes"]
    valid = verdict(med["valid"])

    def times(value: float, single: float | None) -> str:
        return f"; {value / single:.2f}x one web + one worker (its own runs)" if single else ""

    ingest_notes = ["runs: " + " / ".join(
        "+".join(f"{r:,.0f}" for r in run["per_process_rps"]) for run in doc["ingest"])
        + " req/s" + times(med["ingest_rps"], single_ingest)]
    delivery_notes = ["runs: " + " / ".join(f"{r['events_per_second']:,.0f}"
                                           for r in doc["delivery"]) + " ev/s"
                      + times(med["delivery_events_per_second"], single_delivery)]
    for part, notes in (("ingest", ingest_notes), ("delivery", delivery_notes)):
        notes.extend(f"run {i + 1}: {p}" for i, r in enumerate(doc[part]) for p in r["problems"])
        notes.extend(f"{name} logged {len(lines)} warnings/errors, first: {lines[0][:200]}"
                     for r in doc[part] for name, lines in r["log_problems"].items())
    return [
        Row(f"scaling: ingest, {n} relay web + {n} workers, one Redis",
            rps(med["ingest_rps"]), valid=valid, notes=ingest_notes),
        Row(f"scaling: delivery, {n} relay workers draining one backlog",
            f"{med['delivery_events_per_second']:,.0f} ev/s", valid=valid,
            notes=delivery_notes),
    ]

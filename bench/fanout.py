"""Fan-out: the time from one signed callback to its event's arrival at 100 subscriptions.

One stack (redis, `relay web`, one `relay worker`, the sink) with 100 subscriptions, one per
path of the sink. Each repeat sends one callback and waits for the sink's 100th POST; the
figure is that POST's arrival time minus the send time, both CLOCK_MONOTONIC.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import httpx

from bench import payloads
from bench.fleet import Fleet, start_fleet
from bench.procs import BenchError, Children
from bench.report import Row, median, ms, verdict
from bench.stacks import CALLBACK_PATH

TARGET_MS = 250.0


def _once(fleet: Fleet, client: httpx.Client, subscriptions: int) -> float:
    fleet.sink_reset()
    ((_, body, sig),) = payloads.signed_callbacks(1, fleet.runflow_secret, "fanout")
    sent_ns = time.monotonic_ns()
    answer = client.post(CALLBACK_PATH, content=body, headers={
        "runflow-signature": sig, "content-type": "application/json"})
    if answer.status_code != 200:
        raise BenchError(f"fan-out callback answered {answer.status_code}: {answer.text[:300]}")
    doc = fleet.wait_for_sink(subscriptions, 30, f"fan-out to {subscriptions} subscriptions",
                              interval=0.002)
    if doc["paths"] != subscriptions:
        raise BenchError(f"fan-out reached {doc['paths']} distinct paths, not {subscriptions}")
    return (doc["last_ns"] - sent_ns) / 1e6


def measure(children: Children, workdir: Path, *, runs: int, repeats: int, subscriptions: int,
            extra_env: dict[str, str], progress: Any) -> dict[str, Any]:
    progress(f"fan-out: {subscriptions} subscriptions, {repeats} callbacks per run, "
             f"{runs} run(s) on one stack")
    fleet = start_fleet(children, workdir / "fanout", extra_env)
    out: list[dict[str, Any]] = []
    try:
        fleet.subscribe([f"/f/{i}" for i in range(subscriptions)])
        url = fleet.start_web()
        fleet.start_worker()
        fleet.warm_up(2, per_event=subscriptions)
        with httpx.Client(base_url=url, timeout=10) as client:
            for i in range(runs):
                times = []
                for _ in range(repeats):
                    times.append(round(_once(fleet, client, subscriptions), 2))
                    time.sleep(0.1)
                out.append({"ms": times, "median_ms": statistics.median(times),
                            "max_ms": max(times)})
                progress(f"  run {i + 1}: median {ms(out[-1]['median_ms'])}, "
                         f"max {ms(out[-1]['max_ms'])}")
        problems = fleet.log_problems()
    finally:
        fleet.stop()
    med = {"median_ms": median([r["median_ms"] for r in out]),
           "max_ms": median([r["max_ms"] for r in out]), "valid": True}
    return {"subscriptions": subscriptions, "repeats": repeats, "runs": out, "median": med,
            "log_problems": problems}


def rows(doc: dict[str, Any]) -> list[Row]:
    med = doc["median"]
    notes = [f"one callback -> {doc['subscriptions']} subscriptions (100 paths of the sink), "
             f"{doc['repeats']} callbacks per run; per run median/max: " + " / ".join(
                 f"{ms(r['median_ms'])}/{ms(r['max_ms'])}" for r in doc["runs"]),
             "p50 column = median of the runs' medians, p99 column = median of their maxima"]
    notes.extend(f"{name} logged {len(lines)} warnings/errors, first: {lines[0][:200]}"
                 for name, lines in doc["log_problems"].items())
    return [Row(f"fan-out: callback -> 100th subscriber ({doc['subscriptions']} subs)", "",
                ms(med["median_ms"]), ms(med["max_ms"]), verdict(med["valid"]),
                target=f"< {TARGET_MS:.0f} ms", met=verdict(med["median_ms"] < TARGET_MS),
                notes=notes)]

"""Memory: relay's RSS after N events through the whole path, and Redis bytes per event.

One stack (redis, `relay web`, one `relay worker`, one subscription to the sink). N signed
callbacks go through `relay web` from a closed-loop client; once the sink has all N and the
worker has settled them, the web and worker RSS are read from /proc and Redis' `used_memory`
growth over the N events (each stored with its delivery record, delivered) is divided by N.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench import load
from bench.fleet import rss_mib, run_async, start_fleet
from bench.procs import Children
from bench.report import Row, median, verdict

WARMUP = 20
CONCURRENCY = 32


def run_once(children: Children, workdir: Path, events: int,
             extra_env: dict[str, str]) -> dict[str, Any]:
    fleet = start_fleet(children, workdir, extra_env)
    try:
        fleet.subscribe(["/m"])
        url = fleet.start_web()
        web = fleet.webs[0]
        worker = fleet.start_worker()
        fleet.warm_up(WARMUP)
        rss_start = {"web": rss_mib(web), "worker": rss_mib(worker)}
        before = fleet.redis_stats()["used_memory"]
        sent = run_async(load.closed_loop(url, fleet.runflow_secret, events, CONCURRENCY,
                                          "memory"))
        fleet.wait_for_sink(WARMUP + sent.accepted, 60 + events / 200,
                            "memory: deliveries", interval=0.1)
        time.sleep(1.0)  # the last attempts' settle scripts, the AOF buffer's flush
        after = fleet.redis_stats()["used_memory"]
        depths = fleet.depths()
        rss_end = {"web": rss_mib(web), "worker": rss_mib(worker)}
        problems = sent.problems()
        if depths["scheduled_retries"] or depths["dead"]:
            problems.append(f"deliveries not all succeeded: {depths}")
        log_problems = fleet.log_problems()
    finally:
        fleet.stop()
    return {
        "events": events, "accepted": sent.accepted, "ingest_seconds": round(sent.seconds, 2),
        "rss_mib_after_warmup": rss_start, "rss_mib": rss_end,
        "redis_used_memory_delta": after - before,
        "redis_bytes_per_event": round((after - before) / max(sent.accepted, 1), 1),
        "problems": problems, "log_problems": log_problems, "valid": not problems,
    }


def measure(children: Children, workdir: Path, *, runs: int, events: int,
            extra_env: dict[str, str], progress: Any) -> dict[str, Any]:
    out = []
    for i in range(runs):
        progress(f"memory: run {i + 1}/{runs}, {events:,} callbacks through relay web "
                 "and one worker to the sink")
        run = run_once(children, workdir / f"memory-{i}", events, extra_env)
        out.append(run)
        progress(f"  RSS web {run['rss_mib']['web']:.0f} MiB, worker "
                 f"{run['rss_mib']['worker']:.0f} MiB; Redis "
                 f"{run['redis_bytes_per_event']:,.0f} bytes/event"
                 + "".join(f"; {p}" for p in run["problems"]))
    med = {"web_rss_mib": median([r["rss_mib"]["web"] for r in out]),
           "worker_rss_mib": median([r["rss_mib"]["worker"] for r in out]),
           "redis_bytes_per_event": median([r["redis_bytes_per_event"] for r in out]),
           "valid": all(r["valid"] for r in out)}
    return {"events": events, "runs": out, "median": med}


def rows(doc: dict[str, Any], polling: dict[str, Any] | None) -> list[Row]:
    med, runs = doc["median"], doc["runs"]
    valid = verdict(med["valid"])
    notes = [f"after {doc['events']:,} callbacks through web -> worker -> sink; runs: "
             + " / ".join(f"web {r['rss_mib']['web']:.0f}, worker {r['rss_mib']['worker']:.0f}"
                          for r in runs) + " MiB; after warm-up: "
             + " / ".join(f"web {r['rss_mib_after_warmup']['web']:.0f}, worker "
                          f"{r['rss_mib_after_warmup']['worker']:.0f}" for r in runs) + " MiB"]
    notes.extend(f"run {i + 1}: {p}" for i, r in enumerate(runs) for p in r["problems"])
    notes.extend(f"{name} logged {len(lines)} warnings/errors, first: {lines[0][:200]}"
                 for r in runs for name, lines in r["log_problems"].items())
    out = [
        Row(f"memory: RSS relay web / worker after {doc['events']:,} events",
            f"{med['web_rss_mib']:.0f} / {med['worker_rss_mib']:.0f} MiB", valid=valid,
            notes=notes),
        Row("memory: Redis bytes per stored event (delivered, delivery record included)",
            f"{med['redis_bytes_per_event']:,.0f} B", valid=valid,
            notes=["used_memory growth over the events / events accepted; runs: "
                   + " / ".join(f"{r['redis_bytes_per_event']:,.0f}" for r in runs)]),
    ]
    if polling is not None:
        out.append(Row("memory: Redis bytes per tracked run (from polling)",
                       f"{polling['median']['redis_bytes_per_tracked_run']:,.0f} B",
                       valid=verdict(polling["median"]["valid"])))
    return out

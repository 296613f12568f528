"""Soak: relay web and worker RSS sampled over a long run at a fixed callback rate.

One stack (redis, `relay web`, one `relay worker`, one subscription to the sink), callbacks
sent open-loop at `rate` for `seconds` while the worker delivers them. Each process' RSS is
read from /proc once a second. Samples of the first tenth of the run (at most 30 s, at least
1 s) are the warm-up and do not count; of the rest, the first is "start", the last "end", and
"flat within" is (max - min) / min.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import load
from bench.fleet import run_async, start_fleet
from bench.procs import Children
from bench.report import Row, verdict

TARGET_PCT = 10.0
MIB = 2**20


def warmup_seconds(seconds: float) -> float:
    return min(30.0, max(1.0, seconds / 10))


def _summary(samples: list[int]) -> dict[str, float]:
    low = min(samples)
    return {"start_mib": round(samples[0] / MIB, 1), "end_mib": round(samples[-1] / MIB, 1),
            "max_mib": round(max(samples) / MIB, 1), "min_mib": round(low / MIB, 1),
            "flat_within_pct": round((max(samples) - low) * 100 / low, 2) if low else 0.0}


def measure(children: Children, workdir: Path, *, seconds: float, rate: float,
            extra_env: dict[str, str], progress: Any) -> dict[str, Any]:
    warm = warmup_seconds(seconds)
    progress(f"soak: {rate:g} callbacks/s for {seconds:g} s through web -> worker -> sink, "
             f"RSS sampled every second (the first {warm:g} s are warm-up)")
    fleet = start_fleet(children, workdir / "soak", extra_env)
    samples: dict[str, list[tuple[float, int]]] = {"web": [], "worker": []}
    try:
        fleet.subscribe(["/s"])
        url = fleet.start_web()
        web, worker = fleet.webs[0], fleet.start_worker()
        fleet.warm_up(20)

        def tick(elapsed: float) -> None:
            samples["web"].append((round(elapsed, 2), web.rss_bytes()))
            samples["worker"].append((round(elapsed, 2), worker.rss_bytes()))
            whole = int(elapsed)
            if whole and whole % 60 == 0 and abs(elapsed - whole) < 1:
                progress(f"  {whole} s: RSS web {samples['web'][-1][1] / MIB:.0f} MiB, worker "
                         f"{samples['worker'][-1][1] / MIB:.0f} MiB")

        before = fleet.sink_count()["count"]
        sent = run_async(load.open_loop(url, fleet.runflow_secret, rate, seconds, "soak", tick))
        doc = fleet.wait_for_sink(before + sent.accepted, 60, "soak: deliveries", interval=0.1)
        delivered = doc["count"] - before
        problems = sent.problems()
        log_problems = fleet.log_problems()
    finally:
        fleet.stop()
    counted = {name: [rss for t, rss in rows if t >= warm] for name, rows in samples.items()}
    if not all(counted.values()):  # a run shorter than its warm-up: keep the last sample
        counted = {name: [rows[-1][1]] for name, rows in samples.items()}
    out = {name: _summary(values) for name, values in counted.items()}
    if delivered < sent.accepted:
        problems.append(f"{sent.accepted - delivered} accepted callbacks were not delivered")
    worst = max(s["flat_within_pct"] for s in out.values())
    progress(f"  web {out['web']['start_mib']:.0f} -> {out['web']['end_mib']:.0f} MiB, worker "
             f"{out['worker']['start_mib']:.0f} -> {out['worker']['end_mib']:.0f} MiB, "
             f"flat within {worst:.1f} %")
    return {"seconds": seconds, "rate": rate, "warmup_seconds": warm, "sent": sent.sent,
            "accepted": sent.accepted, "delivered": delivered,
            "achieved_rate": round(sent.sent / sent.seconds, 1) if sent.seconds else 0.0,
            "sender_max_lag_ms": round(sent.max_lag_ms, 1),
            "rss": out, "samples": samples, "flat_within_pct": worst,
            "problems": problems, "log_problems": log_problems, "valid": not problems}


def rows(doc: dict[str, Any]) -> list[Row]:
    valid = verdict(doc["valid"])
    out = []
    for name in ("web", "worker"):
        s = doc["rss"][name]
        out.append(Row(
            f"soak: relay {name} RSS, {doc['rate']:g}/s x {doc['seconds']:g} s",
            f"{s['start_mib']:.0f} -> {s['end_mib']:.0f} MiB", valid=valid,
            target=f"flat within {TARGET_PCT:g} %",
            met=verdict(s["flat_within_pct"] <= TARGET_PCT),
            notes=[f"start {s['start_mib']} MiB (after {doc['warmup_seconds']:g} s warm-up), "
                   f"end {s['end_mib']}, max {s['max_mib']}, min {s['min_mib']}: flat within "
                   f"{s['flat_within_pct']:.1f} %"]))
    out[-1].notes.append(f"{doc['delivered']:,} of {doc['accepted']:,} accepted delivered; "
                         f"sender achieved {doc['achieved_rate']:,.0f}/s; one run")
    out[-1].notes.extend(f"problem: {p}" for p in doc["problems"])
    out[-1].notes.extend(f"{name} logged {len(lines)} warnings/errors, first: {lines[0][:200]}"
                         for name, lines in doc["log_problems"].items())
    return out

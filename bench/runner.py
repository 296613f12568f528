"""The measurements in order: ingest (baseline and relay, interleaved), then end to end."""

from __future__ import annotations

import collections
import os
import platform
import secrets
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import e2e, payloads, suite, wrk
from bench.procs import Children, CpuWindow, cpu_busy
from bench.report import Row, median, ms, rps, table, us_as_ms, verdict
from bench.stacks import CALLBACK_PATH, Stack, pause_for_quiet, start_baseline, start_relay

WARMUP = 20
KINDS = {
    "relay-web-only": "ingest: one relay web process (like the baseline: web + redis)",
    "baseline": "ingest: baseline (body read + 1 XADD)",
    "relay": "ingest: relay web while a worker delivers (1 subscription)",
}
# The targets, on this 2-core machine with the load generator sharing it.
TARGET_RATE, TARGET_P99_MS, TARGET_RATIO, TARGET_E2E_P99_MS = 5_000, 25.0, 0.65, 25.0


@dataclass
class Config:
    duration: float = 10.0
    runs: int = 3
    rate: float = 500.0
    e2e_seconds: float = 10.0
    threads: int = 1
    connections: int = 32
    with_delivery: bool = True
    # Extra environment for the relay processes (e.g. REDIS_MAX_CONNECTIONS); none by default.
    relay_env: dict[str, str] = field(default_factory=dict)
    # Lines in the request file per second of wrk duration: well above what one process takes.
    lines_per_second: int = 25_000
    only: tuple[str, ...] = suite.SECTIONS
    delivery_events: int = 20_000
    fanout_subscriptions: int = 100
    fanout_repeats: int = 10
    memory_events: int = 100_000
    soak_seconds: float = 600.0
    polling_runs: int = 10_000
    polling_rate: float = 2_000.0
    polling_window: float = 10.0


@dataclass
class IngestRun:
    kind: str
    wrk: wrk.WrkResult
    accepted: int | None = None
    duplicates: int | None = None
    delivered_during_run: int | None = None
    log_problems: dict[str, list[str]] = field(default_factory=dict)
    # CPU time per completed request of each process while wrk ran, in microseconds.
    cpu_us_per_request: dict[str, float] = field(default_factory=dict)
    # CPUs busy while wrk ran (load included), and how much of that was other processes'.
    machine_busy_cpus: float = 0.0
    foreign_cpus: float = 0.0

    def problems(self) -> list[str]:
        out = self.wrk.problems()
        if self.duplicates:
            out.append(f"relay counted {self.duplicates} duplicates")
        answered_ok = self.wrk.requests - self.wrk.non2xx
        if self.accepted is not None and self.accepted < answered_ok:
            out.append(f"relay counted {self.accepted} accepted, wrk {answered_ok} 2xx answers")
        return out

    @property
    def valid(self) -> bool:
        return not self.problems()

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "wrk": self.wrk.as_dict(), "accepted": self.accepted,
                "duplicates": self.duplicates, "delivered_during_run": self.delivered_during_run,
                "log_problems": self.log_problems, "problems": self.problems(),
                "cpu_us_per_request": self.cpu_us_per_request,
                "machine_busy_cpus": self.machine_busy_cpus, "foreign_cpus": self.foreign_cpus,
                "valid": self.valid}


Progress = Callable[[str], None]


def stderr_progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _ingest_once(kind: str, cfg: Config, children: Children, workdir: Path, secret: str,
                 script: Path, requests_file: Path) -> IngestRun:
    if kind == "baseline":
        stack: Stack = start_baseline(children, workdir, secret)
    else:
        stack = start_relay(children, workdir, secret, with_worker=kind == "relay",
                            warmup=WARMUP, extra_env=cfg.relay_env)
    try:
        cpu_before = {c.name: c.cpu_seconds() for c in stack.procs}
        window = CpuWindow(stack.procs)
        result = wrk.run(children, base_url=stack.base_url, path=CALLBACK_PATH, script=script,
                         requests_file=requests_file, threads=cfg.threads,
                         connections=cfg.connections, duration=cfg.duration)
        busy, foreign = window.close()
        stack.check_alive()
        run = IngestRun(kind, result, machine_busy_cpus=busy, foreign_cpus=foreign)
        done = max(result.requests, 1)
        run.cpu_us_per_request = {c.name: (c.cpu_seconds() - cpu_before[c.name]) * 1e6 / done
                                  for c in stack.procs}
        if kind != "baseline":
            counts = stack.callback_counts()
            run.accepted = int(counts.get("accepted", 0)) - WARMUP
            run.duplicates = int(counts.get("duplicate", 0))
        if kind == "relay":
            run.delivered_during_run = int(stack.arrivals(10**9)["count"]) - WARMUP
        run.log_problems = stack.log_problems()
        return run
    finally:
        stack.stop(children)
        shutil.rmtree(workdir, ignore_errors=True)
        pause_for_quiet()


def run_all(cfg: Config, children: Children, workdir: Path,
            progress: Progress = stderr_progress) -> dict[str, Any]:
    """Every selected measurement; the raw results as one JSON-able document."""
    busy_at_start = cpu_busy()
    secret = "runflow_bench_" + secrets.token_hex(16)
    body_bytes = 0
    ingest: dict[str, list[IngestRun]] = {}
    if "ingest" in cfg.only:
        body_bytes, ingest = _ingest_section(cfg, children, workdir, secret, progress)
    e2e_runs: list[e2e.E2EResult] = []
    e2e_problems: dict[str, list[str]] = {}
    if "e2e" in cfg.only:
        e2e_runs, e2e_problems = _e2e_section(cfg, children, workdir, secret, progress)
    doc = _document(cfg, body_bytes, ingest, e2e_runs, e2e_problems)
    doc.update(suite.run_extra(cfg, children, workdir, progress))
    doc["valid"] = doc["valid"] and suite.valid(doc)
    doc["machine"]["cpu_busy_before_start"] = busy_at_start
    doc["forced_kills"] = list(children.forced)
    return doc


def _ingest_section(cfg: Config, children: Children, workdir: Path, secret: str,
                    progress: Progress) -> tuple[int, dict[str, list[IngestRun]]]:
    requests_file = workdir / "requests.tsv"
    lines = max(5_000, int(cfg.lines_per_second * cfg.duration))
    progress(f"writing {lines:,} signed callbacks to {requests_file}")
    body_bytes = payloads.write_request_file(requests_file, lines, secret, "ingest")
    script = wrk.write_script(workdir)
    # relay web alone is what compares with the baseline (web + redis, nothing else on the
    # cores); with a worker delivering on the same two cores is the second figure.
    kinds = ["baseline", "relay-web-only"] + (["relay"] if cfg.with_delivery else [])
    ingest: dict[str, list[IngestRun]] = {k: [] for k in kinds}
    for i in range(cfg.runs):
        for kind in kinds:
            progress(f"ingest {kind}: run {i + 1}/{cfg.runs}, wrk -t{cfg.threads} "
                     f"-c{cfg.connections} -d{cfg.duration:g}s")
            run = _ingest_once(kind, cfg, children, workdir / f"{kind}-{i}", secret, script,
                               requests_file)
            ingest[kind].append(run)
            progress(f"  {rps(run.wrk.rps)}, p50 {us_as_ms(run.wrk.p50_us)}, "
                     f"p99 {us_as_ms(run.wrk.p99_us)}"
                     + "".join(f"; {p}" for p in run.problems()))
    requests_file.unlink()
    return body_bytes, ingest


def _e2e_section(cfg: Config, children: Children, workdir: Path, secret: str,
                 progress: Progress) -> tuple[list[e2e.E2EResult], dict[str, list[str]]]:
    progress(f"end to end: {cfg.rate:g} callbacks/s for {cfg.e2e_seconds:g} s, "
             f"{cfg.runs} run(s) on one stack")
    e2e_runs: list[e2e.E2EResult] = []
    stack = start_relay(children, workdir / "e2e", secret, warmup=WARMUP,
                        extra_env=cfg.relay_env)
    try:
        for i in range(cfg.runs):
            result = e2e.measure(stack, rate=cfg.rate, seconds=cfg.e2e_seconds,
                                 wait=max(15.0, cfg.e2e_seconds))
            e2e_runs.append(result)
            progress(f"  run {i + 1}: p50 {ms(result.p50_ms)}, p99 {ms(result.p99_ms)}, "
                     f"{result.delivered}/{result.sent} delivered"
                     + "".join(f"; {p}" for p in result.problems()))
        e2e_problems = stack.log_problems()
    finally:
        stack.stop(children)
    return e2e_runs, e2e_problems


def _ingest_summary(runs: list[IngestRun]) -> dict[str, Any]:
    return {
        "rps": median([r.wrk.rps for r in runs]),
        "p50_us": median([r.wrk.p50_us for r in runs]),
        "p99_us": median([r.wrk.p99_us for r in runs]),
        "valid": all(r.valid for r in runs),
    }


def _document(cfg: Config, body_bytes: int, ingest: dict[str, list[IngestRun]],
              e2e_runs: list[e2e.E2EResult], e2e_problems: dict[str, list[str]]
              ) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "config": asdict(cfg),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "sections": [s for s in suite.SECTIONS if s in cfg.only],
        "valid": True,
    }
    if ingest:
        summaries = {k: _ingest_summary(runs) for k, runs in ingest.items()}
        base = summaries["baseline"]["rps"]
        doc["callback_body_bytes"] = body_bytes
        doc["ingest"] = {k: {"runs": [r.as_dict() for r in runs], "median": summaries[k]}
                         for k, runs in ingest.items()}
        doc["relay_over_baseline"] = {k: (summaries[k]["rps"] / base if base else None)
                                      for k in summaries if k != "baseline"}
        doc["valid"] = all(s["valid"] for s in summaries.values())
    if e2e_runs:
        e2e_summary = {
            "p50_ms": median([r.p50_ms for r in e2e_runs]),
            "p99_ms": median([r.p99_ms for r in e2e_runs]),
            "answer_p50_ms": median([r.answer_p50_ms for r in e2e_runs]),
            "valid": all(r.valid for r in e2e_runs),
        }
        doc["e2e"] = {"runs": [r.as_dict() for r in e2e_runs], "median": e2e_summary,
                      "log_problems": e2e_problems}
        doc["valid"] = doc["valid"] and e2e_summary["valid"]
    return doc


def render(doc: dict[str, Any]) -> str:
    """The table printed at the end of a run."""
    cfg = doc["config"]
    rows = _ingest_rows(doc) if "ingest" in doc else []
    if "e2e" in doc:
        rows.append(_e2e_row(doc))
    # Scaling runs web processes with workers delivering: compare with the same on one of each.
    single = (doc["ingest"]["relay"]["median"]["rps"]
              if "relay" in doc.get("ingest", {}) else None)
    rows.extend(suite.rows(doc, single))
    title = (f"bench: {doc['machine']['cpus']} CPUs, Python {doc['machine']['python']}, "
             f"median of {cfg['runs']} run(s), each section on a fresh redis (AOF everysec)")
    if "ingest" in doc:
        title += (f"; {doc['callback_body_bytes']}-byte callbacks; ingest: wrk "
                  f"-t{cfg['threads']} -c{cfg['connections']} -d{cfg['duration']:g}s, "
                  "one uvicorn process each")
    title += "".join(f"; relay env {k}={v}" for k, v in cfg["relay_env"].items())
    busy = doc["machine"].get("cpu_busy_before_start") or 0.0
    if busy >= 0.15:
        title += (f"\nnote: the CPUs were {busy:.0%} busy with other work just before the start; "
                  "absolute figures are low, compare the ratios")
    verdict_line = "all measurements valid" if doc["valid"] else "INVALID: see the notes"
    forced = collections.Counter(doc.get("forced_kills", []))
    if forced:
        verdict_line += "\n" + "\n".join(f"note: {text} ({n}x)" for text, n in forced.items())
    return table(title, rows) + "\n\n" + verdict_line


def _ingest_rows(doc: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for kind in ("relay-web-only", "baseline", "relay"):
        if kind not in doc["ingest"]:
            continue
        runs, med = doc["ingest"][kind]["runs"], doc["ingest"][kind]["median"]
        notes = ["runs: " + " / ".join(rps(r["wrk"]["rps"]) for r in runs)
                 + f"; non-2xx: {sum(r['wrk']['non2xx'] for r in runs)}"]
        if not med["valid"]:
            notes.append("rates count 2xx answers only; all answers: "
                         + " / ".join(rps(r["wrk"]["all_rps"]) for r in runs))
        if kind == "relay":
            during = [r["delivered_during_run"] for r in runs]
            sent = [r["wrk"]["requests"] for r in runs]
            notes.append("delivered to the subscriber while wrk ran: "
                         + " / ".join(f"{d:,} of {s:,}" for d, s in zip(during, sent, strict=True)))
        cpu = {name: median([r["cpu_us_per_request"][name] for r in runs])
               for name in runs[0]["cpu_us_per_request"]}
        notes.append("CPU per request while wrk ran: "
                     + ", ".join(f"{name} {us:.0f} us" for name, us in cpu.items()))
        foreign = max(r["foreign_cpus"] for r in runs)
        if foreign >= 0.1:
            notes.append(f"other processes used up to {foreign:.2f} CPUs during these runs")
        notes.extend(f"run {i + 1}: {p}" for i, r in enumerate(runs) for p in r["problems"])
        notes.extend(_log_notes([r["log_problems"] for r in runs]))
        row = Row(KINDS[kind], rps(med["rps"]), us_as_ms(med["p50_us"]),
                  us_as_ms(med["p99_us"]), verdict(med["valid"]), notes)
        if kind == "relay-web-only":
            row.target = f">= {TARGET_RATE:,} req/s, p99 < {TARGET_P99_MS:g} ms"
            row.met = verdict(med["rps"] >= TARGET_RATE
                              and med["p99_us"] < TARGET_P99_MS * 1000)
        rows.append(row)
        if kind == "relay-web-only":
            ratio = doc["relay_over_baseline"].get(kind)
            rows.append(Row("ingest: relay web / baseline (same run)",
                            f"{ratio:.2f}" if ratio is not None else "n/a",
                            target=f">= {TARGET_RATIO:.2f}",
                            met=verdict(ratio is not None and ratio >= TARGET_RATIO)))
    ratio = doc["relay_over_baseline"].get("relay")
    if ratio is not None:
        rows.append(Row("ingest: relay web while delivering / baseline", f"{ratio:.2f}"))
    return rows


def _e2e_row(doc: dict[str, Any]) -> Row:
    cfg = doc["config"]
    e2e_doc = doc["e2e"]
    med = e2e_doc["median"]
    runs = e2e_doc["runs"]
    notes = ["runs: " + " / ".join(f"p50 {ms(r['p50_ms'])} p99 {ms(r['p99_ms'])} "
                                   f"max {ms(r['max_ms'])}" for r in runs),
             "delivered: " + " / ".join(f"{r['delivered']}/{r['sent']}" for r in runs)
             + f"; callback answered in p50 {ms(med['answer_p50_ms'])}; sender achieved "
             + " / ".join(f"{r['achieved_rate']:.0f}/s" for r in runs)]
    notes.extend(f"run {i + 1}: {p}" for i, r in enumerate(runs) for p in r["problems"])
    notes.extend(_log_notes([e2e_doc["log_problems"]]))
    return Row(f"end to end: callback sent -> signed event received "
               f"@ {cfg['rate']:g}/s x {cfg['e2e_seconds']:g} s",
               f"{cfg['rate']:g}/s", ms(med["p50_ms"]), ms(med["p99_ms"]),
               verdict(med["valid"]), notes, target=f"p99 < {TARGET_E2E_P99_MS:g} ms",
               met=verdict(med["p99_ms"] < TARGET_E2E_P99_MS))


def _log_notes(per_run: list[dict[str, list[str]]]) -> list[str]:
    """One note per process: warnings/errors it logged over all runs, and the first one."""
    counts: dict[str, int] = {}
    first: dict[str, str] = {}
    for problems in per_run:
        for name, lines in problems.items():
            counts[name] = counts.get(name, 0) + len(lines)
            if lines:
                first.setdefault(name, lines[0])
    return [f"{name} logged {counts[name]} warnings/errors, first: {first[name][:240]}"
            for name in first]

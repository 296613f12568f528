"""The sections after ingest and end to end: delivery, fan-out, scaling, memory, polling, soak.

Each section module measures on processes of its own and returns a JSON-able document with a
`median` (that carries `valid`); this module runs the selected ones in order and turns their
documents into rows of the one table.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from bench import delivery, fanout, memory, polling, scaling, soak
from bench.procs import Children
from bench.report import Row

SECTIONS = ("ingest", "e2e", "delivery", "fanout", "polling", "memory", "soak", "scaling")
# The order sections run in: the long soak last, so a failure elsewhere shows early.
EXTRA = ("delivery", "fanout", "scaling", "memory", "polling", "soak")


class SuiteConfig(Protocol):
    runs: int
    duration: float
    threads: int
    connections: int
    rate: float
    relay_env: dict[str, str]
    only: tuple[str, ...]
    delivery_events: int
    fanout_subscriptions: int
    fanout_repeats: int
    memory_events: int
    soak_seconds: float
    polling_runs: int
    polling_rate: float
    polling_window: float
    lines_per_second: int


def run_extra(cfg: SuiteConfig, children: Children, workdir: Path,
              progress: Callable[[str], None]) -> dict[str, Any]:
    env = cfg.relay_env
    out: dict[str, Any] = {}
    for name in EXTRA:
        if name not in cfg.only:
            continue
        if name == "delivery":
            out[name] = delivery.measure(children, workdir, runs=cfg.runs,
                                         events=cfg.delivery_events, extra_env=env,
                                         progress=progress)
        elif name == "fanout":
            out[name] = fanout.measure(children, workdir, runs=cfg.runs,
                                       repeats=cfg.fanout_repeats,
                                       subscriptions=cfg.fanout_subscriptions, extra_env=env,
                                       progress=progress)
        elif name == "scaling":
            lines = max(5_000, int(cfg.lines_per_second * cfg.duration))
            out[name] = scaling.measure(children, workdir, runs=cfg.runs,
                                        duration=cfg.duration, threads=cfg.threads,
                                        connections=cfg.connections, lines=lines,
                                        events=cfg.delivery_events, extra_env=env,
                                        progress=progress)
        elif name == "memory":
            out[name] = memory.measure(children, workdir, runs=cfg.runs,
                                       events=cfg.memory_events, extra_env=env,
                                       progress=progress)
        elif name == "polling":
            out[name] = polling.measure(children, workdir, runs=cfg.runs,
                                        tracked=cfg.polling_runs, rate=cfg.polling_rate,
                                        window=cfg.polling_window, progress=progress)
        elif name == "soak":
            out[name] = soak.measure(children, workdir, seconds=cfg.soak_seconds,
                                     rate=cfg.rate, extra_env=env, progress=progress)
    return out


def valid(doc: dict[str, Any]) -> bool:
    """Every section that ran is valid (soak has no median: it runs once)."""
    return all(doc[name]["valid"] if name == "soak" else doc[name]["median"]["valid"]
               for name in EXTRA if name in doc)


def rows(doc: dict[str, Any], single_ingest: float | None) -> list[Row]:
    out: list[Row] = []
    if "delivery" in doc:
        out.extend(delivery.rows(doc["delivery"]))
    if "fanout" in doc:
        out.extend(fanout.rows(doc["fanout"]))
    if "polling" in doc:
        out.extend(polling.rows(doc["polling"]))
    if "memory" in doc:
        out.extend(memory.rows(doc["memory"], doc.get("polling")))
    if "soak" in doc:
        out.extend(soak.rows(doc["soak"]))
    if "scaling" in doc:
        single_delivery = (doc["delivery"]["median"]["worker_events_per_second"]
                           if "delivery" in doc else None)
        out.extend(scaling.rows(doc["scaling"], single_ingest, single_delivery))
    return out

"""The benchmark commands run end to end on a tiny size and print their figures."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


SECTIONS = ("ingest", "e2e", "delivery", "fanout", "polling", "memory", "soak", "scaling")


@pytest.mark.timeout(150)
@pytest.mark.skipif(shutil.which("wrk") is None,
                    reason="wrk is not on PATH (apt-get install -y wrk); CI installs it")
def test_tiny_bench_runs_every_section_and_writes_json(tmp_path: Path) -> None:
    """Not a performance check: every section runs on a tiny size and reports its figures."""
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--tiny", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=140,
    )
    report = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, report
    lines = proc.stdout.splitlines()
    for start in ("ingest: one relay web", "ingest: baseline", "ingest: relay web / baseline",
                  "end to end:", "delivery: one relay worker", "delivery: plain aiohttp",
                  "delivery: relay worker / plain aiohttp", "fan-out:", "polling: polls/s",
                  "polling: due-to-poll lag", "memory: RSS", "memory: Redis bytes per stored",
                  "memory: Redis bytes per tracked run", "soak: relay web RSS",
                  "soak: relay worker RSS", "scaling: ingest", "scaling: delivery"):
        assert any(line.startswith(start) for line in lines), (start, report)
    assert "all measurements valid" in proc.stdout, report

    doc = json.loads(out.read_text())
    assert doc["valid"] is True
    assert doc["sections"] == list(SECTIONS)
    for section in SECTIONS:
        assert section in doc, section
    for kind in ("relay-web-only", "relay"):
        relay_run = doc["ingest"][kind]["runs"][0]
        assert relay_run["wrk"]["requests"] > 0 and relay_run["wrk"]["non2xx"] == 0
        assert relay_run["duplicates"] == 0
    e2e = doc["e2e"]["runs"][0]
    assert e2e["delivered"] == e2e["sent"] > 0
    assert e2e["bad_signatures"] == 0
    delivery = doc["delivery"]["runs"][0]
    assert delivery["worker"]["arrived"] == delivery["worker"]["events"] > 0
    assert delivery["plain"]["errors"] == 0 and delivery["ratio"] > 0
    assert doc["fanout"]["median"]["median_ms"] > 0
    assert doc["polling"]["median"]["capacity_polls_per_second"] > 0
    assert 0 < doc["polling"]["median"]["redis_bytes_per_tracked_run"] < 4096
    memory = doc["memory"]["median"]
    assert memory["web_rss_mib"] > 0 and memory["worker_rss_mib"] > 0
    assert memory["redis_bytes_per_event"] > 0
    soak = doc["soak"]
    assert soak["delivered"] == soak["accepted"] > 0
    assert soak["rss"]["web"]["max_mib"] > 0 and soak["rss"]["worker"]["max_mib"] > 0
    assert doc["scaling"]["median"]["ingest_rps"] > 0
    assert doc["scaling"]["median"]["delivery_events_per_second"] > 0


def test_only_rejects_an_unknown_section() -> None:
    proc = subprocess.run([sys.executable, "-m", "bench", "--only", "ingest,nope"],
                          cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "--only" in proc.stderr


@pytest.mark.timeout(90)
def test_tiny_polling_bench_prints_its_figures_and_exits_0(tmp_path: Path) -> None:
    out = tmp_path / "polling.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.polling", "--tiny", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=85,
    )
    report = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, report
    assert "polls/s, one worker" in proc.stdout and "lag p50 / p99" in proc.stdout, report
    doc = json.loads(out.read_text())
    assert doc["capacity_polls_per_second"] > 0 and doc["lag_samples"] > 0
    assert 0 < doc["redis_bytes_per_tracked_run"] < 4096
    assert 0 < doc["redis_round_trips_per_poll"] < 5

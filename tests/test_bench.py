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


@pytest.mark.timeout(60)
@pytest.mark.skipif(shutil.which("wrk") is None,
                    reason="wrk is not on PATH (apt-get install -y wrk); CI installs it")
def test_tiny_bench_prints_the_table_and_exits_0(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "relay.bench", "--tiny", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=55,
    )
    report = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, report
    lines = proc.stdout.splitlines()
    assert any(line.startswith("ingest: relay web") for line in lines), report
    assert any(line.startswith("ingest: baseline") for line in lines), report
    assert any(line.startswith("ingest: relay / baseline") for line in lines), report
    assert any(line.startswith("end to end:") for line in lines), report
    assert "all measurements valid" in proc.stdout, report

    doc = json.loads(out.read_text())
    assert doc["valid"] is True
    relay_run = doc["ingest"]["relay"]["runs"][0]
    assert relay_run["wrk"]["requests"] > 0 and relay_run["wrk"]["non2xx"] == 0
    assert relay_run["duplicates"] == 0
    e2e = doc["e2e"]["runs"][0]
    assert e2e["delivered"] == e2e["sent"] > 0
    assert e2e["bad_signatures"] == 0


@pytest.mark.timeout(90)
def test_tiny_polling_bench_prints_its_figures_and_exits_0(tmp_path: Path) -> None:
    out = tmp_path / "polling.json"
    proc = subprocess.run(
        [sys.executable, "-m", "relay.bench.polling", "--tiny", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=85,
    )
    report = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, report
    assert "polls/s, one worker" in proc.stdout and "lag p50 / p99" in proc.stdout, report
    doc = json.loads(out.read_text())
    assert doc["capacity_polls_per_second"] > 0 and doc["lag_samples"] > 0
    assert 0 < doc["redis_bytes_per_tracked_run"] < 4096
    assert 0 < doc["redis_round_trips_per_poll"] < 5

"""The chaos run, shortened: workers and Redis are SIGKILLed under traffic and nothing is lost."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


@pytest.mark.timeout(150)
def test_chaos_run_with_worker_kills_and_redis_restarts_loses_nothing(tmp_path: Path) -> None:
    out = tmp_path / "chaos.json"
    # Faults every 1-2 s over ~5 s of traffic: the first is a worker SIGKILL, the second a
    # Redis SIGKILL and restart from its AOF, so both happen while callbacks are in flight.
    proc = subprocess.run(
        [sys.executable, "-m", "bench.chaos", "--callbacks", "300", "--runs", "30",
         "--rate", "60", "--fault-every", "1", "2", "--drain-timeout", "60", "--seed", "7",
         "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=140,
    )
    report = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    assert out.exists(), report
    doc = json.loads(out.read_text())
    faults, rec = doc["faults"], doc["reconciled"]
    assert faults["worker_kills"] >= 1 and faults["redis_restarts"] >= 1, report
    assert rec["callbacks_accepted"] == 300, report  # the senders retry until relay takes each
    assert rec["runs_tracked"] == rec["runs_finished"] == 30, report
    assert rec["runs_with_one_terminal_event"] == 30, report
    assert doc["lost"] == 0, report
    assert all(s["delivered"] == s["expected"] == rec["expected_per_subscriber"]
               for s in rec["subscribers"]), report
    assert not any(s["bad_signatures"] for s in rec["subscribers"]), report
    assert doc["problems"] == [], report
    assert proc.returncode == 0, report
    assert "lost: 0" in proc.stdout, report

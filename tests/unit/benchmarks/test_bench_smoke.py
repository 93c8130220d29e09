"""``make bench`` at toy size, so that the benchmark keeps running as the code changes.

It prints tables and asserts nothing about speed; this only checks that every part still runs
and that both clients saw every task through.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[3] / "benchmarks" / "run.py"


def test_the_benchmark_runs_end_to_end_at_toy_size_and_prints_its_tables():
    out = subprocess.run(
        [sys.executable, str(BENCH), "--smoke"], capture_output=True, text=True, timeout=300, check=False
    )

    assert out.returncode == 0, out.stderr[-3000:]
    assert "| ReveTaskTrigger | 5/5 |" in out.stdout
    assert "| session per poll (baseline) | 5/5 |" in out.stdout
    assert "import airflow_provider_reve.operators.reve" in out.stdout
    assert "| ReveTaskTrigger, `gc.freeze()` at start-up | 5/5 |" in out.stdout
    raw = json.loads(out.stdout.split("Raw: ", 1)[1])
    rows = {row["client"]: row for row in raw["triggers"]}
    reve, baseline = rows["reve"], rows["session-per-poll"]
    # What the table is for, at any size: one session's few connections vs. one per poll.
    assert reve["connections"] < baseline["connections"]
    assert reve["polls_per_task"] >= 1 and baseline["polls_per_task"] >= 1
    assert raw["parse"]["reve_ms"] > 0 and raw["parse"]["empty_ms"] > 0

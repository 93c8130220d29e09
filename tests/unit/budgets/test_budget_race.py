"""The ledger's promise under contention: 8 processes reserving against one 1,000-credit budget on
SQLite never take more than the limit, and a refused reservation leaves nothing behind."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from airflow_provider_reve.budgets import Budget, Ledger
from airflow_provider_reve.budgets.schema import engine_for_url

WORKER = Path(__file__).resolve().parents[2] / "support" / "budget_race_worker.py"
PROCESSES = 8
ITERATIONS = 100
LIMIT = 1_000


def test_eight_processes_racing_on_sqlite_never_reserve_past_the_limit_and_refusals_leave_nothing(tmp_path):
    db = tmp_path / "ledger.db"
    Ledger(engine_for_url(f"sqlite:///{db}")).set_budget(
        Budget(name="race", limit_credits=LIMIT, conn_id="reve_default", window="total")
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(WORKER.parents[2]), os.environ.get("PYTHONPATH")])),
    }
    workers = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(db), str(number), str(ITERATIONS)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for number in range(PROCESSES)
    ]
    results = []
    for worker in workers:
        out, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))

    assert [result["errors"] for result in results] == [[]] * PROCESSES
    reserved_ok = sum(result["reserved"] for result in results)
    refused = sum(result["refused"] for result in results)
    assert refused > 0, "the budget never ran out: the race proved nothing"

    with sqlite3.connect(db) as connection:
        spent, reserved = connection.execute(
            "SELECT spent_credits, reserved_credits FROM reve_budget_windows WHERE budget = 'race'"
        ).fetchone()
        rows = connection.execute("SELECT COUNT(*) FROM reve_reservations").fetchone()[0]
        open_lines = connection.execute(
            "SELECT COALESCE(SUM(l.credits), 0) FROM reve_reservation_lines l "
            "JOIN reve_reservations r ON r.id = l.reservation_id WHERE r.state = 'reserved'"
        ).fetchone()[0]
        consumed = connection.execute(
            "SELECT COALESCE(SUM(consumed_credits), 0) FROM reve_reservations WHERE state = 'settled'"
        ).fetchone()[0]
        orphan_lines = connection.execute(
            "SELECT COUNT(*) FROM reve_reservation_lines l LEFT JOIN reve_reservations r "
            "ON r.id = l.reservation_id WHERE r.id IS NULL"
        ).fetchone()[0]

    assert spent + reserved <= LIMIT
    # Every granted reservation has exactly one row; no refused one left a row or a line.
    assert rows == reserved_ok
    assert orphan_lines == 0
    # The window's counters are exactly what the reservations say.
    assert reserved == open_lines
    assert spent == consumed

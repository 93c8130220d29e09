"""Setting a budget from several processes at once (two `airflow reve budget set` of the same
name, a deploy script on every host): every call succeeds, the budget is never missing for a
reader, and one row is left, as one of the callers wrote it. SQLite here; PostgreSQL, where a
delete-then-insert failed with a unique violation, in ``tests/system/test_budget_ledger_postgres.py``.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from budget_set_worker import FIRST_LIMIT, race_set_budget

ROOT = Path(__file__).resolve().parents[3]  # the checkout: the workers import this package

PROCESSES = 4
ITERATIONS = 100


def test_processes_setting_the_same_budget_at_once_on_sqlite_all_succeed_and_leave_one_row(tmp_path):
    db = tmp_path / "ledger.db"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }

    results = race_set_budget(str(db), env, PROCESSES, ITERATIONS)

    assert [result["errors"] for result in results] == [[]] * PROCESSES
    assert [result["missing"] for result in results] == [[]] * PROCESSES
    with sqlite3.connect(db) as connection:
        rows = connection.execute("SELECT name, limit_credits FROM reve_budgets").fetchall()
    assert len(rows) == 1
    assert rows[0][0] == "shared" and rows[0][1] in range(FIRST_LIMIT, FIRST_LIMIT + PROCESSES)

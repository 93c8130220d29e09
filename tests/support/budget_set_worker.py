"""One of the processes of the ``set_budget`` races: set one budget over and over, and read it.

Usage: ``python budget_set_worker.py DB_PATH WORKER_NUMBER ITERATIONS``. Prepares the ledger,
prints ``ready``, waits for a line on stdin (so that every process starts at once), then sets
the budget ``shared`` (limit ``1000 + WORKER_NUMBER``) and reads it back ``ITERATIONS`` times.
Prints one JSON line: the errors of ``set_budget`` and the reads that found no budget at all.
``DB_PATH`` ``-`` reads the ledger's SQLAlchemy URL from ``$REVE_RACE_LEDGER_URL`` (PostgreSQL).
The tests run the race with :func:`race_set_budget`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from airflow_provider_reve.budgets import Budget, Ledger
from airflow_provider_reve.budgets.schema import engine_for_url

# Names this worker sets as the limit: 1000 + its number.
FIRST_LIMIT = 1000


def race_set_budget(
    db_path: str, env: dict[str, str], processes: int, iterations: int
) -> list[dict[str, Any]]:
    """Run ``processes`` workers, all released at once once their ledger is ready; their results."""
    workers = [
        subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), db_path, str(number), str(iterations)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for number in range(processes)
    ]
    for worker in workers:
        assert worker.stdout is not None and worker.stdin is not None
        if worker.stdout.readline().strip() != "ready":
            raise AssertionError(worker.communicate(timeout=60)[1][-2000:])
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write("go\n")
        worker.stdin.flush()
    results = []
    for worker in workers:
        out, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def main(db_path: str, worker: int, iterations: int) -> None:
    url = os.environ["REVE_RACE_LEDGER_URL"] if db_path == "-" else f"sqlite:///{db_path}"
    ledger = Ledger(engine_for_url(url))
    print("ready", flush=True)
    sys.stdin.readline()
    budget = Budget(name="shared", limit_credits=FIRST_LIMIT + worker, conn_id="reve_default", window="total")
    counts: dict[str, list[str]] = {"errors": [], "missing": []}
    for attempt in range(iterations):
        try:
            ledger.set_budget(budget)
        except Exception as error:  # counted: the test wants none
            counts["errors"].append(f"{type(error).__name__}: {str(error).splitlines()[0]}"[:300])
        if ledger.get_budget("shared") is None:
            counts["missing"].append(f"after set {attempt}")
    print(json.dumps(counts))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))

"""One of the racing processes of ``test_budget_race.py``: reserve against one ledger in a loop.

Usage: ``python budget_race_worker.py DB_PATH WORKER_NUMBER ITERATIONS``. Prints one JSON line:
how many reservations it got, were refused, settled, released, and any unexpected errors.
``DB_PATH`` ``-`` reads the ledger's SQLAlchemy URL from ``$REVE_RACE_LEDGER_URL`` instead (a
PostgreSQL ledger: its password stays out of the process list).
"""

from __future__ import annotations

import json
import os
import random
import sys

from airflow_provider_reve.budgets import BudgetExhaustedError, Ledger, Scope
from airflow_provider_reve.budgets.ledger import reservation_key
from airflow_provider_reve.budgets.schema import engine_for_url


def main(db_path: str, worker: int, iterations: int) -> None:
    url = os.environ["REVE_RACE_LEDGER_URL"] if db_path == "-" else f"sqlite:///{db_path}"
    ledger = Ledger(engine_for_url(url))
    scope = Scope(conn_id="reve_default", dag_id="race", model="seedream-5")
    rng = random.Random(worker)
    counts = {"reserved": 0, "refused": 0, "settled": 0, "released": 0, "errors": []}
    for attempt in range(iterations):
        amount = rng.randint(1, 60)
        try:
            reservation = ledger.reserve(reservation_key("race", worker, attempt), scope, amount)
        except BudgetExhaustedError:
            counts["refused"] += 1
            continue
        except Exception as error:  # counted: the test wants none
            counts["errors"].append(f"{type(error).__name__}: {error}")
            continue
        assert reservation is not None
        counts["reserved"] += 1
        roll = rng.random()
        if roll < 0.4:  # SUCCESS, sometimes cheaper than the estimate
            ledger.settle(reservation.id, rng.randint(0, amount))
            counts["settled"] += 1
        elif roll < 0.8:  # FAILED or nothing created
            ledger.release(reservation.id)
            counts["released"] += 1
        # else: the outcome stays unknown (a kill mid-request): it stays reserved
    print(json.dumps(counts))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))

"""The budget ledger on PostgreSQL, the database a cluster shares: the same promises as on SQLite.

A private PostgreSQL server (the one a ``ProductionAirflow`` starts, Debian's ``postgresql``) and
the ``psycopg2`` driver. Eight processes race reservations against one 1,000-credit budget; eight
processes create the ledger's tables in a fresh database at once; four processes set the same
budget at once; two ``429`` pauses written in the wrong order keep the later one (``GREATEST``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from budget_set_worker import FIRST_LIMIT, race_set_budget

from airflow_provider_reve.budgets import Budget, Ledger
from airflow_provider_reve.testing._cluster_config import ClusterSecrets
from airflow_provider_reve.testing._cluster_processes import stop_sessions
from airflow_provider_reve.testing._production_services import PostgresService

psycopg2 = pytest.importorskip("psycopg2", reason="pip install psycopg2-binary (the 'system' extra)")

TESTS = Path(__file__).resolve().parents[1]
WORKER = TESTS / "support" / "budget_race_worker.py"
PROCESSES = 8
ITERATIONS = 100
LIMIT = 1_000


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresService]:
    home = tmp_path_factory.mktemp("ledger-postgres")
    service = PostgresService(ClusterSecrets.load_or_create(home), home / "logs")
    try:
        service.start(time.monotonic() + 120)
        yield service
    finally:
        if service.proc is not None:
            stop_sessions({"postgres": service.proc}, 20)
        service.cleanup()


def _fresh_database(service: PostgresService, name: str) -> str:
    """A new, empty database on the server; its SQLAlchemy URL."""
    conn = psycopg2.connect(**{**service.connect_kwargs(), "dbname": "postgres"})
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE {name}")
    finally:
        conn.close()
    return service.sqlalchemy_url.rsplit("/", 1)[0] + f"/{name}"


def _query(service: PostgresService, database: str, sql: str) -> list[tuple]:
    conn = psycopg2.connect(**{**service.connect_kwargs(), "dbname": database})
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return list(cur.fetchall())
    finally:
        conn.close()


def _worker_env(url: str) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(TESTS.parent), str(TESTS), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "REVE_RACE_LEDGER_URL": url}


def test_eight_processes_racing_on_postgresql_never_reserve_past_the_limit_and_refusals_leave_nothing(
    postgres: PostgresService,
):
    url = _fresh_database(postgres, "ledger_race")
    from airflow_provider_reve.budgets.schema import engine_for_url

    Ledger(engine_for_url(url)).set_budget(
        Budget(name="race", limit_credits=LIMIT, conn_id="reve_default", window="total")
    )
    workers = [
        subprocess.Popen(
            [sys.executable, str(WORKER), "-", str(number), str(ITERATIONS)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_worker_env(url),
        )
        for number in range(PROCESSES)
    ]
    results = []
    for worker in workers:
        out, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))

    assert [result["errors"] for result in results] == [[]] * PROCESSES
    granted = sum(result["reserved"] for result in results)
    refused = sum(result["refused"] for result in results)
    assert refused > 0, "the budget never ran out: the race proved nothing"

    ((spent, reserved),) = _query(
        postgres, "ledger_race", "SELECT spent_credits, reserved_credits FROM reve_budget_windows"
    )
    ((rows,),) = _query(postgres, "ledger_race", "SELECT COUNT(*) FROM reve_reservations")
    ((open_lines,),) = _query(
        postgres,
        "ledger_race",
        "SELECT COALESCE(SUM(l.credits), 0) FROM reve_reservation_lines l "
        "JOIN reve_reservations r ON r.id = l.reservation_id WHERE r.state = 'reserved'",
    )
    ((consumed,),) = _query(
        postgres,
        "ledger_race",
        "SELECT COALESCE(SUM(consumed_credits), 0) FROM reve_reservations WHERE state = 'settled'",
    )
    ((orphan_lines,),) = _query(
        postgres,
        "ledger_race",
        "SELECT COUNT(*) FROM reve_reservation_lines l LEFT JOIN reve_reservations r "
        "ON r.id = l.reservation_id WHERE r.id IS NULL",
    )
    assert spent + reserved <= LIMIT
    assert rows == granted  # no refused reservation left a row...
    assert orphan_lines == 0  # ...or a line
    assert (reserved, spent) == (open_lines, consumed)


def test_eight_processes_creating_the_ledger_tables_at_once_on_postgresql_all_succeed(
    postgres: PostgresService,
):
    url = _fresh_database(postgres, "ledger_first_use")
    script = (
        "from airflow_provider_reve.budgets.schema import engine_for_url; import os; "
        "engine_for_url(os.environ['REVE_RACE_LEDGER_URL'])"
    )
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", script],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_worker_env(url),
        )
        for _ in range(PROCESSES)
    ]
    failures = []
    for worker in workers:
        _, err = worker.communicate(timeout=300)
        if worker.returncode != 0:
            failures.append(err[-1500:])
    assert failures == []
    assert _query(postgres, "ledger_first_use", "SELECT version FROM reve_ledger_schema") == [(1,)]


def test_processes_setting_the_same_budget_at_once_on_postgresql_all_succeed_and_leave_one_row(
    postgres: PostgresService,
):
    url = _fresh_database(postgres, "ledger_set_race")

    results = race_set_budget("-", _worker_env(url), processes=4, iterations=100)

    # A delete-then-insert lost to a concurrent one with a unique violation on the budget's name.
    assert [result["errors"] for result in results] == [[]] * 4
    assert [result["missing"] for result in results] == [[]] * 4
    rows = _query(postgres, "ledger_set_race", "SELECT name, limit_credits FROM reve_budgets")
    assert len(rows) == 1
    assert rows[0][0] == "shared" and rows[0][1] in range(FIRST_LIMIT, FIRST_LIMIT + 4)


def test_a_shared_429_pause_on_postgresql_keeps_the_later_of_two_pauses(
    postgres: PostgresService, monkeypatch: pytest.MonkeyPatch
):
    from airflow_provider_reve.budgets import shared_pauses

    url = _fresh_database(postgres, "ledger_pauses")
    kwargs = postgres.connect_kwargs()
    connection = {
        "conn_type": "postgres",
        "host": kwargs["host"],
        "port": kwargs["port"],
        "login": kwargs["user"],
        "password": kwargs["password"],
        "schema": "ledger_pauses",
    }
    monkeypatch.setenv("AIRFLOW_CONN_REVE_LEDGER", json.dumps(connection))
    monkeypatch.setenv("AIRFLOW__REVE__LEDGER_CONN_ID", "reve_ledger")
    shared_pauses.forget()
    try:
        later = time.time() + 600
        for until in (later, later - 300):  # the earlier pause arrives last
            writer = shared_pauses.publish_pause("gate", until)
            assert writer is not None
            writer.join(timeout=60)
        assert url.endswith("/ledger_pauses")
        rows = _query(postgres, "ledger_pauses", "SELECT gate_key, paused_until FROM reve_rate_limit_pauses")
        assert rows == [("gate", pytest.approx(later))]
    finally:
        shared_pauses.forget()

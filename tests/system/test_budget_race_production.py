"""One budget kept in PostgreSQL, raced for by two Celery workers of a :class:`ProductionAirflow`.

40 mapped deferrable generations (25 credits each) under a budget with room for 20: the two
workers reserve at the same moment, against the ledger in its own database on the deployment's
PostgreSQL server. Exactly 20 pay; 20 fail on their first try before any call; the budget's spent
equals what the fake charged, and nothing stays reserved.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from airflow_provider_reve.budgets import Budget, Ledger
from airflow_provider_reve.testing.fake_server import DEFAULT_API_KEY, FakeReveServer
from airflow_provider_reve.testing.production import ProductionAirflow

psycopg2 = pytest.importorskip("psycopg2", reason="pip install psycopg2-binary (the 'system' extra)")

DAGS = Path(__file__).resolve().parent / "dags_budgets_production"
DAG_ID = "reve_budget_production_race"
PRICE = 25
ROOM = 20
LEDGER_DB = "reve_ledger"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeReveServer]:
    with FakeReveServer(async_seconds=3) as server:
        yield server


@pytest.fixture(scope="module")
def production(fake: FakeReveServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProductionAirflow]:
    cluster = ProductionAirflow(DAGS, home=tmp_path_factory.mktemp("budget-production"), triggerers=1)
    kwargs = cluster.postgres.connect_kwargs()
    ledger = {
        "conn_type": "postgres",
        "host": kwargs["host"],
        "port": kwargs["port"],
        "login": kwargs["user"],
        "password": kwargs["password"],
        "schema": LEDGER_DB,
    }
    cluster.env.update(
        {
            "AIRFLOW_CONN_REVE_DEFAULT": json.dumps(
                {"conn_type": "reve", "host": fake.url, "password": DEFAULT_API_KEY}
            ),
            "AIRFLOW_CONN_REVE_LEDGER": json.dumps(ledger),
            "AIRFLOW__REVE__LEDGER_CONN_ID": "reve_ledger",
        }
    )
    try:
        cluster.start(timeout=360)
        # The ledger's own database on the deployment's server (the tables come on first use).
        conn = psycopg2.connect(**{**kwargs, "dbname": "postgres"})
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE {LEDGER_DB}")
        finally:
            conn.close()
        cluster.wait_for_dag(DAG_ID, timeout=180)
        yield cluster
    finally:
        cluster.stop()


def _ledger(cluster: ProductionAirflow) -> Ledger:
    from airflow_provider_reve.budgets.schema import engine_for_url

    url = cluster.postgres.sqlalchemy_url.rsplit("/", 1)[0] + f"/{LEDGER_DB}"
    return Ledger(engine_for_url(url))


def test_two_workers_racing_for_one_postgresql_budget_pay_exactly_its_room_and_refuse_the_rest_unpaid(
    production: ProductionAirflow, fake: FakeReveServer
):
    ledger = _ledger(production)
    ledger.set_budget(
        Budget(
            name="race", limit_credits=ROOM * PRICE, conn_id="reve_default", window="total", dag_ids=(DAG_ID,)
        )
    )
    run_id = production.trigger(DAG_ID)

    assert production.wait_for_run(DAG_ID, run_id, timeout=600) == "failed"

    tis = production.query(
        "SELECT map_index, state, try_number, hostname FROM task_instance WHERE dag_id = ? AND run_id = ?",
        (DAG_ID, run_id),
    )
    assert len(tis) == 40
    paid = [ti for ti in tis if ti["state"] == "success"]
    refused = [ti for ti in tis if ti["state"] != "success"]
    assert len(paid) == ROOM
    assert {(ti["state"], ti["try_number"]) for ti in refused} == {("failed", 1)}
    assert {ti["hostname"] for ti in tis} == set(production.workers)  # both workers raced
    charges = [entry for entry in fake.ledger if entry["reason"] == "charge"]
    assert len(charges) == ROOM == fake.submissions
    status = ledger.status("race")
    assert status is not None
    assert (status.spent_credits, status.reserved_credits) == (-sum(e["delta"] for e in charges), 0)
    assert status.spent_credits == ROOM * PRICE
    assert [r.state for r in ledger.open_reservations()] == []

"""``[reve] budget_recheck_seconds``: how soon a task waiting for budget room looks again."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest
from airflow.providers.common.compat.sdk import TaskDeferred
from never_pay_twice_support import InMemoryTaskStateStore, make_context, make_operator

from airflow_provider_reve.budgets import Budget, Ledger
from airflow_provider_reve.testing import FakeReveServer


@pytest.fixture
def ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Ledger:
    monkeypatch.setenv("AIRFLOW_CONN_REVE_LEDGER", f"sqlite:///{tmp_path / 'ledger.db'}")
    monkeypatch.setenv("AIRFLOW__REVE__LEDGER_CONN_ID", "reve_ledger")
    configured = Ledger.configured()
    assert configured is not None
    return configured


def _deferral_seconds(ledger: Ledger) -> float:
    ledger.set_budget(Budget(name="all-time", limit_credits=10, conn_id="reve_default", window="total"))
    operator = make_operator(model="seedream-5", on_budget_exhausted="wait")
    context = make_context(
        InMemoryTaskStateStore(), try_number=1, dag_id="posters", run_id="manual__1", task_id="generate"
    )
    before = datetime.now(timezone.utc)
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(context)
    return (deferred.value.trigger.moment - before).total_seconds()


def test_a_task_waiting_for_budget_room_looks_again_after_the_configured_recheck_interval(
    fake_reve_server: FakeReveServer,
    reve_connection_env: str,
    ledger: Ledger,
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setenv("AIRFLOW__REVE__BUDGET_RECHECK_SECONDS", "40")
    assert 39 <= _deferral_seconds(ledger) <= 41
    assert fake_reve_server.submissions == 0


def test_a_task_waiting_for_budget_room_never_defers_for_less_than_fifteen_seconds(
    fake_reve_server: FakeReveServer,
    reve_connection_env: str,
    ledger: Ledger,
    monkeypatch: pytest.MonkeyPatch,
):
    # A shorter timer can fire before the scheduler has seen the deferral end (apache/airflow#71580).
    monkeypatch.setenv("AIRFLOW__REVE__BUDGET_RECHECK_SECONDS", "2")
    assert 14 <= _deferral_seconds(ledger) <= 16


def test_a_task_waiting_on_a_budget_that_never_resets_looks_again_every_five_minutes_by_default(
    fake_reve_server: FakeReveServer, reve_connection_env: str, ledger: Ledger
):
    assert 299 <= _deferral_seconds(ledger) <= 301

"""A task submitted with ``wait_for_completion=False`` under a budget is settled by the sensor.

The operator reserves before paying and returns the task ``IN_PROGRESS``; the
``ReveTaskSensor`` that waits for it is the one that sees it finish, so it turns the reservation
into the real spend (SUCCESS) or gives it back (FAILED, refunded), as the operator does when it
waits itself. Against the fake Reve API over loopback HTTP and an SQLite ledger.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import AirflowFailException, TaskDeferred
from never_pay_twice_support import InMemoryTaskStateStore, make_context, make_operator
from reve_test_helpers import fire

from airflow_provider_reve.budgets import Budget, Ledger
from airflow_provider_reve.sensors.reve import ReveTaskSensor
from airflow_provider_reve.testing import FakeReveServer

SEEDREAM = 25  # credits per seedream-5 image


@pytest.fixture
def server(fake_reve_server: FakeReveServer, reve_connection_env: str) -> FakeReveServer:
    fake_reve_server.set_async_seconds(60)  # running until the test finishes or fails the task
    return fake_reve_server


@pytest.fixture
def ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Ledger:
    monkeypatch.setenv("AIRFLOW_CONN_REVE_LEDGER", f"sqlite:///{tmp_path / 'ledger.db'}")
    monkeypatch.setenv("AIRFLOW__REVE__LEDGER_CONN_ID", "reve_ledger")
    configured = Ledger.configured()
    assert configured is not None
    configured.set_budget(Budget(name="daily", limit_credits=1000, conn_id="reve_default"))
    return configured


def counters(ledger: Ledger) -> tuple[int, int]:
    status = ledger.status("daily")
    assert status is not None
    return status.spent_credits, status.reserved_credits


def reservation_rows(ledger: Ledger) -> list[tuple[str, int | None]]:
    path = ledger.engine.url.database
    assert path is not None
    with sqlite3.connect(path) as connection:
        return connection.execute("SELECT state, consumed_credits FROM reve_reservations").fetchall()


def submitted_without_waiting() -> dict[str, Any]:
    ctx = make_context(
        InMemoryTaskStateStore(), dag_id="posters", run_id="manual__1", task_id="generate", max_tries=3
    )
    task: dict[str, Any] = make_operator(model="seedream-5", wait_for_completion=False).execute(ctx)
    assert task["status"] == "IN_PROGRESS"
    return task


def wait_with_sensor(task: dict[str, Any], end: Callable[[], Any], *, deferrable: bool) -> Any:
    """Run the sensor on ``task``, which ``end`` finishes (after the deferral, when deferrable)."""
    waiter = ReveTaskSensor(
        task_id="wait_for_it", reve_task_id=task, poke_interval=0.05, timeout=30, deferrable=deferrable
    )
    if not deferrable:
        end()
        return waiter.execute({})
    with pytest.raises(TaskDeferred) as deferred:
        waiter.execute({})
    end()
    step = deferred.value
    next_kwargs = {"event": fire(step.trigger), **(step.kwargs or {})}
    return waiter.resume_execution(step.method_name, next_kwargs, {})


@pytest.mark.parametrize("deferrable", [False, True], ids=["poking", "deferred"])
def test_the_sensor_that_sees_the_task_succeed_settles_its_reservation_to_the_credits_consumed(
    server, ledger, deferrable
):
    task = submitted_without_waiting()
    assert counters(ledger) == (0, SEEDREAM)  # paid, not yet finished: reserved

    result = wait_with_sensor(task, lambda: server.finish_task(task["task_id"]), deferrable=deferrable)

    assert result["status"] == "SUCCESS"
    assert counters(ledger) == (result["consumed_credits"], 0)
    assert reservation_rows(ledger) == [("settled", result["consumed_credits"])]


@pytest.mark.parametrize("deferrable", [False, True], ids=["poking", "deferred"])
def test_the_sensor_that_sees_the_task_fail_releases_its_reservation(server, ledger, deferrable):
    task = submitted_without_waiting()

    with pytest.raises(AirflowFailException, match="GENERATION_FAILED"):
        # Refunded by the API.
        wait_with_sensor(
            task, lambda: server.fail_task(task["task_id"], "GENERATION_FAILED"), deferrable=deferrable
        )

    assert counters(ledger) == (0, 0)
    assert reservation_rows(ledger) == [("released", None)]


def test_a_second_sensor_on_the_same_task_counts_its_spend_once(server, ledger):
    task = submitted_without_waiting()
    first = wait_with_sensor(task, lambda: server.finish_task(task["task_id"]), deferrable=False)
    # A retry of the sensor (its files failed to store), or another DAG's sensor on the same task.
    wait_with_sensor(task, lambda: None, deferrable=False)

    assert counters(ledger) == (first["consumed_credits"], 0)

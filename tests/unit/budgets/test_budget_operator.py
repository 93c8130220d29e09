"""ReveGenerateOperator under credit budgets, against the fake Reve API over loopback HTTP.

The ledger is an SQLite file named by ``[reve] ledger_conn_id``; the fake's own ledger says what
was paid. Whole DAGs run with ``dag.test()``; single tries run with ``execute()`` and an
in-memory state store, as a retry would find it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import (
    AirflowException,
    AirflowFailException,
    AirflowSkipException,
    TaskDeferred,
)
from never_pay_twice_support import InMemoryTaskStateStore, make_context, make_operator, resume

from airflow_provider_reve.budgets import Budget, Ledger
from airflow_provider_reve.testing import FakeReveServer

DAGS = Path(__file__).resolve().parents[2] / "dags" / "budgets"
SEEDREAM = 25  # credits per seedream-5 image


@pytest.fixture
def server(fake_reve_server: FakeReveServer, reve_connection_env: str) -> FakeReveServer:
    fake_reve_server.set_async_seconds(0.1)
    return fake_reve_server


@pytest.fixture
def ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Ledger:
    path = tmp_path / "ledger.db"
    monkeypatch.setenv("AIRFLOW_CONN_REVE_LEDGER", f"sqlite:///{path}")
    monkeypatch.setenv("AIRFLOW__REVE__LEDGER_CONN_ID", "reve_ledger")
    configured = Ledger.configured()
    assert configured is not None
    return configured


def context(store: InMemoryTaskStateStore, try_number: int = 1, **ti: Any) -> dict[str, Any]:
    fields = {"dag_id": "posters", "run_id": "manual__1", "task_id": "generate", "max_tries": 3, **ti}
    return make_context(store, try_number=try_number, **fields)


def counters(ledger: Ledger, name: str = "daily") -> tuple[int, int]:
    status = ledger.status(name)
    assert status is not None
    return status.spent_credits, status.reserved_credits


def reservation_rows(ledger: Ledger) -> list[tuple[str, int | None]]:
    path = ledger.engine.url.database
    assert path is not None
    with sqlite3.connect(path) as connection:
        return connection.execute("SELECT state, consumed_credits FROM reve_reservations").fetchall()


def charges(server: FakeReveServer) -> int:
    return sum(1 for entry in server.ledger if entry["reason"] == "charge")


# -- dag.test() ---------------------------------------------------------------------------------


def test_a_budget_with_room_for_three_lets_exactly_three_of_five_mapped_generations_pay(
    server, ledger, use_dags_folder: Callable[[Path], Path]
):
    from airflow.dag_processing.dagbag import DagBag
    from never_pay_twice_support import Run

    ledger.set_budget(
        Budget(name="daily", limit_credits=3 * SEEDREAM, conn_id="reve_default", dag_tags=("marketing",))
    )
    use_dags_folder(DAGS)
    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}

    run = Run(bag.dags["reve_budget_mapped"])

    states = sorted(ti.state for ti in run.task_instances().values())
    assert states == ["failed", "failed", "success", "success", "success"]
    # Refused before any paid call, for good: AirflowFailException spends no retries.
    assert all(ti.try_number == 1 for ti in run.task_instances().values())
    assert server.submissions == 3
    assert charges(server) == 3
    paid = sum(value["consumed_credits"] for value in run.xcom().values())
    assert paid == 3 * SEEDREAM
    assert counters(ledger) == (paid, 0)


@pytest.mark.parametrize(("limit", "state", "paid"), [(SEEDREAM, "success", 1), (SEEDREAM - 1, "failed", 0)])
def test_task_reve_reserves_in_the_budget_like_the_operator(
    server, ledger, use_dags_folder: Callable[[Path], Path], limit, state, paid
):
    from airflow.dag_processing.dagbag import DagBag
    from never_pay_twice_support import Run

    ledger.set_budget(
        Budget(name="daily", limit_credits=limit, conn_id="reve_default", dag_tags=("marketing",))
    )
    use_dags_folder(DAGS)
    run = Run(DagBag(dag_folder=str(DAGS)).dags["reve_budget_taskflow"])

    assert [ti.state for ti in run.task_instances().values()] == [state]
    assert charges(server) == paid
    assert counters(ledger) == (paid * SEEDREAM, 0)


# -- one try at a time ----------------------------------------------------------------------------


def test_a_generation_without_budget_room_fails_before_any_call_naming_budget_spent_reserved_limit_and_reset(
    server, ledger
):
    ledger.set_budget(Budget(name="daily", limit_credits=10, conn_id="reve_default"))
    with pytest.raises(AirflowFailException) as failed:
        make_operator(model="seedream-5").execute(context(InMemoryTaskStateStore()))
    message = str(failed.value)
    assert "nothing was submitted" in message
    assert "budget 'daily' has no room for 25 credits: spent 0, reserved 0, limit 10" in message
    assert "the window resets 20" in message
    assert server.submissions == 0
    assert reservation_rows(ledger) == []


def test_on_budget_exhausted_skip_skips_without_a_paid_call(server, ledger):
    ledger.set_budget(Budget(name="daily", limit_credits=10, conn_id="reve_default"))
    with pytest.raises(AirflowSkipException, match="no room"):
        make_operator(model="seedream-5", on_budget_exhausted="skip").execute(
            context(InMemoryTaskStateStore())
        )
    assert server.submissions == 0


def test_on_budget_exhausted_wait_defers_without_a_slot_and_pays_once_room_appears(
    server, ledger, monkeypatch
):
    # Look again after the shortest wait there is (15 s): the provider's config default (300 s)
    # applies once Airflow has loaded the provider's config section, whatever a module constant says.
    monkeypatch.setenv("AIRFLOW__REVE__BUDGET_RECHECK_SECONDS", "15")
    ledger.set_budget(Budget(name="daily", limit_credits=10, conn_id="reve_default"))
    operator = make_operator(model="seedream-5", on_budget_exhausted="wait")
    ctx = context(InMemoryTaskStateStore())
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(ctx)
    assert deferred.value.method_name == "execute_after_budget_wait"
    assert type(deferred.value.trigger).__name__ == "DateTimeTrigger"
    assert server.submissions == 0

    ledger.set_budget(Budget(name="daily", limit_credits=100, conn_id="reve_default"))
    result = resume(operator, ctx, deferred.value)

    assert result["status"] == "SUCCESS"
    assert server.submissions == 1
    assert counters(ledger) == (result["consumed_credits"], 0)


def test_on_budget_exhausted_wait_fails_when_execution_timeout_ends_first(server, ledger):
    ledger.set_budget(Budget(name="daily", limit_credits=10, conn_id="reve_default"))
    operator = make_operator(
        model="seedream-5", on_budget_exhausted="wait", execution_timeout=timedelta(seconds=0.5)
    )
    with pytest.raises(AirflowFailException, match="execution_timeout ended while waiting"):
        operator.execute(context(InMemoryTaskStateStore()))
    assert server.submissions == 0


def test_a_retry_that_re_attaches_to_its_paid_task_settles_the_first_reservation_and_never_reserves_twice(
    server, ledger
):
    ledger.set_budget(Budget(name="daily", limit_credits=1000, conn_id="reve_default"))
    server.set_async_seconds(1.0)
    store = InMemoryTaskStateStore()
    with pytest.raises(AirflowException, match="re-attaches"):
        make_operator(model="seedream-5", timeout=0.2).execute(context(store, try_number=1))
    assert counters(ledger) == (0, SEEDREAM)  # paid, outcome not yet known: still reserved

    result = make_operator(model="seedream-5", timeout=30).execute(context(store, try_number=2))

    assert server.submissions == 1
    assert counters(ledger) == (result["consumed_credits"], 0)
    assert reservation_rows(ledger) == [("settled", result["consumed_credits"])]


def test_a_failed_task_is_refunded_and_its_reservation_released(server, ledger):
    ledger.set_budget(Budget(name="daily", limit_credits=1000, conn_id="reve_default"))
    server.add_fault(kind="fail_task", endpoint="generate")
    with pytest.raises(AirflowException):
        make_operator(model="seedream-5").execute(context(InMemoryTaskStateStore()))
    assert counters(ledger) == (0, 0)
    assert reservation_rows(ledger) == [("released", None)]


def test_a_refusal_by_the_api_that_created_nothing_releases_the_reservation(server, ledger):
    ledger.set_budget(Budget(name="daily", limit_credits=1000, conn_id="reve_default"))
    server.add_fault(kind="error", endpoint="generate", code="INVALID_PARAMETER")
    with pytest.raises(AirflowException):
        make_operator(model="seedream-5").execute(context(InMemoryTaskStateStore()))
    assert charges(server) == 0
    assert counters(ledger) == (0, 0)
    assert reservation_rows(ledger) == [("released", None)]


def test_a_submission_of_unknown_outcome_stays_reserved_until_reconciled(server, ledger):
    ledger.set_budget(Budget(name="daily", limit_credits=1000, conn_id="reve_default"))
    server.add_fault(kind="drop_after", endpoint="generate")
    with pytest.raises(AirflowFailException):
        make_operator(model="seedream-5").execute(context(InMemoryTaskStateStore()))
    assert counters(ledger) == (0, SEEDREAM)
    assert reservation_rows(ledger) == [("reserved", None)]


def test_without_a_ledger_configured_budgets_are_off_and_the_task_pays_as_before(
    server, tmp_path, monkeypatch
):
    monkeypatch.delenv("AIRFLOW__REVE__LEDGER_CONN_ID", raising=False)
    result = make_operator(model="seedream-5").execute(context(InMemoryTaskStateStore()))
    assert result["status"] == "SUCCESS"
    assert server.submissions == 1


def test_a_retry_that_resubmits_after_an_unknown_outcome_reserves_afresh_and_keeps_the_first_held(
    server, ledger
):
    # The connection drops after the request was processed: the state a kill mid-submit leaves
    # (a paid task may exist, the state store says "submitting"), with a task the fake charged.
    ledger.set_budget(Budget(name="daily", limit_credits=1000, conn_id="reve_default"))
    server.add_fault(kind="drop_after", endpoint="generate")
    store = InMemoryTaskStateStore()
    with pytest.raises(AirflowException):
        make_operator(model="seedream-5", on_ambiguous_submit="retry").execute(context(store, try_number=1))

    result = make_operator(model="seedream-5", on_ambiguous_submit="retry").execute(
        context(store, try_number=2)
    )

    assert charges(server) == 2  # the retry paid again, as on_ambiguous_submit="retry" accepts
    # Each possibly-paid request holds its own credits: the first stays reserved (its outcome is
    # unknown to us) until `reconcile --release-unknown`; the second is settled.
    assert counters(ledger) == (result["consumed_credits"], SEEDREAM)
    assert sorted(reservation_rows(ledger)) == [("reserved", None), ("settled", result["consumed_credits"])]


def test_a_retry_after_an_unknown_outcome_without_room_for_a_second_reservation_does_not_resubmit(
    server, ledger
):
    ledger.set_budget(Budget(name="daily", limit_credits=SEEDREAM, conn_id="reve_default"))
    server.add_fault(kind="drop_after", endpoint="generate")
    store = InMemoryTaskStateStore()
    with pytest.raises(AirflowException):
        make_operator(model="seedream-5", on_ambiguous_submit="retry").execute(context(store, try_number=1))

    with pytest.raises(AirflowFailException, match="No Reve budget room"):
        make_operator(model="seedream-5", on_ambiguous_submit="retry").execute(context(store, try_number=2))

    assert server.submissions == 1
    assert counters(ledger) == (0, SEEDREAM)
    assert reservation_rows(ledger) == [("reserved", None)]

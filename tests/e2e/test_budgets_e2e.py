"""Credit budgets through a real scheduler, triggerer and task workers, on an SQLite ledger.

One deployment for the module (``tests/e2e/dags_budgets``) with ``[reve] ledger_conn_id`` set, a
fake Reve API of its own, and ``[reve] budget_recheck_seconds`` at 20 s so that ``"wait"`` looks
again soon (not much sooner: Airflow 3.3's scheduler fails a resumed task whose previous
deferral's "success" event it processes late, after a timer shorter than its loop under load).
Each test defines its own budget (scoped to its DAG) and reads three books that must agree: the
fake's ledger (what was paid), the XComs (what the tasks report) and the budget ledger (what was
reserved and spent).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_reve.budgets import Budget, Ledger
from airflow_provider_reve.budgets.schema import engine_for_url
from airflow_provider_reve.testing.cluster import LocalAirflow
from airflow_provider_reve.testing.fake_server import DEFAULT_API_KEY, FakeReveServer

DAGS = Path(__file__).resolve().parent / "dags_budgets"
PRICE = 25  # seedream-5, one image


@dataclass
class BudgetCluster:
    airflow: LocalAirflow
    api: FakeReveServer
    ledger_path: Path

    @property
    def ledger(self) -> Ledger:
        return Ledger(engine_for_url(f"sqlite:///{self.ledger_path}"))

    def budget(self, name: str, limit: int, dag_id: str) -> None:
        self.ledger.set_budget(
            Budget(name=name, limit_credits=limit, conn_id="reve_default", window="total", dag_ids=(dag_id,))
        )

    def spent_and_reserved(self, name: str) -> tuple[int, int]:
        status = self.ledger.status(name)
        assert status is not None
        return status.spent_credits, status.reserved_credits

    def reservations(self, dag_id: str) -> list[dict[str, Any]]:
        with sqlite3.connect(self.ledger_path) as connection:
            connection.row_factory = sqlite3.Row
            rows = connection.execute(
                "SELECT * FROM reve_reservations WHERE dag_id = ? ORDER BY created_at", (dag_id,)
            ).fetchall()
        return [dict(row) for row in rows]

    def paid(self, dag_id: str) -> list[dict[str, Any]]:
        """The fake's charges for ``dag_id``'s prompts (refunds would show as a second entry)."""
        tasks = self.api.tasks
        return [
            entry
            for entry in self.api.ledger
            if str(tasks[entry["task_id"]]["params"].get("prompt", "")).startswith(dag_id)
        ]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BudgetCluster]:
    home = tmp_path_factory.mktemp("budgets-airflow-home")
    ledger_path = home / "reve-ledger.db"
    with FakeReveServer(async_seconds=3) as api:
        env = {
            "AIRFLOW_CONN_REVE_DEFAULT": json.dumps(
                {"conn_type": "reve", "host": api.url, "password": DEFAULT_API_KEY}
            ),
            "AIRFLOW_CONN_REVE_LEDGER": json.dumps({"conn_type": "sqlite", "host": str(ledger_path)}),
            "AIRFLOW__REVE__LEDGER_CONN_ID": "reve_ledger",
            "AIRFLOW__REVE__BUDGET_RECHECK_SECONDS": "20",
        }
        with LocalAirflow(DAGS, home=home, env=env) as airflow:
            yield BudgetCluster(airflow, api, ledger_path)


def _wait_until(what: str, probe: Callable[[], Any], timeout: float = 180) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def _kill_running_try(cluster: BudgetCluster, dag_id: str, run_id: str, ready: Callable[[], bool]) -> None:
    """SIGKILL the task's worker process once it runs and ``ready()`` holds."""

    def running_pid() -> int | None:
        rows = cluster.airflow.query(
            "SELECT state, pid FROM task_instance WHERE dag_id = ? AND run_id = ?", (dag_id, run_id)
        )
        if rows and rows[0]["state"] == "running" and rows[0]["pid"] and ready():
            return int(rows[0]["pid"])
        return None

    os.kill(_wait_until(f"{dag_id} running and ready to be killed", running_pid, 120), signal.SIGKILL)


def test_thirty_mapped_generations_under_a_budget_for_ten_pay_ten_and_refuse_twenty_before_any_call(
    cluster: BudgetCluster,
):
    af, dag_id = cluster.airflow, "reve_budget_e2e_fail"
    cluster.budget("e2e-fail", 10 * PRICE, dag_id)
    af.wait_for_dag(dag_id, timeout=120)
    run_id = af.trigger(dag_id)

    assert af.wait_for_run(dag_id, run_id, timeout=300) == "failed"

    tis = af.task_instances(dag_id, run_id)
    assert len(tis) == 30
    succeeded = [ti for ti in tis if ti["state"] == "success"]
    refused = [ti for ti in tis if ti["state"] != "success"]
    assert len(succeeded) == 10
    # Refused before paying: failed for good on the first try (no retry spent), nothing pushed.
    assert {(ti["state"], ti["try_number"]) for ti in refused} == {("failed", 1)}
    for ti in refused:
        log = af.task_log(dag_id, run_id, "generate", map_index=ti["map_index"])
        refusal = "No Reve budget room, nothing was submitted: budget 'e2e-fail' has no room for 25 credits"
        assert refusal in log
        assert "limit 250; the window resets never" in log
        with pytest.raises(KeyError):
            af.xcom(dag_id, run_id, "generate", map_index=ti["map_index"])
    # Exactly ten paid; the three books agree.
    charges = cluster.paid(dag_id)
    assert len(charges) == 10 and all(entry["reason"] == "charge" for entry in charges)
    xcom_credits = sum(
        af.xcom(dag_id, run_id, "generate", map_index=ti["map_index"])["consumed_credits"] for ti in succeeded
    )
    assert -sum(entry["delta"] for entry in charges) == xcom_credits == 10 * PRICE
    assert cluster.spent_and_reserved("e2e-fail") == (10 * PRICE, 0)
    assert sorted(r["state"] for r in cluster.reservations(dag_id)) == ["settled"] * 10
    # The paid ones waited in the triggerer, as deferrable tasks do.
    assert af.deferral_evidence(dag_id, run_id, "generate", succeeded[0]["map_index"])["deferred"]


def test_generations_that_wait_for_budget_room_complete_once_the_limit_is_raised(cluster: BudgetCluster):
    af, dag_id = cluster.airflow, "reve_budget_e2e_wait"
    cluster.budget("e2e-wait", 2 * PRICE, dag_id)
    af.wait_for_dag(dag_id, timeout=120)
    run_id = af.trigger(dag_id)

    def two_paid_two_waiting() -> bool:
        tis = af.task_instances(dag_id, run_id)
        states = sorted((ti["state"], ti["next_method"]) for ti in tis)
        return states == [
            ("deferred", "execute_after_budget_wait"),
            ("deferred", "execute_after_budget_wait"),
            ("success", None),
            ("success", None),
        ]

    _wait_until("two paid and two waiting for budget room", two_paid_two_waiting, 240)
    waiting = [ti["map_index"] for ti in af.task_instances(dag_id, run_id) if ti["state"] == "deferred"]
    # They look again (each look a resumed try, deferred again) and pay nothing while there is no room.
    _wait_until(
        "the waiting tasks to look again",
        lambda: all(
            len(af.deferral_evidence(dag_id, run_id, "generate", index)["deferred_events"]) >= 2
            for index in waiting
        ),
        120,
    )
    assert len(cluster.paid(dag_id)) == 2
    assert cluster.spent_and_reserved("e2e-wait") == (2 * PRICE, 0)

    raised = ("--limit", str(4 * PRICE), "--window", "total", "--dag-id", dag_id)
    af.cli("reve", "budget", "set", "e2e-wait", *raised)

    assert af.wait_for_run(dag_id, run_id, timeout=180) == "success"
    tis = af.task_instances(dag_id, run_id)
    assert {(ti["state"], ti["try_number"]) for ti in tis} == {("success", 1)}
    for index in waiting:
        assert "No Reve budget room" in af.task_log(dag_id, run_id, "generate", map_index=index)
    charges = cluster.paid(dag_id)
    xcom_credits = sum(af.xcom(dag_id, run_id, "generate", map_index=i)["consumed_credits"] for i in range(4))
    assert len(charges) == 4
    assert -sum(entry["delta"] for entry in charges) == xcom_credits == 4 * PRICE
    assert cluster.spent_and_reserved("e2e-wait") == (4 * PRICE, 0)


def test_a_worker_killed_while_waiting_for_its_paid_task_is_settled_once_by_the_retry(cluster: BudgetCluster):
    af, api, dag_id = cluster.airflow, cluster.api, "reve_budget_e2e_kill_wait"
    cluster.budget("e2e-kill-wait", 1000, dag_id)
    api.set_async_seconds(15)
    af.wait_for_dag(dag_id, timeout=120)
    run_id = af.trigger(dag_id)
    _kill_running_try(
        cluster,
        dag_id,
        run_id,
        lambda: (
            len(cluster.paid(dag_id)) == 1
            and bool(cluster.reservations(dag_id))
            and cluster.reservations(dag_id)[0]["reve_task_id"] is not None
        ),
    )
    assert cluster.spent_and_reserved("e2e-kill-wait") == (0, PRICE)  # held while the try is dead

    assert af.wait_for_run(dag_id, run_id, timeout=180) == "success"
    (ti,) = af.task_instances(dag_id, run_id)
    assert (ti["state"], ti["try_number"]) == ("success", 2)
    assert len(cluster.paid(dag_id)) == 1
    (reservation,) = cluster.reservations(dag_id)  # the retry reused it: never a second one
    assert (reservation["state"], reservation["consumed_credits"]) == ("settled", PRICE)
    assert reservation["reve_task_id"] == af.xcom(dag_id, run_id, "generate")["task_id"]
    assert cluster.spent_and_reserved("e2e-kill-wait") == (PRICE, 0)


def test_a_worker_killed_mid_submit_keeps_one_reservation_for_the_paid_task_and_the_retry_pays_nothing(
    cluster: BudgetCluster,
):
    af, api, dag_id = cluster.airflow, cluster.api, "reve_budget_e2e_kill_submit"
    cluster.budget("e2e-kill-submit", 1000, dag_id)
    af.wait_for_dag(dag_id, timeout=120)
    # The API creates (and charges) the task, then holds its answer back.
    api.add_fault(kind="slow", endpoint="generate", delay=60, times=1)
    run_id = af.trigger(dag_id)
    _kill_running_try(cluster, dag_id, run_id, lambda: len(cluster.paid(dag_id)) == 1)

    assert af.wait_for_run(dag_id, run_id, timeout=180) == "failed"
    (ti,) = af.task_instances(dag_id, run_id)
    assert ti["try_number"] == 2
    assert "interrupted while submitting" in af.task_log(dag_id, run_id, "generate", try_number=2)
    assert len(cluster.paid(dag_id)) == 1  # the retry did not pay again...
    (reservation,) = cluster.reservations(dag_id)  # ...nor reserve again
    # The paid task's credits stay reserved: its outcome is unknown to Airflow (no task id).
    assert (reservation["state"], reservation["reve_task_id"]) == ("reserved", None)
    assert cluster.spent_and_reserved("e2e-kill-submit") == (0, PRICE)
    out = af.cli("reve", "budget", "reconcile", "--older-than-minutes", "0").stdout
    assert "no Reve task id (killed before the API answered?); left reserved" in out
    assert cluster.spent_and_reserved("e2e-kill-submit") == (0, PRICE)


def test_reconcile_settles_the_reservations_of_a_cleared_run_and_a_deleted_run_from_the_api(
    cluster: BudgetCluster,
):
    af, api, dag_id = cluster.airflow, cluster.api, "reve_budget_e2e_orphan"
    cluster.budget("e2e-orphan", 1000, dag_id)
    api.set_async_seconds(15)
    af.wait_for_dag(dag_id, timeout=120)

    def kill_after_paying(run_id: str, paid_before: int) -> None:
        _kill_running_try(
            cluster,
            dag_id,
            run_id,
            lambda: (
                len(cluster.paid(dag_id)) == paid_before + 1
                and any(r["run_id"] == run_id and r["reve_task_id"] for r in cluster.reservations(dag_id))
            ),
        )
        assert af.wait_for_run(dag_id, run_id, timeout=120) == "failed"

    cleared = af.trigger(dag_id)
    kill_after_paying(cleared, 0)
    api.set_async_seconds(2)
    af.api(
        "POST",
        f"dags/{dag_id}/clearTaskInstances",
        {"dry_run": False, "dag_run_id": cleared, "task_ids": ["generate"], "reset_dag_runs": True},
    )
    assert af.wait_for_run(dag_id, cleared, timeout=180) == "success"  # a clear pays afresh

    api.set_async_seconds(15)
    deleted = af.trigger(dag_id)
    kill_after_paying(deleted, 2)
    af.api("DELETE", f"dags/{dag_id}/dagRuns/{deleted}")
    api.set_async_seconds(0)  # the orphaned paid tasks finish

    assert cluster.spent_and_reserved("e2e-orphan") == (PRICE, 2 * PRICE)
    out = af.cli("reve", "budget", "reconcile", "--older-than-minutes", "0").stdout
    assert "Reconciled: 2 settled, 0 released" in out
    assert len(cluster.paid(dag_id)) == 3
    assert cluster.spent_and_reserved("e2e-orphan") == (3 * PRICE, 0)
    assert sorted(r["state"] for r in cluster.reservations(dag_id)) == ["settled"] * 3

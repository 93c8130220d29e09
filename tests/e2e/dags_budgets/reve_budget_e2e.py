"""DAGs ``tests/e2e/test_budgets_e2e.py`` runs under credit budgets through a real scheduler and
triggerer. Every prompt names its DAG, so the fake's tasks tell whose they are."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG

from airflow_provider_reve.operators.reve import ReveGenerateOperator

START = datetime(2026, 1, 1)

with DAG(dag_id="reve_budget_e2e_fail", schedule=None, start_date=START, catchup=False, max_active_tasks=30):
    # 30 deferrable generations (seedream-5: 25 credits each) under a budget with room for 10.
    # Retries are allowed: a refusal must not spend them.
    ReveGenerateOperator.partial(
        task_id="generate",
        model="seedream-5",
        deferrable=True,
        poll_interval=1,
        retries=2,
        retry_delay=timedelta(seconds=1),
    ).expand(prompt=[f"reve_budget_e2e_fail poster {number}" for number in range(30)])

with DAG(dag_id="reve_budget_e2e_wait", schedule=None, start_date=START, catchup=False, max_active_tasks=8):
    # Room for 2 of 4: the other 2 wait on timers until the test raises the limit.
    ReveGenerateOperator.partial(
        task_id="generate",
        model="seedream-5",
        deferrable=True,
        poll_interval=1,
        on_budget_exhausted="wait",
        execution_timeout=timedelta(minutes=10),
    ).expand(prompt=[f"reve_budget_e2e_wait poster {number}" for number in range(4)])

with DAG(
    dag_id="reve_budget_e2e_kill_wait",
    schedule=None,
    start_date=START,
    catchup=False,
    default_args={"retries": 1, "retry_delay": timedelta(seconds=1)},
):
    # Polls in the worker: the test SIGKILLs it while it waits for the paid task.
    ReveGenerateOperator(
        task_id="generate",
        model="seedream-5",
        prompt="reve_budget_e2e_kill_wait ({{ run_id }})",
        deferrable=False,
        poll_interval=1,
    )

with DAG(
    dag_id="reve_budget_e2e_kill_submit",
    schedule=None,
    start_date=START,
    catchup=False,
    default_args={"retries": 1, "retry_delay": timedelta(seconds=1)},
):
    # The test SIGKILLs it while the paid POST has not been answered yet.
    ReveGenerateOperator(
        task_id="generate",
        model="seedream-5",
        prompt="reve_budget_e2e_kill_submit ({{ run_id }})",
        deferrable=False,
        poll_interval=1,
    )

with DAG(dag_id="reve_budget_e2e_orphan", schedule=None, start_date=START, catchup=False):
    # No retries: a killed try leaves its reservation open for `airflow reve budget reconcile`.
    ReveGenerateOperator(
        task_id="generate",
        model="seedream-5",
        prompt="reve_budget_e2e_orphan ({{ run_id }})",
        deferrable=False,
        poll_interval=1,
    )

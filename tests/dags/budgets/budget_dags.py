"""DAGs that ``tests/unit/budgets/test_budget_operator.py`` runs with ``dag.test()`` under a credit budget."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, task

from airflow_provider_reve.operators.reve import ReveGenerateOperator

SUBJECTS = [f"a poster of a lighthouse, variant {number}" for number in range(5)]

with DAG(
    dag_id="reve_budget_mapped",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["marketing"],
):
    ReveGenerateOperator.partial(
        task_id="generate",
        model="seedream-5",  # 25 credits
        deferrable=True,  # settled in the resumed method, found again by its key
        poll_interval=0.05,
        timeout=60,
        retries=2,
        retry_delay=timedelta(seconds=0),
    ).expand(prompt=SUBJECTS)


with DAG(
    dag_id="reve_budget_taskflow",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["marketing"],
):

    @task.reve(model="seedream-5", poll_interval=0.05, timeout=60)
    def poster() -> str:
        return "a poster of a lighthouse at dawn"

    poster()

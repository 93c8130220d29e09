"""DAGs that ``tests/unit/budgets/test_budget_approval.py`` runs with ``dag.test()``: expensive generations
that wait for a person's approval in Required actions."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, task

from airflow_provider_reve.operators.reve import ReveGenerateOperator

with DAG(dag_id="reve_approval_operator", schedule=None, start_date=datetime(2026, 1, 1), tags=["posters"]):
    ReveGenerateOperator(
        task_id="poster",
        model="seedream-5",  # 25 credits
        prompt="a poster of a lighthouse at dawn",
        num_images=2,  # 50 credits: above the threshold
        approval_above_credits=30,
        approval_timeout=timedelta(hours=1),
        on_approval_rejected="skip",
        deferrable=True,
        poll_interval=0.05,
        timeout=60,
    )
    ReveGenerateOperator(
        task_id="cheap",
        model="seedream-5",
        prompt="a small lighthouse icon",
        approval_above_credits=30,  # 25 credits: never asks
        poll_interval=0.05,
        timeout=60,
    )


with DAG(dag_id="reve_approval_taskflow", schedule=None, start_date=datetime(2026, 1, 1), tags=["posters"]):

    @task.reve(model="seedream-5", approval_above_credits=10, poll_interval=0.05, timeout=60)
    def poster() -> dict:
        return {"prompt": "a poster of a harbour at noon", "aspect_ratio": "16:9"}

    poster()

"""An expensive generation that waits for a person in Required actions (tests/e2e/test_approval_e2e.py)."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG

from airflow_provider_reve.operators.reve import ReveGenerateOperator

with DAG(
    dag_id="reve_e2e_approval",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["e2e"],
):
    ReveGenerateOperator(
        task_id="poster",
        model="seedream-5",
        prompt="a poster of a lighthouse ({{ run_id }})",
        num_images=2,  # 50 credits
        approval_above_credits=30,
        approval_timeout=timedelta(minutes=10),
        deferrable=True,
        poll_interval=1,
    )

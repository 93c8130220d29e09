"""The DAG ``tests/system/test_budget_race_production.py`` runs on two Celery workers under one
budget kept in PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG

from airflow_provider_reve.operators.reve import ReveGenerateOperator

with DAG(
    dag_id="reve_budget_production_race",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_tasks=40,
):
    # 40 generations of 25 credits racing for a budget with room for 20, from two workers.
    ReveGenerateOperator.partial(
        task_id="generate",
        model="seedream-5",
        deferrable=True,
        poll_interval=1,
        retries=1,
        retry_delay=timedelta(seconds=1),
    ).expand(prompt=[f"reve_budget_production_race poster {number}" for number in range(40)])

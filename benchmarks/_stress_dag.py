"""The DAG ``make stress`` runs: one deferrable ``ReveGenerateOperator`` mapped over N prompts.

``benchmarks/stress.py`` copies this file into a temporary DAGs folder and sets
``REVE_STRESS_N`` (how many prompts) and ``REVE_STRESS_RETRIES`` in the environment of every
Airflow process, so the dag-processor and the workers parse the same N.
"""

from __future__ import annotations

import os
from datetime import timedelta

from airflow.sdk import dag

from airflow_provider_reve.operators.reve import ReveGenerateOperator

DAG_ID = "reve_stress"
N = int(os.environ.get("REVE_STRESS_N", "10"))
RETRIES = int(os.environ.get("REVE_STRESS_RETRIES", "3"))


@dag(dag_id=DAG_ID, schedule=None, catchup=False, max_active_tasks=1024, tags=["stress"])
def reve_stress() -> None:
    ReveGenerateOperator.partial(
        task_id="generate",
        # An asynchronous model, so every generation really defers to the triggerer and polls.
        model="seedream-5",
        deferrable=True,
        poll_interval=2.0,
        timeout=timedelta(minutes=10),
        max_submit_wait=timedelta(minutes=12),
        # A FAILED task with a transient code is refunded and resubmitted by an Airflow retry.
        retries=RETRIES,
        retry_delay=timedelta(seconds=2),
    ).expand(prompt=[f"stress prompt {i}: a lighthouse at dusk" for i in range(N)])


reve_stress()

"""A DAG that ``tests/guarantees/test_key_never_leaves.py`` runs with ``dag.test()`` against a hostile server.

The connection ``reve_hostile`` is defined by the test (environment variable) and points at a
stub that echoes the API key back; the operator defers, so the answer is read by the trigger
and handed to the resumed task -- the path where no Airflow masking protects the key.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG

from airflow_provider_reve.operators.reve import ReveGenerateOperator

with DAG(
    dag_id="reve_test_hostile_echo",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
):
    ReveGenerateOperator(
        task_id="generate",
        model="seedream-5",
        prompt="A lighthouse in a storm ({{ run_id }})",
        reve_conn_id="reve_hostile",
        deferrable=True,
        poll_interval=0.05,
        timeout=30,
        retries=0,
    )

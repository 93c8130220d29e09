"""A DAG that ``tests/e2e/test_key_never_leaves_e2e.py`` runs against a server echoing the API key.

Every task uses the connection ``reve_hostile`` (defined by the e2e session, pointing at a
hostile stub) and names its scenario in a ``[tag]`` in its prompt; the stub plays that scenario
(see ``tests/support/hostile_stub.py``, ``Lifecycles``). Several tasks are meant to fail: the test is
about where the key shows up, not about the outcome. ``retries=0``: no try is ever repeated.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG

from airflow_provider_reve.operators.reve import ReveGenerateOperator
from airflow_provider_reve.sensors.reve import ReveTaskSensor

CONN_ID = "reve_hostile"

with DAG(
    dag_id="reve_e2e_hostile",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["e2e"],
    default_args={"retries": 0},
):
    # Waited for in the triggerer: it reads the echoes, the worker that resumes never fetched
    # the connection (so Airflow's log masker there does not even know the key).
    for scenario in ("deferred-success", "deferred-failed", "deferred-rejected"):
        ReveGenerateOperator(
            task_id=scenario.replace("-", "_"),
            model="seedream-5",
            prompt=f"[{scenario}] a lighthouse",
            reve_conn_id=CONN_ID,
            deferrable=True,
            poll_interval=1,
            timeout=120,
        )
    # Polled, or refused, in the worker: the exceptions are raised where the key was fetched.
    for scenario in ("polled-failed", "rejected-submit", "echoed-task-id", "proxy-page"):
        ReveGenerateOperator(
            task_id=scenario.replace("-", "_"),
            model="seedream-5",
            prompt=f"[{scenario}] a lighthouse",
            reve_conn_id=CONN_ID,
            deferrable=False,
            poll_interval=1,
            timeout=120,
        )
    # Submit without waiting, then a deferrable sensor waits for the task.
    submit = ReveGenerateOperator(
        task_id="submit",
        model="seedream-5",
        prompt="[sensed] a lighthouse",
        reve_conn_id=CONN_ID,
        wait_for_completion=False,
    )
    ReveTaskSensor(
        task_id="wait",
        reve_task_id=submit.output,
        reve_conn_id=CONN_ID,
        deferrable=True,
        poke_interval=1,
        timeout=120,
    )

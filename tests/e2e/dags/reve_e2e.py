"""DAGs the end-to-end tests run through a real scheduler + triggerer against the fake Reve API."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG, task

from airflow_provider_reve.operators.reve import ReveGenerateOperator
from airflow_provider_reve.sensors.reve import ReveTaskSensor

with DAG(
    dag_id="reve_e2e_workflow",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["e2e"],
):
    # (a) asynchronous model, waited for in the triggerer
    ReveGenerateOperator(
        task_id="async_generate",
        model="seedream-5",
        prompt="a lighthouse ({{ run_id }})",
        deferrable=True,
        poll_interval=1,
    )
    # (b) synchronous model: answered SUCCESS at once, never defers
    ReveGenerateOperator(
        task_id="sync_generate",
        model="reve-2.0",
        prompt="a lighthouse icon ({{ run_id }})",
        num_images=2,
        deferrable=True,
    )
    # (c) submit without waiting -> deferrable sensor -> a downstream task reads the URLs
    submit = ReveGenerateOperator(
        task_id="submit",
        model="nano-banana",
        prompt="a lighthouse at night ({{ run_id }})",
        wait_for_completion=False,
    )
    wait = ReveTaskSensor(task_id="wait", reve_task_id=submit.output, deferrable=True, poke_interval=1)

    @task
    def use_urls(result: dict[str, Any]) -> list[str]:
        return list(result["result_urls"])

    use_urls(wait.output)


with DAG(
    dag_id="reve_e2e_crash",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["e2e"],
    default_args={"retries": 1, "retry_delay": timedelta(seconds=1)},
):
    # Polls in the worker: the test SIGKILLs the task process while it waits.
    ReveGenerateOperator(
        task_id="generate",
        model="seedream-5",
        prompt="survives a crash ({{ run_id }})",
        deferrable=False,
        poll_interval=1,
    )


with DAG(
    dag_id="reve_e2e_back_pressure",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["e2e"],
    max_active_tasks=16,
):
    # More mapped generations than the account may run at once: TOO_MANY_TASKS is waited out
    # on timer deferrals, not with Airflow retries (there are none to spend here).
    ReveGenerateOperator.partial(
        task_id="fan_out",
        model="nano-banana",
        deferrable=True,
        poll_interval=1,
        retries=0,
    ).expand(prompt=[f"variant {n}" for n in range(6)])

"""DAGs that ``tests/system/test_production_topology.py`` runs on CeleryExecutor + PostgreSQL + Redis.

Every generation uses ``seedream-5`` (asynchronous on the fake API: it stays ``IN_PROGRESS`` for
as long as the test holds it) and no Airflow retries unless a scenario needs one, so that a
failure or a hidden retry cannot pass unnoticed.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG

from airflow_provider_reve.operators.reve import ReveGenerateOperator
from airflow_provider_reve.sensors.reve import ReveTaskSensor

MODEL = "seedream-5"
START = datetime(2026, 1, 1)


def _deferrable_fan_out(dag_id: str, width: int) -> DAG:
    with DAG(
        dag_id=dag_id,
        schedule=None,
        start_date=START,
        catchup=False,
        tags=["production-topology"],
        max_active_tasks=64,
        default_args={"retries": 0},
    ) as dag:
        ReveGenerateOperator.partial(
            task_id="generate", model=MODEL, deferrable=True, poll_interval=2
        ).expand(prompt=[f"{dag_id} variant {n}" for n in range(width)])
    return dag


# 1. Width: 40 deferrable generations, and 10 submissions waited for by deferrable sensors.
with _deferrable_fan_out("reve_production_width", 40):
    submitted = ReveGenerateOperator.partial(task_id="submit", model=MODEL, wait_for_completion=False).expand(
        prompt=[f"sensed variant {n}" for n in range(10)]
    )
    ReveTaskSensor.partial(task_id="wait", deferrable=True, poke_interval=2).expand(
        reve_task_id=submitted.output
    )

# 2. Triggerer failover: ~30 waits in the triggerers when one of them is killed.
_deferrable_fan_out("reve_production_failover", 30)

# 4. Scheduler restart while 10 generations wait in the triggerers.
_deferrable_fan_out("reve_production_scheduler_restart", 10)

# 5. Back-pressure: more generations than the account may run at once, no retries to spend.
_deferrable_fan_out("reve_production_back_pressure", 20)

# 3. Worker crash: generations that poll in the worker slot; one retry each, for the crash.
with DAG(
    dag_id="reve_production_worker_crash",
    schedule=None,
    start_date=START,
    catchup=False,
    tags=["production-topology"],
    max_active_tasks=64,
    default_args={"retries": 1, "retry_delay": timedelta(seconds=1)},
):
    ReveGenerateOperator.partial(task_id="generate", model=MODEL, deferrable=False, poll_interval=1).expand(
        prompt=[f"crash variant {n}" for n in range(6)]
    )

# 6. The key's canary: one generation waited for in a triggerer, one in a worker slot.
with DAG(
    dag_id="reve_production_secrets",
    schedule=None,
    start_date=START,
    catchup=False,
    tags=["production-topology"],
):
    ReveGenerateOperator(task_id="deferred", model=MODEL, prompt="a canary", deferrable=True, poll_interval=1)
    ReveGenerateOperator(task_id="polled", model=MODEL, prompt="a canary", deferrable=False, poll_interval=1)

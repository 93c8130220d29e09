"""Smallest DAG that exercises the scheduler, a worker, the triggerer and XCom.

Used only by ``tests/e2e/test_cluster_smoke.py`` to prove that :class:`LocalAirflow`
really runs a deferrable task end to end. ``WaitSensor`` (not ``TimeDeltaSensor``) because it
waits relative to the task's own start: the worker start-up alone takes longer than a
``run_after``-relative delta, which would then succeed without ever deferring.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.providers.standard.sensors.time_delta import WaitSensor
from airflow.sdk import dag, task


@dag(dag_id="smoke_dag", schedule=None, catchup=False, tags=["e2e"])
def smoke_dag() -> None:
    wait = WaitSensor(task_id="wait", time_to_wait=timedelta(seconds=3), deferrable=True)

    @task
    def answer() -> dict[str, int]:
        return {"answer": 42}

    wait >> answer()


smoke_dag()

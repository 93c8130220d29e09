"""``dag.test()`` does not wait out the deferral settle time (issue 22, item 3).

A deferred task's trigger normally may not fire until the executor has recorded the deferring
worker's exit (``triggers.reve.settle_time``, ~6 s: apache/airflow#66374). Under ``dag.test()``
the task and then its trigger run one after the other in one process: there is no executor to
race, so a user's offline DAG test polls at once. Outside it (a real worker, or ``execute()``
called by hand) the settle time holds: see ``test_trigger.py`` and the E2E tests.
"""

from __future__ import annotations

import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from reve_test_helpers import REAL_SETTLE_TIME

DAG_FILE = textwrap.dedent(
    """
    from datetime import datetime

    from airflow.sdk import DAG

    from airflow_provider_reve.operators.reve import ReveGenerateOperator
    from airflow_provider_reve.sensors.reve import ReveTaskSensor

    with DAG("reve_test_settle_under_dag_test", schedule=None, start_date=datetime(2025, 1, 1)):
        ReveGenerateOperator(
            task_id="hero", model="seedream-5", prompt="a kite", deferrable=True, poll_interval=0.5
        )
        submitted = ReveGenerateOperator(
            task_id="submit", model="seedream-5", prompt="a boat", wait_for_completion=False
        )
        ReveTaskSensor(task_id="wait", reve_task_id=submitted.output, deferrable=True, poke_interval=1)
    """
)


def test_under_dag_test_a_deferred_reve_task_is_polled_without_the_settle_wait(
    use_dags_folder: Any,
    reve_connection_env: str,
    fake_reve_server: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from airflow.dag_processing.dagbag import DagBag

    from airflow_provider_reve.triggers import reve as trigger_module

    # The tests' conftest turns the settle time off everywhere; this test is about the real one.
    monkeypatch.setattr(trigger_module, "settle_time", REAL_SETTLE_TIME)
    monkeypatch.setenv("AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL", "5")
    fake_reve_server.set_async_seconds(1.0)  # still running when each task defers
    deferrals: list[tuple[float, float | None]] = []
    serialize = trigger_module.ReveTaskTrigger.serialize

    def recording_serialize(trigger: Any) -> Any:
        classpath, kwargs = serialize(trigger)
        deferrals.append((time.time(), kwargs["not_before"]))
        return classpath, kwargs

    monkeypatch.setattr(trigger_module.ReveTaskTrigger, "serialize", recording_serialize)
    folder = use_dags_folder(tmp_path)
    (folder / "settle_dag.py").write_text(DAG_FILE)
    dag = DagBag(dag_folder=str(folder)).dags["reve_test_settle_under_dag_test"]

    dag_run = dag.test()

    states = {ti.task_id: ti.state for ti in dag_run.get_task_instances()}
    assert states == {"hero": "success", "submit": "success", "wait": "success"}
    assert deferrals, "the operator deferred (the sensor does too when its first poke finds it running)"
    # The trigger may fire as soon as it is built: not_before is not in its future.
    assert all(not_before is not None and not_before <= built for built, not_before in deferrals)


def test_outside_dag_test_no_task_counts_as_run_in_process() -> None:
    from airflow_provider_reve.triggers.reve import runs_under_dag_test

    assert runs_under_dag_test() is False
    assert REAL_SETTLE_TIME() > time.time()  # the real-cluster workaround still applies

"""A deferrable run logs no ERROR when nothing failed (issue 22, item 1).

Log-based alerting watches ERROR lines: a provider that logs one on every deferral teaches people
to ignore them. The run goes through ``dag.test()``: the real task runner, its ``finalize()`` (which
asks every extra link for its target) and the in-process execution API, as a worker does.
"""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path
from typing import Any

import pytest

DAG_FILE = textwrap.dedent(
    """
    from datetime import datetime

    from airflow.sdk import DAG

    from airflow_provider_reve.operators.reve import ReveGenerateOperator
    from airflow_provider_reve.sensors.reve import ReveTaskSensor

    with DAG("reve_test_quiet_deferral", schedule=None, start_date=datetime(2025, 1, 1)):
        hero = ReveGenerateOperator.partial(
            task_id="hero", model="seedream-5", deferrable=True, poll_interval=0.1
        ).expand(prompt=["a red kite", "a blue kite"])
        submitted = ReveGenerateOperator(
            task_id="submit", model="seedream-5", prompt="a green kite", wait_for_completion=False
        )
        ReveTaskSensor(
            task_id="wait", reve_task_id=submitted.output, deferrable=True, poke_interval=0.1
        )
    """
)


@pytest.fixture
def quiet_dag_run(
    use_dags_folder: Any, reve_connection_env: str, fake_reve_server: Any, tmp_path: Path
) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    fake_reve_server.set_async_seconds(0.2)
    folder = use_dags_folder(tmp_path)
    (folder / "quiet_dag.py").write_text(DAG_FILE)
    bag = DagBag(dag_folder=str(folder))
    assert bag.import_errors == {}
    return bag.dags["reve_test_quiet_deferral"]


def test_a_deferrable_run_that_succeeds_logs_nothing_at_error_level(
    quiet_dag_run: Any, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    with caplog.at_level(logging.DEBUG):
        dag_run = quiet_dag_run.test()
    printed = capfd.readouterr()

    states = {(ti.task_id, ti.map_index): ti.state for ti in dag_run.get_task_instances()}
    assert set(states.values()) == {"success"}, states
    errors = [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []
    # structlog may print instead of going through logging: read what reached the terminal too.
    lines = (printed.out + printed.err).splitlines()
    printed_errors = [line for line in lines if "[error" in line.lower() or " ERROR " in line]
    assert printed_errors == []

"""One DAG per sensor mode, each: submit a task, then wait for it with ``soft_fail=True``.

``tests/unit/sensors/test_sensor_airflow_semantics.py`` runs them with ``dag.test()`` through an API outage to
check that the three ways of waiting agree. Intervals are tiny so that a run takes seconds.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG

from airflow_provider_reve.operators.reve import ReveGenerateOperator
from airflow_provider_reve.sensors.reve import ReveTaskSensor

MODES = {"poke": {"mode": "poke"}, "reschedule": {"mode": "reschedule"}, "deferrable": {"deferrable": True}}

for name, how in MODES.items():
    with DAG(
        dag_id=f"reve_test_sensor_outage_{name}",
        schedule=None,
        start_date=datetime(2026, 1, 1),
        catchup=False,
    ):
        submitted = ReveGenerateOperator(
            task_id="generate",
            model="seedream-5",
            prompt="A lighthouse at night ({{ run_id }})",
            wait_for_completion=False,
        )
        ReveTaskSensor(
            task_id="sense",
            reve_task_id=submitted.output,
            poke_interval=0.1,
            timeout=60,
            soft_fail=True,  # a sensor that gave up would be skipped, not failed: check the state
            **how,
        )

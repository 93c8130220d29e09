"""DAGs that the provider's tests run with ``dag.test()`` against the fake Reve server.

They live in a DAGs folder (the tests point ``[core] dags_folder`` here) because ``dag.test()``
needs the DAG in the metadata DB, which it fills by parsing the configured DAGs folder.
Intervals are tiny so that a test run takes seconds, not minutes.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG

from airflow_provider_reve.operators.reve import ReveGenerateOperator
from airflow_provider_reve.sensors.reve import ReveTaskSensor

MAPPED_PROMPTS = [
    "A red fox in the snow ({{ run_id }})",
    "A blue whale at sea ({{ run_id }})",
    "A green parrot in a palm tree ({{ run_id }})",
]

with DAG(
    dag_id="reve_test_mapped_generation",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
):
    ReveGenerateOperator.partial(
        task_id="generate",
        model="nano-banana",
        deferrable=True,
        poll_interval=0.1,
        timeout=60,
    ).expand(prompt=MAPPED_PROMPTS)

with DAG(
    dag_id="reve_test_submit_then_sense",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
):
    generate = ReveGenerateOperator(
        task_id="generate",
        model="seedream-5",
        prompt="A lighthouse at night ({{ run_id }})",
        wait_for_completion=False,
    )
    # The whole dict, rendered by Jinja as its Python repr.
    sense_rendered = ReveTaskSensor(
        task_id="sense_rendered_dict",
        reve_task_id="{{ ti.xcom_pull('generate') }}",
        poke_interval=0.1,
        timeout=60,
    )
    # The XComArg: the dict itself, waited for in the triggerer.
    sense_deferred = ReveTaskSensor(
        task_id="sense_deferred",
        reve_task_id=generate.output,
        deferrable=True,
        poke_interval=0.1,
        timeout=60,
    )
    generate >> sense_rendered

"""DAGs for the results-to-storage tests, run with ``dag.test()`` against the fake Reve server.

Files go below ``$REVE_TEST_OUTPUT_DIR``, which the test sets before the folder is parsed.
"""

from __future__ import annotations

import os
from datetime import datetime

from airflow.sdk import DAG, Asset, AssetAlias, ObjectStoragePath

from airflow_provider_reve.operators.reve import ReveDownloadResultsOperator, ReveGenerateOperator
from airflow_provider_reve.sensors.reve import ReveTaskSensor

OUT = os.environ.get("REVE_TEST_OUTPUT_DIR", "/nonexistent-reve-test-output")
HERO = Asset("reve-test://hero")
FILES = AssetAlias("reve-test-files")
BATCH = Asset("reve-test://batch")
PROMPTS = ["A red fox ({{ run_id }})", "A blue whale ({{ run_id }})"]

with DAG(dag_id="reve_storage_generate_and_store", schedule=None, start_date=datetime(2026, 1, 1)):
    ReveGenerateOperator(
        task_id="hero",
        model="nano-banana",
        prompt="A lighthouse ({{ run_id }})",
        num_images=2,
        deferrable=True,
        poll_interval=0.1,
        timeout=60,
        download_to=ObjectStoragePath(f"file://{OUT}/hero"),
        outlets=[HERO, FILES],
    )

with DAG(dag_id="reve_storage_sense_then_download", schedule=None, start_date=datetime(2026, 1, 1)):
    submitted = ReveGenerateOperator.partial(
        task_id="submit", model="nano-banana", wait_for_completion=False
    ).expand(prompt=PROMPTS)
    sensed = ReveTaskSensor.partial(task_id="wait", deferrable=True, poke_interval=0.1, timeout=60).expand(
        reve_task_id=submitted.output
    )
    ReveDownloadResultsOperator(
        task_id="store",
        results=sensed.output,
        destination=OUT + "/batch/{{ task.task_id }}",  # templated
        outlets=[BATCH],
    )

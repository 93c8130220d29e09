"""DAGs whose runs fill the metadata DB for the gallery tests (``tests/unit/plugins/test_gallery_plugin.py``).

Run with ``dag.test()`` against the fake Reve API. Files go below ``$REVE_TEST_OUTPUT_DIR``. The
test adds a fault so that every ``nano-banana-pro`` task ends ``FAILED`` with
``CONTENT_POLICY_VIOLATION``: ``refused`` skips itself, ``broken`` fails.
"""

from __future__ import annotations

import os
from datetime import datetime

from airflow.sdk import DAG

from airflow_provider_reve.operators.reve import ReveDownloadResultsOperator, ReveGenerateOperator
from airflow_provider_reve.sensors.reve import ReveTaskSensor

OUT = os.environ.get("REVE_TEST_OUTPUT_DIR", "/nonexistent-reve-test-output")
HOSTILE_PROMPT = '<script>alert(1)</script> & "quoted" <img src=x onerror=alert(2)>'
POSTER_PROMPTS = ["A red fox in the snow", HOSTILE_PROMPT]
FAST = {"deferrable": True, "poll_interval": 0.1, "timeout": 60}

with DAG(dag_id="reve_gallery_shop", schedule=None, start_date=datetime(2026, 1, 1), catchup=False):
    # Stored by the generating task itself (download_to), mapped.
    ReveGenerateOperator.partial(
        task_id="posters", model="seedream-5", download_to=f"file://{OUT}/posters", **FAST
    ).expand(prompt=POSTER_PROMPTS)
    # A video, stored: shown as a playable <video>.
    ReveGenerateOperator(
        task_id="clip",
        model="kling26-text-to-video",
        prompt="A paper boat drifting",
        duration=5,
        download_to=f"{OUT}/clip",
        **FAST,
    )
    # Not stored: the gallery shows the result URL (synchronous model, two images).
    ReveGenerateOperator(task_id="hero", model="reve-2.0", prompt="A lighthouse at dusk", num_images=2)
    # Submitted, waited for by a sensor, stored by the download operator.
    submitted = ReveGenerateOperator(
        task_id="submit", model="nano-banana", prompt="A blue whale", wait_for_completion=False
    )
    waited = ReveTaskSensor(task_id="wait", reve_task_id=submitted.output, poke_interval=0.1, timeout=60)
    ReveDownloadResultsOperator(task_id="store", results=waited.output, destination=f"{OUT}/store")
    # The fault makes these FAILED with CONTENT_POLICY_VIOLATION.
    ReveGenerateOperator(
        task_id="refused", model="nano-banana-pro", prompt="Refused", on_content_policy_violation="skip"
    )
    ReveGenerateOperator(task_id="broken", model="nano-banana-pro", prompt="Broken")

with DAG(dag_id="reve_gallery_secret", schedule=None, start_date=datetime(2026, 1, 1), catchup=False):
    ReveGenerateOperator(task_id="secret", model="reve-2.0", prompt="A secret prototype")

"""DAGs written with ``@task.reve``, run by ``tests/unit/decorators/test_task_decorator.py``.

Each function notes every call in the file named by ``REVE_TASKFLOW_CALL_LOG`` (when set), so a
test can tell how often Airflow ran it: once per try, never again when a deferred task resumes.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

from airflow.sdk import DAG, task

MAPPED_SUBJECTS = ["a red fox in the snow", "a blue whale at sea", "a green parrot in a palm tree"]


def note_call(name: str) -> None:
    path = os.environ.get("REVE_TASKFLOW_CALL_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as log:
            log.write(f"{name}\n")


def _dag(dag_id: str) -> DAG:
    return DAG(dag_id=dag_id, schedule=None, start_date=datetime(2026, 1, 1), catchup=False)


with _dag("reve_taskflow_prompt_deferred"):

    @task.reve(model="seedream-5", deferrable=True, poll_interval=0.1, timeout=60)
    def write_prompt(run_id: str | None = None) -> str:
        note_call("write_prompt")
        return f"A lighthouse on a cliff at golden hour ({run_id})"

    write_prompt()


with _dag("reve_taskflow_request_dict"):
    # Annotated as a dict, as such functions naturally are: the XCom must stay the one task dict.
    @task.reve(model="reve-2.0", aspect_ratio="1:1", extra_params={"version": "latest-fast"})
    def write_request() -> dict[str, Any]:
        note_call("write_request")
        return {
            "prompt": "A botanical plate of a fern, engraved",
            "aspect_ratio": "16:9",  # the function's value wins over the decorator's default
            "output_format": "webp",
            "num_images": 2,
            "test_time_scaling": 3,  # not one of the operator's fields: goes to extra_params
        }

    write_request()


with _dag("reve_taskflow_mapped"):

    @task.reve(model="nano-banana", deferrable=True, poll_interval=0.1, timeout=60)
    def describe(subject: str, style: str) -> str:
        note_call("describe")
        return f"{subject}, {style}"

    describe.partial(style="in watercolour").expand(subject=MAPPED_SUBJECTS)


with _dag("reve_taskflow_bad_return"):

    @task.reve(model="seedream-5", retries=2)
    def forgot_to_return() -> None:
        note_call("forgot_to_return")

    forgot_to_return()

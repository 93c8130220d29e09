"""### Image → video: `@task.reve`, submit without waiting, a deferrable sensor, a download step

* **`keyframe`** (`@task.reve`): a Python function writes the request (here from the run's
  date) and returns it; the decorator runs it as a `ReveGenerateOperator`, deferrable: the
  still image that the video starts from.
* **`submit_video`**: an image-to-video generation from the keyframe's URL, with
  `wait_for_completion=False`: the task ends as soon as the Reve task exists (its XCom then says
  `consumed_credits: null`; the cost shows up on the sensor).
* **`wait_for_video`**: a deferrable `ReveTaskSensor` waits for it in the triggerer, however
  long the video takes, without holding a worker slot.
* **`store_media`**: `ReveDownloadResultsOperator` stores the keyframe and the video in one
  folder per run, writes a manifest beside them and updates the `reve_example_video` Asset
  (its event `extra` names the manifest).

`example_reve_review_video`, below in this file, is scheduled on that Asset: every stored video
is checked against its manifest (size and sha256) as soon as it lands.

Files go to `$REVE_EXAMPLE_OUTPUT_DIR/video/` (a folder or an object-store URL; default
`<tmp>/reve-example-output/video/`).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, Asset, ObjectStoragePath, task

from airflow_provider_reve.operators.reve import ReveDownloadResultsOperator, ReveGenerateOperator
from airflow_provider_reve.sensors.reve import ReveTaskSensor


def output_root() -> str:
    """``$REVE_EXAMPLE_OUTPUT_DIR`` as a URL: object-store URLs as they are, folders as ``file://``."""
    configured = os.environ.get("REVE_EXAMPLE_OUTPUT_DIR", "").strip()
    if "://" in configured:
        return configured.rstrip("/")
    folder = Path(configured or Path(tempfile.gettempdir(), "reve-example-output")).absolute()
    return f"file://{folder}"


def run_folder(dag_run: Any) -> str:
    """When the run was due, then a digest of its id: a run id (``..``, ``a/b``) is never a path."""
    digest = hashlib.sha256(dag_run.run_id.encode()).hexdigest()[:12]
    return f"{dag_run.run_after:%Y%m%dT%H%M%S}-{digest}"


ROOT = output_root()
VIDEO = Asset(name="reve_example_video", uri=f"{ROOT}/video")

with DAG(
    dag_id="example_reve_video_pipeline",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["reve", "example"],
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30)},
    user_defined_macros={"run_folder": run_folder},
    doc_md=__doc__,
):
    # [START howto_decorator_reve]
    @task.reve(model="seedream-5", deferrable=True, poll_interval=2, aspect_ratio="16:9", max_credits=25)
    def keyframe(dag_run: Any = None) -> dict[str, Any]:
        """The request for the video's first frame: a prompt string, or a dict of request fields."""
        month = f"{dag_run.run_after:%B}"
        return {
            "prompt": f"Waves crashing below a lighthouse at dusk in {month}, wide shot, cinematic",
            "output_format": "png",
        }

    first_frame = keyframe()
    # [END howto_decorator_reve]

    # [START howto_operator_reve_submit_without_waiting]
    submit_video = ReveGenerateOperator(
        task_id="submit_video",
        model="kling26-image-to-video",
        prompt="The waves roll in and the lighthouse beam sweeps across the sea, slow push-in",
        # One URL renders as a list of one.
        image_urls="{{ ti.xcom_pull(task_ids='keyframe')['result_urls'][0] }}",
        duration=5,
        max_credits=45,  # 9 credits per second
        wait_for_completion=False,
    )
    # [END howto_operator_reve_submit_without_waiting]

    # [START howto_sensor_reve]
    wait_for_video = ReveTaskSensor(
        task_id="wait_for_video",
        reve_task_id=submit_video.output,
        deferrable=True,
        poke_interval=2,
        timeout=timedelta(minutes=30),
    )
    # [END howto_sensor_reve]

    # [START howto_operator_reve_download]
    store_media = ReveDownloadResultsOperator(
        task_id="store_media",
        results=[first_frame, wait_for_video.output],
        destination=ObjectStoragePath(ROOT + "/video/{{ run_folder(dag_run) }}"),
        outlets=[VIDEO],
    )
    # [END howto_operator_reve_download]

    first_frame >> submit_video  # the template above pulls its XCom: make the order explicit


with DAG(
    dag_id="example_reve_review_video",
    schedule=[VIDEO],  # data-aware: runs when store_media has stored a new video
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["reve", "example"],
    doc_md="""### Check every new video against its manifest

Scheduled on the `reve_example_video` Asset. The event's `extra` names the manifest that
`store_media` wrote (`manifest_path`); every file it lists is read back and its size and sha256
compared, so nothing truncated or swapped is published.
""",
):

    @task
    def review(triggering_asset_events: Any = None) -> list[dict[str, Any]]:
        checked = []
        for event in triggering_asset_events[VIDEO] if triggering_asset_events else []:
            with ObjectStoragePath(event.extra["manifest_path"]).open("rb") as fh:
                manifest = json.load(fh)
            for entry in manifest["files"]:
                digest, size = hashlib.sha256(), 0
                with ObjectStoragePath(entry["path"]).open("rb") as fh:
                    for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                        digest.update(chunk)
                        size += len(chunk)
                if (size, digest.hexdigest()) != (entry["bytes"], entry["sha256"]):
                    raise ValueError(f"{entry['path']} does not match its manifest")
                checked.append({"path": entry["path"], "content_type": entry["content_type"], "bytes": size})
        return checked

    review()

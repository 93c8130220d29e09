"""``example_reve_content_pipeline`` through a real Airflow: what ``make demo`` shows, proven.

One deployment for the module (api-server, scheduler, dag-processor, triggerer) parses the
shipped ``airflow_provider_reve/example_dags/`` with ``$REVE_EXAMPLE_OUTPUT_DIR`` set to a
temporary folder and the ``reve_default`` connection on a fake Reve API of its own. The
pipeline is unpaused once, so the scheduler starts its ``@daily`` run by itself; every test
below reads what that one run left in the metadata database, the output folder, the
api-server and the fake's ledger.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlencode

import jinja2
import pytest
import requests

from airflow_provider_reve.mixins.finish import ASSET_EXTRA_KEYS
from airflow_provider_reve.testing.cluster import LocalAirflow
from airflow_provider_reve.testing.demo import wait_for_first_run
from airflow_provider_reve.testing.fake_server import DEFAULT_API_KEY, FakeReveServer

EXAMPLE_DAGS = Path(__file__).resolve().parents[2] / "airflow_provider_reve" / "example_dags"
PROMPTS_FILE = EXAMPLE_DAGS / "prompts" / "content_pipeline.txt"
DAG_ID = "example_reve_content_pipeline"
PUBLISH_DAG_ID = "example_reve_publish_contact_sheet"
CONTACT_SHEET_EXTRA = {"path", "bytes", "image_count", "reve_task_ids", "consumed_credits", "run_id"}


@dataclass
class PipelineRun:
    airflow: LocalAirflow
    api: FakeReveServer
    output: Path
    run_id: str
    state: str
    deferred: dict[str, Any]  # generate[0] while deferred, with its trigger row

    def generated(self) -> list[dict[str, Any]]:
        """The XCom of every ``generate`` instance, by map index."""
        count = len(
            self.airflow.query(
                "SELECT 1 FROM task_instance WHERE dag_id = ? AND run_id = ? AND task_id = 'generate'",
                (DAG_ID, self.run_id),
            )
        )
        return [self.airflow.xcom(DAG_ID, self.run_id, "generate", map_index=i) for i in range(count)]

    def asset_events(self, asset_name: str) -> list[dict[str, Any]]:
        rows = self.airflow.query(
            "SELECT e.id, e.extra, e.source_task_id, e.source_map_index FROM asset_event e"
            " JOIN asset a ON a.id = e.asset_id WHERE a.name = ? AND e.source_dag_id = ?"
            " AND e.source_run_id = ? ORDER BY e.source_map_index",
            (asset_name, DAG_ID, self.run_id),
        )
        return [{**row, "extra": json.loads(row["extra"])} for row in rows]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PipelineRun]:
    output = tmp_path_factory.mktemp("example-output")
    home = tmp_path_factory.mktemp("example-airflow-home")
    with FakeReveServer(async_seconds=4) as api:
        connection = {"conn_type": "reve", "host": api.url, "password": DEFAULT_API_KEY}
        env = {"AIRFLOW_CONN_REVE_DEFAULT": json.dumps(connection), "REVE_EXAMPLE_OUTPUT_DIR": str(output)}
        with LocalAirflow(EXAMPLE_DAGS, home=home, env=env) as airflow:
            airflow.wait_for_dag(DAG_ID, timeout=120)
            airflow.wait_for_dag(PUBLISH_DAG_ID, timeout=60)
            airflow.unpause(PUBLISH_DAG_ID)  # DAGs start paused; a paused one ignores Asset events
            airflow.unpause(DAG_ID)
            run_id = wait_for_first_run(airflow, DAG_ID, timeout=60)
            # Caught live: the triggerer deletes a trigger row as soon as it fires.
            deferred = airflow.wait_for_ti_state(DAG_ID, run_id, "generate", "deferred", 120, map_index=0)
            state = airflow.wait_for_run(DAG_ID, run_id, timeout=600)
            yield PipelineRun(airflow, api, output, run_id, state, deferred)


def prompt_templates() -> list[str]:
    lines = (line.strip() for line in PROMPTS_FILE.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def rendered_prompts(run_after: datetime, run_id: str) -> list[str]:
    dag_run = SimpleNamespace(run_after=run_after, run_id=run_id)
    return [jinja2.Template(t).render(dag_run=dag_run, run_id=run_id) for t in prompt_templates()]


def test_the_daily_schedule_starts_the_run_and_every_mapped_generation_waits_in_the_triggerer(
    pipeline: PipelineRun,
):
    airflow = pipeline.airflow
    (run,) = airflow.query("SELECT run_type, state FROM dag_run WHERE dag_id = ?", (DAG_ID,))
    assert (run["run_type"], run["state"], pipeline.state) == ("scheduled", "success", "success")

    instances = airflow.task_instances(DAG_ID, pipeline.run_id)
    generate = [ti for ti in instances if ti["task_id"] == "generate"]
    assert len(generate) == len(prompt_templates()) == 4
    assert {(ti["task_id"], ti["state"], ti["try_number"]) for ti in instances} == {
        ("generate", "success", 1),
        ("contact_sheet", "success", 1),
    }
    for ti in generate:
        evidence = airflow.deferral_evidence(DAG_ID, pipeline.run_id, "generate", ti["map_index"])
        # The worker reported the deferral, and a triggerer ran the trigger for this instance.
        assert len(evidence["deferred_events"]) == 1, evidence
        assert evidence["trigger_log_files"], evidence
        history = airflow.task_state_history(DAG_ID, pipeline.run_id, "generate", ti["map_index"])
        events = [e["event"] for e in history if e["event"] in ("running", "deferred", "success")]
        assert events[:2] == ["running", "deferred"] and events[-1] == "success", history
    trigger = pipeline.deferred["trigger"]
    assert trigger["classpath"] == "airflow_provider_reve.triggers.reve.ReveTaskTrigger"
    assert DEFAULT_API_KEY not in trigger["kwargs_json"]
    assert not airflow.deferral_evidence(DAG_ID, pipeline.run_id, "contact_sheet")["deferred"]
    assert airflow.triggers() == []  # nothing left behind in the trigger table


def test_every_stored_image_has_the_size_and_sha256_of_its_manifest_and_opens_in_pillow(
    pipeline: PipelineRun,
):
    from PIL import Image

    folders = set()
    for result in pipeline.generated():
        (entry,) = result["files"]
        path = Path(entry["path"])
        folders.add(path.parent)
        data = path.read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (entry["bytes"], entry["sha256"])
        assert data == requests.get(entry["url"], timeout=10).content  # what the API served
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
            assert image.format == "PNG"
    # One folder per run, directly below the output folder, named without the run id itself.
    (folder,) = folders
    assert folder.parent == pipeline.output
    assert pipeline.run_id not in folder.name


def test_the_contact_sheet_is_written_and_its_asset_event_carries_the_documented_extra(
    pipeline: PipelineRun,
):
    from PIL import Image

    generated = pipeline.generated()
    sheet = pipeline.airflow.xcom(DAG_ID, pipeline.run_id, "contact_sheet")
    with Image.open(sheet["path"]) as image:
        assert image.format == "PNG"
        assert image.size[0] > 4 * 256  # four images side by side
    assert Path(sheet["path"]).parent == Path(generated[0]["files"][0]["path"]).parent

    (event,) = pipeline.asset_events("reve_example_contact_sheet")
    assert set(event["extra"]) == CONTACT_SHEET_EXTRA
    assert event["extra"] == sheet
    assert event["extra"]["reve_task_ids"] == [result["task_id"] for result in generated]

    # Each generation's own event on the images Asset: the keys the README documents.
    image_events = pipeline.asset_events("reve_example_images")
    assert [e["source_map_index"] for e in image_events] == list(range(len(generated)))
    for event, result in zip(image_events, generated, strict=True):
        assert set(event["extra"]) == set(ASSET_EXTRA_KEYS)
        assert event["extra"]["reve_task_ids"] == [result["task_id"]]
        assert event["extra"]["model"] == "seedream-5"
        assert event["extra"]["file_count"] == 1
        assert event["extra"]["consumed_credits"] == result["consumed_credits"] == 25
        assert json.loads(Path(event["extra"]["manifest_path"]).read_text())["files"] == result["files"]


def test_the_contact_sheet_event_triggers_one_run_of_the_publish_dag_which_writes_a_preview(
    pipeline: PipelineRun,
):
    from PIL import Image

    airflow = pipeline.airflow
    publish_run = wait_for_first_run(airflow, PUBLISH_DAG_ID, timeout=120)
    assert airflow.wait_for_run(PUBLISH_DAG_ID, publish_run, timeout=300) == "success"
    (run,) = airflow.query(
        "SELECT r.run_type, e.source_dag_id, e.source_run_id, e.source_task_id FROM dag_run r"
        " JOIN dagrun_asset_event d ON d.dag_run_id = r.id JOIN asset_event e ON e.id = d.event_id"
        " WHERE r.dag_id = ?",
        (PUBLISH_DAG_ID,),
    )
    assert run == {
        "run_type": "asset_triggered",
        "source_dag_id": DAG_ID,
        "source_run_id": pipeline.run_id,
        "source_task_id": "contact_sheet",
    }
    (published,) = airflow.xcom(PUBLISH_DAG_ID, publish_run, "publish")
    sheet = airflow.xcom(DAG_ID, pipeline.run_id, "contact_sheet")
    assert published["contact_sheet"] == sheet["path"]
    with Image.open(published["preview"]) as preview:
        assert preview.format == "JPEG"
        assert list(preview.size) == published["size"]


def test_the_api_server_serves_each_stored_generations_reve_result_link_as_the_gallerys_file_route(
    pipeline: PipelineRun,
):
    # Stored with download_to: the link opens the stored copy, not the result URL that expires.
    for index, result in enumerate(pipeline.generated()):
        links = pipeline.airflow.api(
            "GET",
            f"dags/{DAG_ID}/dagRuns/{pipeline.run_id}/taskInstances/generate/links",
            map_index=index,
        )
        query = {
            "dag_id": DAG_ID,
            "run_id": pipeline.run_id,
            "task_id": "generate",
            "map_index": index,
            "reve_task_id": result["reve_task_id"],
            "index": result["files"][0]["index"],
        }
        assert links["extra_links"] == {"Reve result": "reve/media?" + urlencode(query)}


def test_the_fake_api_was_paid_exactly_once_per_rendered_prompt(pipeline: PipelineRun):
    (run,) = pipeline.airflow.query(
        "SELECT run_after FROM dag_run WHERE dag_id = ? AND run_id = ?", (DAG_ID, pipeline.run_id)
    )
    run_after = datetime.fromisoformat(run["run_after"])
    tasks = list(pipeline.api.tasks.values())

    assert sorted(task["params"]["prompt"] for task in tasks) == sorted(
        rendered_prompts(run_after, pipeline.run_id)
    )
    charges = [entry for entry in pipeline.api.ledger if entry["reason"] == "charge"]
    assert sorted(entry["task_id"] for entry in charges) == sorted(task["task_id"] for task in tasks)
    assert [entry for entry in pipeline.api.ledger if entry["reason"] != "charge"] == []
    assert pipeline.api.submissions == len(tasks) == 4


def test_the_successful_run_with_deferrals_logs_no_error_in_any_task_log_or_the_scheduler_log(
    pipeline: PipelineRun,
):
    # Log-based alerting watches ERROR lines: a run where nothing failed must have none (issue 22:
    # the "Reve result" link used to make every deferral log "XCom not found" at ERROR).
    assert pipeline.state == "success"
    run_logs = [path for path in pipeline.airflow.log_dir.rglob("*.log") if f"dag_id={DAG_ID}" in str(path)]
    assert run_logs, "the task logs of the run"
    errors = [
        f"{path.name}: {line}"
        for path in run_logs
        for line in path.read_text(errors="replace").splitlines()
        if '"level":"error"' in line.replace(" ", "") or "[error" in line
    ]
    assert errors == []
    scheduler_log = (pipeline.airflow.log_dir / "scheduler.log").read_text(errors="replace")
    assert "XCom not found" not in scheduler_log

"""The example DAGs, parsed like the DAG processor does and run with ``dag.test()`` against the
fake Reve API: what a user copying them sees on their first run.

Each run is a manual one *without* a logical date (``logical_date=None``, as a run triggered
from the UI or REST API): every template in the examples must render without ``ds``.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from reve_test_helpers import return_values

from airflow_provider_reve.mixins.finish import ASSET_EXTRA_KEYS
from airflow_provider_reve.testing import FakeReveServer

EXAMPLE_DAGS = Path(__file__).resolve().parents[3] / "airflow_provider_reve" / "example_dags"
PROMPTS_FILE = EXAMPLE_DAGS / "prompts" / "content_pipeline.txt"
DAG_IDS = {
    "example_reve_content_pipeline",
    "example_reve_publish_contact_sheet",
    "example_reve_video_pipeline",
    "example_reve_review_video",
    "example_reve_retry_policies",
}
CONTACT_SHEET_EXTRA = {"path", "bytes", "image_count", "reve_task_ids", "consumed_credits", "run_id"}


@pytest.fixture
def output_root(example_output_root: Path) -> Path:
    """One output folder for the session (see conftest), as in production: an Asset's URI names
    it, and Airflow keeps one active Asset per name, so a new folder per test would orphan the
    last one's."""
    return example_output_root


@pytest.fixture
def out(
    output_root: Path,
    monkeypatch: pytest.MonkeyPatch,
    use_dags_folder: Callable[[Path], Path],
    fake_reve_server: FakeReveServer,
    reve_connection_env: str,
) -> Path:
    """Output folder of the examples; the fake answers fast, the DAGs folder is example_dags."""
    fake_reve_server.set_async_seconds(0.2)
    monkeypatch.setenv("REVE_EXAMPLE_OUTPUT_DIR", str(output_root))
    use_dags_folder(EXAMPLE_DAGS)
    return output_root


def dag_bag() -> Any:
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(EXAMPLE_DAGS))


def file_prompts() -> list[str]:
    lines = (line.strip() for line in PROMPTS_FILE.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def asset_events(asset_name: str, dag_run: Any) -> list[Any]:
    """The events of the Asset named ``asset_name`` that ``dag_run`` produced, oldest first."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(
            select(AssetEvent)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .where(AssetModel.name == asset_name, AssetEvent.source_run_id == dag_run.run_id)
            .order_by(AssetEvent.id)
        ).all()
        session.expunge_all()
        return list(rows)


def stored_file(entry: dict[str, Any], folder: Path) -> bytes:
    path = Path(entry["path"])
    assert path.parent == folder
    data = path.read_bytes()
    assert (len(data), hashlib.sha256(data).hexdigest()) == (entry["bytes"], entry["sha256"])
    return data


def test_every_example_dag_file_imports_without_errors_and_documents_itself():
    bag = dag_bag()

    assert bag.import_errors == {}
    assert set(bag.dag_ids) == DAG_IDS
    assert all(bag.dags[dag_id].doc_md for dag_id in DAG_IDS)


def test_the_content_pipeline_runs_daily_without_catchup_over_the_prompts_in_its_file():
    dag = dag_bag().dags["example_reve_content_pipeline"]

    assert (dag.schedule, dag.catchup) == ("@daily", False)
    assert dag.get_task("generate").expand_input.value["prompt"] == file_prompts()
    assert len(file_prompts()) == 4


def test_a_manual_content_pipeline_run_stores_each_image_once_and_captions_a_contact_sheet(
    fake_reve_server: FakeReveServer, out: Path
):
    from PIL import Image

    dag_run = dag_bag().dags["example_reve_content_pipeline"].test(logical_date=None)

    assert dag_run.state == "success"
    prompts = file_prompts()
    assert {(ti.task_id, ti.map_index, ti.state, ti.try_number) for ti in dag_run.get_task_instances()} == {
        *(("generate", index, "success", 1) for index in range(len(prompts))),
        ("contact_sheet", -1, "success", 1),
    }
    # One paid task per prompt, each prompt rendered without a logical date.
    served = list(fake_reve_server.tasks.values())
    assert fake_reve_server.submissions == len(served) == len(prompts)
    sent = sorted(task["params"]["prompt"] for task in served)
    month = f"{dag_run.run_after:%B}"
    assert all("{" not in prompt for prompt in sent)
    assert sum(month in prompt for prompt in sent) == 1

    # The files are in one folder per run below the output folder, as the manifests say.
    generated = return_values(dag_run, "generate")
    digest = hashlib.sha256(dag_run.run_id.encode()).hexdigest()[:12]
    folder = out / f"{dag_run.run_after:%Y%m%dT%H%M%S}-{digest}"
    for index in range(len(prompts)):
        (entry,) = generated[index]["files"]
        with Image.open(io.BytesIO(stored_file(entry, folder))) as image:
            assert image.format == "PNG"
        assert entry["reve_task_id"] == generated[index]["task_id"]

    sheet = return_values(dag_run, "contact_sheet")[-1]
    assert sheet["path"] == str(folder / "contact_sheet.png")
    assert sheet["image_count"] == len(prompts)
    with Image.open(sheet["path"]) as image:
        # Four 256 px tiles side by side, each with a caption band below it.
        assert image.size[0] > 4 * 256 and image.size[1] > 256
        # The images were really drawn: no tile is left blank.
        tiles = [image.crop((16 + n * 272, 16, 16 + n * 272 + 256, 16 + 256)) for n in range(4)]
        assert all(len(tile.getcolors(1 << 16) or ()) > 1 for tile in tiles)

    (event,) = asset_events("reve_example_contact_sheet", dag_run)
    assert set(event.extra) == CONTACT_SHEET_EXTRA
    assert event.extra["path"] == sheet["path"]
    assert event.extra["reve_task_ids"] == [generated[i]["task_id"] for i in range(len(prompts))]
    image_events = asset_events("reve_example_images", dag_run)
    assert len(image_events) == len(prompts)
    assert all(set(e.extra) == set(ASSET_EXTRA_KEYS) for e in image_events)
    charged = -sum(entry["delta"] for entry in fake_reve_server.ledger)
    assert sum(e.extra["consumed_credits"] for e in image_events) == sheet["consumed_credits"] == charged


@pytest.mark.parametrize("run_id", ["..", "../../etc", "manual__2026/../../x", "/abs/path"])
def test_a_hostile_run_id_never_becomes_part_of_the_output_path(run_id: str):
    from datetime import datetime, timezone

    run_folder = dag_bag().dags["example_reve_content_pipeline"].user_defined_macros["run_folder"]
    run = SimpleNamespace(run_id=run_id, run_after=datetime(2026, 3, 1, 12, 30, tzinfo=timezone.utc))

    name = run_folder(run)

    assert name.startswith("20260301T123000-")
    assert "/" not in name and ".." not in name
    assert run_folder(SimpleNamespace(run_id=run_id, run_after=run.run_after)) == name  # retries agree
    # Run ids that a sanitiser would make alike ("a/b", "a_b") get different folders.
    alike = SimpleNamespace(run_id=run_id.replace("/", "_").replace(".", "_"), run_after=run.run_after)
    assert run_folder(alike) != name


def test_the_publish_dag_writes_a_web_preview_of_the_sheet_its_asset_event_names(
    fake_reve_server: FakeReveServer, out: Path
):
    from PIL import Image

    bag = dag_bag()
    dag_run = bag.dags["example_reve_content_pipeline"].test(logical_date=None)
    (event,) = asset_events("reve_example_contact_sheet", dag_run)
    publish = bag.dags["example_reve_publish_contact_sheet"].get_task("publish").python_callable
    contact_sheet = publish.__globals__["CONTACT_SHEET"]

    (published,) = publish(triggering_asset_events={contact_sheet: [event]})

    assert Path(published["preview"]).parent == Path(event.extra["path"]).parent
    with Image.open(published["preview"]) as preview:
        assert preview.format == "JPEG"
        assert max(preview.size) <= 800
    # A run triggered by hand has no events and publishes nothing.
    assert publish(triggering_asset_events={}) == []


def test_the_video_pipeline_animates_its_keyframe_and_stores_both_with_one_asset_event(
    fake_reve_server: FakeReveServer, out: Path
):
    dag_run = dag_bag().dags["example_reve_video_pipeline"].test(logical_date=None)

    assert dag_run.state == "success"
    assert {(ti.task_id, ti.state, ti.try_number) for ti in dag_run.get_task_instances()} == {
        ("keyframe", "success", 1),
        ("submit_video", "success", 1),
        ("wait_for_video", "success", 1),
        ("store_media", "success", 1),
    }
    keyframe = return_values(dag_run, "keyframe")[-1]
    video = return_values(dag_run, "wait_for_video")[-1]
    served = fake_reve_server.tasks
    assert fake_reve_server.submissions == len(served) == 2
    # The video was made from the keyframe @task.reve generated.
    assert served[video["task_id"]]["params"]["image_urls"] == keyframe["result_urls"]
    assert served[video["task_id"]]["model"] == "kling26-image-to-video"
    assert return_values(dag_run, "submit_video")[-1]["consumed_credits"] is None
    assert video["consumed_credits"] == 45

    manifest = return_values(dag_run, "store_media")[-1]
    assert [entry["content_type"] for entry in manifest] == ["image/png", "video/mp4"]
    folder = Path(manifest[0]["path"]).parent
    assert folder.parent == out / "video"
    assert stored_file(manifest[1], folder)[4:8] == b"ftyp"
    (event,) = asset_events("reve_example_video", dag_run)
    assert set(event.extra) == set(ASSET_EXTRA_KEYS)
    assert event.extra["reve_task_ids"] == [keyframe["task_id"], video["task_id"]]
    assert event.extra["file_count"] == 2
    assert json.loads(Path(event.extra["manifest_path"]).read_text())["files"] == manifest


def test_the_video_review_dag_refuses_a_stored_file_that_no_longer_matches_its_manifest(
    fake_reve_server: FakeReveServer, out: Path
):
    bag = dag_bag()
    dag_run = bag.dags["example_reve_video_pipeline"].test(logical_date=None)
    (event,) = asset_events("reve_example_video", dag_run)
    review = bag.dags["example_reve_review_video"].get_task("review").python_callable
    video_asset = review.__globals__["VIDEO"]

    checked = review(triggering_asset_events={video_asset: [event]})
    assert [entry["content_type"] for entry in checked] == ["image/png", "video/mp4"]

    video = Path(checked[1]["path"])
    video.write_bytes(video.read_bytes()[:-1])  # truncated after it was stored
    with pytest.raises(ValueError, match="does not match its manifest"):
        review(triggering_asset_events={video_asset: [event]})


def test_one_prompt_flagged_by_content_policy_skips_only_itself_and_the_rest_is_summarized(
    fake_reve_server: FakeReveServer, out: Path
):
    from airflow.models.pool import Pool

    Pool.create_or_update_pool("reve_generations", slots=4, description="test", include_deferred=True)
    # The first variant submitted ends FAILED for its content (the API refunds it).
    fake_reve_server.add_fault(kind="fail_task", code="CONTENT_POLICY_VIOLATION", model="nano-banana")
    dag = dag_bag().dags["example_reve_retry_policies"]

    dag_run = dag.test(logical_date=None)

    assert dag_run.state == "success"
    states = {(ti.task_id, ti.map_index): (ti.state, ti.try_number) for ti in dag_run.get_task_instances()}
    assert sorted(state for (task_id, _), (state, _) in states.items() if task_id == "variants") == [
        "skipped",
        "success",
        "success",
    ]
    assert states[("icon", -1)] == ("success", 1)
    assert states[("summarize", -1)] == ("success", 1)
    summary = return_values(dag_run, "summarize")[-1]
    assert (summary["generated"], summary["skipped"]) == (2, 1)
    # Nothing was submitted twice, and the flagged task was refunded.
    assert fake_reve_server.submissions == 4
    charged = -sum(entry["delta"] for entry in fake_reve_server.ledger)
    assert summary["credits"] == charged == 2 * 20 + 12

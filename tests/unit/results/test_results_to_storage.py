"""Results to storage inside real DAG runs (``dag.test()``): ``download_to`` on the generate
operator, a mapped submit -> sensor -> ``ReveDownloadResultsOperator`` chain, Asset events with
the documented ``extra``, one alias event per stored file, and the result link's XCom."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import requests

from airflow_provider_reve.mixins.finish import ASSET_EXTRA_KEYS
from airflow_provider_reve.testing import FakeReveServer
from tests.support.reve_test_helpers import return_values

DAGS = Path(__file__).resolve().parents[2] / "dags" / "storage"
MANIFEST_KEYS = {
    "reve_task_id",
    "index",
    "url",
    "path",
    "bytes",
    "sha256",
    "content_type",
    "model",
    "consumed_credits",
    "prompt",
    "request",
    "metadata",
}


@pytest.fixture
def server(fake_reve_server: FakeReveServer, reve_connection_env: str) -> FakeReveServer:
    return fake_reve_server


@pytest.fixture
def out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, use_dags_folder: Callable[[Path], Path]) -> Path:
    monkeypatch.setenv("REVE_TEST_OUTPUT_DIR", str(tmp_path))
    use_dags_folder(DAGS)
    return tmp_path


def run_dag(dag_id: str) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    return bag.dags[dag_id].test()


def asset_events(uri_prefix: str) -> list[tuple[str, dict[str, Any]]]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(
            select(AssetModel.uri, AssetEvent.extra)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .where(AssetModel.uri.startswith(uri_prefix))
            .order_by(AssetEvent.id)
        ).all()
    return [(uri, dict(extra or {})) for uri, extra in rows]


def xcom(dag_run: Any, task_id: str, key: str) -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.scalars(
            XComModel.get_many(run_id=dag_run.run_id, dag_ids=dag_run.dag_id, task_ids=task_id, key=key)
        ).first()
        return None if row is None else XComModel.deserialize_value(row)


def link_query(dag_run: Any, task_id: str, map_index: int, entry: dict[str, Any]) -> dict[str, Any]:
    return {
        "dag_id": dag_run.dag_id,
        "run_id": dag_run.run_id,
        "task_id": task_id,
        "map_index": map_index,
        "reve_task_id": entry["reve_task_id"],
        "index": entry["index"],
    }


def served_bytes(url: str) -> bytes:
    response = requests.get(url, timeout=10)
    response.raise_for_status()
    return response.content


def assert_stored(entry: dict[str, Any], folder: Path) -> None:
    assert set(entry) == MANIFEST_KEYS
    path = Path(entry["path"])
    assert path.parent == folder
    data = path.read_bytes()
    assert len(data) == entry["bytes"] > 0
    assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    assert data == served_bytes(entry["url"])  # the very file the API served
    assert path.name == f"{entry['reve_task_id']}_{entry['index']}.png"


def test_download_to_stores_every_result_after_a_deferral_and_reports_asset_events(server, out):
    dag_run = run_dag("reve_storage_generate_and_store")

    assert dag_run.state == "success"
    assert server.submissions == 1
    result = return_values(dag_run, "hero")[-1]
    assert result["status"] == "SUCCESS" and len(result["files"]) == 2
    assert [entry["index"] for entry in result["files"]] == [0, 1]
    for entry in result["files"]:
        assert_stored(entry, out / "hero")
        assert entry["reve_task_id"] == result["task_id"]
        assert entry["model"] == "nano-banana"
        assert entry["consumed_credits"] == result["consumed_credits"]
    # No spool file survives a successful run.
    assert sorted(p.name for p in (out / "hero").iterdir() if p.name.startswith(".")) == []

    [(_, extra)] = asset_events("reve-test://hero")
    assert set(extra) == set(ASSET_EXTRA_KEYS)
    assert extra["reve_task_ids"] == [result["task_id"]]
    assert extra["model"] == "nano-banana"
    assert extra["consumed_credits"] == result["consumed_credits"]
    assert extra["file_count"] == 2
    assert extra["destination"] == str(out / "hero")
    manifest = json.loads(Path(extra["manifest_path"]).read_text())
    assert manifest["files"] == result["files"]

    aliased = asset_events((out / "hero").as_uri())  # the session DB holds other tests' events too
    assert sorted(uri for uri, _ in aliased) == sorted(
        Path(entry["path"]).as_uri() for entry in result["files"]
    )
    assert all(event["sha256"] in {e["sha256"] for e in result["files"]} for _, event in aliased)

    # Stored: the link opens the stored copy through the gallery's file route (issue 22).
    assert xcom(dag_run, "hero", "reve_result_url") == (
        "reve/media?" + urlencode(link_query(dag_run, "hero", -1, result["files"][0]))
    )


def test_a_mapped_submit_sensor_download_chain_stores_every_task_once(server, out):
    dag_run = run_dag("reve_storage_sense_then_download")

    assert dag_run.state == "success"
    assert server.submissions == 2
    submitted = return_values(dag_run, "submit")
    assert all(task["consumed_credits"] is None for task in submitted.values())
    manifest = return_values(dag_run, "store")[-1]
    assert len(manifest) == 2
    assert {entry["reve_task_id"] for entry in manifest} == {t["task_id"] for t in submitted.values()}
    folder = out / "batch" / "store"  # the rendered template
    for entry in manifest:
        assert_stored(entry, folder)
        assert entry["consumed_credits"] > 0  # the sensor read the finished task's cost

    [(_, extra)] = asset_events("reve-test://batch")
    assert extra["file_count"] == 2
    assert sorted(extra["reve_task_ids"]) == sorted(e["reve_task_id"] for e in manifest)
    assert extra["consumed_credits"] == sum(e["consumed_credits"] for e in manifest)
    assert xcom(dag_run, "store", "reve_result_url") == (
        "reve/media?" + urlencode(link_query(dag_run, "store", -1, manifest[0]))
    )


@pytest.mark.parametrize(
    "download_to", ["", "   ", "nosuch://bucket/folder", "s3://bucket-without-the-amazon-provider/x"]
)
def test_an_unusable_download_to_fails_before_anything_is_paid_for(server, download_to):
    from airflow.providers.common.compat.sdk import AirflowFailException

    from airflow_provider_reve.operators.reve import ReveGenerateOperator

    op = ReveGenerateOperator(task_id="t", model="reve-2.0", prompt="a fox", download_to=download_to)
    with pytest.raises(AirflowFailException, match="Invalid download_to \\(nothing was submitted\\)"):
        op.execute({})
    assert server.submissions == 0


def test_a_download_to_that_is_an_existing_file_fails_before_anything_is_paid_for(server, tmp_path):
    from airflow.providers.common.compat.sdk import AirflowFailException

    from airflow_provider_reve.operators.reve import ReveGenerateOperator

    existing = tmp_path / "not-a-folder"
    existing.write_text("someone's file")
    op = ReveGenerateOperator(task_id="t", model="reve-2.0", prompt="a fox", download_to=str(existing))
    with pytest.raises(AirflowFailException, match="exists and is not a folder"):
        op.execute({})
    assert server.submissions == 0
    assert existing.read_text() == "someone's file"

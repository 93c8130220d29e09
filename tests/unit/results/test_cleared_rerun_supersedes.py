"""A cleared task instance's earlier files are moved aside, with a trace (issue 22, item 4).

Clearing ``hero_image[0]`` generates afresh (a new, paid Reve task, as documented). Its store
must leave one current file per result in the destination, move the earlier files into
``superseded/`` (never delete them), and say in the manifest what superseded what. Another DAG
run of the same task is not a clear: its files accumulate beside the first run's.

The task instance is a plain object with the four fields Airflow's has (a clear keeps all four);
everything else is real: the operator, the fake API over loopback HTTP, the files on disk.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from airflow_provider_reve.testing import FakeReveServer

MEDIA = (".png", ".jpg", ".webp")


@pytest.fixture
def server(fake_reve_server: FakeReveServer, reve_connection_env: str) -> FakeReveServer:
    return fake_reve_server


def run_hero(folder: Any, *, run_id: str = "manual__1", file_name: str | None = None) -> dict[str, Any]:
    from airflow_provider_reve.operators.reve import ReveGenerateOperator

    ti = SimpleNamespace(
        dag_id="products", run_id=run_id, task_id="hero_image", map_index=0, xcom_push=lambda **_: None
    )
    op = ReveGenerateOperator(
        task_id="hero_image",
        model="reve-2.0",
        prompt="A red mug",
        num_images=2,
        download_to=str(folder),
        **({"file_name": file_name} if file_name is not None else {}),
    )
    result: dict[str, Any] = op.execute({"ti": ti})
    return result


def current_media(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix in MEDIA)


def manifest_of(folder: Path, result: dict[str, Any]) -> dict[str, Any]:
    from airflow_provider_reve.results.storage import manifest_name

    manifest: dict[str, Any] = json.loads((folder / manifest_name([result["reve_task_id"]])).read_text())
    return manifest


def test_a_cleared_rerun_leaves_one_current_file_per_result_and_a_manifest_naming_what_it_superseded(
    server, tmp_path
):
    first = run_hero(tmp_path)
    kept = {entry["path"]: Path(entry["path"]).read_bytes() for entry in first["files"]}

    second = run_hero(tmp_path)  # the same task instance, cleared: a new Reve task, paid again

    assert server.submissions == 2
    assert second["reve_task_id"] != first["reve_task_id"]
    assert current_media(tmp_path) == sorted(Path(e["path"]).name for e in second["files"])
    # Never deleted: the earlier files are in superseded/, byte for byte.
    moved = {Path(p).name: data for p, data in kept.items()}
    assert {p.name: p.read_bytes() for p in (tmp_path / "superseded").iterdir()} == moved

    superseded = manifest_of(tmp_path, second)["superseded"]
    assert sorted((s["reve_task_id"], s["index"]) for s in superseded) == [
        (first["reve_task_id"], 0),
        (first["reve_task_id"], 1),
    ]
    for trace in superseded:
        earlier = next(e for e in first["files"] if e["index"] == trace["index"])
        assert trace["path"] == earlier["path"] and trace["sha256"] == earlier["sha256"]
        assert Path(trace["moved_to"]) == tmp_path / "superseded" / Path(earlier["path"]).name
        now = next(e for e in second["files"] if e["index"] == trace["index"])
        assert trace["superseded_by"] == {
            "reve_task_id": now["reve_task_id"],
            "index": now["index"],
            "path": now["path"],
        }


def test_a_cleared_rerun_with_a_stable_file_name_replaces_the_file_and_records_the_one_it_replaced(
    server, tmp_path
):
    first = run_hero(tmp_path, file_name="MUG-42_{index}")
    second = run_hero(tmp_path, file_name="MUG-42_{index}")

    assert current_media(tmp_path) == ["MUG-42_0.png", "MUG-42_1.png"]
    assert [e["sha256"] for e in second["files"]] == [
        hashlib.sha256(Path(e["path"]).read_bytes()).hexdigest() for e in second["files"]
    ]
    superseded = manifest_of(tmp_path, second)["superseded"]
    assert sorted((s["reve_task_id"], s["index"], s["moved_to"]) for s in superseded) == [
        (first["reve_task_id"], 0, None),
        (first["reve_task_id"], 1, None),
    ]
    assert [s["sha256"] for s in sorted(superseded, key=lambda s: s["index"])] == [
        e["sha256"] for e in first["files"]
    ]


def test_a_retry_over_stored_results_supersedes_nothing(server, tmp_path):
    from airflow_provider_reve.hooks.reve import ReveHook
    from airflow_provider_reve.models import ReveTask

    first = run_hero(tmp_path)
    owner = {"dag_id": "products", "run_id": "manual__1", "task_id": "hero_image", "map_index": 0}
    task = ReveTask.from_dict({k: v for k, v in first.items() if k != "files"})
    again = ReveHook().store_results([task], str(tmp_path), owner=owner)

    assert again.superseded == []
    assert current_media(tmp_path) == sorted(Path(e["path"]).name for e in first["files"])
    assert not (tmp_path / "superseded").exists()


def test_another_dag_run_of_the_same_task_keeps_the_first_runs_files(server, tmp_path):
    first = run_hero(tmp_path, run_id="scheduled__2026-03-01")
    second = run_hero(tmp_path, run_id="scheduled__2026-03-02")

    assert current_media(tmp_path) == sorted(Path(e["path"]).name for e in first["files"] + second["files"])
    assert "superseded" not in manifest_of(tmp_path, second)


def test_a_cleared_rerun_into_an_object_store_moves_the_earlier_objects_aside(server):
    from airflow.sdk import ObjectStoragePath
    from airflow.sdk.io.store import attach
    from fsspec.implementations.memory import MemoryFileSystem

    class Bucket(MemoryFileSystem):
        store: dict[str, Any] = {}  # its own, apart from other tests' "memory://"
        pseudo_dirs = [""]

    attach("memory", conn_id="reve_supersede_tests", fs=Bucket())
    folder = ObjectStoragePath("memory://reve_supersede_tests@bucket/heroes")

    first = run_hero(folder)
    second = run_hero(folder)

    names = sorted(key.rsplit("/", 1)[-1] for key in Bucket.store if key.endswith(".png"))
    moved = sorted(key for key in Bucket.store if "/superseded/" in key)
    assert names == sorted(Path(e["path"]).name for e in first["files"] + second["files"])
    assert moved == sorted(f"/bucket/heroes/superseded/{Path(e['path']).name}" for e in first["files"])
    current = sorted(key for key in Bucket.store if key.endswith(".png") and "/superseded/" not in key)
    assert current == sorted(f"/bucket/heroes/{Path(e['path']).name}" for e in second["files"])
    superseded = json.loads(Bucket.store[f"/bucket/heroes/{manifest_name_of(second)}"].getvalue())[
        "superseded"
    ]
    assert sorted(s["moved_to"] for s in superseded) == sorted(
        e["path"].replace("/heroes/", "/heroes/superseded/") for e in first["files"]
    )


def manifest_name_of(result: dict[str, Any]) -> str:
    from airflow_provider_reve.results.storage import manifest_name

    return manifest_name([result["reve_task_id"]])

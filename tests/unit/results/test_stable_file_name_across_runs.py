"""A stable ``file_name`` in a folder shared by DAG runs must not drop another run's file silently.

Found on the new user's path (issue 22): ``file_name="{{ ... sku }}_{index}"`` into one folder,
run daily. Each day's file takes the same name; a different file from another run (another owner,
so not a clear) was overwritten by the rename, and no manifest said so. Issue 22 asks that nothing
paid for disappear without a trace: the store now moves such a file into ``superseded/`` first
and lists it (more in ``test_another_runs_file_moved_aside.py``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from airflow_provider_reve.testing import FakeReveServer


@pytest.fixture
def server(fake_reve_server: FakeReveServer, reve_connection_env: str) -> FakeReveServer:
    return fake_reve_server


def run_hero(folder: Path, *, run_id: str, prompt: str) -> dict[str, Any]:
    from airflow_provider_reve.operators.reve import ReveGenerateOperator

    ti = SimpleNamespace(
        dag_id="products", run_id=run_id, task_id="hero_image", map_index=0, xcom_push=lambda **_: None
    )
    op = ReveGenerateOperator(
        task_id="hero_image",
        model="reve-2.0",
        prompt=prompt,
        download_to=str(folder),
        file_name="MUG-42_{index}",
    )
    result: dict[str, Any] = op.execute({"ti": ti})  # type: ignore[typeddict-item]
    return result


def digests_in(folder: Path) -> set[str]:
    return {hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*.png") if p.is_file()}


def test_another_runs_file_at_the_same_stable_name_is_kept_and_listed_as_superseded(server, tmp_path):
    first = run_hero(tmp_path, run_id="scheduled__2026-03-01", prompt="A red mug")
    second = run_hero(tmp_path, run_id="scheduled__2026-03-02", prompt="A blue mug")
    first_sha = first["files"][0]["sha256"]
    assert first_sha != second["files"][0]["sha256"]  # two different paid images

    assert first_sha in digests_in(tmp_path)
    manifests = [json.loads(p.read_text()) for p in tmp_path.glob("reve-manifest-*.json")]
    assert first_sha in {s["sha256"] for m in manifests for s in m.get("superseded", [])}

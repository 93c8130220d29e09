"""The example DAG's ``collect_files``, which users copy: run ids and result URLs are never trusted.

The task's function is called directly with results the fake server really generated, as the
worker would call it, with the run ids and connections an attacker or a careless user chooses.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests

from airflow_provider_reve._download import ReveUnsafeURLError
from airflow_provider_reve.testing import DEFAULT_API_KEY, FakeReveServer

EXAMPLE_DAGS = Path(__file__).resolve().parent.parent / "example_dags"
DAG_ID = "example_reve_content_pipeline"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def collect_files() -> Callable[..., dict[str, Any]]:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(EXAMPLE_DAGS))
    return bag.dags[DAG_ID].get_task("collect_files").python_callable  # type: ignore[no-any-return]


def generated(server: FakeReveServer) -> dict[str, Any]:
    """What ReveGenerateOperator pushes for a finished ``reve-2.0`` task (the fields collect_files reads)."""
    resp = requests.post(
        f"{server.url}/api/v1/generate",
        json={"model": "reve-2.0", "prompt": "a lighthouse", "num_images": 2},
        headers={"Authorization": f"Bearer {DEFAULT_API_KEY}"},
        timeout=10,
    )
    resp.raise_for_status()
    data = resp.json()["data"]
    return {"result_urls": data["response"]["resultUrls"], "consumed_credits": data.get("consumed_credits")}


@pytest.mark.parametrize("run_id", ["..", "../../etc", "manual__2026/../../x", "/abs/path"])
def test_a_hostile_run_id_never_moves_the_files_out_of_the_output_folder(
    fake_reve_server: FakeReveServer,
    reve_connection_env: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    run_id: str,
) -> None:
    output = tmp_path / "sandbox" / "out"
    monkeypatch.setenv("REVE_EXAMPLE_OUTPUT_DIR", str(output))
    result = generated(fake_reve_server)

    collected = collect_files()(result, result, result, [result], run_id=run_id)

    out_dir = Path(collected["output_dir"])
    assert out_dir.parent == output
    assert ".." not in out_dir.name and "/" not in out_dir.name
    files = [Path(name) for name in collected["files"]]
    assert len(files) == 8  # four results of two images each
    assert {path.parent for path in files} == {out_dir}
    assert all(path.read_bytes().startswith(PNG_SIGNATURE) and path.suffix == ".png" for path in files)
    # Nothing landed beside or above the output folder.
    assert [p.name for p in (tmp_path / "sandbox").iterdir()] == ["out"]
    assert [p.name for p in output.iterdir()] == [out_dir.name]


def test_the_same_run_gets_the_same_folder_and_run_ids_that_sanitise_alike_do_not_collide(
    fake_reve_server: FakeReveServer,
    reve_connection_env: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REVE_EXAMPLE_OUTPUT_DIR", str(tmp_path))
    result = generated(fake_reve_server)
    task = collect_files()
    run = SimpleNamespace(run_after=datetime(2026, 3, 1, 12, 30, tzinfo=timezone.utc))

    # "a/b" and "a_b" shared one folder when run ids were sanitised into names.
    first = task(result, result, result, [], run_id="a/b", dag_run=run)["output_dir"]
    other = task(result, result, result, [], run_id="a_b", dag_run=run)["output_dir"]
    retry = task(result, result, result, [], run_id="a/b", dag_run=run)["output_dir"]

    assert first != other
    assert retry == first  # a retried task overwrites its own files instead of scattering copies
    assert Path(first).name.startswith("20260301T123000-")


def test_loopback_result_urls_are_refused_when_the_connection_points_at_a_real_api(
    fake_reve_server: FakeReveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Results on loopback (or the LAN) while the API is on the internet: an SSRF attempt.
    connection = {"conn_type": "reve", "host": "https://api.reve.example", "password": DEFAULT_API_KEY}
    monkeypatch.setenv("AIRFLOW_CONN_REVE_DEFAULT", json.dumps(connection))
    monkeypatch.setenv("REVE_EXAMPLE_OUTPUT_DIR", str(tmp_path))
    result = generated(fake_reve_server)

    with pytest.raises(ReveUnsafeURLError, match=r"is at 127\.0\.0\.1, which is not a public address"):
        collect_files()(result, result, result, [], run_id="manual__1")

    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []

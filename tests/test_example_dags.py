"""The example DAG, parsed like the DAG processor does and run with ``dag.test()`` against the
fake Reve API: what a user copying it would see on their first run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from reve_test_helpers import return_values

from airflow_provider_reve.testing import FakeReveServer

EXAMPLE_DAGS = Path(__file__).resolve().parent.parent / "example_dags"
DAG_ID = "example_reve_content_pipeline"
GENERATE_TASKS = {"hero_image", "thumbnails", "submit_video", "social_variants"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def example_dags(use_dags_folder: Callable[[Path], Path]) -> Path:
    return use_dags_folder(EXAMPLE_DAGS)


def dag_bag() -> Any:
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(EXAMPLE_DAGS))


def test_the_example_dag_file_imports_without_errors():
    bag = dag_bag()

    assert bag.import_errors == {}
    assert DAG_ID in bag.dag_ids
    assert set(bag.dags[DAG_ID].task_ids) == GENERATE_TASKS | {"wait_for_video", "collect_files"}


def test_a_test_run_of_the_example_dag_succeeds_and_hands_on_real_files_and_their_cost(
    fake_reve_server: FakeReveServer, reve_connection_env, example_dags, tmp_path, monkeypatch
):
    fake_reve_server.set_async_seconds(0.2)
    monkeypatch.setenv("REVE_EXAMPLE_OUTPUT_DIR", str(tmp_path))

    dag_run = dag_bag().dags[DAG_ID].test()

    assert dag_run.state == "success"
    instances = dag_run.get_task_instances()
    # Every task succeeded on its first try: no retry papered over a failure.
    assert {(ti.task_id, ti.map_index, ti.state, ti.try_number) for ti in instances} == {
        ("hero_image", -1, "success", 1),
        ("thumbnails", -1, "success", 1),
        ("submit_video", -1, "success", 1),
        ("wait_for_video", -1, "success", 1),
        ("social_variants", 0, "success", 1),
        ("social_variants", 1, "success", 1),
        ("collect_files", -1, "success", 1),
    }

    # One Reve task per generate task instance: nothing paid twice, nothing left out.
    generate_instances = [ti for ti in instances if ti.task_id in GENERATE_TASKS]
    served = fake_reve_server.tasks
    assert fake_reve_server.submissions == len(generate_instances) == 5
    assert all(task["status"] == "SUCCESS" for task in served.values())

    collected = return_values(dag_run, "collect_files")[-1]
    files = [Path(name) for name in collected["files"]]
    assert len(files) == sum(len(task["result_urls"]) for task in served.values()) == 6
    for path in files:
        assert path.is_file()
        assert tmp_path in path.parents
        content = path.read_bytes()
        if path.suffix == ".png":
            assert content.startswith(PNG_SIGNATURE), path
        else:
            assert path.suffix == ".mp4", path
            assert content[4:8] == b"ftyp", path
    assert sum(path.suffix == ".mp4" for path in files) == 1

    consumed = sum(task["consumed_credits"] for task in served.values())
    charged = -sum(entry["delta"] for entry in fake_reve_server.ledger)
    assert collected["credits"] == consumed == charged > 0

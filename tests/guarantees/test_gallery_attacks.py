"""What an attack on the gallery found, pinned: a page or a file request that a DAG author or the
remote API could turn into a 500 for everyone, or into a leaked file descriptor per request."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from airflow_provider_reve.results.storage import safe_stem
from tests.support.gallery_data import add_ti, remove_dag
from tests.support.gallery_support import bearer, db_session, manifest_entry, task_value, token

# The fixture api.
pytest_plugins = ("tests.support.gallery_support",)


@pytest.fixture
def dag_with(request: pytest.FixtureRequest) -> Iterator[Any]:
    added: list[str] = []

    def add(dag_id: str, **kwargs: Any) -> None:
        with db_session() as session:
            add_ti(session, dag_id, "r", "t", **kwargs)
        added.append(dag_id)

    yield add
    with db_session() as session:
        for dag_id in added:
            remove_dag(session, dag_id)


def get(api: Any, path: str, **params: Any) -> Any:
    return api.get(path, params=params, headers=bearer(token()))


def test_a_result_url_with_an_upper_case_scheme_does_not_take_the_pages_down(api, dag_with):
    dag_with("atk_upper", prompt="p", value=task_value("up-1", ["HTTPS://cdn.example.test/a.png"]))

    gallery = get(api, "/reve/gallery")
    tab = get(api, "/reve/task-instance", dag_id="atk_upper", run_id="r", task_id="t")

    assert gallery.status_code == tab.status_code == 200
    assert "HTTPS://cdn.example.test/a.png" in tab.text


def test_a_directory_named_like_a_stored_file_is_refused_without_leaking_a_descriptor(
    api, dag_with, tmp_path
):
    folder = tmp_path / f"{safe_stem('dir')}_0.png"
    folder.mkdir()
    dag_with("atk_dir", value=task_value("dir", files=[manifest_entry("dir", folder, b"")]))
    params = {"dag_id": "atk_dir", "run_id": "r", "task_id": "t", "map_index": -1, "reve_task_id": "dir"}

    codes = {get(api, "/reve/media", index=0, **params).status_code for _ in range(5)}

    held = [f for f in os.listdir("/proc/self/fd") if os.path.realpath(f"/proc/self/fd/{f}") == str(folder)]
    assert codes == {404}
    assert held == []


@pytest.mark.parametrize("day", ["9999-12-31", "0001-01-01"])
def test_the_last_and_first_representable_days_as_filters_are_ignored_with_a_note(api, dag_with, day):
    dag_with("atk_day", value=task_value("d-1"))

    page = get(api, "/reve/gallery", to=day, **{"from": day})

    assert page.status_code == 200
    assert "Ignored" in page.text


@pytest.mark.parametrize(
    "params",
    [
        {"map_index": "99999999999999999999999", "index": "0"},
        {"map_index": "-1", "index": "99999999999999999999999"},
        {"map_index": "-5", "index": "0"},
    ],
)
def test_an_out_of_range_index_is_404_not_500(api, params):
    page = get(api, "/reve/media", dag_id="a", run_id="b", task_id="c", reve_task_id="x", **params)

    assert page.status_code == 404


def test_a_nul_in_a_filter_matches_nothing_instead_of_reaching_the_database(api, dag_with):
    dag_with("atk_nul", value=task_value("n-1"))

    page = get(api, "/reve/gallery", dag_id="atk_nul\x00")

    assert page.status_code == 200
    assert "n-1" in page.text  # the filter was dropped, not sent with its NUL

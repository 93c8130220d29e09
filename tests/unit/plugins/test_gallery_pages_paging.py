"""The "Reve media" tab pages like the gallery: a task instance whose manifest names 20,000 files
(a ``ReveDownloadResultsOperator`` that stored a whole campaign) gives one page of cards, a count,
and links to walk the rest; bad paging parameters give a page, never an error."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from airflow_provider_reve.plugins.app.locations import LocationRefused, locate
from tests.support.gallery_data import add_ti, remove_dag
from tests.support.gallery_support import bearer, db_session, manifest_entry, read_page, task_value, token

# The fixture api.
pytest_plugins = ("tests.support.gallery_support",)

DAG, ENTRIES = "reve_gallery_big_manifest", 20_000


@pytest.fixture(scope="module")
def big_manifest(airflow_db: None) -> Iterator[None]:
    entries = [
        manifest_entry(f"campaign-{n:05d}", f"/nowhere/campaign-{n:05d}_0.png", b"x") for n in range(ENTRIES)
    ]
    with db_session() as session:
        add_ti(session, DAG, "r", "store", operator="ReveDownloadResultsOperator", value=entries)
    yield
    with db_session() as session:
        remove_dag(session, DAG)


def tab(api: Any, **params: Any) -> Any:
    query = {"dag_id": DAG, "run_id": "r", "task_id": "store", "map_index": "{MAP_INDEX}"} | params
    response = api.get("/reve/task-instance", params=query, headers=bearer(token()))
    assert response.status_code == 200, response.text
    return read_page(response.text)


def test_the_media_tab_of_a_20000_file_manifest_shows_one_page_and_a_way_to_the_next(api, big_manifest):
    first = tab(api)

    assert len(first.cards) == 48
    assert {count["attrs"]["data-total"] for count in first.testids["reve-count"]} == {str(ENTRIES)}
    [next_link, *_] = first.testids["reve-next"]
    query = parse_qs(urlsplit(next_link["attrs"]["href"]).query)
    assert query["page"] == ["2"] and query["dag_id"] == [DAG] and query["task_id"] == ["store"]
    second = tab(api, page=2)
    ids = [card["attrs"]["data-reve-task-id"] for card in first.cards + second.cards]
    assert ids == [f"campaign-{n:05d}" for n in range(96)]


def test_the_last_page_of_the_media_tab_holds_the_rest_and_no_next_link(api, big_manifest):
    last = tab(api, per_page=200, page=ENTRIES // 200)

    assert len(last.cards) == 200
    assert "reve-next" not in last.testids
    assert last.cards[-1]["attrs"]["data-reve-task-id"] == f"campaign-{ENTRIES - 1:05d}"


@pytest.mark.parametrize(
    "params", [{"page": "abc"}, {"page": "-3"}, {"per_page": "0"}, {"per_page": "x"}, {"page": "99999999999"}]
)
def test_bad_paging_parameters_of_the_media_tab_give_a_page_not_an_error(api, big_manifest, params):
    page = tab(api, **params)

    assert "reve-count" in page.testids


@pytest.mark.parametrize(
    "scheme", ["", "file://", "FILE://", "File://", "fIlE://", "local://", "LOCAL://", "Local://"]
)
def test_every_spelling_of_a_local_path_reads_as_the_same_local_path(scheme):
    assert locate(f"{scheme}/store/x_0.png").local == "/store/x_0.png"


@pytest.mark.parametrize(
    "path",
    [
        "file://relative/x_0.png",
        "FILE://localhost/store/x_0.png",
        "local:relative",
        "relative/x_0.png",
        "http://127.0.0.1/x_0.png",
        "HTTPS://example.test/x_0.png",
        "sftp://host/x_0.png",
        "data://x_0.png",
        "s3:///no-bucket/x_0.png",
        "/store/x_0.png\n",
        "",
    ],
)
def test_a_path_the_gallery_does_not_read_is_refused_before_any_file_is_touched(path):
    with pytest.raises(LocationRefused):
        locate(path)


def test_an_object_store_path_keeps_its_connection_and_gets_a_lower_case_scheme():
    assert locate("S3://aws_default@bucket/reve/x_0.png").remote == "s3://aws_default@bucket/reve/x_0.png"


def test_a_card_whose_manifest_names_20000_files_for_one_reve_task_shows_sixteen_and_says_so(api, airflow_db):
    files = [manifest_entry("one-task", f"/nowhere/one-task_{n}.png", b"x", index=n) for n in range(ENTRIES)]
    with db_session() as session:
        add_ti(session, "reve_gallery_many_files", "r", "t", value=task_value("one-task", files=files))
    try:
        response = api.get(
            "/reve/gallery", params={"dag_id": "reve_gallery_many_files"}, headers=bearer(token())
        )
        [card] = read_page(response.text).cards
        assert len(card["images"]) == 16
        assert "19,984 more file(s)" in response.text
    finally:
        with db_session() as session:
            remove_dag(session, "reve_gallery_many_files")

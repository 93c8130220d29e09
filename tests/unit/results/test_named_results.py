"""Outputs named and carrying the team's data (issue 22, items 2 and 5).

* a ``file_name`` template names the stored files; one that could escape the destination, take
  a provider file's name or collide is refused before anything is paid for (or downloaded);
* ``metadata`` (templated) round-trips XCom -> manifest -> Asset event ``extra`` -> gallery card,
  with the prompt and request fields beside it, and ``reve_task_id`` beside the deprecated
  ``task_id``;
* the "Reve result" link of a task that stored its files opens the stored copy through the
  gallery's file route, not the expiring result URL.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_reve.testing import FakeReveServer
from tests.support.gallery_support import bearer, token
from tests.support.reve_test_helpers import return_values

pytest_plugins = ("tests.support.gallery_support",)

DAGS = Path(__file__).resolve().parents[2] / "dags" / "named_results"


@pytest.fixture
def server(fake_reve_server: FakeReveServer, reve_connection_env: str) -> FakeReveServer:
    return fake_reve_server


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# -- refused before paying ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("file_name", "metadata"),
    [
        ("../{index}", None),
        ("../../etc/cron.d/x_{index}", None),
        ("a/b_{index}", None),
        ("a\\b_{index}", None),
        ("/abs_{index}", None),
        ("..", None),
        ("x\n{index}", None),
        ("x\x00{index}", None),
        (".hidden_{index}", None),
        ("reve-manifest-0000000000000000", None),
        ("reve-owner-x_{index}", None),
        ("{sku}_{index}", None),  # a Python placeholder that is not ours
        ("{index!r}", None),
        ("{metadata[sku]}_{index}", {"sku": "../../evil"}),  # the escape hidden in the metadata
        ("{metadata[sku]}_{index}", {"other": 1}),  # a key the metadata does not have
        ("{metadata[sku]}_{index}", {"sku": {"nested": 1}}),
        ("x" * 200, None),
    ],
)
def test_a_file_name_that_could_escape_the_destination_is_refused_before_anything_is_paid_for(
    server, tmp_path, file_name, metadata
):
    from airflow.providers.common.compat.sdk import AirflowFailException

    from airflow_provider_reve.operators.reve import ReveGenerateOperator

    op = ReveGenerateOperator(
        task_id="t",
        model="nano-banana",
        prompt="a mug",
        num_images=2,
        download_to=str(tmp_path / "out"),
        file_name=file_name,
        metadata=metadata,
    )
    with pytest.raises(
        AirflowFailException, match=r"Invalid file_name or metadata \(nothing was submitted\)"
    ):
        op.execute({})
    assert server.submissions == 0
    assert files_in(tmp_path) == []


@pytest.mark.parametrize(
    "metadata",
    [
        {"blob": "x" * 20_000},  # over the cap: it is copied into XCom, manifests and events
        {"when": object()},  # not JSON
        {1: "a key that is not a string"},
        "[1, 2]",  # a template that rendered a list
        {"nan": float("nan")},
    ],
)
def test_metadata_that_is_not_a_small_json_object_is_refused_before_anything_is_paid_for(server, metadata):
    from airflow.providers.common.compat.sdk import AirflowFailException

    from airflow_provider_reve.operators.reve import ReveGenerateOperator

    op = ReveGenerateOperator(task_id="t", model="reve-2.0", prompt="a mug", metadata=metadata)
    with pytest.raises(AirflowFailException, match="metadata"):
        op.execute({})
    assert server.submissions == 0


def test_a_file_name_that_names_two_tasks_results_alike_is_refused_before_any_file_is_fetched(
    server, tmp_path
):
    from airflow.providers.common.compat.sdk import AirflowFailException

    from airflow_provider_reve.operators.reve import ReveDownloadResultsOperator, ReveGenerateOperator

    tasks = [
        ReveGenerateOperator(
            task_id=f"g{n}", model="reve-2.0", prompt=f"mug {n}", metadata={"sku": sku}
        ).execute({})
        for n, sku in enumerate(["MUG-1", "MUG-1"])  # a copy-paste slip in the product list
    ]
    fetched_before = server.file_downloads if hasattr(server, "file_downloads") else None
    store = ReveDownloadResultsOperator(
        task_id="store", results=tasks, destination=str(tmp_path), file_name="{metadata[sku]}"
    )
    with pytest.raises(AirflowFailException, match="both 'MUG-1'"):
        store.execute({})
    assert files_in(tmp_path) == []
    if fetched_before is not None:
        assert server.file_downloads == fetched_before

    # Told apart by the Reve task id, the same results store under their own names.
    store = ReveDownloadResultsOperator(
        task_id="store", results=tasks, destination=str(tmp_path), file_name="{metadata[sku]}-{reve_task_id}"
    )
    manifest = store.execute({})
    assert sorted(Path(e["path"]).name for e in manifest) == sorted(
        f"MUG-1-{t['reve_task_id']}.png" for t in tasks
    )


def test_a_file_name_without_index_still_gives_each_result_of_a_task_its_own_file(server, tmp_path):
    from airflow_provider_reve.operators.reve import ReveGenerateOperator

    result = ReveGenerateOperator(
        task_id="t",
        model="reve-2.0",
        prompt="a mug",
        num_images=2,
        download_to=str(tmp_path),
        file_name="MUG-42",
    ).execute({})
    assert [Path(e["path"]).name for e in result["files"]] == ["MUG-42_0.png", "MUG-42_1.png"]


# -- one run, every place the data travels -------------------------------------------------------
def asset_extras(uri: str) -> list[dict[str, Any]]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(
            select(AssetEvent.extra)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .where(AssetModel.uri.startswith(uri))
            .order_by(AssetEvent.id)
        ).all()
    return [dict(extra or {}) for (extra,) in rows]


def link_target(dag_run: Any, task_id: str) -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.scalars(
            XComModel.get_many(
                run_id=dag_run.run_id, dag_ids=dag_run.dag_id, task_ids=task_id, key="reve_result_url"
            )
        ).first()
        return None if row is None else XComModel.deserialize_value(row)


@pytest.fixture
def named_run(
    server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, use_dags_folder: Callable[[Path], Path]
) -> tuple[Any, Path]:
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("REVE_TEST_OUTPUT_DIR", str(tmp_path))
    use_dags_folder(DAGS)
    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    dag_run = bag.dags["reve_named_product_hero"].test()
    assert dag_run.state == "success"
    return dag_run, tmp_path


def test_metadata_and_the_request_round_trip_xcom_manifest_asset_extra_and_gallery_card(named_run, api):
    dag_run, out = named_run
    metadata = {"campaign": "spring", "sku": "MUG-42"}

    result = return_values(dag_run, "hero_image")[-1]
    assert result["metadata"] == metadata  # rendered: {{ params.sku }} became the product's SKU
    assert result["reve_task_id"] == result["task_id"]  # task_id stays, deprecated, for this release
    assert result["prompt"] == "A red mug on a white table"
    assert result["request"] == {"prompt": "A red mug on a white table", "num_images": 2}
    assert result["model"] == "nano-banana"

    # Files named by the template; the extension still from the content type.
    assert [Path(e["path"]).name for e in result["files"]] == ["MUG-42_0.png", "MUG-42_1.png"]
    assert files_in(out / "heroes") == sorted(
        ["MUG-42_0.png", "MUG-42_1.png", *(p.name for p in (out / "heroes").glob("reve-*.json"))]
    )
    for entry in result["files"]:
        assert entry["metadata"] == metadata
        assert entry["prompt"] == result["prompt"] and entry["request"] == result["request"]

    [extra] = asset_extras("reve-test://named-products")
    assert extra["metadata"] == metadata
    manifest = json.loads(Path(extra["manifest_path"]).read_text())
    assert manifest["files"] == result["files"]
    assert all(entry["metadata"] == metadata for entry in manifest["files"])

    who = token()
    page = api.get(
        "/reve/task-instance",
        params={"dag_id": dag_run.dag_id, "run_id": dag_run.run_id, "task_id": "hero_image"},
        headers=bearer(who),
    )
    assert page.status_code == 200
    text = html.unescape(page.text)
    assert 'data-testid="reve-metadata"' in page.text
    assert json.dumps(metadata, sort_keys=True) in text
    assert "A red mug on a white table" in text


def test_the_result_link_of_a_stored_result_opens_the_stored_file_not_the_expiring_url(named_run, api):
    from airflow_provider_reve.links import safe_link, stored_link

    dag_run, _ = named_run
    result = return_values(dag_run, "hero_image")[-1]
    target = link_target(dag_run, "hero_image")
    assert target is not None and target.startswith("reve/media?")
    assert target not in result["result_urls"] and not safe_link(target)
    assert stored_link(target) == target  # what ReveResultLink.get_link hands the UI

    # The UI resolves it against its base URL: the gallery's file route serves the stored copy.
    response = api.get(f"/{target}", headers=bearer(token()))
    assert response.status_code == 200
    assert response.content == Path(result["files"][0]["path"]).read_bytes()
    assert response.headers["content-type"] == "image/png"

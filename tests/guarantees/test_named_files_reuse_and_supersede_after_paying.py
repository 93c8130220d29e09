"""File names from a template, per-file reuse and re-runs moving files aside, together.

A file stored under a ``file_name`` template's name is found again by any later store into that
folder (not only by its own set of tasks), so an expired URL is not fetched again. Moving a
cleared instance's earlier files into ``superseded/`` happens after paying: when it fails, the
store fails transiently (``ReveStorageError``), the new files stay stored and listed, and nothing
earlier is lost.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from airflow_provider_reve.exceptions import ReveStorageError, is_permanent
from tests.support.storage_stub import PNG, CdnStub, file, status, store, succeeded

OTHER_PNG = PNG + b"another image"
OWNER = {"dag_id": "products", "run_id": "manual__1", "task_id": "hero_image", "map_index": 0}


@pytest.fixture
def cdn() -> Iterator[CdnStub]:
    server = CdnStub()
    yield server
    server.close()


def test_a_file_named_by_a_template_is_reused_from_another_sets_manifest_after_its_url_expired(
    cdn: CdnStub, tmp_path: Path
) -> None:
    url_a = cdn.route("/a.png", file(PNG), status(403))
    url_b = cdn.route("/b.png", file(PNG))
    url_c = cdn.route("/c.png", file(OTHER_PNG))
    task_a = succeeded("A", url_a).with_caller_data(metadata={"sku": "MUG-42"})
    task_b = succeeded("B", url_b).with_caller_data(metadata={"sku": "CUP-7"})
    task_c = succeeded("C", url_c).with_caller_data(metadata={"sku": "JAR-3"})
    first = store([task_a, task_b], tmp_path, name_template="{metadata[sku]}_{index}")

    again = store([task_a, task_c], tmp_path, name_template="{metadata[sku]}_{index}")

    assert cdn.hits("/a.png") == 1, "A's file was downloaded again (and its URL had expired)"
    assert Path(again.files[0]["path"]).name == "MUG-42_0.png"
    assert again.files[0] == {**first.files[0], "url": url_a}
    assert Path(again.files[1]["path"]).name == "JAR-3_0.png"


def test_moving_earlier_files_aside_after_paying_fails_transiently_and_loses_nothing(
    cdn: CdnStub, tmp_path: Path
) -> None:
    url_a = cdn.route("/a.png", file(PNG))
    url_b = cdn.route("/b.png", file(OTHER_PNG))
    earlier = store([succeeded("A", url_a)], tmp_path, owner=OWNER)
    (tmp_path / "superseded").write_bytes(b"a file where the folder would go")  # no folder now

    with pytest.raises(ReveStorageError) as raised:
        store([succeeded("B", url_b)], tmp_path, owner=OWNER)  # the instance, cleared: paid again

    assert not is_permanent(raised.value), "a paid result's storage error must leave a retry"
    assert Path(earlier.files[0]["path"]).read_bytes() == PNG, "the earlier file was lost"
    (new_manifest,) = [
        p for p in tmp_path.glob("reve-manifest-*.json") if p != Path(str(earlier.manifest_path))
    ]
    (entry,) = json.loads(new_manifest.read_text())["files"]
    assert Path(entry["path"]).read_bytes() == OTHER_PNG

"""What an earlier try, a peer or a careless hand left in a destination never stops paid files.

A destination folder is shared: anyone with access may leave a manifest with the wrong types in
it, a FIFO under a manifest's or a result's name, or a symlink to an endless device. Storing a
paid task's files must then still end -- stored, or failed with an error a retry can pass -- and
never hang a worker slot or raise the same programming error on every try until the result
URLs expire.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_reve.results.storage import StoredResults, manifest_name, resolve_destination
from tests.support.storage_stub import PNG, CdnStub, file, store, succeeded

# A guard against a hang, not a speed measure: storing 64 KiB from loopback takes milliseconds.
HANG_GUARD_SECONDS = 60.0


@pytest.fixture
def cdn() -> Iterator[CdnStub]:
    server = CdnStub()
    yield server
    server.close()


def _store_in_thread(tasks: list[Any], destination: Path, **kwargs: Any) -> StoredResults:
    """``store`` in a daemon thread, so that a hang fails the test instead of the test run."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["stored"] = store(tasks, destination, **kwargs)
        except BaseException as error:  # handed to the test below
            outcome["error"] = error

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(HANG_GUARD_SECONDS)
    if worker.is_alive():
        # Unblock the reader so the daemon thread can end (opening the FIFO's write side).
        for fifo in destination.iterdir():
            if fifo.is_fifo():
                with contextlib.suppress(OSError), open(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK), "wb"):
                    pass
        pytest.fail("storing the paid files never returned: a leftover in the destination hung it")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["stored"]


@pytest.mark.parametrize(
    "entry",
    [
        {"reve_task_id": "A", "index": [0], "path": "A_0.png"},
        {"reve_task_id": ["A"], "index": 0, "path": "A_0.png"},
        {"reve_task_id": {"id": "A"}, "index": {"i": 0}, "path": "A_0.png"},
    ],
    ids=["index-list", "id-list", "id-and-index-dicts"],
)
@pytest.mark.parametrize("manifest", ["own", "other"])
def test_an_earlier_manifest_with_wrongly_typed_entries_does_not_stop_the_paid_files_from_being_stored(
    cdn: CdnStub, tmp_path: Path, entry: dict[str, Any], manifest: str
) -> None:
    url = cdn.route("/a.png", file(PNG))
    name = manifest_name(["A"]) if manifest == "own" else "reve-manifest-0000000000000000.json"
    (tmp_path / name).write_text(json.dumps({"files": [entry]}))
    (tmp_path / "A_0.png").write_bytes(b"a stale file that another manifest may vouch for")

    stored = store([succeeded("A", url)], tmp_path)

    assert Path(stored.files[0]["path"]).read_bytes() == PNG


@pytest.mark.parametrize("manifest", ["own", "other"])
def test_a_fifo_named_like_a_manifest_does_not_hang_storing_the_paid_files(
    cdn: CdnStub, tmp_path: Path, manifest: str
) -> None:
    url = cdn.route("/a.png", file(PNG))
    name = manifest_name(["A"]) if manifest == "own" else "reve-manifest-0000000000000000.json"
    os.mkfifo(tmp_path / name)
    if manifest == "other":
        (tmp_path / "A_0.png").write_bytes(b"a file only another manifest could vouch for")

    stored = _store_in_thread([succeeded("A", url)], tmp_path)

    assert Path(stored.files[0]["path"]).read_bytes() == PNG


def test_a_fifo_under_a_result_name_that_a_manifest_vouches_for_does_not_hang_storing(
    cdn: CdnStub, tmp_path: Path
) -> None:
    url = cdn.route("/a.png", file(PNG))
    os.mkfifo(tmp_path / "A_0.png")
    empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"  # sha256(b"")
    entry = {"reve_task_id": "A", "index": 0, "path": str(tmp_path / "A_0.png"), "bytes": 0, "sha256": empty}
    (tmp_path / manifest_name(["A"])).write_text(json.dumps({"files": [entry]}))

    stored = _store_in_thread([succeeded("A", url)], tmp_path)

    assert Path(stored.files[0]["path"]).read_bytes() == PNG
    assert stored.files[0]["bytes"] == len(PNG)


def test_a_fifo_named_like_this_task_instances_owner_record_does_not_hang_storing_the_paid_files(
    cdn: CdnStub, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from airflow_provider_reve.results.supersede import owner_record_name, read_owner_record

    url = cdn.route("/a.png", file(PNG))
    owner = {"dag_id": "products", "run_id": "manual__1", "task_id": "hero_image", "map_index": 0}
    os.mkfifo(tmp_path / owner_record_name(owner))

    stored = _store_in_thread([succeeded("A", url)], tmp_path, owner=owner)

    assert Path(stored.files[0]["path"]).read_bytes() == PNG
    # Not a record of ours: read as none, said so, and replaced by this store's record.
    assert "not a regular file" in caplog.text
    assert [entry["path"] for entry in read_owner_record(resolve_destination(tmp_path), owner)] == [
        stored.files[0]["path"]
    ]


def test_a_file_reused_from_an_earlier_manifest_is_described_as_a_freshly_stored_one(
    cdn: CdnStub, tmp_path: Path
) -> None:
    url = cdn.route("/a.png", file(PNG))
    fresh = store([succeeded("A", url)], tmp_path).files[0]
    manifest = tmp_path / manifest_name(["A"])
    # An earlier manifest from another hand (or version): the file is intact, the rest is not.
    edited = {key: fresh[key] for key in ("reve_task_id", "index", "path", "bytes", "sha256")}
    manifest.write_text(json.dumps({"files": [{**edited, "content_type": ["<b>x</b>"]}]}))

    reused = store([succeeded("A", url)], tmp_path).files[0]

    assert cdn.hits("/a.png") == 1, "the intact file was downloaded again"
    assert reused == fresh, "Asset events, XCom and the gallery read these keys of every entry"

"""Another file at the name a new file takes is moved into ``superseded/`` and listed, never lost.

A ``file_name`` without ``{reve_task_id}`` into a folder shared by DAG runs gives each day's file
the same name. Before the new file takes it, the store moves the other run's (different) file
into ``superseded/`` under a name not taken there, records the move first, and the new manifest
lists it with ``moved_to``, ``superseded_by`` and the task instance that stored it. A kill or a
failure between the move and the rename loses nothing: the next try lists the moved file.
Identical bytes at the name are reused as before. Real parts: the loopback CDN stub, files on
disk, fsspec's in-memory store attached through Airflow's ``attach``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fsspec.implementations.memory import MemoryFileSystem

from airflow_provider_reve.exceptions import ReveDownloadError, ReveStorageError, is_permanent
from tests.support.storage_stub import PNG, CdnStub, file, sha256, status, store, succeeded

DAY_1 = PNG + b"the red mug, paid for on day 1"
DAY_2 = PNG + b"the blue mug, paid for on day 2"
DAY_3 = PNG + b"the green mug, paid for on day 3"
TEMPLATE = "MUG-42_{index}"
REPO = Path(__file__).resolve().parents[3]


def owner(run_id: str) -> dict[str, Any]:
    return {"dag_id": "products", "run_id": run_id, "task_id": "hero_image", "map_index": 0}


@pytest.fixture
def cdn() -> Iterator[CdnStub]:
    server = CdnStub()
    yield server
    server.close()


def manifest(folder: Path, stored: Any) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(Path(stored.manifest_path).read_text())
    return loaded


def test_another_runs_file_is_moved_aside_byte_for_byte_and_listed_with_its_run_and_successor(
    cdn: CdnStub, tmp_path: Path
) -> None:
    day1 = store(
        [succeeded("A", cdn.route("/a.png", file(DAY_1)))],
        tmp_path,
        owner=owner("day1"),
        name_template=TEMPLATE,
    )

    day2 = store(
        [succeeded("B", cdn.route("/b.png", file(DAY_2)))],
        tmp_path,
        owner=owner("day2"),
        name_template=TEMPLATE,
    )

    assert (tmp_path / "MUG-42_0.png").read_bytes() == DAY_2
    assert (tmp_path / "superseded" / "MUG-42_0.png").read_bytes() == DAY_1
    (trace,) = manifest(tmp_path, day2)["superseded"]
    assert trace == {
        "reve_task_id": "A",
        "index": 0,
        "path": day1.files[0]["path"],
        "bytes": len(DAY_1),
        "sha256": sha256(DAY_1),
        "owner": owner("day1"),
        "moved_to": str(tmp_path / "superseded" / "MUG-42_0.png"),
        "superseded_by": {"reve_task_id": "B", "index": 0, "path": day2.files[0]["path"]},
    }
    assert day2.superseded == [trace]


def test_every_days_file_at_one_stable_name_is_kept_none_overwrites_another(
    cdn: CdnStub, tmp_path: Path
) -> None:
    for run, (task_id, body) in enumerate([("A", DAY_1), ("B", DAY_2), ("C", DAY_3)]):
        url = cdn.route(f"/{task_id}.png", file(body))
        store([succeeded(task_id, url)], tmp_path, owner=owner(f"day{run}"), name_template=TEMPLATE)

    assert (tmp_path / "MUG-42_0.png").read_bytes() == DAY_3
    kept = {p.name: p.read_bytes() for p in (tmp_path / "superseded").glob("MUG-42_0.png*")}
    assert kept == {"MUG-42_0.png": DAY_1, "MUG-42_0.png.1": DAY_2}


def test_identical_bytes_at_the_name_are_reused_and_nothing_is_moved(cdn: CdnStub, tmp_path: Path) -> None:
    store(
        [succeeded("A", cdn.route("/a.png", file(DAY_1)))],
        tmp_path,
        owner=owner("day1"),
        name_template=TEMPLATE,
    )
    before = (tmp_path / "MUG-42_0.png").stat()

    again = store(
        [succeeded("B", cdn.route("/b.png", file(DAY_1)))],
        tmp_path,
        owner=owner("day2"),
        name_template=TEMPLATE,
    )

    after = (tmp_path / "MUG-42_0.png").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert not (tmp_path / "superseded").exists()
    assert again.superseded == []


def test_a_file_no_store_recorded_is_moved_aside_too_with_no_owner(cdn: CdnStub, tmp_path: Path) -> None:
    (tmp_path / "t1_0.png").write_bytes(b"a file someone put there by hand")

    stored = store([succeeded("t1", cdn.route("/r.png", file(PNG)))], tmp_path)

    assert (tmp_path / "superseded" / "t1_0.png").read_bytes() == b"a file someone put there by hand"
    (trace,) = stored.superseded or []
    assert (trace["owner"], trace["reve_task_id"], trace["moved_to"]) == (
        None,
        None,
        str(tmp_path / "superseded" / "t1_0.png"),
    )


def test_failing_to_move_another_runs_file_aside_fails_transiently_and_leaves_it_at_its_name(
    cdn: CdnStub, tmp_path: Path
) -> None:
    store(
        [succeeded("A", cdn.route("/a.png", file(DAY_1)))],
        tmp_path,
        owner=owner("day1"),
        name_template=TEMPLATE,
    )
    (tmp_path / "superseded").write_bytes(b"a file where the folder would go")

    with pytest.raises(ReveStorageError) as raised:
        store(
            [succeeded("B", cdn.route("/b.png", file(DAY_2)))],
            tmp_path,
            owner=owner("day2"),
            name_template=TEMPLATE,
        )

    assert not is_permanent(raised.value), "a paid result's storage error must leave a retry"
    assert (tmp_path / "MUG-42_0.png").read_bytes() == DAY_1, "the other run's file was overwritten"


KILL_AT_RENAME = """
import os, signal, sys
from airflow_provider_reve.results.storage import store_results
from airflow_provider_reve.models import ReveTask

rename = os.replace
def killed_at_the_rename(src, dst, *args, **kwargs):
    if str(dst).endswith("MUG-42_0.png"):  # the worker dies right before the result's rename
        os.kill(os.getpid(), signal.SIGKILL)
    return rename(src, dst, *args, **kwargs)
os.replace = killed_at_the_rename

task = ReveTask(task_id="B", status="SUCCESS", result_urls=[sys.argv[1]])
owner = {"dag_id": "products", "run_id": "day2", "task_id": "hero_image", "map_index": 0}
store_results([task], sys.argv[2], allow_private_addresses=True, name_template="MUG-42_{index}", owner=owner)
"""


def test_a_worker_killed_between_the_move_and_the_rename_loses_nothing_and_the_retry_lists_the_moved_file(
    cdn: CdnStub, tmp_path: Path
) -> None:
    store(
        [succeeded("A", cdn.route("/a.png", file(DAY_1)))],
        tmp_path,
        owner=owner("day1"),
        name_template=TEMPLATE,
    )
    url = cdn.route("/b.png", file(DAY_2))
    worker = subprocess.run(
        [sys.executable, "-c", KILL_AT_RENAME, url, str(tmp_path)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        timeout=120,
    )
    assert worker.returncode == -signal.SIGKILL, worker.stderr.decode(errors="replace")[-2000:]
    assert (tmp_path / "superseded" / "MUG-42_0.png").read_bytes() == DAY_1
    assert not (tmp_path / "MUG-42_0.png").exists()

    retry = store([succeeded("B", url)], tmp_path, owner=owner("day2"), name_template=TEMPLATE)

    assert (tmp_path / "MUG-42_0.png").read_bytes() == DAY_2
    assert [(s["sha256"], s["moved_to"], s["owner"]) for s in manifest(tmp_path, retry)["superseded"]] == [
        (sha256(DAY_1), str(tmp_path / "superseded" / "MUG-42_0.png"), owner("day1"))
    ]


def test_a_cleared_earlier_run_moves_the_later_runs_file_aside_and_says_where_its_own_went(
    cdn: CdnStub, tmp_path: Path
) -> None:
    store(
        [succeeded("A", cdn.route("/a.png", file(DAY_1)))],
        tmp_path,
        owner=owner("day1"),
        name_template=TEMPLATE,
    )
    store(
        [succeeded("B", cdn.route("/b.png", file(DAY_2)))],
        tmp_path,
        owner=owner("day2"),
        name_template=TEMPLATE,
    )

    cleared = store(
        [succeeded("C", cdn.route("/c.png", file(DAY_3)))],
        tmp_path,
        owner=owner("day1"),
        name_template=TEMPLATE,
    )

    assert (tmp_path / "MUG-42_0.png").read_bytes() == DAY_3
    traces = {s["sha256"]: s for s in cleared.superseded or []}
    assert traces[sha256(DAY_2)]["owner"] == owner("day2")
    assert Path(traces[sha256(DAY_2)]["moved_to"]).read_bytes() == DAY_2
    # day 1's own earlier file was moved aside by day 2's store: not "replaced in place" (null).
    assert Path(traces[sha256(DAY_1)]["moved_to"]).read_bytes() == DAY_1


class FlakyBucket(MemoryFileSystem):
    """fsspec's memory filesystem with a store of its own that can refuse uploads of one key."""

    store: dict[str, Any] = {}
    pseudo_dirs = [""]
    refuse_key: str | None = None

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        path = self._strip_protocol(path)
        if "w" in mode and type(self).refuse_key and path.endswith(str(type(self).refuse_key)):
            raise OSError("503 Service Unavailable (upload)")
        return super()._open(path, mode, **kwargs)


@pytest.fixture
def bucket() -> Iterator[Any]:
    from airflow.sdk import ObjectStoragePath
    from airflow.sdk.io.store import attach

    attach("memory", conn_id="reve_displaced_tests", fs=FlakyBucket())
    FlakyBucket.store.clear()
    FlakyBucket.refuse_key = None
    yield ObjectStoragePath("memory://reve_displaced_tests@bucket/heroes")
    FlakyBucket.store.clear()
    FlakyBucket.refuse_key = None


def test_another_runs_object_is_moved_aside_in_an_object_store_and_listed(cdn: CdnStub, bucket: Any) -> None:
    day1 = store(
        [succeeded("A", cdn.route("/a.png", file(DAY_1)))],
        bucket,
        owner=owner("day1"),
        name_template=TEMPLATE,
    )

    day2 = store(
        [succeeded("B", cdn.route("/b.png", file(DAY_2)))],
        bucket,
        owner=owner("day2"),
        name_template=TEMPLATE,
    )

    assert FlakyBucket.store["/bucket/heroes/MUG-42_0.png"].getvalue() == DAY_2
    assert FlakyBucket.store["/bucket/heroes/superseded/MUG-42_0.png"].getvalue() == DAY_1
    (trace,) = json.loads(
        FlakyBucket.store[f"/bucket/heroes/{Path(str(day2.manifest_path)).name}"].getvalue()
    )["superseded"]
    assert (trace["sha256"], trace["owner"], trace["moved_to"]) == (
        sha256(DAY_1),
        owner("day1"),
        day1.files[0]["path"].replace("/heroes/", "/heroes/superseded/"),
    )


def test_an_upload_failing_after_the_object_was_moved_aside_fails_transiently_and_the_retry_lists_it(
    cdn: CdnStub, bucket: Any
) -> None:
    store(
        [succeeded("A", cdn.route("/a.png", file(DAY_1)))],
        bucket,
        owner=owner("day1"),
        name_template=TEMPLATE,
    )
    url = cdn.route("/b.png", file(DAY_2))
    FlakyBucket.refuse_key = "heroes/MUG-42_0.png"

    with pytest.raises(ReveStorageError) as raised:
        store([succeeded("B", url)], bucket, owner=owner("day2"), name_template=TEMPLATE)

    assert not is_permanent(raised.value)
    assert FlakyBucket.store["/bucket/heroes/superseded/MUG-42_0.png"].getvalue() == DAY_1
    FlakyBucket.refuse_key = None
    retry = store([succeeded("B", url)], bucket, owner=owner("day2"), name_template=TEMPLATE)
    assert FlakyBucket.store["/bucket/heroes/MUG-42_0.png"].getvalue() == DAY_2
    assert [s["sha256"] for s in retry.superseded or []] == [sha256(DAY_1)]


def test_another_runs_file_at_the_name_is_not_taken_for_a_result_whose_url_has_expired(
    cdn: CdnStub, tmp_path: Path
) -> None:
    store(
        [succeeded("A", cdn.route("/a.png", file(DAY_1)))],
        tmp_path,
        owner=owner("day1"),
        name_template=TEMPLATE,
    )
    expired = cdn.route("/b.png", status(403))  # day 2's URL expired before its first store

    with pytest.raises(ReveDownloadError):
        store([succeeded("B", expired)], tmp_path, owner=owner("day2"), name_template=TEMPLATE)

    assert (tmp_path / "MUG-42_0.png").read_bytes() == DAY_1

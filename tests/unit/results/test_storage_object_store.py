"""An object store as the destination: the final key appears once, complete, or not at all.

The store is fsspec's in-memory filesystem, attached through Airflow's own ``attach`` under a
connection id of its own, so ``ObjectStoragePath`` reaches it exactly as it reaches ``s3://``;
it records every open, and can be told to break an upload midway. The CDN is the loopback stub.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from fsspec.implementations.memory import MemoryFile, MemoryFileSystem

from airflow_provider_reve.exceptions import ReveDownloadError, ReveStorageError, is_permanent
from tests.support.storage_stub import PNG, CdnStub, cut, file, gated, sha256, store, succeeded

REMOTE_CONN = "reve_storage_tests"


@pytest.fixture
def cdn() -> Iterator[CdnStub]:
    server = CdnStub()
    yield server
    server.close()


@pytest.fixture(autouse=True)
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


class _FailingFile(MemoryFile):
    """A write to the object store that breaks after ``limit`` bytes (a quota, a lost link)."""

    def __init__(self, fs: Any, path: str, limit: int) -> None:
        super().__init__(fs, path)
        self._limit = limit

    def write(self, data: Any) -> int:
        room = self._limit - self.tell()
        if len(data) > room:
            super().write(bytes(data[:room]))
            raise OSError("the object store stopped accepting data")
        return super().write(data)


class RecordingMemoryFS(MemoryFileSystem):
    """fsspec's memory filesystem with a store of its own, recording every open."""

    # Class-level, as fsspec keeps them: one store for this subclass, apart from "memory://".
    store: dict[str, Any] = {}
    pseudo_dirs = [""]
    opened: list[tuple[str, str]] = []
    fail_writes_after: int | None = None

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        path = self._strip_protocol(path)
        type(self).opened.append((path, mode))
        limit = type(self).fail_writes_after
        if mode == "wb" and limit is not None:
            failing = _FailingFile(self, path, limit)
            failing.commit()  # visible at once, as the memory filesystem's own files are
            return failing
        return super()._open(path, mode, **kwargs)


@pytest.fixture
def bucket() -> Iterator[Any]:
    from airflow.sdk import ObjectStoragePath
    from airflow.sdk.io.store import attach

    fs = RecordingMemoryFS()
    assert attach("memory", conn_id=REMOTE_CONN, fs=fs).fs is fs
    RecordingMemoryFS.store.clear()
    RecordingMemoryFS.opened.clear()
    RecordingMemoryFS.fail_writes_after = None
    yield ObjectStoragePath(f"memory://{REMOTE_CONN}@bucket/reve")
    RecordingMemoryFS.store.clear()
    RecordingMemoryFS.fail_writes_after = None


def keys() -> list[str]:
    return sorted(RecordingMemoryFS.store)


def test_a_remote_destination_gets_its_key_only_once_the_download_is_complete_in_one_upload(
    cdn: CdnStub, bucket: Any
) -> None:
    gate = cdn.gate()
    url = cdn.route("/r.png", gated(PNG, gate, after=len(PNG) // 2))
    outcome: list[Any] = []
    worker = threading.Thread(target=lambda: outcome.append(store([succeeded("t1", url)], bucket)))
    worker.start()
    try:
        assert gate.sent.wait(30), "the download never started"
        written = [opened for opened in RecordingMemoryFS.opened if "w" in opened[1]]
        assert keys() == [] and written == [], "the object store was written to mid-download"
    finally:
        gate.go.set()
        worker.join(60)
    assert not worker.is_alive() and outcome, "the store did not finish"

    stored = outcome[0]
    entry = stored.files[0]
    assert entry["path"].endswith("/bucket/reve/t1_0.png") and entry["path"].startswith("memory://")
    manifest_key = f"/bucket/reve/{stored.manifest_path.rsplit('/', 1)[1]}"
    assert keys() == sorted(["/bucket/reve/t1_0.png", manifest_key]), "a temporary key was left behind"
    writes = [opened for opened in RecordingMemoryFS.opened if opened[0] == "/bucket/reve/t1_0.png"]
    assert writes == [("/bucket/reve/t1_0.png", "wb")], "the final key was written more than once"
    assert RecordingMemoryFS.store["/bucket/reve/t1_0.png"].getvalue() == PNG
    assert entry["sha256"] == sha256(PNG)
    manifest = json.loads(RecordingMemoryFS.store[manifest_key].getvalue())
    assert manifest == {"files": stored.files}


def test_a_failed_download_to_a_remote_destination_leaves_no_key(cdn: CdnStub, bucket: Any) -> None:
    url = cdn.route("/r.png", cut(PNG, after=len(PNG) // 2))

    with pytest.raises(ReveDownloadError):
        store([succeeded("t1", url)], bucket)

    assert keys() == []
    assert [opened for opened in RecordingMemoryFS.opened if "w" in opened[1]] == []


def test_an_upload_that_breaks_midway_leaves_no_key(cdn: CdnStub, bucket: Any) -> None:
    url = cdn.route("/r.png", file(PNG))
    RecordingMemoryFS.fail_writes_after = 1000

    with pytest.raises(ReveDownloadError, match="stopped accepting"):  # the storage's OSError, named
        store([succeeded("t1", url)], bucket)

    assert keys() == [], "a partial object was left where a reader would take it for the result"


def test_a_rerun_over_an_identical_remote_object_does_not_upload_it_again(cdn: CdnStub, bucket: Any) -> None:
    url = cdn.route("/r.png", file(PNG))
    store([succeeded("t1", url)], bucket)
    store([succeeded("t1", url)], bucket)

    writes = [opened for opened in RecordingMemoryFS.opened if opened == ("/bucket/reve/t1_0.png", "wb")]
    assert len(writes) == 1
    assert RecordingMemoryFS.store["/bucket/reve/t1_0.png"].getvalue() == PNG


def test_a_store_that_stops_accepting_data_fails_transiently_without_fetching_the_other_files(
    cdn: CdnStub, bucket: Any
) -> None:
    first = cdn.route("/a.png", file(PNG))
    second = cdn.route("/b.png", file(PNG))
    RecordingMemoryFS.fail_writes_after = 10

    with pytest.raises(ReveStorageError, match="stopped accepting") as raised:
        store([succeeded("A", first), succeeded("B", second)], bucket)

    assert not is_permanent(raised.value)  # paid results: a retry stores them once the store is back
    assert cdn.hits("/b.png") == 0, "files were still fetched into a destination that fails every write"

"""An object store's own exception (not an ``OSError``) keeps each stored file's record.

Object-store clients raise their own classes (gcsfs's ``HttpError``, azure's ``ServiceRequestError``
...), not always an ``OSError``. When one of them fails the upload of one file, the files stored
before it must still be written to the manifest: the retry then reuses them, even after their
short-lived result URLs have expired, instead of failing "expired" with the file sitting there.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fsspec.implementations.memory import MemoryFileSystem

from airflow_provider_reve.exceptions import ReveStorageError, is_permanent
from tests.support.storage_stub import PNG, CdnStub, file, status, store, succeeded

REMOTE_CONN = "reve_storage_error_tests"


class ObjectStoreHTTPError(Exception):
    """What an object-store client raises for a 503 on an upload: not an ``OSError``."""


class FlakyMemoryFS(MemoryFileSystem):
    """fsspec's memory filesystem with a store of its own that refuses uploads of one key."""

    store: dict[str, Any] = {}
    pseudo_dirs = [""]
    refuse_key: str | None = None

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        path = self._strip_protocol(path)
        if "w" in mode and type(self).refuse_key and path.endswith(str(type(self).refuse_key)):
            raise ObjectStoreHTTPError("503 Service Unavailable (upload)")
        return super()._open(path, mode, **kwargs)


@pytest.fixture
def cdn() -> Iterator[CdnStub]:
    server = CdnStub()
    yield server
    server.close()


@pytest.fixture
def bucket() -> Iterator[Any]:
    from airflow.sdk import ObjectStoragePath
    from airflow.sdk.io.store import attach

    fs = FlakyMemoryFS()
    attach("memory", conn_id=REMOTE_CONN, fs=fs)
    FlakyMemoryFS.store.clear()
    FlakyMemoryFS.refuse_key = None
    yield ObjectStoragePath(f"memory://{REMOTE_CONN}@bucket/reve")
    FlakyMemoryFS.store.clear()
    FlakyMemoryFS.refuse_key = None


def test_an_object_store_exception_on_one_upload_keeps_the_files_stored_before_it_for_the_retry(
    cdn: CdnStub, bucket: Any
) -> None:
    url_a = cdn.route("/a.png", file(PNG), status(403))  # A's URL expires after one download
    url_b = cdn.route("/b.png", file(PNG + b"B"))
    FlakyMemoryFS.refuse_key = "/B_0.png"

    with pytest.raises(ReveStorageError, match="ObjectStoreHTTPError") as raised:
        store([succeeded("A", url_a), succeeded("B", url_b)], bucket)
    assert not is_permanent(raised.value), "a paid result's upload error must leave a retry"

    FlakyMemoryFS.refuse_key = None
    again = store([succeeded("A", url_a), succeeded("B", url_b)], bucket)

    assert cdn.hits("/a.png") == 1, "A was downloaded again: nothing recorded that it was stored"
    assert [entry["reve_task_id"] for entry in again.files] == ["A", "B"]
    assert FlakyMemoryFS.store["/bucket/reve/B_0.png"].getvalue() == PNG + b"B"

"""A try killed after a file was stored but before the manifest was written loses nothing.

A file appears at its final name only complete (renamed from a finished spool, or uploaded in one
piece), so when the retry finds the result URL expired, the file already at that name is the
result: it is recorded, not reported as lost. While the URL still works it is downloaded and
compared as always.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.storage_stub import PNG, CdnStub, file, sha256, status, store, succeeded


@pytest.fixture
def cdn() -> Iterator[CdnStub]:
    server = CdnStub()
    yield server
    server.close()


def test_a_file_stored_by_a_try_killed_before_its_manifest_is_kept_when_the_url_has_expired(
    cdn: CdnStub, tmp_path: Path
) -> None:
    url = cdn.route("/a.png", file(PNG), status(403))  # the URL expires after one download
    first = store([succeeded("A", url)], tmp_path)
    Path(str(first.manifest_path)).unlink()  # the try was killed between the file and its manifest

    again = store([succeeded("A", url)], tmp_path)

    assert [(e["path"], e["bytes"], e["sha256"]) for e in again.files] == [
        (str(tmp_path / "A_0.png"), len(PNG), sha256(PNG))
    ]
    assert again.files[0]["content_type"] == "image/png"
    assert again.manifest_path and Path(again.manifest_path).exists()


def test_an_expired_url_with_no_file_at_its_name_is_still_reported_as_expired(
    cdn: CdnStub, tmp_path: Path
) -> None:
    from airflow_provider_reve.exceptions import ReveDownloadError

    url = cdn.route("/a.png", status(403))
    (tmp_path / "A_1.png").write_bytes(PNG)  # another index's name: not this file

    with pytest.raises(ReveDownloadError, match="expired"):
        store([succeeded("A", url)], tmp_path)

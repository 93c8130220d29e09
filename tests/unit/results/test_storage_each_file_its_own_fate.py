"""Each result file's fate is its own, and any earlier manifest's file is reused.

With short-lived result URLs: tasks A and B are stored; their URLs expire; a regenerated task C is
stored together with A. A's file is reused from the manifest written for A and B (whatever set of
tasks that was), C's file is stored, nothing is downloaded twice. When a URL fails, the other
tasks' files are still fetched and stored before the failure is reported, so a newly paid result
is never lost to an older task's expired link.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from airflow_provider_reve.exceptions import ReveDownloadError, is_permanent
from tests.support.storage_stub import PNG, CdnStub, file, status, store, succeeded

OTHER_PNG = PNG + b"another image"


@pytest.fixture
def cdn() -> Iterator[CdnStub]:
    server = CdnStub()
    yield server
    server.close()


def test_a_file_an_earlier_manifest_for_another_set_of_tasks_records_is_reused_after_its_url_expired(
    cdn: CdnStub, tmp_path: Path
) -> None:
    url_a = cdn.route("/a.png", file(PNG), status(403))
    url_b = cdn.route("/b.png", file(PNG), status(403))
    first = store([succeeded("A", url_a), succeeded("B", url_b)], tmp_path)
    url_c = cdn.route("/c.png", file(OTHER_PNG))

    again = store([succeeded("A", url_a), succeeded("C", url_c)], tmp_path)

    assert cdn.hits("/a.png") == 1, "A's file was downloaded again (and its URL had expired)"
    assert again.files[0] == {**first.files[0], "url": url_a}
    assert Path(again.files[1]["path"]).read_bytes() == OTHER_PNG
    assert json.loads(Path(str(again.manifest_path)).read_text())["files"] == again.files


def test_an_expired_url_of_one_task_does_not_stop_another_tasks_files_from_being_stored(
    cdn: CdnStub, tmp_path: Path
) -> None:
    url_a = cdn.route("/a.png", status(403))
    url_c = cdn.route("/c.png", file(OTHER_PNG))

    with pytest.raises(ReveDownloadError, match="expired") as raised:
        store([succeeded("A", url_a), succeeded("C", url_c)], tmp_path)

    assert is_permanent(raised.value)  # no retry can fetch A
    assert "Reve task A" in str(raised.value)
    stored = [p for p in tmp_path.iterdir() if p.name.startswith("C_")]
    assert [p.read_bytes() for p in stored] == [OTHER_PNG], "C's newly paid file was never stored"
    (manifest,) = tmp_path.glob("reve-manifest-*.json")
    assert [entry["reve_task_id"] for entry in json.loads(manifest.read_text())["files"]] == ["C"]


def test_every_failed_file_is_reported_and_one_a_retry_may_still_fetch_keeps_the_error_transient(
    cdn: CdnStub, tmp_path: Path
) -> None:
    url_a = cdn.route("/a.png", status(403))
    url_b = cdn.route("/b.png", status(503))
    url_c = cdn.route("/c.png", file(OTHER_PNG))

    with pytest.raises(ReveDownloadError) as raised:
        store([succeeded("A", url_a), succeeded("B", url_b), succeeded("C", url_c)], tmp_path)

    assert not is_permanent(raised.value), "a 503 that a retry may pass was reported as permanent"
    assert "2 result file(s) could not be stored" in str(raised.value)
    assert "Reve task A" in str(raised.value) and "Reve task B" in str(raised.value)
    assert [p.name.split("_")[0] for p in tmp_path.iterdir() if p.suffix == ".png"] == ["C"]

    # The retry, once B's CDN is back: C is reused, B stored, A still reported as expired.
    cdn.route("/b.png", file(PNG))
    with pytest.raises(ReveDownloadError, match="expired") as again:
        store([succeeded("A", url_a), succeeded("B", url_b), succeeded("C", url_c)], tmp_path)
    assert is_permanent(again.value)
    assert cdn.hits("/c.png") == 1
    assert sorted(p.name.split("_")[0] for p in tmp_path.iterdir() if p.suffix == ".png") == ["B", "C"]

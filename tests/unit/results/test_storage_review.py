"""What a fresh-eye review of results-to-storage broke, pinned: secrets in redirect paths,
pages and empty bodies stored as media, expired URLs after a crash, duplicates, object keys
with ``#``, and bad storage settings found only after paying."""

from __future__ import annotations

import json
import traceback
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from airflow.providers.common.compat.sdk import AirflowFailException

from airflow_provider_reve.exceptions import ReveDownloadError
from airflow_provider_reve.hooks.reve import ReveHook
from airflow_provider_reve.operators.reve import ReveDownloadResultsOperator, ReveGenerateOperator
from airflow_provider_reve.results.storage import asset_uri
from airflow_provider_reve.sensors.reve import ReveTaskSensor
from airflow_provider_reve.testing import FakeReveServer
from tests.support.reve_test_helpers import use_connection
from tests.support.storage_stub import PNG, CdnStub, file, redirect, sha256, status, store, succeeded

KEY = "sk-live-0123456789abcdefSECRET"


@pytest.fixture
def cdn() -> Iterator[CdnStub]:
    server = CdnStub()
    yield server
    server.close()


@pytest.fixture
def server(fake_reve_server: FakeReveServer, reve_connection_env: str) -> FakeReveServer:
    return fake_reve_server


# ------------------------------------------------------------------------- the key stays ours


@pytest.mark.parametrize("encoded", [False, True], ids=["plain", "percent-encoded"])
def test_a_redirect_that_puts_the_key_in_a_path_shows_it_in_no_log_line_or_error(
    cdn, tmp_path, caplog, encoded
):
    secret_path = quote(KEY, safe="") if not encoded else "".join(f"%{b:02X}" for b in KEY.encode())
    url = cdn.route("/r.png", redirect(f"/files/{secret_path}/x.png"))
    cdn.route(f"/files/{KEY}/x.png", status(404))
    caplog.set_level("DEBUG", logger="airflow_provider_reve")

    with pytest.raises(ReveDownloadError) as caught:
        store([succeeded("t1", url)], tmp_path, hidden=[KEY])

    seen = "".join(traceback.format_exception(caught.value)) + repr(caught.value) + caught.value.url
    seen += caplog.text
    assert "Following redirect" in caplog.text  # the line exists, scrubbed
    for piece in (KEY, KEY[:12], KEY[-12:]):
        assert piece not in seen
    assert "404" in str(caught.value)


# ------------------------------------------------------------------- only media are results


@pytest.mark.parametrize(
    "answer",
    [
        file(b"<html>Access denied</html>", content_type="text/html"),
        file(b'{"error": "denied"}', content_type="application/json"),
        file(b"", content_type="image/png"),
    ],
    ids=["html-page", "json-error", "empty-body"],
)
def test_a_page_or_an_empty_body_answered_with_200_is_not_stored_as_a_result(cdn, tmp_path, answer):
    url = cdn.route("/r.png", answer)

    with pytest.raises(ReveDownloadError, match="instead of a media file"):
        store([succeeded("t1", url)], tmp_path, output_format="png")

    assert list(tmp_path.iterdir()) == []


def test_a_type_the_server_names_wins_over_output_format_and_unknown_types_become_bin(cdn, tmp_path):
    url = cdn.route("/r", file(PNG, content_type="image/svg+xml"))

    stored = store([succeeded("t1", url)], tmp_path, output_format="png")

    assert Path(stored.files[0]["path"]).name == "t1_0.bin"


def test_an_absurd_content_type_is_not_recorded_in_the_manifest(cdn, tmp_path):
    url = cdn.route("/r", file(PNG, content_type="image/" + "x" * 4000))

    stored = store([succeeded("t1", url)], tmp_path)

    assert stored.files[0]["content_type"] is None
    assert len(json.dumps(stored.files)) < 1000


# -------------------------------------------------------- what an earlier try already stored


def test_a_retry_after_the_urls_expired_reuses_the_files_an_earlier_try_stored(cdn, tmp_path):
    url = cdn.route("/r.png", file(PNG), status(403))
    first = store([succeeded("t1", url)], tmp_path)
    # The worker died before Airflow recorded success; the retry comes after the URL expired.

    again = store([succeeded("t1", url)], tmp_path)

    assert cdn.hits("/r.png") == 1
    assert again.files == first.files
    assert Path(again.files[0]["path"]).read_bytes() == PNG


def test_an_earlier_manifest_is_not_trusted_for_a_file_that_changed_since(cdn, tmp_path):
    url = cdn.route("/r.png", file(PNG), file(PNG))
    first = store([succeeded("t1", url)], tmp_path)
    Path(first.files[0]["path"]).write_bytes(b"tampered")

    again = store([succeeded("t1", url)], tmp_path)

    assert cdn.hits("/r.png") == 2
    assert Path(again.files[0]["path"]).read_bytes() == PNG
    assert again.files[0]["sha256"] == sha256(PNG)


def test_an_earlier_manifest_cannot_point_a_retry_at_a_file_outside_the_destination(cdn, tmp_path):
    outside = tmp_path / "outside.png"
    outside.write_bytes(PNG)
    folder = tmp_path / "dest"
    url = cdn.route("/r.png", file(PNG), file(PNG))
    first = store([succeeded("t1", url)], folder)
    manifest = Path(first.manifest_path or "")
    forged = [{**first.files[0], "path": str(outside)}]
    manifest.write_text(json.dumps({"files": forged}))

    again = store([succeeded("t1", url)], folder)

    assert cdn.hits("/r.png") == 2  # downloaded again rather than trusting the forged path
    assert Path(again.files[0]["path"]).parent == folder


def test_a_task_listed_twice_is_stored_and_counted_once(cdn, tmp_path):
    url = cdn.route("/r.png", file(PNG))
    task = succeeded("t1", url)

    stored = store([task, task], tmp_path)

    assert len(stored.files) == 1
    assert cdn.hits("/r.png") == 1


def test_object_keys_with_hash_or_question_mark_stay_distinct_assets():
    one = asset_uri("s3://aws_default@bucket/run#1/t_0.png")
    two = asset_uri("s3://aws_default@bucket/run#2/t_0.png")
    query = asset_uri("s3://bucket/a?b/t_0.png")

    assert one != two
    assert "#" not in one + two and "?" not in query
    assert one == "s3://bucket/run%231/t_0.png"
    assert "aws_default" not in one


# --------------------------------------------------- bad storage settings fail before paying


@pytest.mark.parametrize(
    "download_to",
    ["relative/folder", "/proc/reve-out", "/dev/null/x"],
    ids=["relative", "not-writable", "under-a-file"],
)
def test_a_download_to_that_cannot_take_files_fails_before_anything_is_paid_for(server, download_to):
    op = ReveGenerateOperator(task_id="t", model="reve-2.0", prompt="a fox", download_to=download_to)

    with pytest.raises(AirflowFailException, match=r"Invalid download_to \(nothing was submitted\)"):
        op.execute({})
    assert server.submissions == 0


@pytest.mark.parametrize("max_bytes", [0, -1, True, "1000", 1.5])
def test_a_max_download_bytes_that_is_not_a_positive_integer_is_refused_when_the_dag_is_parsed(max_bytes):
    with pytest.raises(ValueError, match="must be a positive integer"):
        ReveGenerateOperator(task_id="t", prompt="a fox", download_to="/tmp/x", max_download_bytes=max_bytes)
    with pytest.raises(ValueError, match="must be a positive integer"):
        ReveTaskSensor(task_id="s", reve_task_id="x", max_download_bytes=max_bytes)
    with pytest.raises(ValueError, match="must be a positive integer"):
        ReveDownloadResultsOperator(task_id="d", results=[], destination="/tmp/x", max_bytes=max_bytes)


def test_download_to_without_waiting_for_completion_is_refused_when_the_dag_is_parsed():
    with pytest.raises(ValueError, match="download_to needs wait_for_completion=True"):
        ReveGenerateOperator(task_id="t", prompt="a fox", wait_for_completion=False, download_to="/tmp/x")


@pytest.mark.parametrize("download_to", ["   ", "nosuch://bucket/x", "relative"])
def test_a_sensor_with_an_unusable_download_to_fails_before_it_waits(server, download_to):
    op = ReveTaskSensor(task_id="s", reve_task_id="some-task", download_to=download_to, deferrable=True)

    with pytest.raises(AirflowFailException, match="Invalid download_to"):
        op.execute({})
    assert server.requests_to("status") == 0


def test_the_hook_scrubs_its_own_key_from_a_redirect(cdn, tmp_path, monkeypatch, caplog):
    use_connection(monkeypatch, "http://127.0.0.1:9", password=KEY)
    url = cdn.route("/r.png", redirect(f"/k/{KEY}/x.png"))
    cdn.route(f"/k/{KEY}/x.png", status(410))
    caplog.set_level("INFO", logger="airflow_provider_reve")

    with pytest.raises(ReveDownloadError) as caught:
        ReveHook().download_results(
            {"task_id": "t1", "status": "SUCCESS", "result_urls": [url]}, str(tmp_path)
        )

    assert "expired" in str(caught.value)
    assert KEY[:10] not in str(caught.value) + caplog.text


def test_lineage_names_an_object_whose_key_holds_a_hash_by_its_whole_key():
    from airflow_provider_reve.results.lineage import dataset_location

    assert dataset_location("s3://aws_default@bucket/run#1/t_0.png") == ("s3://bucket", "run#1/t_0.png")
    assert dataset_location("s3://bucket/a?b/t_0.png") == ("s3://bucket", "a?b/t_0.png")

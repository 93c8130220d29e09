"""Storing result files, attacked: hostile ids and URLs, cut and killed transfers, re-runs.

Real loopback servers only: :mod:`tests.support.storage_stub` plays the CDN (rude answers, recorded
headers), the shipped fake plays the API (and expires its result URLs on demand). An object
store as destination: ``test_storage_object_store.py``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_reve.exceptions import (
    ReveDownloadError,
    ReveDownloadTooLargeError,
    ReveUnsafeURLError,
    ReveValidationError,
)
from airflow_provider_reve.hooks.reve import ReveHook
from airflow_provider_reve.results.files import STALE_SPOOL_SECONDS
from airflow_provider_reve.results.storage import asset_uri, file_name, safe_stem
from airflow_provider_reve.testing import DEFAULT_API_KEY, FakeReveServer
from tests.support.reve_test_helpers import use_connection, wait_for
from tests.support.storage_stub import (
    FAST,
    PNG,
    CdnStub,
    cut,
    file,
    gated,
    redirect,
    sha256,
    status,
    store,
    succeeded,
    unframed,
)

REPO = Path(__file__).resolve().parents[3]
SIGNED_QUERY = "X-Amz-Signature=s3cr3t-signature-token&X-Amz-Credential=AKIAEXAMPLE"
MANIFEST_KEYS = {
    "reve_task_id",
    "index",
    "url",
    "path",
    "bytes",
    "sha256",
    "content_type",
    "model",
    "consumed_credits",
    "prompt",
    "request",
    "metadata",
}


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


def visible(folder: Path) -> list[str]:
    """What a person or a downstream job listing the folder sees as files."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.exists() else []


def everything(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# -- names ---------------------------------------------------------------------------------------


def test_a_plain_api_task_id_is_the_file_name_as_it_is() -> None:
    assert file_name("0f3c9a7e51b24d6e8c1a2b3c4d5e6f70", 1, "image/png") == (
        "0f3c9a7e51b24d6e8c1a2b3c4d5e6f70_1.png"
    )


def test_hostile_task_ids_all_land_inside_the_destination_under_distinct_visible_names(
    cdn: CdnStub, tmp_path: Path
) -> None:
    hostile = [
        "../../x",
        "a/b",
        "a-b",
        "..",
        ".",
        "///",
        "/etc/passwd",
        "x" * 5000,
        "画像/猫",
        "a\x00b",
        ".hidden",
        "-rf",
        "A" * 300 + "/../" + "A" * 300,
        safe_stem("a/b"),  # an id spelled like the name "a/b" was given
    ]
    url = cdn.route("/r.png", file(PNG))
    destination = tmp_path / "out"

    stored = store([succeeded(task_id, url) for task_id in hostile], destination)

    assert everything(tmp_path) == ["out"], "something was written outside the destination"
    paths = [Path(entry["path"]) for entry in stored.files]
    assert len({path.name for path in paths}) == len(hostile), "two task ids share a file name"
    for path in paths:
        assert path.parent == destination
        assert not path.name.startswith(".") and not path.name.startswith("-")
        assert len(path.name.encode()) <= 255
        assert path.read_bytes() == PNG
    assert len(visible(destination)) == len(hostile) + 1  # and the manifest


def test_a_task_id_crafted_as_another_ids_cleaned_name_gets_a_name_of_its_own() -> None:
    assert safe_stem("a/b") != safe_stem("a-b")
    assert safe_stem(safe_stem("a/b")) != safe_stem("a/b")
    assert safe_stem("///") != safe_stem("..")


def test_two_id_sets_that_only_differ_by_where_a_newline_splits_them_get_different_manifests(
    cdn: CdnStub, tmp_path: Path
) -> None:
    url = cdn.route("/r.png", file(PNG))
    joined = store([succeeded("a\nb", url)], tmp_path)
    apart = store([succeeded("a", url), succeeded("b", url)], tmp_path)

    assert joined.manifest_path != apart.manifest_path
    assert json.loads(Path(str(joined.manifest_path)).read_text())["files"] == joined.files


# -- URLs that are not ours to fetch -------------------------------------------------------------


@pytest.mark.parametrize(
    "bad_url",
    [
        "file:///etc/passwd",
        "ftp://127.0.0.1/result.png",
        "javascript:alert(document.cookie)",
        "data:image/png;base64,iVBORw0KGgo=",
        "//127.0.0.1/no-scheme.png",
        "http://user:secret@127.0.0.1/creds.png",
    ],
)
def test_a_non_http_result_url_fails_the_store_before_any_file_is_fetched_or_written(
    cdn: CdnStub, tmp_path: Path, bad_url: str
) -> None:
    good = cdn.route("/good.png", file(PNG))
    destination = tmp_path / "out"

    with pytest.raises(ReveUnsafeURLError) as caught:
        store([succeeded("first", good), succeeded("second", good, bad_url)], destination)

    assert "result 1 of Reve task second" in str(caught.value)
    assert "secret" not in str(caught.value)
    assert cdn.hits("/good.png") == 0, "a file was fetched before the bad URL was noticed"
    assert everything(destination) == []


def test_a_redirect_to_a_file_url_is_refused_and_leaves_the_destination_empty(
    cdn: CdnStub, tmp_path: Path
) -> None:
    url = cdn.route("/moved.png", redirect("file:///etc/passwd"))

    with pytest.raises(ReveUnsafeURLError, match="file"):
        store([succeeded("t1", url)], tmp_path)

    assert everything(tmp_path) == []
    assert cdn.hits("/moved.png") == 1, "a refused redirect was tried again"


# -- size cap ------------------------------------------------------------------------------------


@pytest.mark.parametrize("answer", [file, unframed], ids=["announced", "unannounced"])
def test_a_file_over_max_bytes_fails_and_leaves_nothing_in_the_destination(
    cdn: CdnStub, tmp_path: Path, answer: Callable[[bytes], Any]
) -> None:
    url = cdn.route("/big.png", answer(PNG))

    with pytest.raises(ReveDownloadTooLargeError):
        store([succeeded("t1", url)], tmp_path, max_bytes=1000)

    assert everything(tmp_path) == [], "a partial or spool file was left behind"
    assert cdn.hits("/big.png") == 1, "an oversized file was downloaded again"


@pytest.mark.parametrize("max_bytes", ["1000", 0, -1, True, 1.5])
def test_a_max_bytes_that_is_not_a_positive_integer_fails_before_any_request(
    cdn: CdnStub, tmp_path: Path, max_bytes: Any
) -> None:
    url = cdn.route("/r.png", file(PNG))

    with pytest.raises(ReveValidationError, match="max_bytes"):
        store([succeeded("t1", url)], tmp_path, max_bytes=max_bytes)

    assert cdn.hits("/r.png") == 0


# -- transfers that break ------------------------------------------------------------------------


def test_a_connection_cut_midway_on_every_try_leaves_no_file_at_all(cdn: CdnStub, tmp_path: Path) -> None:
    url = cdn.route("/r.png", cut(PNG, after=len(PNG) // 2))

    with pytest.raises(ReveDownloadError) as caught:
        store([succeeded("t1", url)], tmp_path)

    assert not isinstance(caught.value, ReveUnsafeURLError)
    assert cdn.hits("/r.png") == FAST.max_attempts
    assert everything(tmp_path) == [], "not even a hidden spool file should remain"


def test_a_connection_cut_midway_once_is_retried_and_the_stored_file_is_complete(
    cdn: CdnStub, tmp_path: Path
) -> None:
    url = cdn.route("/r.png", cut(PNG, after=len(PNG) // 2), file(PNG))

    stored = store([succeeded("t1", url)], tmp_path)

    assert cdn.hits("/r.png") == 2
    assert Path(stored.files[0]["path"]).read_bytes() == PNG
    assert everything(tmp_path) == sorted(["t1_0.png", Path(str(stored.manifest_path)).name])


@pytest.mark.parametrize("transient", [503, 500, 502, 429, 408])
def test_a_transient_error_then_the_file_is_retried_and_stored_complete(
    cdn: CdnStub, tmp_path: Path, transient: int
) -> None:
    url = cdn.route("/r.png", status(transient), file(PNG))

    stored = store([succeeded("t1", url)], tmp_path)

    assert cdn.hits("/r.png") == 2
    entry = stored.files[0]
    assert entry["bytes"] == len(PNG) and entry["sha256"] == sha256(PNG)
    assert Path(entry["path"]).read_bytes() == PNG


KILL_SCRIPT = """
import sys
from airflow_provider_reve.results.storage import store_results
from airflow_provider_reve.models import ReveTask

task = ReveTask(task_id="killed", status="SUCCESS", result_urls=[sys.argv[1]])
store_results([task], sys.argv[2], allow_private_addresses=True)
"""


def test_a_worker_killed_mid_transfer_leaves_only_a_hidden_part_file_and_a_rerun_completes(
    cdn: CdnStub, tmp_path: Path
) -> None:
    big = PNG * 8  # ~512 KiB, so that half of it is surely past every buffer
    half = len(big) // 2
    gate = cdn.gate()
    url = cdn.route("/video.png", gated(big, gate, after=half), file(big))
    destination = tmp_path / "out"
    worker = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, url, str(destination)],
        cwd=REPO,
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        assert gate.sent.wait(90), "the worker never started downloading"

        def half_spooled() -> bool:
            if worker.poll() is not None:
                raise AssertionError(f"worker exited early: {worker.stderr.read()!r}")  # type: ignore[union-attr]
            return any(
                p.name.startswith(".reve-") and p.stat().st_size >= half // 2 for p in destination.iterdir()
            )

        wait_for(half_spooled, "the worker to spool half of the file")
        worker.send_signal(signal.SIGKILL)
        assert worker.wait(30) == -signal.SIGKILL
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(30)
        assert worker.stderr is not None
        worker.stderr.close()

    assert visible(destination) == [], "a killed transfer left a file that looks like a result"
    assert all(re.fullmatch(r"\.reve-.+\.part", name) for name in everything(destination))

    stored = store([succeeded("killed", url)], destination)
    assert Path(stored.files[0]["path"]).read_bytes() == big
    assert "killed_0.png" in visible(destination)


def test_a_spool_left_by_a_killed_try_is_removed_a_day_later_and_nothing_else_is(
    cdn: CdnStub, tmp_path: Path
) -> None:
    dead = tmp_path / ".reve-0123456789abcdef.part"  # a try SIGKILLed mid-download, a day ago
    live = tmp_path / ".reve-fedcba9876543210.part"  # another task downloading right now
    users = [tmp_path / ".reve-notes.part", tmp_path / "old.part"]  # not names we give spools
    for path in (dead, live, *users):
        path.write_bytes(b"partial")
    day_ago = time.time() - STALE_SPOOL_SECONDS - 60
    for path in (dead, *users):
        os.utime(path, (day_ago, day_ago))
    url = cdn.route("/a.png", file(PNG))

    store([succeeded("t1", url)], tmp_path)

    assert not dead.exists(), "a dead try's spool stayed in the folder"
    assert live.read_bytes() == b"partial", "a live download's spool was removed"
    assert all(path.exists() for path in users), "a file we did not create was removed"


# -- re-runs -------------------------------------------------------------------------------------


def test_a_rerun_over_identical_files_leaves_them_untouched(cdn: CdnStub, tmp_path: Path) -> None:
    url = cdn.route("/r.png", file(PNG))
    first = store([succeeded("t1", url)], tmp_path)
    before = Path(first.files[0]["path"]).stat()

    again = store([succeeded("t1", url)], tmp_path)

    after = Path(again.files[0]["path"]).stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert again.files == first.files
    assert len(visible(tmp_path)) == 2  # the file and the manifest: nothing duplicated


def test_a_rerun_over_a_different_file_of_the_same_name_replaces_it(cdn: CdnStub, tmp_path: Path) -> None:
    (tmp_path / "t1_0.png").write_bytes(PNG[:100])  # a truncated copy from some other tool
    url = cdn.route("/r.png", file(PNG))

    stored = store([succeeded("t1", url)], tmp_path)

    assert (tmp_path / "t1_0.png").read_bytes() == PNG
    assert stored.files[0]["sha256"] == sha256(PNG)


def test_stored_files_are_readable_like_any_new_file_in_the_folder(cdn: CdnStub, tmp_path: Path) -> None:
    url = cdn.route("/r.png", file(PNG))
    previous = os.umask(0o022)
    try:
        stored = store([succeeded("t1", url)], tmp_path)
        (tmp_path / "by-hand.txt").write_bytes(b"x")
    finally:
        os.umask(previous)

    expected = (tmp_path / "by-hand.txt").stat().st_mode & 0o777
    assert Path(stored.files[0]["path"]).stat().st_mode & 0o777 == expected == 0o644
    assert Path(str(stored.manifest_path)).stat().st_mode & 0o777 == expected


# -- expired links -------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [403, 404, 410])
def test_an_expired_signed_url_fails_saying_so_without_its_signature_and_is_not_retried(
    cdn: CdnStub, tmp_path: Path, code: int
) -> None:
    url = cdn.route("/r.png", status(code), query=SIGNED_QUERY)

    with pytest.raises(ReveDownloadError) as caught:
        store([succeeded("t1", url)], tmp_path)

    message = str(caught.value)
    assert "expired" in message and f"HTTP {code}" in message
    shown = "".join(traceback.format_exception(caught.value)) + repr(caught.value) + caught.value.url
    assert "s3cr3t" not in shown and "AKIAEXAMPLE" not in shown and "X-Amz" not in shown
    assert cdn.hits("/r.png") == 1
    assert everything(tmp_path) == []


def test_a_result_url_the_fake_has_expired_fails_through_the_hook_saying_it_expired(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with FakeReveServer(result_url_ttl=0) as server:
        use_connection(monkeypatch, server.url)
        hook = ReveHook()
        task = hook.generate("reve-2.0", "a lighthouse at dusk")

        with pytest.raises(ReveDownloadError, match="expired") as caught:
            hook.download_results(task.to_dict(), tmp_path)

        assert caught.value.http_status == 403
        assert server.stats()["requests"]["files"] == 1
    assert everything(tmp_path) == []


# -- Content-Type -> extension -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "output_format", "extension"),
    [
        ("image/png", "jpeg", "png"),
        ("image/jpeg", None, "jpg"),
        ("image/webp", None, "webp"),
        ("video/mp4", None, "mp4"),
        ("Image/PNG; charset=binary", None, "png"),
        ("application/octet-stream", "webp", "webp"),
        ("application/octet-stream", "jpeg", "jpg"),
        ("application/octet-stream", None, "bin"),
        (None, "png", "png"),
        (None, None, "bin"),
        ("image/svg+xml", None, "bin"),
        ("image/png/../../x", None, "bin"),
        ("../../evil", None, "bin"),
        ("image/png\\..\\x", "../sh", "bin"),
    ],
)
def test_the_extension_comes_from_a_known_content_type_else_the_output_format_else_bin(
    cdn: CdnStub, tmp_path: Path, content_type: str | None, output_format: str | None, extension: str
) -> None:
    url = cdn.route("/r", file(PNG, content_type))
    destination = tmp_path / "out"

    stored = store([succeeded("t1", url)], destination, output_format=output_format)

    path = Path(stored.files[0]["path"])
    assert path == destination / f"t1_0.{extension}"
    assert path.read_bytes() == PNG
    assert everything(tmp_path) == ["out"]


# -- the manifest --------------------------------------------------------------------------------


def test_the_manifest_describes_every_stored_file_with_exactly_the_documented_keys(
    cdn: CdnStub, tmp_path: Path
) -> None:
    jpeg = b"\xff\xd8\xff" + PNG[:5000]
    first = cdn.route("/a.png", file(PNG))
    second = cdn.route("/b.jpg", file(jpeg, "image/jpeg"), query=SIGNED_QUERY)
    video = cdn.route("/c.mp4", file(PNG[:3000], "video/mp4"))
    tasks = [
        succeeded("img", first, second, model="seedream-5", credits=30),
        succeeded("vid", video, model="kling-2.5", credits=None),
    ]

    stored = store(tasks, tmp_path)

    assert [(e["reve_task_id"], e["index"]) for e in stored.files] == [("img", 0), ("img", 1), ("vid", 0)]
    for entry, task, url in zip(
        stored.files, [tasks[0], tasks[0], tasks[1]], [first, second, video], strict=True
    ):
        assert set(entry) == MANIFEST_KEYS
        data = Path(entry["path"]).read_bytes()
        assert Path(entry["path"]).is_absolute() and Path(entry["path"]).parent == tmp_path
        assert entry["bytes"] == len(data) and entry["sha256"] == sha256(data)
        assert entry["url"] == url
        assert (entry["model"], entry["consumed_credits"]) == (task.model, task.consumed_credits)
    assert [e["content_type"] for e in stored.files] == ["image/png", "image/jpeg", "video/mp4"]
    assert Path(stored.files[1]["path"]).name == "img_1.jpg"

    manifest = Path(str(stored.manifest_path))
    assert manifest.parent == tmp_path and re.fullmatch(r"reve-manifest-[0-9a-f]{16}\.json", manifest.name)
    assert json.loads(manifest.read_text()) == {"files": stored.files}


# -- destinations --------------------------------------------------------------------------------


def _object_storage_path(uri: str) -> Any:
    from airflow.sdk import ObjectStoragePath

    return ObjectStoragePath(uri)


class _PathLike:
    """Neither ``str`` nor ``pathlib.Path``: what some libraries hand around (py.path, ...)."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def __fspath__(self) -> str:
        return str(self._path)


@pytest.mark.parametrize(
    "spell",
    [
        pytest.param(str, id="str"),
        pytest.param(lambda p: p, id="pathlib"),
        pytest.param(lambda p: p.as_uri(), id="file-url-string"),
        pytest.param(lambda p: _object_storage_path(p.as_uri()), id="object-storage"),
        pytest.param(_PathLike, id="os-pathlike"),
    ],
)
def test_every_way_of_naming_a_local_folder_stores_the_same_files_there(
    cdn: CdnStub, tmp_path: Path, spell: Callable[[Path], Any]
) -> None:
    url = cdn.route("/r.png", file(PNG))
    destination = tmp_path / "deep" / "out"

    stored = store([succeeded("t1", url)], spell(destination))

    entry = stored.files[0]
    assert entry["path"] == str(destination / "t1_0.png")
    assert (destination / "t1_0.png").read_bytes() == PNG
    assert asset_uri(entry["path"]) == (destination / "t1_0.png").as_uri()
    assert Path(str(stored.manifest_path)).parent == destination


def test_the_asset_uri_of_an_object_names_the_object_not_the_connection_used_to_reach_it() -> None:
    from airflow.sdk import Asset

    uri = asset_uri("s3://aws_default@media-bucket/reve/t1_0.png")

    assert uri == "s3://media-bucket/reve/t1_0.png"
    assert Asset(uri=uri) == Asset(uri="s3://media-bucket/reve/t1_0.png")


# -- credentials never leave for a result URL ----------------------------------------------------


def test_the_reve_api_key_is_never_sent_to_a_result_url_or_its_redirect(
    cdn: CdnStub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    final = cdn.route("/final.png", file(PNG))
    url = cdn.route("/r.png", redirect(final))
    with FakeReveServer() as server:
        use_connection(monkeypatch, server.url)
        manifest = ReveHook().download_results(
            {"task_id": "t1", "status": "SUCCESS", "result_urls": [url]}, tmp_path
        )

    assert Path(manifest[0]["path"]).read_bytes() == PNG
    assert [path for path, _ in cdn.requests] == ["/r.png", "/final.png"]
    for _, headers in cdn.requests:
        assert "Authorization" not in headers
        assert not any(DEFAULT_API_KEY in value for value in headers.values())


def test_credentials_the_worker_keeps_in_netrc_are_never_sent_to_a_result_url(
    cdn: CdnStub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login deploy password hunter2\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    url = cdn.route("/r.png", file(PNG))

    store([succeeded("t1", url)], tmp_path / "out")

    assert cdn.requests and all("Authorization" not in headers for _, headers in cdn.requests)


def test_a_loopback_result_url_is_refused_when_the_connection_points_at_the_public_api(
    cdn: CdnStub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    use_connection(monkeypatch, "https://api.reve.example")
    url = cdn.route("/r.png", file(PNG))

    with pytest.raises(ReveUnsafeURLError, match="not a public address"):
        ReveHook().download_results({"task_id": "t1", "status": "SUCCESS", "result_urls": [url]}, tmp_path)

    assert cdn.hits("/r.png") == 0
    assert everything(tmp_path) == []

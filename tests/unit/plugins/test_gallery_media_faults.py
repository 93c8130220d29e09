"""The gallery's ``/reve/media`` against files that are not what a manifest says, in every spelling.

A manifest is written by DAG code; the api-server serves every user of the deployment. These
tests pin what the review of issue 20 found (a FIFO spelled ``FILE://`` hung a server thread for
good; ``FILE://`` skipped the "no symlink" rule; a file rewritten in place was served from the
verified-file cache; media were cached by the browser past logout; no ``Range``) and what the
re-run of FAULTS.md over the plugin found (other file types, other spellings, an ``http://``
path the server fetched). One test runs Airflow's real app in a real HTTP server, because the
fault it pins is the server's thread pool running dry.
"""

from __future__ import annotations

import os
import socket
import stat
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from airflow_provider_reve.plugins.app import media as gallery_media
from airflow_provider_reve.plugins.app import reading
from airflow_provider_reve.results.storage import safe_stem
from tests.support.gallery_data import add_ti, remove_dag
from tests.support.gallery_support import bearer, db_session, manifest_entry, task_value, token

# The fixture api.
pytest_plugins = ("tests.support.gallery_support",)

DAG = "reve_gallery_media_faults"
PNG = b"\x89PNG\r\n\x1a\n" + b"stored pixels " * 40


@pytest.fixture
def store(tmp_path: Path) -> Path:
    folder = tmp_path / "store"
    folder.mkdir()
    return folder


@pytest.fixture
def manifest(airflow_db: None) -> Iterator[Any]:
    """``manifest(task_id, entry)``: a Reve task instance of ``DAG`` whose XCom names ``entry``."""
    added: list[str] = []

    def add(task_id: str, entry: dict[str, Any]) -> dict[str, Any]:
        with db_session() as session:
            add_ti(session, DAG, "r", task_id, value=task_value(entry["reve_task_id"], files=[entry]))
        added.append(task_id)
        return {"dag_id": DAG, "run_id": "r", "task_id": task_id, "map_index": -1, "index": 0} | {
            "reve_task_id": entry["reve_task_id"]
        }

    yield add
    if added:
        with db_session() as session:
            remove_dag(session, DAG)
    gallery_media.VERIFIED.clear()


def fetch(api: Any, params: dict[str, Any], **headers: str) -> Any:
    return api.get("/reve/media", params=params, headers=bearer(token()) | headers)


def stored_file(store: Path, reve_task_id: str, data: bytes = PNG) -> Path:
    path = store / f"{safe_stem(reve_task_id)}_0.png"
    path.write_bytes(data)
    return path


# -- one path for every local spelling (items 7 and 8) ----------------------------------------------
SPELLINGS = ["", "file://", "FILE://", "File://", "local://", "LOCAL://"]


@pytest.mark.parametrize("scheme", SPELLINGS)
def test_a_symlink_named_like_a_stored_file_is_refused_in_every_spelling_of_a_local_path(
    api, manifest, store, tmp_path, scheme
):
    secret = tmp_path / "api-server-secret.cfg"
    secret.write_bytes(b"jwt_secret = do-not-serve-me\n")
    link = store / f"{safe_stem('linked')}_0.png"
    os.symlink(secret, link)
    params = manifest("linked", manifest_entry("linked", f"{scheme}{link}", secret.read_bytes()))

    response = fetch(api, params)

    assert response.status_code == 404
    assert b"do-not-serve-me" not in response.content


@pytest.mark.parametrize("scheme", SPELLINGS)
def test_the_stored_file_itself_is_served_in_every_spelling_of_a_local_path(api, manifest, store, scheme):
    path = stored_file(store, "plain")
    params = manifest("plain", manifest_entry("plain", f"{scheme}{path}", PNG))

    response = fetch(api, params)

    assert response.status_code == 200 and response.content == PNG


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _socket(path: Path) -> Path:
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    return path


def _device(path: Path) -> Path:
    os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 5))  # a /dev/zero: endless bytes
    return path


def _loop(path: Path) -> Path:
    other = path.with_name("loop-other")
    os.symlink(other, path)
    os.symlink(path, other)
    return path


def _directory(path: Path) -> Path:
    path.mkdir()
    return path


@pytest.mark.parametrize("scheme", ["FILE://", "file://", ""])
@pytest.mark.parametrize("make", [_fifo, _socket, _device, _loop, _directory], ids=lambda f: f.__name__[1:])
def test_a_file_that_is_not_a_regular_file_is_refused_at_once_in_every_spelling(
    api, manifest, store, scheme, make
):
    if make is _device and os.geteuid() != 0:
        pytest.skip("creating a device node needs root")
    path = make(store / f"{safe_stem('odd')}_0.png")
    params = manifest("odd", manifest_entry("odd", f"{scheme}{path}", PNG))

    with ThreadPoolExecutor(1) as pool:  # a hang would block this test, not the whole run
        answer = pool.submit(fetch, api, params)
        try:
            assert answer.result(timeout=60).status_code == 404
        finally:
            if make is _fifo:
                _release_fifo_readers(path)


def _release_fifo_readers(path: Path) -> None:
    """A reader blocked in open() on the FIFO (the code before the fix) returns once a writer comes."""
    for _ in range(200):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            return  # no reader waits
        os.close(fd)


@pytest.mark.parametrize(
    "spelling",
    [
        "file://{rel}",  # a relative path under a URL
        "file://localhost{abs}",  # a host
        "local://{rel}",
        "{dir}/%2e/{name}",  # percent-encoding is not decoded: no such file
        "{abs}.",  # a trailing dot: not a stored file's name
        "ftp://example.test{abs}",  # a scheme nobody allowed
        "webdav://example.test{abs}",
    ],
)
def test_other_spellings_of_a_stored_file_are_refused(api, manifest, store, spelling, monkeypatch):
    path = stored_file(store, "spelled")
    monkeypatch.chdir(store.parent)
    text = spelling.format(rel=path.relative_to(store.parent), abs=path, dir=store, name=path.name)
    params = manifest("spelled", manifest_entry("spelled", text, PNG))

    assert fetch(api, params).status_code == 404


def test_the_api_server_never_fetches_an_http_url_a_manifest_names(api, manifest):
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", str(len(PNG)))
            self.end_headers()
            self.wfile.write(PNG)

        def do_HEAD(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", str(len(PNG)))
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        where = f"http://127.0.0.1:{server.server_address[1]}/internal/{safe_stem('web')}_0.png"
        params = manifest("web", manifest_entry("web", where, PNG))

        response = fetch(api, params)
    finally:
        server.shutdown()
        server.server_close()

    assert response.status_code == 404
    assert hits == []


# -- the verified-file cache (item 9) ---------------------------------------------------------------
def _rewrite_in_place_keeping_the_mtime(path: Path, data: bytes) -> None:
    before = path.stat()
    with open(path, "r+b") as handle:  # same inode, same size
        handle.write(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino,
        before.st_size,
        before.st_mtime_ns,
    )


def test_a_file_rewritten_in_place_with_its_mtime_restored_is_not_served_from_the_cache(api, manifest, store):
    path = stored_file(store, "rewritten")
    params = manifest("rewritten", manifest_entry("rewritten", path, PNG))
    assert fetch(api, params).content == PNG

    _rewrite_in_place_keeping_the_mtime(path, PNG.replace(b"pixels", b"forged"))

    assert fetch(api, params).status_code == 404


def test_a_file_rewritten_long_after_it_was_verified_is_not_served_from_the_cache(
    api, manifest, store, monkeypatch
):
    monkeypatch.setattr(gallery_media, "SETTLE_SECONDS", 0.05)
    path = stored_file(store, "settled")
    time.sleep(0.2)  # the file's ctime is now settled: a successful check is remembered
    params = manifest("settled", manifest_entry("settled", path, PNG))
    assert fetch(api, params).content == PNG

    _rewrite_in_place_keeping_the_mtime(path, PNG.replace(b"pixels", b"forged"))

    assert fetch(api, params).status_code == 404


# -- what the browser keeps, and ranges (items 10 and 12) -------------------------------------------
def test_stored_media_are_never_kept_by_the_browser_whole_or_in_part(api, manifest, store):
    path = stored_file(store, "private")
    params = manifest("private", manifest_entry("private", path, PNG))

    whole, part = fetch(api, params), fetch(api, params, Range="bytes=0-9")

    assert whole.headers["cache-control"] == part.headers["cache-control"] == "no-store"


@pytest.mark.parametrize("size", [len(PNG), 33 * 1024 * 1024 + 7], ids=["in-memory", "streamed"])
def test_a_video_player_can_seek_with_single_byte_ranges(api, manifest, store, size):
    data = (PNG * (size // len(PNG) + 1))[:size]
    path = stored_file(store, "seek", data)
    params = manifest("seek", manifest_entry("seek", path, data))

    whole = fetch(api, params)
    first = fetch(api, params, Range="bytes=0-9")
    middle = fetch(api, params, Range=f"bytes={size // 2}-{size // 2 + 99}")
    tail = fetch(api, params, Range="bytes=-5")
    open_ended = fetch(api, params, Range=f"bytes={size - 3}-")
    beyond = fetch(api, params, Range=f"bytes={size}-")

    assert whole.status_code == 200 and whole.headers["accept-ranges"] == "bytes" and whole.content == data
    assert first.status_code == 206 and first.content == data[:10]
    assert first.headers["content-range"] == f"bytes 0-9/{size}" and first.headers["content-length"] == "10"
    assert middle.status_code == 206 and middle.content == data[size // 2 : size // 2 + 100]
    assert tail.status_code == 206 and tail.content == data[-5:]
    assert tail.headers["content-range"] == f"bytes {size - 5}-{size - 1}/{size}"
    assert open_ended.status_code == 206 and open_ended.content == data[-3:]
    assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{size}"


@pytest.mark.parametrize("size", [len(PNG), 33 * 1024 * 1024 + 7], ids=["in-memory", "streamed"])
@pytest.mark.parametrize("wanted", [None, "bytes=0-9", "bytes=999999999-"], ids=["whole", "range", "beyond"])
def test_head_answers_like_get_without_a_body(api, manifest, store, size, wanted):
    # A player or a link checker asks HEAD first (size, type, ranges) before it fetches.
    data = (PNG * (size // len(PNG) + 1))[:size]
    path = stored_file(store, "headed", data)
    params = manifest("headed", manifest_entry("headed", path, data))
    headers = bearer(token()) | ({"Range": wanted} if wanted else {})

    got = api.get("/reve/media", params=params, headers=headers)
    headed = api.head("/reve/media", params=params, headers=headers)

    assert headed.status_code == got.status_code and got.status_code in (200, 206, 416)
    assert headed.content == b""
    for name in ("content-type", "content-length", "content-range", "accept-ranges", "cache-control", "etag"):
        assert headed.headers.get(name) == got.headers.get(name), name


def test_head_of_a_file_the_gallery_does_not_serve_is_refused_like_get(api, manifest, store):
    path = stored_file(store, "headless", PNG.replace(b"pixels", b"forged"))
    params = manifest("headless", manifest_entry("headless", path, PNG))

    headed = api.head("/reve/media", params=params, headers=bearer(token()))

    assert headed.status_code == 404 and headed.content == b""
    assert (
        api.head("/reve/media", params=params).status_code
        == api.get("/reve/media", params=params).status_code
    )


@pytest.mark.parametrize("header", ["bytes=0-1,4-5", "items=0-1", "bytes=5-1", "bytes=x-y", "bytes=-"])
def test_a_range_the_server_does_not_serve_alone_gets_the_whole_file(api, manifest, store, header):
    path = stored_file(store, "ranges")
    params = manifest("ranges", manifest_entry("ranges", path, PNG))

    response = fetch(api, params, Range=header)

    assert response.status_code == 200 and response.content == PNG


def test_a_range_of_a_file_that_is_not_the_stored_one_sends_no_byte(api, manifest, store):
    path = stored_file(store, "tampered", PNG.replace(b"pixels", b"forged"))
    params = manifest("tampered", manifest_entry("tampered", path, PNG))

    response = fetch(api, params, Range="bytes=0-9")

    assert response.status_code == 404 and PNG[:10] not in response.content


# -- a read that never ends fails its own request, never the server (item 7) -----------------------
class _Served:
    def __init__(self, app: Any) -> None:
        import uvicorn

        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    def __enter__(self) -> _Served:
        self.thread.start()
        for _ in range(600):
            if self.server.started:
                return self
            time.sleep(0.05)
        raise RuntimeError("uvicorn did not start")

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.socket.close()


@pytest.fixture
def real_server(airflow_db: None) -> Iterator[_Served]:
    """Airflow's own app (with the gallery mounted) in a real uvicorn, as ``airflow api-server`` runs it."""
    from airflow.api_fastapi.app import create_app

    with _Served(create_app()) as served:
        yield served


@pytest.fixture
def stalled_store() -> Iterator[tuple[str, threading.Event]]:
    """An object store (``memory://<conn id>@...``) whose reads never answer until the event is set.

    A new connection id each time: Airflow keeps an attached store by protocol and connection id."""
    from airflow.sdk.io.store import attach
    from fsspec.implementations.memory import MemoryFileSystem

    release = threading.Event()

    class StalledFS(MemoryFileSystem):
        store: dict[str, Any] = {}
        pseudo_dirs = [""]

        def _open(self, *args: Any, **kwargs: Any) -> Any:
            release.wait()
            return super()._open(*args, **kwargs)

    conn_id = f"reve_stalled_{uuid.uuid4().hex[:8]}"
    attach("memory", conn_id=conn_id, fs=StalledFS())
    yield conn_id, release
    release.set()
    StalledFS.store.clear()


@pytest.mark.parametrize("fault", ["fifo spelled FILE://", "object store that never answers"])
def test_more_blocked_media_requests_than_server_threads_leave_the_server_answering_everyone_else(
    real_server, manifest, store, stalled_store, monkeypatch, fault
):
    monkeypatch.setattr(reading, "VERIFY_TIMEOUT", 3.0)
    if fault.startswith("fifo"):
        fifo = _fifo(store / f"{safe_stem('blocked')}_0.png")
        where = f"FILE://{fifo}"
    else:
        fifo = None
        where = f"memory://{stalled_store[0]}@bucket/{safe_stem('blocked')}_0.png"
    params = manifest("blocked", manifest_entry("blocked", where, PNG))
    headers = bearer(token())
    requests = 45  # the api-server runs synchronous routes in a pool of 40 threads

    def blocked_media(_: int) -> int | str:
        try:
            return httpx.get(
                f"{real_server.url}/reve/media", params=params, headers=headers, timeout=120
            ).status_code
        except httpx.TimeoutException:
            return "no answer"

    with ThreadPoolExecutor(requests) as pool:
        try:
            answers = list(pool.map(blocked_media, range(requests)))
            # Everyone else, after all of them: Airflow's health check, a gallery page.
            health = httpx.get(f"{real_server.url}/api/v2/monitor/health", timeout=60)
            gallery = httpx.get(f"{real_server.url}/reve/gallery", headers=headers, timeout=60)
        finally:
            stalled_store[1].set()
            if fifo is not None:
                _release_fifo_readers(fifo)

    assert health.status_code == 200
    assert gallery.status_code == 200
    assert set(answers) <= {404, 504}, answers
    assert fault.startswith("fifo") or set(answers) == {504}, answers

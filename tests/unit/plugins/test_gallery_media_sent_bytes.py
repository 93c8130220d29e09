"""What ``/reve/media`` sends is exactly what was verified, to the last byte of a long stream,
and what a response costs the api-server while a slow client takes it.

A stored file larger than what the route keeps in memory is hashed whole, then sent from the
file chunk by chunk. A writer of the store (DAG code) can rewrite the file in place between the
check and the send; then the bytes read for the response are no longer the ones that hashed to
the manifest's ``sha256``. Found by the adversarial review of the issue-20 gallery fixes. These
tests run Airflow's real app in a real HTTP server: only a real socket lets the file change
while its response is being sent.
"""

from __future__ import annotations

import hashlib
import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import pytest

from airflow_provider_reve.plugins.app import media as gallery_media
from airflow_provider_reve.results.storage import safe_stem
from tests.support.gallery_support import bearer, manifest_entry, token
from tests.unit.plugins.test_gallery_media_faults import PNG, stored_file

# The fixtures api, real_server, manifest and store.
pytest_plugins = ("tests.support.gallery_support", "tests.unit.plugins.test_gallery_media_faults")

#: Larger than what is kept in memory, and much larger than loopback socket buffers: the second
#: half of the file is read from disk long after the first chunk reached the client.
SIZE = 48 * 1024 * 1024


def _receive_while_rewriting(
    url: str, params: dict[str, Any], path: Path, **headers: str
) -> tuple[int, bytes]:
    """The response's status and every byte that arrived; the file's second half is forged once
    the first megabyte has arrived. A response cut short (the server refused to go on) is fine."""
    received = bytearray()
    with httpx.stream(
        "GET", f"{url}/reve/media", params=params, headers=bearer(token()) | headers, timeout=120
    ) as response:
        chunks = response.iter_raw(1024 * 1024)
        try:
            received += next(chunks)
            with open(path, "r+b") as handle:  # in place: same inode, same size
                handle.seek(SIZE // 2)
                handle.write(b"FORGED!!" * (SIZE // 16))
            for chunk in chunks:
                received += chunk
        except (httpx.RemoteProtocolError, httpx.ReadError, StopIteration):
            pass
        return response.status_code, bytes(received)


@pytest.mark.parametrize("remembered", [False, True], ids=["first-check", "remembered-check"])
def test_a_large_file_rewritten_while_it_is_sent_never_sends_a_byte_that_was_not_verified(
    real_server, manifest, store, monkeypatch, remembered
):
    data = (PNG * (SIZE // len(PNG) + 1))[:SIZE]
    path = stored_file(store, "streamed", data)
    params = manifest("streamed", manifest_entry("streamed", path, data))
    if remembered:  # verified and remembered once, as every later view of a settled file is
        monkeypatch.setattr(gallery_media, "SETTLE_SECONDS", 0.05)
        time.sleep(0.2)
        assert (
            httpx.get(
                f"{real_server.url}/reve/media", params=params, headers=bearer(token()), timeout=120
            ).content
            == data
        )

    status, received = _receive_while_rewriting(real_server.url, params, path)

    assert status == 200
    assert b"FORGED!!" not in received
    assert received == data[: len(received)]


def test_a_range_of_a_large_file_rewritten_while_it_is_sent_never_sends_a_byte_that_was_not_verified(
    real_server, manifest, store
):
    data = (PNG * (SIZE // len(PNG) + 1))[:SIZE]
    path = stored_file(store, "ranged", data)
    params = manifest("ranged", manifest_entry("ranged", path, data))
    start = 12345  # not on a chunk boundary

    status, received = _receive_while_rewriting(real_server.url, params, path, Range=f"bytes={start}-")

    assert status == 206
    assert b"FORGED!!" not in received
    assert received == data[start : start + len(received)]


@pytest.mark.parametrize("piece", [4093, gallery_media.CHUNK - 1, gallery_media.CHUNK + 7])
def test_chunk_digests_do_not_depend_on_how_a_store_cuts_its_reads(piece):
    data = bytes(range(256)) * (2 * gallery_media.CHUNK // 256) + b"tail"
    whole = gallery_media.ChunkDigests()
    whole.update(data)
    cut = gallery_media.ChunkDigests()
    for offset in range(0, len(data), piece):
        cut.update(data[offset : offset + piece])

    assert cut.chunks() == whole.chunks() and len(whole.chunks()) == 3
    assert cut.hexdigest() == whole.hexdigest() == hashlib.sha256(data).hexdigest()


def _resident_mib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    raise AssertionError("no VmRSS")


def test_viewers_who_never_read_their_responses_do_not_make_the_server_hold_a_copy_of_the_file_each(
    real_server, manifest, store
):
    size, readers = 30 * 1024 * 1024, 12
    data = (PNG * (size // len(PNG) + 1))[:size]
    path = stored_file(store, "held", data)
    params = manifest("held", manifest_entry("held", path, data))
    where = urlsplit(real_server.url)
    request = (
        f"GET /reve/media?{urlencode(params)} HTTP/1.1\r\nHost: {where.netloc}\r\n"
        f"Authorization: Bearer {token()}\r\n\r\n"
    ).encode()
    before = _resident_mib()
    stalled = []
    try:
        for _ in range(readers):  # each asks for the file, then reads nothing
            client = socket.create_connection((where.hostname, where.port))
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            client.sendall(request)
            stalled.append(client)
        for client in stalled:  # every response has started: the server holds what it holds
            client.settimeout(60)
            assert client.recv(12).startswith(b"HTTP/1.1 200")
        held = _resident_mib() - before
    finally:
        for client in stalled:
            client.close()

    # A copy of the file per reader would be 12 x 30 MiB = 360 MiB.
    assert held < 120, f"{held} MiB held for {readers} stalled readers of a {size >> 20} MiB file"


def test_a_file_of_several_chunks_in_object_storage_is_served_whole_and_by_range(api, manifest):
    from airflow.sdk.io.store import attach
    from fsspec.implementations.memory import MemoryFileSystem

    class SentBytesFS(MemoryFileSystem):
        store: dict[str, Any] = {}  # its own store: fsspec keeps it on the class
        pseudo_dirs = [""]

    attach("memory", conn_id="reve_sent_bytes", fs=SentBytesFS())
    data = (PNG * (3 * gallery_media.CHUNK // len(PNG)))[: 3 * gallery_media.CHUNK - 5]
    key = f"media/{safe_stem('remote-big')}_0.png"
    try:
        with SentBytesFS().open(key, "wb") as handle:
            handle.write(data)
        params = manifest("remote-big", manifest_entry("remote-big", f"memory://reve_sent_bytes@{key}", data))
        headers = bearer(token())

        whole = api.get("/reve/media", params=params, headers=headers)
        middle = api.get("/reve/media", params=params, headers=headers | {"Range": "bytes=1048570-2097160"})
    finally:
        SentBytesFS.store.clear()

    assert whole.status_code == 200 and whole.content == data
    assert middle.status_code == 206 and middle.content == data[1048570:2097161]

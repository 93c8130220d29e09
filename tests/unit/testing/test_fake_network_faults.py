"""Faults between the client and the API, as a raw client sees them: HTTPS with its own CA, a TLS
connection cut after a paid request, gateway pages before and after the task was created, a bare
404, an answer that trickles in, SUCCESS without files, and a response too big to read."""

from __future__ import annotations

import asyncio
import json
import select
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import requests

from airflow_provider_reve.testing import FakeReveServer

KEY = "sk-network"
AUTH = {"Authorization": f"Bearer {KEY}"}
SYNC_IMAGE = {"model": "reve-2.0", "prompt": "a lighthouse"}  # 12 credits
ASYNC_IMAGE = {"model": "seedream-5", "prompt": "a lighthouse"}  # 25 credits


@pytest.fixture
def server() -> Iterator[FakeReveServer]:
    with FakeReveServer(api_keys={KEY: 1000}, async_seconds=60) as fake:
        yield fake


@pytest.fixture
def tls_server() -> Iterator[FakeReveServer]:
    with FakeReveServer(api_keys={KEY: 1000}, tls=True) as fake:
        yield fake


def generate(server: FakeReveServer, body: dict, **kw: object) -> requests.Response:
    kw.setdefault("timeout", 5)
    return requests.post(f"{server.url}/api/v1/generate", json=body, headers=AUTH, **kw)  # type: ignore[arg-type]


def status(server: FakeReveServer, task_id: str, **kw: object) -> requests.Response:
    kw.setdefault("timeout", 5)
    return requests.get(f"{server.url}/api/v1/status", params={"task_id": task_id}, headers=AUTH, **kw)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- TLS


def test_the_fake_serves_https_that_clients_trust_through_its_ca_file(tls_server, monkeypatch):
    assert tls_server.url.startswith("https://127.0.0.1:")

    with pytest.raises(requests.exceptions.SSLError):
        generate(tls_server, SYNC_IMAGE)  # not signed by any CA the system trusts
    assert tls_server.submissions == 0
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", tls_server.ca_file)
    created = generate(tls_server, SYNC_IMAGE)

    [url] = created.json()["data"]["response"]["resultUrls"]
    assert url.startswith(f"{tls_server.url}/files/")
    assert requests.get(url, timeout=5).content[:4] == b"\x89PNG"


def test_an_aiohttp_client_verifies_the_fake_with_its_ca_file(tls_server):
    async def read_status() -> tuple[int, dict]:
        context = ssl.create_default_context(cafile=tls_server.ca_file)
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"{tls_server.url}/api/v1/status", params={"task_id": "nope"}, headers=AUTH, ssl=context
            ) as answer,
        ):
            return answer.status, await answer.json()

    code, body = asyncio.run(read_status())

    assert (code, body["message"]) == (404, "TASK_NOT_FOUND")


def test_the_ca_file_is_gone_once_the_server_stops():
    with FakeReveServer(tls=True) as fake:
        ca_file = fake.ca_file
        assert Path(ca_file).read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert not Path(ca_file).exists()
    with pytest.raises(RuntimeError):
        FakeReveServer().ca_file  # noqa: B018  (plain HTTP has no CA)


def test_a_tls_break_after_the_request_leaves_a_paid_task_and_no_answer(tls_server):
    tls_server.add_fault(kind="tls_break_after_request", endpoint="generate")

    with pytest.raises(requests.exceptions.SSLError):
        generate(tls_server, SYNC_IMAGE, verify=tls_server.ca_file)

    assert tls_server.submissions == 1
    assert tls_server.balance(KEY) == 1000 - 12
    assert generate(tls_server, SYNC_IMAGE, verify=tls_server.ca_file).status_code == 200  # used up


# ---------------------------------------------------------------------------- gateway answers


def test_a_gateway_page_before_forwarding_creates_nothing_but_after_forwarding_the_task_is_billed(server):
    server.add_fault(kind="html", endpoint="generate", status=503)
    server.add_fault(kind="html_after", endpoint="generate")

    before = generate(server, SYNC_IMAGE)
    assert (before.status_code, server.submissions) == (503, 0)
    after = generate(server, SYNC_IMAGE)

    for page in (before, after):
        assert page.headers["Content-Type"].startswith("text/html")
        assert page.text.startswith("<html>")
        assert page.text == before.text
    assert after.status_code == 503
    assert server.submissions == 1
    [task] = server.tasks.values()
    assert (task["status"], task["cost"]) == ("SUCCESS", 12)
    assert server.balance(KEY) == 1000 - 12


def test_a_bare_gateway_404_on_status_has_no_code(server):
    task_id = generate(server, ASYNC_IMAGE).json()["data"]["task_id"]
    server.add_fault(kind="bare_404", endpoint="status")

    answer = status(server, task_id)

    assert answer.status_code == 404
    assert answer.json() == {"message": "Not Found"}
    assert status(server, task_id).json()["data"]["status"] == "IN_PROGRESS"  # the task is fine


def test_success_without_urls_claims_success_with_nothing_to_download(server):
    task_id = generate(server, ASYNC_IMAGE).json()["data"]["task_id"]
    server.add_fault(kind="success_without_urls", endpoint="status")
    server.add_fault(kind="success_without_urls", endpoint="status", variant="missing")

    empty = status(server, task_id).json()["data"]
    missing = status(server, task_id).json()["data"]

    assert empty == {
        "task_id": task_id,
        "status": "SUCCESS",
        "consumed_credits": 25,
        "response": {"resultUrls": []},
    }
    assert missing == {"task_id": task_id, "status": "SUCCESS", "consumed_credits": 25}
    assert server.tasks[task_id]["status"] == "IN_PROGRESS"


def test_success_without_urls_on_generate_still_creates_and_bills_the_task(server):
    server.add_fault(kind="success_without_urls", endpoint="generate")

    data = generate(server, ASYNC_IMAGE).json()["data"]

    assert (data["status"], data["response"]) == ("SUCCESS", {"resultUrls": []})
    assert server.submissions == 1
    assert server.tasks[data["task_id"]]["status"] == "IN_PROGRESS"


# ---------------------------------------------------------------------------- slow and big bodies


def read_pieces(server: FakeReveServer, task_id: str) -> tuple[bytes, list[bytes]]:
    """A raw HTTP/1.1 status request; returns the head and the body as the pieces recv() gave."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(
            f"GET /api/v1/status?task_id={task_id} HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {KEY}\r\nConnection: close\r\n\r\n".encode()
        )
        received, pieces = b"", []
        while b"\r\n\r\n" not in received:
            received += sock.recv(65536)
        head, first = received.split(b"\r\n\r\n", 1)
        if first:
            pieces.append(first)
        while piece := sock.recv(65536):
            pieces.append(piece)
    return head, pieces


def test_a_trickled_answer_arrives_a_few_bytes_at_a_time(server):
    task_id = generate(server, ASYNC_IMAGE).json()["data"]["task_id"]
    server.add_fault(kind="trickle", endpoint="status", chunk_size=8, delay=0.02)

    started = time.monotonic()
    head, pieces = read_pieces(server, task_id)
    elapsed = time.monotonic() - started

    body = b"".join(pieces)
    assert json.loads(body)["data"] == {"task_id": task_id, "status": "IN_PROGRESS"}
    assert f"Content-Length: {len(body)}".encode() in head
    assert len(pieces) > 1
    assert max(len(piece) for piece in pieces) < len(body)
    assert elapsed >= (len(body) // 8 - 1) * 0.02  # the server waited between every piece


def test_a_trickle_beats_a_read_timeout_but_not_a_total_deadline(server):
    task_id = generate(server, ASYNC_IMAGE).json()["data"]["task_id"]
    server.add_fault(kind="trickle", endpoint="status", chunk_size=2, delay=0.05, times=2)

    # About 55 pieces 0.05 s apart: requests' read timeout counts per read, so 1 s never passes...
    assert status(server, task_id, timeout=(5, 1)).json()["data"]["status"] == "IN_PROGRESS"

    async def read_with_a_deadline() -> None:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session,
            session.get(f"{server.url}/api/v1/status", params={"task_id": task_id}, headers=AUTH) as answer,
        ):
            await answer.read()

    with pytest.raises(asyncio.TimeoutError):  # ...while a deadline for the whole answer does
        asyncio.run(read_with_a_deadline())


def test_a_trickled_generate_answer_comes_after_the_task_was_created(server):
    server.add_fault(kind="trickle", endpoint="generate", chunk_size=64, delay=0.01)

    data = generate(server, SYNC_IMAGE).json()["data"]

    assert data["status"] == "SUCCESS"
    assert server.submissions == 1


def test_a_huge_gateway_page_announces_its_size_and_can_be_abandoned_early(server):
    server.add_fault(kind="huge", endpoint="status", size_mib=4)

    with requests.get(
        f"{server.url}/api/v1/status", params={"task_id": "x"}, headers=AUTH, stream=True, timeout=5
    ) as answer:
        assert answer.status_code == 503
        assert answer.headers["Content-Type"].startswith("text/html")
        assert int(answer.headers["Content-Length"]) == 4 * 1024 * 1024
        start = answer.raw.read(64 * 1024)
    assert start.startswith(b"<html>")
    assert status(server, "x").status_code == 404  # the server carries on


def test_a_huge_chunked_page_has_no_length_and_its_full_size(server):
    server.add_fault(kind="huge", endpoint="status", size_mib=2, variant="chunked")

    answer = status(server, "x")

    assert "Content-Length" not in answer.headers
    assert answer.headers["Transfer-Encoding"] == "chunked"
    assert len(answer.content) == 2 * 1024 * 1024
    assert answer.content.endswith(b"</body></html>\n")
    assert server.submissions == 0


def test_the_command_line_serves_https_writes_its_ca_and_turns_on_the_opt_in_behaviours(tmp_path):
    ca_file = tmp_path / "ca.pem"
    command = [sys.executable, "-m", "airflow_provider_reve.testing.fake_server", "--api-key", KEY]
    command += [
        "--tls",
        "--ca-file",
        str(ca_file),
        "--header-faults",
        "--rate-limit",
        "50",
        "--result-url-ttl",
        "9",
    ]
    with (tmp_path / "stderr.txt").open("w") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True)
        try:
            ready, _, _ = select.select([process.stdout], [], [], 30)
            assert ready, "the fake server printed nothing"
            url = process.stdout.readline().strip().removeprefix("Fake Reve API listening on ")  # type: ignore[union-attr]

            assert url.startswith("https://127.0.0.1:")
            limited = requests.post(
                f"{url}/api/v1/generate",
                json=SYNC_IMAGE,
                headers={**AUTH, "X-Fake-Fault": "error:RATE_LIMITED"},
                verify=str(ca_file),
                timeout=5,
            )
            assert limited.json()["message"] == "RATE_LIMITED"
            settings = requests.get(f"{url}/_fake/settings", verify=str(ca_file), timeout=5).json()
            assert (settings["rate_limit"], settings["result_url_ttl"], settings["header_faults"]) == (
                50,
                9,
                True,
            )
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=15) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()

"""The fake Reve API, tested over loopback HTTP with plain ``requests``."""

from __future__ import annotations

import json
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from airflow_provider_reve.client.catalog import estimate_credits
from airflow_provider_reve.testing import DEFAULT_API_KEY, FakeReveServer
from airflow_provider_reve.testing._media import mp4_bytes, png_bytes
from airflow_provider_reve.testing.fake_server import SETTING_DEFAULTS

KEY = "sk-test-alice"
OTHER_KEY = "sk-test-bob"
ASYNC_SECONDS = 0.2
VIDEO = {"model": "kling26-text-to-video", "prompt": "a horse", "duration": 5}  # 45 credits
IMAGE = {"model": "reve-2.0", "prompt": "a red fox"}  # 12 credits, synchronous
ASYNC_IMAGE = {"model": "seedream-5", "prompt": "a lighthouse"}  # 25 credits


@pytest.fixture
def server() -> Iterator[FakeReveServer]:
    with FakeReveServer(api_keys={KEY: 1000, OTHER_KEY: 1000}, async_seconds=ASYNC_SECONDS) as fake:
        yield fake


def _headers(key: str | None, extra: dict[str, str] | None) -> dict[str, str]:
    """Bearer auth for ``key`` (none without a key) plus any extra headers."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    headers.update(extra or {})
    return headers


def generate(
    server: FakeReveServer,
    body: Any,
    *,
    key: str | None = KEY,
    headers: dict[str, str] | None = None,
    **kw: Any,
) -> requests.Response:
    all_headers = _headers(key, headers)
    kw.setdefault("timeout", 5)
    if isinstance(body, (bytes, str)):
        return requests.post(f"{server.url}/api/v1/generate", data=body, headers=all_headers, **kw)
    return requests.post(f"{server.url}/api/v1/generate", json=body, headers=all_headers, **kw)


def status(
    server: FakeReveServer,
    task_id: str,
    *,
    key: str | None = KEY,
    headers: dict[str, str] | None = None,
    **kw: Any,
) -> requests.Response:
    all_headers = _headers(key, headers)
    kw.setdefault("timeout", 5)
    return requests.get(f"{server.url}/api/v1/status", params={"task_id": task_id}, headers=all_headers, **kw)


def poll_until_finished(
    server: FakeReveServer, task_id: str, *, key: str = KEY, deadline: float = 5.0
) -> dict:
    give_up = time.monotonic() + deadline
    while True:
        data = status(server, task_id, key=key).json()["data"]
        if data["status"] != "IN_PROGRESS":
            return data
        assert time.monotonic() < give_up, f"task {task_id} still IN_PROGRESS after {deadline} s"
        time.sleep(0.02)


def assert_error(response: requests.Response, http: int, code: str) -> None:
    assert response.status_code == http, response.text
    body = response.json()
    assert body["code"] == http
    assert body["message"] == code
    assert isinstance(body["detail"], str)
    assert body["detail"]
    assert "data" not in body


def decode_png(data: bytes) -> tuple[int, int, bytes]:
    """A small strict PNG reader (8-bit RGB, no interlace): returns width, height, raw scanlines."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, payload = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + payload) & 0xFFFFFFFF == crc, f"bad CRC in {kind!r}"
        chunks.append((kind, payload))
        pos += 12 + length
    assert pos == len(data)
    assert chunks[0][0] == b"IHDR"
    assert chunks[-1] == (b"IEND", b"")
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, colour, compression, filtering, interlace) == (8, 2, 0, 0, 0)
    raw = zlib.decompress(b"".join(payload for kind, payload in chunks if kind == b"IDAT"))
    assert len(raw) == height * (1 + 3 * width)
    return width, height, raw


def mp4_boxes(data: bytes) -> list[tuple[bytes, bytes]]:
    boxes, pos = [], 0
    while pos < len(data):
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        assert size >= 8
        assert pos + size <= len(data)
        boxes.append((kind, data[pos + 8 : pos + size]))
        pos += size
    return boxes


# ---------------------------------------------------------------------------- happy paths


def test_sync_model_answers_success_at_once_with_a_png_you_can_download_and_decode(server):
    response = generate(server, IMAGE)

    assert response.status_code == 200
    envelope = response.json()
    assert envelope["code"] == 200
    assert envelope["message"] == "success"
    data = envelope["data"]
    assert data["status"] == "SUCCESS"
    assert data["consumed_credits"] == 12
    [url] = data["response"]["resultUrls"]
    assert url.startswith(server.url + "/files/")
    assert url.endswith(".png")

    image = requests.get(url, timeout=5)  # no Authorization: result URLs are public
    assert image.status_code == 200
    assert image.headers["Content-Type"] == "image/png"
    width, height, raw = decode_png(image.content)
    assert (width, height) == (64, 64)
    assert raw[0] == 0  # filter byte of the first scanline
    assert server.balance(KEY) == 1000 - 12


def test_async_model_is_in_progress_until_async_seconds_have_passed_then_succeeds(server):
    created = time.monotonic()
    data = generate(server, ASYNC_IMAGE).json()["data"]
    assert data["status"] == "IN_PROGRESS"
    assert "consumed_credits" not in data
    assert "response" not in data
    assert server.balance(KEY) == 1000 - 25  # charged at creation

    done = poll_until_finished(server, data["task_id"])

    assert time.monotonic() - created >= ASYNC_SECONDS
    assert done["status"] == "SUCCESS"
    assert done["consumed_credits"] == 25
    assert len(done["response"]["resultUrls"]) == 1
    assert server.stats()["tasks_by_status"] == {"IN_PROGRESS": 0, "SUCCESS": 1, "FAILED": 0}


def test_async_seconds_can_be_changed_while_tasks_are_running(server):
    server.set_async_seconds(60)
    task_id = generate(server, ASYNC_IMAGE).json()["data"]["task_id"]
    assert status(server, task_id).json()["data"]["status"] == "IN_PROGRESS"

    server.set_async_seconds(0)

    assert status(server, task_id).json()["data"]["status"] == "SUCCESS"


def test_num_images_gives_one_downloadable_url_per_image_with_prompt_dependent_pixels(server):
    data = generate(server, {**IMAGE, "num_images": 3}).json()["data"]

    urls = data["response"]["resultUrls"]
    assert len(urls) == 3
    assert data["consumed_credits"] == 36
    pictures = [requests.get(url, timeout=5).content for url in urls]
    assert len(set(pictures)) == 3
    assert png_bytes("a red fox", 0) == pictures[0]
    assert png_bytes("a red fox", 0) != png_bytes("a blue fox", 0)


def test_video_task_serves_one_mp4_with_a_valid_container_header(server):
    data = generate(server, VIDEO).json()["data"]
    done = poll_until_finished(server, data["task_id"])

    [url] = done["response"]["resultUrls"]
    assert url.endswith(".mp4")
    assert done["consumed_credits"] == 45
    video = requests.get(url, timeout=5)
    assert video.headers["Content-Type"] == "video/mp4"
    boxes = mp4_boxes(video.content)
    assert [kind for kind, _ in boxes] == [b"ftyp", b"moov", b"free"]
    assert boxes[0][1][:4] == b"isom"
    [(kind, mvhd)] = mp4_boxes(boxes[1][1])
    assert kind == b"mvhd"
    timescale, duration = struct.unpack(">II", mvhd[12:20])
    assert duration / timescale == 5


def test_result_files_of_unfinished_or_unknown_tasks_are_not_found(server):
    server.set_async_seconds(60)
    task_id = generate(server, VIDEO).json()["data"]["task_id"]

    assert requests.get(f"{server.url}/files/{task_id}/0.mp4", timeout=5).status_code == 404
    assert requests.get(f"{server.url}/files/nope/0.png", timeout=5).status_code == 404


def test_the_providers_own_envelope_parser_reads_the_fake_answers(server):
    from airflow_provider_reve.client.envelope import parse_task_response
    from airflow_provider_reve.exceptions import GENERATE_ENDPOINT, ReveAuthenticationError

    response = generate(server, IMAGE)
    task = parse_task_response(GENERATE_ENDPOINT, response.status_code, response.content)
    assert task.succeeded
    assert task.consumed_credits == 12
    assert len(task.result_urls) == 1

    refused = generate(server, IMAGE, key="sk-wrong")
    with pytest.raises(ReveAuthenticationError):
        parse_task_response(GENERATE_ENDPOINT, refused.status_code, refused.content)


# ---------------------------------------------------------------------------- errors


def test_missing_or_unknown_api_key_answers_401_on_both_endpoints(server):
    task_id = generate(server, IMAGE).json()["data"]["task_id"]

    assert_error(generate(server, IMAGE, key=None), 401, "INVALID_API_KEY")
    assert_error(generate(server, IMAGE, key="sk-unknown"), 401, "INVALID_API_KEY")
    assert_error(generate(server, IMAGE, headers={"Authorization": KEY}), 401, "INVALID_API_KEY")
    assert_error(status(server, task_id, key=None), 401, "INVALID_API_KEY")
    assert_error(status(server, task_id, key="sk-unknown"), 401, "INVALID_API_KEY")
    assert server.submissions == 1


def test_status_of_another_keys_task_or_of_an_unknown_id_is_task_not_found(server):
    task_id = generate(server, IMAGE, key=KEY).json()["data"]["task_id"]

    assert_error(status(server, task_id, key=OTHER_KEY), 404, "TASK_NOT_FOUND")
    assert_error(status(server, "no-such-task"), 404, "TASK_NOT_FOUND")
    assert status(server, task_id, key=KEY).status_code == 200


@pytest.mark.parametrize(
    ("body", "code"),
    [
        pytest.param(b"{not json", "INVALID_PARAMETER", id="invalid-json"),
        pytest.param([1, 2], "INVALID_PARAMETER", id="not-an-object"),
        pytest.param({"prompt": "x"}, "INVALID_MODEL", id="no-model"),
        pytest.param({"model": "dall-e-9", "prompt": "x"}, "INVALID_MODEL", id="unknown-model"),
        pytest.param({"model": "reve-2.0"}, "INVALID_PROMPT", id="no-prompt"),
        pytest.param({"model": "reve-2.0", "prompt": "  "}, "INVALID_PROMPT", id="blank-prompt"),
        pytest.param({**IMAGE, "aspect_ratio": "5:1"}, "INVALID_PARAMETER", id="bad-aspect-ratio"),
    ],
)
def test_invalid_requests_are_rejected_with_their_code_and_create_nothing(server, body, code):
    assert_error(generate(server, body), 400, code)
    assert server.submissions == 0
    assert server.balance(KEY) == 1000


def test_a_model_that_needs_no_prompt_is_accepted_without_one(server):
    motion = {"model": "kling26-motion-control-720p", "video_urls": ["https://videos.example/dance.mp4"]}

    response = generate(server, motion)

    assert response.status_code == 200
    assert server.balance(KEY) == 1000 - 200


def test_a_video_without_duration_is_charged_the_documented_minimum_not_a_made_up_price(server):
    assert estimate_credits("kling3-pro-text-to-video", prompt="x") is None  # the provider cannot know

    generate(server, {"model": "kling3-pro-text-to-video", "prompt": "x"})

    assert server.ledger[0]["delta"] == -48 * 3  # 48/s, 3 s at least


def test_insufficient_credits_answers_402_and_creates_nothing(server):
    server.add_key("sk-poor", 44)

    assert_error(generate(server, VIDEO, key="sk-poor"), 402, "INSUFFICIENT_CREDITS")
    assert server.submissions == 0
    assert server.balance("sk-poor") == 44
    assert generate(server, IMAGE, key="sk-poor").status_code == 200
    assert server.balance("sk-poor") == 32


def test_failed_task_is_refunded_and_the_ledger_matches_the_reported_credits(server):
    succeeded = generate(server, ASYNC_IMAGE).json()["data"]["task_id"]
    failing = generate(server, VIDEO).json()["data"]["task_id"]
    assert server.balance(KEY) == 1000 - 25 - 45

    server.fail_task(failing, code="CONTENT_POLICY_VIOLATION", message="nope")
    failed = poll_until_finished(server, failing)
    done = poll_until_finished(server, succeeded)

    assert failed["status"] == "FAILED"
    assert failed["error"] == {"code": "CONTENT_POLICY_VIOLATION", "message": "nope"}
    assert "consumed_credits" not in failed
    assert sum(entry["delta"] for entry in server.ledger) == -done["consumed_credits"]
    assert server.balance(KEY) == 1000 - done["consumed_credits"]
    assert [(e["task_id"], e["delta"], e["reason"]) for e in server.ledger] == [
        (succeeded, -25, "charge"),
        (failing, -45, "charge"),
        (failing, 45, "refund"),
    ]


def test_too_many_tasks_in_flight_answers_429_without_creating_or_charging(server):
    server.set_max_in_flight(2)
    server.set_async_seconds(60)
    first = generate(server, ASYNC_IMAGE).json()["data"]["task_id"]
    generate(server, ASYNC_IMAGE)

    assert_error(generate(server, ASYNC_IMAGE), 429, "TOO_MANY_TASKS")
    assert server.submissions == 2
    assert server.balance(KEY) == 1000 - 50
    assert generate(server, ASYNC_IMAGE, key=OTHER_KEY).status_code == 200  # the limit is per key

    server.finish_task(first)
    assert generate(server, ASYNC_IMAGE).status_code == 200


# ---------------------------------------------------------------------------- manual control


def test_finish_and_fail_task_end_running_tasks_by_hand(server):
    server.set_async_seconds(60)
    to_finish = generate(server, VIDEO).json()["data"]["task_id"]
    to_fail = generate(server, VIDEO).json()["data"]["task_id"]

    server.finish_task(to_finish)
    server.fail_task(to_fail)

    assert status(server, to_finish).json()["data"]["status"] == "SUCCESS"
    assert status(server, to_fail).json()["data"]["error"]["code"] == "GENERATION_FAILED"
    with pytest.raises(ValueError):
        server.finish_task(to_fail)
    with pytest.raises(ValueError):
        server.fail_task(to_finish)
    with pytest.raises(KeyError):
        server.finish_task("unknown")


def test_reset_forgets_tasks_counters_and_faults_and_restores_balances_and_settings(server):
    server.add_key("sk-extra", 5)
    server.set_async_seconds(60)
    generate(server, IMAGE)
    server.add_fault(kind="drop_before")

    server.reset()

    assert server.stats() == {
        "requests": {"total": 0, "generate": 0, "status": 0, "files": 0},
        "submissions": 0,
        "connections": 0,
        "tasks_by_status": {"IN_PROGRESS": 0, "SUCCESS": 0, "FAILED": 0},
        "ledger": [],
        "balances": {KEY: 1000, OTHER_KEY: 1000, "sk-extra": 5},
        "faults": [],
        "settings": {**SETTING_DEFAULTS, "async_seconds": ASYNC_SECONDS},
    }


def test_connections_counts_distinct_tcp_connections(server):
    with requests.Session() as session:
        session.headers["Authorization"] = f"Bearer {KEY}"
        task_id = session.post(f"{server.url}/api/v1/generate", json=IMAGE, timeout=5).json()["data"][
            "task_id"
        ]
        for _ in range(3):
            session.get(f"{server.url}/api/v1/status", params={"task_id": task_id}, timeout=5)
    assert server.connections == 1
    assert server.requests_to("generate") == 1
    assert server.requests_to("status") == 3

    status(server, task_id)  # a new connection without a session
    assert server.connections == 2


def test_concurrent_submissions_are_all_counted_and_charged_once(server):
    threads = [threading.Thread(target=generate, args=(server, IMAGE)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    stats = server.stats()
    assert stats["submissions"] == 8
    assert stats["balances"][KEY] == 1000 - 8 * 12
    assert len({entry["task_id"] for entry in stats["ledger"]}) == 8


def test_server_lifecycle_start_stop_and_context_manager():
    fake = FakeReveServer()
    with pytest.raises(RuntimeError):
        _ = fake.url
    fake.start()
    try:
        with pytest.raises(RuntimeError):
            fake.start()
        url = fake.url
        assert url.startswith("http://127.0.0.1:")
        assert generate(fake, IMAGE, key=DEFAULT_API_KEY).status_code == 200
        assert fake.balance() == 1_000_000 - 12
    finally:
        fake.stop()
    fake.stop()  # twice is fine
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/_fake/stats", timeout=2)


# ---------------------------------------------------------------------------- control API


def test_control_api_steers_the_server_over_http(server):
    control = f"{server.url}/_fake"

    assert requests.post(f"{control}/keys", json={"key": "sk-http", "credits": 30}, timeout=5).json() == {
        "credits": 30
    }
    assert requests.post(f"{control}/settings", json={"async_seconds": 60, "max_in_flight": 5}, timeout=5).ok
    added = requests.post(
        f"{control}/faults", json={"kind": "error", "code": "RATE_LIMITED", "retry_after": 2}, timeout=5
    )
    assert added.json()["added"]["code"] == "RATE_LIMITED"
    assert requests.get(f"{control}/faults", timeout=5).json()["faults"][0]["kind"] == "error"
    assert generate(server, ASYNC_IMAGE, key="sk-http").headers["Retry-After"] == "2"
    to_finish = generate(server, ASYNC_IMAGE, key="sk-http").json()["data"]["task_id"]
    assert_error(generate(server, ASYNC_IMAGE, key="sk-http"), 402, "INSUFFICIENT_CREDITS")
    requests.post(f"{control}/faults", json={"kind": "drop_before"}, timeout=5)
    assert requests.delete(f"{control}/faults", timeout=5).json() == {"cleared": 1}

    finished = requests.post(f"{control}/tasks/{to_finish}/finish", timeout=5)
    assert finished.json()["status"] == "SUCCESS"
    failed = requests.post(f"{control}/tasks/{to_finish}/fail", json={"code": "TIMEOUT"}, timeout=5)
    assert failed.status_code == 409
    assert requests.post(f"{control}/tasks/unknown/finish", timeout=5).status_code == 404

    stats = requests.get(f"{control}/stats", timeout=5).json()
    assert stats["submissions"] == 1
    assert stats["balances"]["sk-http"] == 5
    assert (stats["settings"]["async_seconds"], stats["settings"]["max_in_flight"]) == (60, 5)
    assert stats["requests"]["generate"] == 3
    assert requests.get(f"{control}/tasks", timeout=5).json()[to_finish]["model"] == "seedream-5"

    assert requests.post(f"{control}/reset", timeout=5).json() == {"reset": True}
    assert server.submissions == 0
    assert server.balance("sk-http") == 30


def test_control_api_fails_a_task_and_rejects_bad_input(server):
    server.set_async_seconds(60)
    task_id = generate(server, VIDEO).json()["data"]["task_id"]
    control = f"{server.url}/_fake"

    failed = requests.post(
        f"{control}/tasks/{task_id}/fail", json={"code": "TIMEOUT", "message": "late"}, timeout=5
    )

    assert failed.json()["error"] == {"code": "TIMEOUT", "message": "late"}
    assert server.balance(KEY) == 1000
    assert requests.post(f"{control}/faults", json={"kind": "nope"}, timeout=5).status_code == 400
    assert requests.post(f"{control}/faults", data=b"[", timeout=5).status_code == 400
    assert requests.post(f"{control}/settings", json={"async_seconds": -1}, timeout=5).status_code == 400
    assert requests.post(f"{control}/settings", json={"speed": 2}, timeout=5).status_code == 400
    assert requests.post(f"{control}/keys", json={"key": "", "credits": 1}, timeout=5).status_code == 400
    assert server.stats()["requests"]["total"] == 1  # control calls are not counted


# ---------------------------------------------------------------------------- command line


def read_line(stream: Any, deadline: float) -> str:
    ready, _, _ = select.select([stream], [], [], deadline)
    assert ready, "the fake server printed nothing"
    return stream.readline()


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_cli_prints_the_url_serves_and_exits_cleanly_on_a_signal(tmp_path: Path, stop_signal):
    url_file = tmp_path / "url.txt"
    command = [sys.executable, "-m", "airflow_provider_reve.testing.fake_server"]
    command += ["--api-key", "sk-cli-1", "--api-key", "sk-cli-2", "--credits", "20"]
    command += ["--async-seconds", "0.1", "--max-in-flight", "1", "--url-file", str(url_file)]
    stderr = (tmp_path / "stderr.txt").open("w")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        line = read_line(process.stdout, 30)
        prefix = "Fake Reve API listening on http://127.0.0.1:"
        assert line.startswith(prefix)
        url = line.strip().removeprefix("Fake Reve API listening on ")
        assert url_file.read_text().strip() == url
        fake = _RemoteServer(url)

        assert generate(fake, IMAGE, key="sk-cli-2").status_code == 200
        assert_error(generate(fake, IMAGE, key="sk-cli-2"), 402, "INSUFFICIENT_CREDITS")
        assert_error(generate(fake, IMAGE, key=DEFAULT_API_KEY), 401, "INVALID_API_KEY")
        settings = requests.get(f"{url}/_fake/stats", timeout=5).json()["settings"]
        assert (settings["async_seconds"], settings["max_in_flight"]) == (0.1, 1)

        process.send_signal(stop_signal)
        assert process.wait(timeout=15) == 0
        rest = process.stdout.read() if process.stdout else ""
        assert rest == ""  # exactly one line
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        stderr.close()


class _RemoteServer:
    """Just enough of FakeReveServer for the request helpers."""

    def __init__(self, url: str) -> None:
        self.url = url


# ---------------------------------------------------------------------------- pytest plugin and media


def test_plugin_fixtures_point_the_reve_default_connection_at_a_running_fake(
    reve_connection_env, fake_reve_server
):
    assert reve_connection_env == "reve_default"
    connection = json.loads(os.environ["AIRFLOW_CONN_REVE_DEFAULT"])

    assert connection == {"conn_type": "reve", "host": fake_reve_server.url, "password": DEFAULT_API_KEY}
    response = generate(fake_reve_server, IMAGE, key=connection["password"])
    assert response.json()["data"]["status"] == "SUCCESS"


def test_media_bytes_are_deterministic_and_well_formed():
    assert png_bytes("x", 1) == png_bytes("x", 1)
    assert decode_png(png_bytes("x", 1, size=3))[:2] == (3, 3)
    assert [kind for kind, _ in mp4_boxes(mp4_bytes("x", 2.5))] == [b"ftyp", b"moov", b"free"]


def test_session_fixture_is_a_running_server_shared_by_the_session(session_fake_reve_server):
    assert session_fake_reve_server.url.startswith("http://127.0.0.1:")
    assert requests.get(f"{session_fake_reve_server.url}/_fake/stats", timeout=5).ok

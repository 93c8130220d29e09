"""The fake Reve API answers as the contract says, not as our own code would like: it refuses what
the API refuses, authenticates first, throttles and expires when asked, and keeps its test-only
levers (fault headers, the control API) out of reach of ordinary clients."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from airflow_provider_reve.testing import FakeReveServer, Fault

KEY = "sk-contract"
AUTH = {"Authorization": f"Bearer {KEY}"}
IMAGE_URL = "https://images.example/reference.png"


@pytest.fixture
def server() -> Iterator[FakeReveServer]:
    with FakeReveServer(api_keys={KEY: 100_000}, async_seconds=0.2) as fake:
        yield fake


def generate(server: FakeReveServer, body: Any, headers: dict[str, str] | None = None) -> requests.Response:
    sent = {**AUTH, **(headers or {})}
    if isinstance(body, bytes):
        return requests.post(f"{server.url}/api/v1/generate", data=body, headers=sent, timeout=5)
    return requests.post(f"{server.url}/api/v1/generate", json=body, headers=sent, timeout=5)


def status(server: FakeReveServer, task_id: str, headers: dict[str, str] | None = None) -> requests.Response:
    return requests.get(
        f"{server.url}/api/v1/status",
        params={"task_id": task_id},
        headers={**AUTH, **(headers or {})},
        timeout=5,
    )


def assert_refused(response: requests.Response, http: int, message: str) -> dict:
    assert response.status_code == http, response.text
    body = response.json()
    assert (body["code"], body["message"]) == (http, message)
    assert body["detail"]
    return body


# ------------------------------------------------------------------------ what the API refuses


TEXT_TO_VIDEO = {"model": "kling26-text-to-video", "prompt": "x"}
REVE = {"model": "reve-2.0", "prompt": "x"}


@pytest.mark.parametrize(
    ("refused", "accepted"),
    [
        pytest.param(
            {"model": "kling26-image-to-video", "prompt": "x"},
            {"model": "kling26-image-to-video", "prompt": "x", "image_urls": [IMAGE_URL]},
            id="image-to-video without image_urls",
        ),
        pytest.param(
            {"model": "kling26-motion-control-720p"},
            {"model": "kling26-motion-control-720p", "video_urls": ["https://videos.example/dance.mp4"]},
            id="motion control without its input video",
        ),
        pytest.param(
            {**REVE, "image_urls": ["/home/me/cat.png"]},
            {**REVE, "image_urls": [IMAGE_URL]},
            id="a bare path",
        ),
        pytest.param(
            {**REVE, "image_urls": ["file:///etc/passwd"]},
            {**REVE, "image_urls": [IMAGE_URL]},
            id="a file URL",
        ),
        pytest.param({**REVE, "num_images": 200}, {**REVE, "num_images": 4}, id="num_images 200"),
        pytest.param(
            {"model": "seedream-5", "prompt": "x", "test_time_scaling": 3},
            {**REVE, "test_time_scaling": 3},
            id="a reve field on seedream",
        ),
        pytest.param(
            {**REVE, "duration": 5}, {**TEXT_TO_VIDEO, "duration": 5}, id="a video field on an image"
        ),
        pytest.param(
            {**TEXT_TO_VIDEO, "num_images": 2}, {**REVE, "num_images": 2}, id="an image field on video"
        ),
        pytest.param(
            {**TEXT_TO_VIDEO, "image_urls": [IMAGE_URL]},
            {"model": "kling26-image-to-video", "prompt": "x", "image_urls": [IMAGE_URL]},
            id="a source image on a text-to-video id",
        ),
        pytest.param({**TEXT_TO_VIDEO, "duration": -4}, {**TEXT_TO_VIDEO, "duration": 5}, id="duration -4"),
        pytest.param(
            {**TEXT_TO_VIDEO, "aspect_ratio": "banana"},
            {**TEXT_TO_VIDEO, "aspect_ratio": "21:9"},
            id="ratio banana",
        ),
        pytest.param(
            {**TEXT_TO_VIDEO, "generate_audio": "yes"},
            {**TEXT_TO_VIDEO, "generate_audio": True},
            id="audio 'yes'",
        ),
        pytest.param(
            {**REVE, "output_format": "gif"}, {**REVE, "seed": 7}, id="a bad format; an unknown field"
        ),
    ],
)
def test_a_request_the_documentation_rules_out_is_refused_and_costs_nothing(server, refused, accepted):
    assert_refused(generate(server, refused), 400, "INVALID_PARAMETER")
    assert server.submissions == 0
    assert server.ledger == []

    assert generate(server, accepted).status_code == 200
    assert server.submissions == 1


def test_a_bad_key_is_refused_before_the_body_is_read(server):
    assert_refused(
        requests.post(
            f"{server.url}/api/v1/generate",
            data=b"{not json",
            headers={"Authorization": "Bearer sk-wrong"},
            timeout=5,
        ),
        401,
        "INVALID_API_KEY",
    )
    assert_refused(
        requests.post(f"{server.url}/api/v1/generate", json={"model": "nope"}, timeout=5),
        401,
        "INVALID_API_KEY",
    )
    assert_refused(generate(server, b"{not json"), 400, "INVALID_PARAMETER")


@pytest.mark.parametrize(
    ("method", "path", "http", "message"),
    [
        ("GET", "/api/v2/generate", 404, "NOT_FOUND"),
        ("GET", "/", 404, "NOT_FOUND"),
        ("GET", "/api/v1/generate", 405, "METHOD_NOT_ALLOWED"),
        ("DELETE", "/api/v1/status", 405, "METHOD_NOT_ALLOWED"),
    ],
)
def test_an_unknown_path_or_method_answers_in_the_api_envelope_not_in_plain_text(
    server, method, path, http, message
):
    response = requests.request(method, f"{server.url}{path}", headers=AUTH, timeout=5)

    assert response.headers["Content-Type"].startswith("application/json")
    assert_refused(response, http, message)


def test_an_injected_error_code_outside_the_reference_is_refused_unless_its_status_is_given(server):
    with pytest.raises(ValueError, match="not in the API reference"):
        server.add_fault(kind="error", code="BOGUS")
    refused = requests.post(f"{server.url}/_fake/faults", json={"kind": "error", "code": "BOGUS"}, timeout=5)
    assert refused.status_code == 400

    server.add_fault(kind="error", code="BAD_GATEWAY", status=502)  # a gateway's own JSON, on purpose
    assert_refused(generate(server, {"model": "reve-2.0", "prompt": "x"}), 502, "BAD_GATEWAY")


# ------------------------------------------------------------------------ test-only levers


def test_the_fault_header_is_ignored_unless_the_server_enables_header_faults(server):
    image = {"model": "reve-2.0", "prompt": "x"}

    assert generate(server, image, headers={"X-Fake-Fault": "error:RATE_LIMITED"}).status_code == 200
    server.configure(header_faults=True)
    assert_refused(
        generate(server, image, headers={"X-Fake-Fault": "error:RATE_LIMITED"}), 429, "RATE_LIMITED"
    )
    assert server.submissions == 1


def test_the_header_faults_setting_also_comes_from_the_constructor():
    with FakeReveServer(api_keys={KEY: 100}, header_faults=True) as fake:
        answer = generate(fake, {"model": "reve-2.0", "prompt": "x"}, headers={"X-Fake-Fault": "html:502"})
    assert answer.status_code == 502
    assert answer.text.startswith("<html>")


def non_loopback_address() -> str:
    """An address of this machine that is not loopback (no packet is sent to find it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))
        address = probe.getsockname()[0]
    assert not address.startswith("127."), "this machine has no non-loopback IPv4 address"
    return address


def test_the_control_api_refuses_clients_that_are_not_on_loopback():
    with FakeReveServer("0.0.0.0", api_keys={KEY: 100}) as fake:
        outside = f"http://{non_loopback_address()}:{fake.port}"

        refused = requests.post(f"{outside}/_fake/keys", json={"key": "sk-mine", "credits": 10**9}, timeout=5)
        unknown = requests.get(f"{outside}/_fake/anything", timeout=5)
        api = requests.post(f"{outside}/api/v1/generate", json=REVE, headers=AUTH, timeout=5)

        assert refused.status_code == 403
        assert refused.json() == {"error": "the control API answers loopback clients only"}
        assert unknown.status_code == 403
        assert api.status_code == 200  # the API itself is served to everyone the server listens for
        with pytest.raises(KeyError):
            fake.balance("sk-mine")
        assert requests.get(f"{fake.url}/_fake/stats", timeout=5).ok


def test_result_urls_point_at_the_listening_address_whatever_host_the_client_names(server):
    answer = generate(server, {"model": "reve-2.0", "prompt": "x"}, headers={"Host": "evil.example:666"})

    [url] = answer.json()["data"]["response"]["resultUrls"]
    assert url.startswith(f"{server.url}/files/")
    assert "evil" not in url
    assert requests.get(url, timeout=5).status_code == 200


def test_a_public_url_replaces_the_listening_address_in_result_urls():
    with FakeReveServer(api_keys={KEY: 100}, public_url="http://fake-reve.internal:8765/") as fake:
        [url] = generate(fake, {"model": "reve-2.0", "prompt": "x"}).json()["data"]["response"]["resultUrls"]
    assert url.startswith("http://fake-reve.internal:8765/files/")


# ------------------------------------------------------------------------ behaviours to opt into


def test_the_in_progress_fault_makes_the_synchronous_model_poll_like_the_others(server):
    server.set_async_seconds(60)
    server.add_fault(kind="in_progress", model="reve-2.0")

    created = generate(server, {"model": "reve-2.0", "prompt": "x"}).json()["data"]
    assert created == {"task_id": created["task_id"], "status": "IN_PROGRESS"}
    assert status(server, created["task_id"]).json()["data"]["status"] == "IN_PROGRESS"
    server.finish_task(created["task_id"])
    done = status(server, created["task_id"]).json()["data"]

    assert done["status"] == "SUCCESS"
    assert done["consumed_credits"] == 12
    assert generate(server, {"model": "reve-2.0", "prompt": "x"}).json()["data"]["status"] == "SUCCESS"


def test_the_rate_limit_answers_429_with_the_seconds_until_a_slot_frees(server):
    for _ in range(20):  # no limit unless asked
        assert status(server, "nothing").status_code == 404
    server.configure(rate_limit=2, rate_window=60)
    image = {"model": "reve-2.0", "prompt": "x"}
    task_id = generate(server, image).json()["data"]["task_id"]
    assert status(server, task_id).status_code == 200

    limited = generate(server, image)

    assert_refused(limited, 429, "RATE_LIMITED")
    assert 58 <= int(limited.headers["Retry-After"]) <= 60
    assert_refused(status(server, task_id), 429, "RATE_LIMITED")
    assert server.submissions == 1
    assert (
        requests.post(f"{server.url}/api/v1/generate", json=image, timeout=5).status_code == 401
    )  # key first


def test_the_rate_limit_is_per_key_and_its_retry_after_can_be_set(server):
    server.add_key("sk-other", 100)
    server.configure(rate_limit=1, rate_window=60, rate_limit_retry_after="soon")
    image = {"model": "reve-2.0", "prompt": "x"}
    assert generate(server, image).status_code == 200

    limited = generate(server, image)
    other = requests.post(
        f"{server.url}/api/v1/generate", json=image, headers={"Authorization": "Bearer sk-other"}, timeout=5
    )

    assert limited.headers["Retry-After"] == "soon"
    assert other.status_code == 200


def test_a_rate_limited_client_gets_through_once_the_window_has_passed(server):
    server.configure(rate_limit=1, rate_window=0.3)
    assert status(server, "nothing").status_code == 404
    assert status(server, "nothing").status_code == 429

    give_up = time.monotonic() + 5
    while (answer := status(server, "nothing")).status_code == 429:
        assert time.monotonic() < give_up, "still rate limited long after the window"
        time.sleep(0.05)
    assert answer.status_code == 404


def test_result_urls_work_forever_unless_a_lifetime_is_set(server):
    [url] = generate(server, {"model": "reve-2.0", "prompt": "x"}).json()["data"]["response"]["resultUrls"]
    server.configure(result_url_ttl=0.2)

    give_up = time.monotonic() + 5
    while (late := requests.get(url, timeout=5)).status_code == 200:
        assert time.monotonic() < give_up, "the result URL never expired"
        time.sleep(0.05)

    assert late.status_code == 403
    assert "expired" in late.text
    assert status(server, url.split("/")[-2]).json()["data"]["response"]["resultUrls"] == [url]
    server.configure(result_url_ttl=None)
    assert requests.get(url, timeout=5).status_code == 200


def test_the_control_api_reads_and_changes_every_setting(server):
    control = f"{server.url}/_fake/settings"

    changed = requests.post(
        control,
        json={"rate_limit": 5, "rate_window": 2, "result_url_ttl": 30, "header_faults": True},
        timeout=5,
    ).json()

    assert changed == requests.get(control, timeout=5).json() == server.settings
    assert (changed["rate_limit"], changed["rate_window"], changed["result_url_ttl"]) == (5, 2, 30)
    assert requests.post(control, json={"rate_limit": 0}, timeout=5).status_code == 400
    assert requests.post(control, json={"header_faults": "yes"}, timeout=5).status_code == 400
    server.reset()
    assert server.settings["rate_limit"] is None


def test_fault_rules_added_over_http_take_the_new_fields(server):
    added = requests.post(
        f"{server.url}/_fake/faults",
        json={"kind": "success_without_urls", "endpoint": "status", "variant": "missing"},
        timeout=5,
    )

    assert (
        added.json()["added"]
        == Fault(kind="success_without_urls", endpoint="status", variant="missing").to_dict()
    )
    bad = requests.post(f"{server.url}/_fake/faults", json={"kind": "huge", "variant": "tiny"}, timeout=5)
    assert bad.status_code == 400

"""The fake Reve API's classic fault rules (errors, drops, slow, proxy pages, garbled answers,
failed tasks), tested over loopback HTTP with plain ``requests``; the request helpers and sample
requests are those of ``test_fake_server``."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import requests
from test_fake_server import (
    ASYNC_IMAGE,
    ASYNC_SECONDS,
    IMAGE,
    KEY,
    OTHER_KEY,
    VIDEO,
    assert_error,
    generate,
    poll_until_finished,
    status,
)

from airflow_provider_reve.testing import FakeReveServer, Fault


@pytest.fixture
def server() -> Iterator[FakeReveServer]:
    with FakeReveServer(api_keys={KEY: 1000, OTHER_KEY: 1000}, async_seconds=ASYNC_SECONDS) as fake:
        yield fake


@pytest.mark.parametrize(
    ("code", "http"),
    [("RATE_LIMITED", 429), ("SERVICE_UNAVAILABLE", 503), ("GENERATION_FAILED", 500), ("TIMEOUT", 504)],
)
def test_error_fault_answers_its_code_with_the_documented_status_and_creates_nothing(server, code, http):
    server.add_fault(kind="error", endpoint="generate", code=code)

    assert_error(generate(server, IMAGE), http, code)
    assert server.submissions == 0
    assert generate(server, IMAGE).status_code == 200  # times=1: used up


def test_error_fault_sends_retry_after_and_may_override_the_status(server):
    server.add_fault(Fault(kind="error", code="RATE_LIMITED", retry_after=3, detail="calm down"))
    server.add_fault(Fault(kind="error", code="SERVICE_UNAVAILABLE", status=502))

    limited = generate(server, IMAGE)
    assert_error(limited, 429, "RATE_LIMITED")
    assert limited.headers["Retry-After"] == "3"
    assert limited.json()["detail"] == "calm down"
    assert_error(generate(server, IMAGE), 502, "SERVICE_UNAVAILABLE")


def test_drop_before_closes_the_connection_without_creating_anything(server):
    server.add_fault(kind="drop_before", endpoint="generate")

    with pytest.raises(requests.ConnectionError):
        generate(server, IMAGE)
    assert server.submissions == 0
    assert server.requests_to("generate") == 1
    assert server.balance(KEY) == 1000


def test_drop_after_closes_the_connection_after_a_task_was_created_and_charged(server):
    server.add_fault(kind="drop_after", endpoint="generate")

    with pytest.raises(requests.ConnectionError):
        generate(server, IMAGE)
    assert server.submissions == 1
    assert server.balance(KEY) == 1000 - 12
    [task] = server.tasks.values()
    assert task["status"] == "SUCCESS"
    assert task["key"] == KEY


def test_drop_before_on_status_drops_a_poll(server):
    task_id = generate(server, IMAGE).json()["data"]["task_id"]
    server.add_fault(kind="drop_before", endpoint="status")

    with pytest.raises(requests.ConnectionError):
        status(server, task_id)
    assert status(server, task_id).status_code == 200


def test_slow_generate_creates_the_task_before_the_client_read_timeout(server):
    server.add_fault(kind="slow", endpoint="generate", delay=0.5)

    with pytest.raises(requests.ReadTimeout):
        generate(server, IMAGE, timeout=0.15)
    assert server.submissions == 1


def test_slow_status_answers_normally_after_the_delay(server):
    task_id = generate(server, IMAGE).json()["data"]["task_id"]
    server.add_fault(kind="slow", endpoint="status", delay=0.2)

    started = time.monotonic()
    response = status(server, task_id)

    assert time.monotonic() - started >= 0.2
    assert response.json()["data"]["status"] == "SUCCESS"


def test_html_fault_answers_a_proxy_error_page_and_creates_nothing(server):
    server.add_fault(kind="html", endpoint="generate")
    server.add_fault(kind="html", endpoint="generate", status=504, retry_after=1)

    first = generate(server, IMAGE)
    second = generate(server, IMAGE)

    assert first.status_code == 502
    assert first.headers["Content-Type"].startswith("text/html")
    assert first.text.lstrip().startswith("<html>")
    assert second.status_code == 504
    assert second.headers["Retry-After"] == "1"
    assert server.submissions == 0


def test_garbled_generate_answers_truncated_json_after_creating_the_task(server):
    server.add_fault(kind="garbled", endpoint="generate")

    response = generate(server, IMAGE)

    assert response.status_code == 200
    with pytest.raises(ValueError):
        json.loads(response.text)
    assert response.text.startswith('{"code": 200')
    assert server.submissions == 1


def test_garbled_status_answers_truncated_json(server):
    task_id = generate(server, IMAGE).json()["data"]["task_id"]
    server.add_fault(kind="garbled", endpoint="status")

    with pytest.raises(ValueError):
        json.loads(status(server, task_id).text)


def test_missing_data_answers_a_success_envelope_without_data(server):
    server.add_fault(kind="missing_data", endpoint="any", times=2)

    created = generate(server, IMAGE)
    assert created.json() == {"code": 200, "message": "success"}
    assert server.submissions == 1
    [task_id] = server.tasks
    assert status(server, task_id).json() == {"code": 200, "message": "success"}
    assert "data" in status(server, task_id).json()


def test_unknown_status_fault_answers_a_status_the_reference_does_not_list(server):
    task_id = generate(server, IMAGE).json()["data"]["task_id"]
    server.add_fault(kind="unknown_status")
    server.add_fault(kind="unknown_status", code="QUEUED")

    assert status(server, task_id).json()["data"] == {**status_data(server, task_id), "status": "WEIRD_STATE"}
    assert status(server, task_id).json()["data"]["status"] == "QUEUED"
    assert status(server, task_id).json()["data"]["status"] == "SUCCESS"


def status_data(server: FakeReveServer, task_id: str) -> dict:
    task = server.tasks[task_id]
    return {
        "task_id": task_id,
        "status": task["status"],
        "consumed_credits": task["consumed_credits"],
        "response": {"resultUrls": task["result_urls"]},
    }


def test_fail_task_fault_fails_an_async_task_when_it_would_complete_and_refunds_it(server):
    server.add_fault(kind="fail_task", code="GENERATION_FAILED", detail="the GPU caught fire")

    data = generate(server, VIDEO).json()["data"]
    assert data["status"] == "IN_PROGRESS"
    assert server.balance(KEY) == 1000 - 45
    failed = poll_until_finished(server, data["task_id"])

    assert failed["status"] == "FAILED"
    assert failed["error"] == {"code": "GENERATION_FAILED", "message": "the GPU caught fire"}
    assert server.balance(KEY) == 1000
    assert [entry["reason"] for entry in server.ledger] == ["charge", "refund"]


def test_fail_task_fault_fails_a_synchronous_task_at_once(server):
    server.configure(header_faults=True)
    data = generate(server, IMAGE, headers={"X-Fake-Fault": "fail_task:CONTENT_POLICY_VIOLATION"}).json()[
        "data"
    ]

    assert data["status"] == "FAILED"
    assert data["error"]["code"] == "CONTENT_POLICY_VIOLATION"
    assert server.balance(KEY) == 1000


def test_fault_rules_match_in_order_count_down_and_can_be_limited_to_a_model(server):
    server.add_fault(kind="error", code="SERVICE_UNAVAILABLE", model="seedream-5", times=2)
    forever = server.add_fault(kind="error", code="RATE_LIMITED", endpoint="status", times=None)

    assert generate(server, IMAGE).status_code == 200  # other model: rule skipped, not used up
    assert generate(server, ASYNC_IMAGE).status_code == 503
    assert server.faults[0].times == 1
    assert generate(server, ASYNC_IMAGE).status_code == 503
    assert generate(server, ASYNC_IMAGE).status_code == 200
    assert server.faults == [forever]
    for _ in range(3):
        assert status(server, "anything").status_code == 429

    assert server.clear_faults() == 1
    assert status(server, "anything").status_code == 404


def test_fault_header_applies_to_that_request_only(server):
    server.configure(header_faults=True)
    limited = generate(server, IMAGE, headers={"X-Fake-Fault": "error:RATE_LIMITED"})

    assert_error(limited, 429, "RATE_LIMITED")
    assert generate(server, IMAGE).status_code == 200
    assert generate(server, IMAGE, headers={"X-Fake-Fault": "html:503"}).status_code == 503
    assert_error(generate(server, IMAGE, headers={"X-Fake-Fault": "explode"}), 400, "INVALID_PARAMETER")
    assert server.submissions == 1


@pytest.mark.parametrize(
    "fields",
    [
        {"kind": "explode"},
        {"kind": "error"},  # no code
        {"kind": "drop_after", "endpoint": "status"},
        {"kind": "unknown_status", "endpoint": "generate"},
        {"kind": "slow", "delay": -1},
        {"kind": "drop_before", "times": 0},
        {"kind": "drop_before", "endpoint": "upload"},
        {"kind": "error", "code": "BOGUS"},  # not a code of the API reference
        {"kind": "html_after", "endpoint": "status"},
        {"kind": "in_progress", "endpoint": "status"},
        {"kind": "trickle", "chunk_size": 0},
        {"kind": "huge", "variant": "tiny"},
        {"kind": "slow", "variant": "chunked"},
    ],
)
def test_faults_that_cannot_happen_are_refused_when_added(server, fields):
    with pytest.raises(ValueError):
        server.add_fault(**fields)

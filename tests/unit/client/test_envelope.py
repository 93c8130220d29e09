"""``parse_task_response``: odd-but-possible answers become a ``ReveTask`` or a clear ``ReveAPIError``."""

from __future__ import annotations

import email.utils
import json
import time
from typing import Any

import pytest

from airflow_provider_reve.client.envelope import parse_task_response
from airflow_provider_reve.client.redact import Redactor
from airflow_provider_reve.client.retry import is_permanent
from airflow_provider_reve.exceptions import (
    GENERATE_ENDPOINT,
    STATUS_ENDPOINT,
    ReveAmbiguousSubmissionError,
    ReveAPIError,
    ReveAuthenticationError,
    ReveBadRequestError,
    ReveMalformedResponseError,
    ReveNotFoundError,
    ReveRateLimitError,
    ReveServerError,
)

SECRET = "sk-envelope-unit-test-secret"
ENDPOINTS = [GENERATE_ENDPOINT, STATUS_ENDPOINT]


def envelope(data: Any = None, *, code: Any = 200, message: Any = "success", **extra: Any) -> str:
    body: dict[str, Any] = {"code": code, "message": message, **extra}
    if data is not None:
        body["data"] = data
    return json.dumps(body)


def success_data(**fields: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "task_id": "task-1",
        "status": "SUCCESS",
        "consumed_credits": 12,
        "response": {"resultUrls": ["https://cdn.example/1.png"]},
    }
    data.update(fields)
    return data


def parse(body: bytes | str, *, endpoint: str = STATUS_ENDPOINT, http_status: int = 200, **kw: Any):
    if "secrets" in kw:  # the hook passes its connection's scrubber
        kw["redactor"] = Redactor(kw.pop("secrets"))
    return parse_task_response(endpoint, http_status, body, **kw)


# -- well-formed answers --------------------------------------------------------------------------


def test_a_documented_success_becomes_a_task_with_urls_and_credits():
    task = parse(envelope(success_data()).encode())

    assert task.task_id == "task-1"
    assert task.status == "SUCCESS"
    assert task.result_urls == ("https://cdn.example/1.png",)
    assert task.consumed_credits == 12
    assert task.error_code is None
    assert task.model is None


def test_an_in_progress_answer_without_response_or_credits_is_a_task_with_no_urls():
    task = parse(envelope({"task_id": "task-1", "status": "IN_PROGRESS"}), endpoint=GENERATE_ENDPOINT)

    assert task.status == "IN_PROGRESS"
    assert task.result_urls == ()
    assert task.consumed_credits is None


@pytest.mark.parametrize("response", [{"resultUrls": []}, {}, None])
def test_a_status_success_without_any_result_url_is_malformed_and_read_again_never_done(response):
    with pytest.raises(ReveMalformedResponseError, match="SUCCESS without any result URL") as raised:
        parse(envelope(success_data(response=response)))

    assert not isinstance(raised.value, ReveAmbiguousSubmissionError)
    assert raised.value.retryable


@pytest.mark.parametrize("response", [{"resultUrls": []}, {}, None])
def test_a_generate_success_without_any_result_url_is_ambiguous_and_names_the_paid_task(response):
    with pytest.raises(ReveAmbiguousSubmissionError) as raised:
        parse(envelope(success_data(response=response)), endpoint=GENERATE_ENDPOINT)

    assert raised.value.task_id == "task-1"
    assert "Reve task task-1 exists" in str(raised.value)
    assert not raised.value.retryable


def test_whole_number_float_credits_are_read_as_an_integer():
    task = parse(envelope(success_data(consumed_credits=12.0)))

    assert task.consumed_credits == 12
    assert isinstance(task.consumed_credits, int)


@pytest.mark.parametrize("credits", [12.5, "12", True])
def test_credits_that_are_not_a_whole_number_are_a_malformed_answer(credits):
    with pytest.raises(ReveMalformedResponseError, match="consumed_credits"):
        parse(envelope(success_data(consumed_credits=credits)))


def test_a_failed_task_with_an_error_object_keeps_its_code_and_message():
    data = {
        "task_id": "task-1",
        "status": "FAILED",
        "error": {"code": "GENERATION_FAILED", "message": "boom"},
    }

    task = parse(envelope(data))

    assert task.failed
    assert (task.error_code, task.error_message) == ("GENERATION_FAILED", "boom")


def test_a_failed_task_whose_error_is_a_bare_string_keeps_it_as_the_message():
    task = parse(envelope({"task_id": "task-1", "status": "FAILED", "error": "upstream exploded"}))

    assert task.failed
    assert task.error_code is None
    assert task.error_message == "upstream exploded"


@pytest.mark.parametrize(
    ("error", "words"),
    [
        ({"code": 500}, "500"),
        ({"code": "UPSTREAM_OOM", "message": "out of memory"}, "UPSTREAM_OOM: out of memory"),
    ],
)
def test_a_failed_task_with_an_undocumented_error_code_keeps_it_as_words_not_as_a_code(error, words):
    task = parse(envelope({"task_id": "task-1", "status": "FAILED", "error": error}))

    assert task.error_code is None
    assert task.error_message == words


def test_a_failed_task_without_error_details_is_still_a_failed_task():
    task = parse(envelope({"task_id": "task-1", "status": "FAILED"}))

    assert task.failed
    assert (task.error_code, task.error_message) == (None, None)


@pytest.mark.parametrize("http_status", [201, 202])
def test_another_2xx_status_with_a_success_envelope_is_a_success(http_status):
    # Read as an error, a created (paid) task would look like a failed submission to retry.
    task = parse(envelope(success_data()), endpoint=GENERATE_ENDPOINT, http_status=http_status)

    assert task.status == "SUCCESS"


# -- error answers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "message", "error_class"),
    [
        (404, "TASK_NOT_FOUND", ReveNotFoundError),
        (401, "INVALID_API_KEY", ReveAuthenticationError),
        (429, "RATE_LIMITED", ReveRateLimitError),
        (500, "GENERATION_FAILED", ReveServerError),
    ],
)
def test_an_error_code_in_the_body_of_an_http_200_answer_is_an_error(code, message, error_class):
    with pytest.raises(error_class) as raised:
        parse(envelope(code=code, message=message, detail="said in the body"))

    assert raised.value.http_status == code
    assert raised.value.code == message
    assert raised.value.detail == "said in the body"


def test_an_http_error_status_wins_over_a_body_that_claims_success():
    with pytest.raises(ReveServerError) as raised:
        parse(envelope(success_data()), http_status=500)

    assert raised.value.http_status == 500
    assert raised.value.retryable  # a status read may be re-sent


def test_an_unknown_machine_code_is_not_trusted_as_a_code_and_the_http_status_classifies():
    with pytest.raises(ReveBadRequestError) as raised:
        parse(envelope(code=400, message="SOMETHING_NEW"), http_status=400)

    assert raised.value.code is None
    assert "undocumented error code 'SOMETHING_NEW'" in str(raised.value)
    assert not raised.value.retryable


def test_a_401_whose_code_is_garbled_is_a_permanent_authentication_error():
    with pytest.raises(ReveAuthenticationError) as raised:
        parse(envelope(code=401, message="INVALID_API_KEY sk-whatever"), http_status=401)

    assert raised.value.code is None
    assert not raised.value.retryable
    assert is_permanent(raised.value)


def test_an_error_whose_message_is_not_a_string_has_no_code_but_keeps_its_status():
    with pytest.raises(ReveNotFoundError) as raised:
        parse(envelope(code=404, message={"oops": True}, detail=["not", "text"]), http_status=404)

    assert raised.value.code is None
    assert raised.value.detail is None
    assert "without an error code" in str(raised.value)


def test_a_generate_gateway_error_is_ambiguous_because_a_task_may_exist_upstream():
    with pytest.raises(ReveAmbiguousSubmissionError, match="paid task may exist") as raised:
        parse(envelope(code=502, message="BAD_GATEWAY"), endpoint=GENERATE_ENDPOINT, http_status=502)

    assert raised.value.http_status == 502
    assert raised.value.code is None  # not a documented code
    assert "BAD_GATEWAY" in str(raised.value)
    assert not raised.value.retryable


def test_a_generate_service_unavailable_is_not_ambiguous_and_may_be_resent():
    with pytest.raises(ReveServerError) as raised:
        parse(envelope(code=503, message="SERVICE_UNAVAILABLE"), endpoint=GENERATE_ENDPOINT, http_status=503)

    assert not isinstance(raised.value, ReveAmbiguousSubmissionError)
    assert raised.value.retryable


def test_a_proxy_503_page_on_generate_is_ambiguous_because_proxies_also_answer_so_after_forwarding():
    with pytest.raises(ReveAmbiguousSubmissionError, match="paid task may have been created") as raised:
        parse("<html>503 Service Temporarily Unavailable</html>", endpoint=GENERATE_ENDPOINT, http_status=503)

    assert raised.value.http_status == 503
    assert not raised.value.retryable


def test_retry_after_in_seconds_is_kept_on_the_error():
    with pytest.raises(ReveRateLimitError) as raised:
        parse(envelope(code=429, message="RATE_LIMITED"), http_status=429, retry_after_header="7")

    assert raised.value.retry_after == 7.0


def test_retry_after_as_an_http_date_is_kept_as_seconds_from_now():
    date = email.utils.formatdate(time.time() + 30, usegmt=True)

    with pytest.raises(ReveRateLimitError) as raised:
        parse(envelope(code=429, message="RATE_LIMITED"), http_status=429, retry_after_header=date)

    assert raised.value.retry_after is not None
    assert 25 <= raised.value.retry_after <= 31


def test_an_unreadable_retry_after_is_ignored():
    with pytest.raises(ReveRateLimitError) as raised:
        parse(envelope(code=429, message="RATE_LIMITED"), http_status=429, retry_after_header="soon")

    assert raised.value.retry_after is None


# -- malformed answers ----------------------------------------------------------------------------

MALFORMED_BODIES = {
    "html": "<html><body><h1>502 Bad Gateway</h1></body></html>",
    "truncated json": '{"code": 200, "message": "success", "data": {"task_',
    "empty": "",
    "json array": "[1, 2, 3]",
    "json null": "null",
    "missing data": envelope(),
    "data is a list": envelope(["task-1"]),
    "task id missing": envelope({"status": "SUCCESS"}),
    "task id not a string": envelope({"task_id": 42, "status": "SUCCESS"}),
    "unknown status": envelope({"task_id": "task-1", "status": "QUEUED"}),
    "result urls not a list": envelope(success_data(response={"resultUrls": "https://cdn/1.png"})),
    "result urls not strings": envelope(success_data(response={"resultUrls": [1, 2]})),
    "response not an object": envelope(success_data(response=["https://cdn/1.png"])),
}


@pytest.mark.parametrize("body", MALFORMED_BODIES.values(), ids=MALFORMED_BODIES.keys())
def test_a_malformed_status_answer_is_a_malformed_response_error_naming_the_endpoint(body):
    with pytest.raises(ReveMalformedResponseError) as raised:
        parse(body)

    assert STATUS_ENDPOINT in str(raised.value)
    assert raised.value.endpoint == STATUS_ENDPOINT
    assert raised.value.retryable


@pytest.mark.parametrize("body", MALFORMED_BODIES.values(), ids=MALFORMED_BODIES.keys())
def test_a_malformed_generate_answer_with_http_200_is_an_ambiguous_submission(body):
    with pytest.raises(ReveAmbiguousSubmissionError) as raised:
        parse(body, endpoint=GENERATE_ENDPOINT)

    assert GENERATE_ENDPOINT in str(raised.value)
    assert "paid task may have been created" in str(raised.value)
    assert not raised.value.retryable


def test_a_malformed_generate_answer_with_a_4xx_status_is_not_ambiguous():
    # A 4xx says the request was refused: nothing was created.
    with pytest.raises(ReveMalformedResponseError) as raised:
        parse("<html>400 Bad Request</html>", endpoint=GENERATE_ENDPOINT, http_status=400)

    assert not isinstance(raised.value, ReveAmbiguousSubmissionError)
    assert raised.value.http_status == 400


def test_json_nested_too_deep_to_parse_is_a_malformed_answer_not_a_recursion_error():
    with pytest.raises(ReveMalformedResponseError):
        parse("[" * 200_000)


@pytest.mark.parametrize("http_status", [200, 502])
def test_an_over_long_generate_answer_is_ambiguous(http_status):
    with pytest.raises(ReveAmbiguousSubmissionError, match="longer than 256 KiB"):
        parse(envelope(success_data()), endpoint=GENERATE_ENDPOINT, http_status=http_status, truncated=True)


@pytest.mark.parametrize("http_status", [200, 503])
def test_an_over_long_status_answer_is_malformed_and_may_be_read_again(http_status):
    # Even a complete-looking envelope: what came after it was never read.
    with pytest.raises(ReveMalformedResponseError, match="longer than 256 KiB") as raised:
        parse(envelope(success_data()), http_status=http_status, truncated=True)

    assert raised.value.retryable


def test_bytes_that_are_not_utf8_are_a_malformed_answer_not_a_decode_error():
    with pytest.raises(ReveMalformedResponseError):
        parse(b"\xff\xfe\x00garbage\x80")


def test_the_malformed_answer_message_quotes_a_short_single_line_snippet():
    body = "<html>\n\n   <body>" + "x" * 1000 + "</body></html>"

    with pytest.raises(ReveMalformedResponseError) as raised:
        parse(body, http_status=502)

    text = str(raised.value)
    assert "<html> <body>xxx" in text
    assert "x" * 200 not in text
    assert "\n" not in text


# -- secrets --------------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_a_secret_echoed_in_an_error_detail_is_scrubbed_from_message_detail_and_repr(endpoint):
    body = envelope(code=400, message="INVALID_PARAMETER", detail=f"bad header: Bearer {SECRET}")

    with pytest.raises(ReveAPIError) as raised:
        parse(body, endpoint=endpoint, http_status=400, secrets=[SECRET])

    error = raised.value
    for text in (str(error), repr(error), error.message, error.detail, *map(str, error.args)):
        assert SECRET not in text
    assert "Bearer ***" in str(error)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_a_secret_echoed_in_a_malformed_body_is_scrubbed_from_the_snippet(endpoint):
    body = f"<html>Authorization: Bearer {SECRET}</html>"

    with pytest.raises(ReveAPIError) as raised:
        parse(body, endpoint=endpoint, http_status=200, secrets=[SECRET])

    assert SECRET not in str(raised.value)
    assert SECRET not in repr(raised.value)
    assert "Bearer ***" in str(raised.value)


def test_a_gateway_error_on_generate_is_scrubbed_too():
    body = envelope(code=504, message="TIMEOUT", detail=f"upstream saw {SECRET}")

    with pytest.raises(ReveAmbiguousSubmissionError) as raised:
        parse(body, endpoint=GENERATE_ENDPOINT, http_status=504, secrets=[SECRET])

    assert SECRET not in str(raised.value)
    assert SECRET not in (raised.value.detail or "")


def test_a_secret_echoed_in_the_machine_code_never_becomes_the_code_or_shows():
    body = envelope(code=401, message=f"INVALID_API_KEY {SECRET}", detail=f"got Bearer {SECRET}")

    with pytest.raises(ReveAuthenticationError) as raised:
        parse(body, http_status=401, secrets=[SECRET])

    error = raised.value
    assert error.code is None
    for text in (str(error), repr(error), repr(vars(error)), *map(str, error.args)):
        assert SECRET[3:11] not in text


def test_a_secret_echoed_in_a_task_is_scrubbed_from_its_error_and_result_urls():
    data = success_data(
        response={"resultUrls": [f"https://cdn.example/{SECRET}.png"]},
        error={"code": SECRET.upper(), "message": f"key {SECRET[2:20]} seen"},
    )

    task = parse(envelope(data), secrets=[SECRET])

    assert task.result_urls == ("https://cdn.example/***.png",)
    assert task.error_code is None
    assert task.error_message == "***: key *** seen"


def test_a_task_id_holding_the_secret_is_refused_since_an_id_cannot_be_redacted():
    body = envelope({"task_id": f"t-{SECRET}", "status": "IN_PROGRESS"})

    with pytest.raises(ReveAmbiguousSubmissionError, match="task_id holds the API key") as raised:
        parse(body, endpoint=GENERATE_ENDPOINT, secrets=[SECRET])

    assert raised.value.task_id is None
    assert SECRET not in repr(vars(raised.value))


def test_a_secret_echoed_upper_cased_as_an_unknown_task_status_is_scrubbed():
    with pytest.raises(ReveMalformedResponseError, match="unknown task status") as raised:
        parse(envelope({"task_id": "task-1", "status": SECRET.upper()}), secrets=[SECRET])

    assert SECRET.upper()[:8] not in str(raised.value)


def test_a_huge_detail_is_cut_short_after_a_secret_straddling_the_cut_was_redacted_whole():
    detail = "d" * 990 + SECRET + "e" * 250_000

    with pytest.raises(ReveBadRequestError) as raised:
        parse(
            envelope(code=400, message="INVALID_PARAMETER", detail=detail), http_status=400, secrets=[SECRET]
        )

    assert raised.value.detail == "d" * 990 + "***" + "e" * 7 + "..."
    assert len(str(raised.value)) < 1200


def test_empty_secrets_do_not_mangle_the_message():
    with pytest.raises(ReveNotFoundError) as raised:
        parse(envelope(code=404, message="TASK_NOT_FOUND"), http_status=404, secrets=["", None])  # type: ignore[list-item]

    assert "***" not in str(raised.value)
    assert "TASK_NOT_FOUND" in str(raised.value)

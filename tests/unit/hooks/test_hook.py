"""``ReveHook`` over real loopback HTTP against the fake Reve API.

Nothing is mocked: every request goes through ``requests`` to a ``FakeReveServer``, and what the
server saw (requests, submissions, charges, TCP connections) is read from its counters.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from reve_test_helpers import use_connection

from airflow_provider_reve.client.retry import NO_RETRIES, RetryPolicy
from airflow_provider_reve.exceptions import (
    GENERATE_ENDPOINT,
    STATUS_ENDPOINT,
    ReveAmbiguousSubmissionError,
    ReveAPIError,
    ReveAuthenticationError,
    ReveBadRequestError,
    ReveConfigurationError,
    ReveConnectionError,
    ReveContentPolicyError,
    ReveInsufficientCreditsError,
    ReveMalformedResponseError,
    ReveNotFoundError,
    ReveRateLimitError,
    ReveServerError,
    ReveValidationError,
)
from airflow_provider_reve.hooks.reve import ReveHook
from airflow_provider_reve.testing import DEFAULT_API_KEY, FakeReveServer, Fault

CONN_ID = "reve_default"
FAST = RetryPolicy(max_attempts=4, initial_backoff=0.01, max_backoff=0.05)
SYNC_MODEL, SYNC_PRICE = "reve-2.0", 12
ASYNC_MODEL, ASYNC_PRICE = "seedream-5", 25
PROMPT = "a red fox in the snow"

#: machine code -> (HTTP status, exception class), from the API reference's error table.
API_ERRORS: dict[str, tuple[int, type[ReveAPIError]]] = {
    "INVALID_PROMPT": (400, ReveBadRequestError),
    "INVALID_MODEL": (400, ReveBadRequestError),
    "INVALID_PARAMETER": (400, ReveBadRequestError),
    "CONTENT_POLICY_VIOLATION": (400, ReveContentPolicyError),
    "INVALID_API_KEY": (401, ReveAuthenticationError),
    "INSUFFICIENT_CREDITS": (402, ReveInsufficientCreditsError),
    "TASK_NOT_FOUND": (404, ReveNotFoundError),
    "RATE_LIMITED": (429, ReveRateLimitError),
    "TOO_MANY_TASKS": (429, ReveRateLimitError),
    "GENERATION_FAILED": (500, ReveServerError),
    "SERVICE_UNAVAILABLE": (503, ReveServerError),
    "TIMEOUT": (504, ReveServerError),
}
#: Codes after which the very same request may be sent again.
RESENDABLE = {
    "generate": {"RATE_LIMITED", "TOO_MANY_TASKS", "GENERATION_FAILED", "SERVICE_UNAVAILABLE"},
    "status": {"RATE_LIMITED", "TOO_MANY_TASKS", "GENERATION_FAILED", "SERVICE_UNAVAILABLE", "TIMEOUT"},
}
ENDPOINT_NAMES = {"generate": GENERATE_ENDPOINT, "status": STATUS_ENDPOINT}


@pytest.fixture
def server(fake_reve_server: FakeReveServer) -> FakeReveServer:
    fake_reve_server.set_async_seconds(0.1)
    return fake_reve_server


@pytest.fixture
def hook(server: FakeReveServer, reve_connection_env: str) -> Iterator[ReveHook]:
    reve_hook = ReveHook(reve_connection_env, retry_policy=FAST)
    yield reve_hook
    reve_hook.close()


@pytest.fixture
def task_id(hook: ReveHook) -> str:
    """A finished task of the default account, for status reads."""
    return hook.generate(SYNC_MODEL, PROMPT).task_id


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound by us, never listening."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def retry_log_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "airflow_provider_reve.client.retry"]


# -- both endpoints -------------------------------------------------------------------------------


def test_generate_on_a_synchronous_model_returns_success_with_urls_and_credits(hook, server):
    task = hook.generate(SYNC_MODEL, PROMPT, aspect_ratio="16:9")

    assert task.status == "SUCCESS"
    assert task.model == SYNC_MODEL
    assert task.consumed_credits == SYNC_PRICE
    assert len(task.result_urls) == 1
    assert task.result_urls[0].startswith(f"{server.url}/files/{task.task_id}/")
    assert server.submissions == 1
    assert server.ledger == [
        {"key": DEFAULT_API_KEY, "task_id": task.task_id, "delta": -SYNC_PRICE, "reason": "charge"}
    ]
    assert server.tasks[task.task_id]["params"] == {"prompt": PROMPT, "aspect_ratio": "16:9"}


def test_generate_leaves_out_parameters_that_are_none(hook, server):
    task = hook.generate(SYNC_MODEL, PROMPT, aspect_ratio=None, num_images=2)

    assert server.tasks[task.task_id]["params"] == {"prompt": PROMPT, "num_images": 2}
    assert len(task.result_urls) == 2


def test_generate_on_an_asynchronous_model_is_in_progress_until_get_status_says_success(hook, server):
    task = hook.generate(ASYNC_MODEL, PROMPT)

    assert task.status == "IN_PROGRESS"
    assert task.model == ASYNC_MODEL
    assert task.result_urls == ()
    assert task.consumed_credits is None

    deadline = time.monotonic() + 10
    while (polled := hook.get_status(task.task_id, model=ASYNC_MODEL)).status == "IN_PROGRESS":
        assert time.monotonic() < deadline, "the task never finished"
        time.sleep(0.02)

    assert polled.status == "SUCCESS"
    assert polled.task_id == task.task_id
    assert polled.model == ASYNC_MODEL
    assert polled.consumed_credits == ASYNC_PRICE
    assert len(polled.result_urls) == 1
    assert server.submissions == 1


def test_get_status_without_a_model_leaves_the_model_unknown(hook, task_id):
    assert hook.get_status(task_id).model is None


def test_a_task_that_failed_is_returned_as_failed_with_its_error_and_refunded(hook, server):
    server.add_fault(kind="fail_task", endpoint="generate", code="CONTENT_POLICY_VIOLATION", detail="nope")

    task = hook.generate(SYNC_MODEL, PROMPT)

    assert task.failed
    assert (task.error_code, task.error_message) == ("CONTENT_POLICY_VIOLATION", "nope")
    assert hook.get_status(task.task_id).failed
    assert [entry["reason"] for entry in server.ledger] == ["charge", "refund"]


def test_get_status_of_an_unknown_task_raises_not_found_without_retrying(hook, server):
    with pytest.raises(ReveNotFoundError) as raised:
        hook.get_status("no-such-task")

    assert raised.value.code == "TASK_NOT_FOUND"
    assert server.requests_to("status") == 1


# -- every error code on every endpoint ---------------------------------------------------------


@pytest.mark.parametrize("endpoint", ["generate", "status"])
@pytest.mark.parametrize("code", sorted(API_ERRORS))
def test_each_error_code_raises_its_exception_with_status_code_detail_and_retryability(
    hook, server, task_id, endpoint, code
):
    hook.retry_policy = NO_RETRIES
    http_status, error_class = API_ERRORS[code]
    if endpoint == "generate" and code == "TIMEOUT":
        error_class = ReveAmbiguousSubmissionError  # see the dedicated test below
    requests_before, submitted_before = server.requests_to(endpoint), server.submissions
    server.add_fault(kind="error", endpoint=endpoint, code=code, detail=f"the detail of {code}")

    with pytest.raises(ReveAPIError) as raised:
        if endpoint == "generate":
            hook.generate(SYNC_MODEL, PROMPT)
        else:
            hook.get_status(task_id)

    error = raised.value
    assert type(error) is error_class
    assert error.endpoint == ENDPOINT_NAMES[endpoint]
    assert error.http_status == http_status
    assert error.code == code
    assert error.detail == f"the detail of {code}"
    assert error.retryable is (code in RESENDABLE[endpoint])
    assert ENDPOINT_NAMES[endpoint] in str(error)
    assert code in str(error)
    assert server.requests_to(endpoint) == requests_before + 1
    assert server.submissions == submitted_before


def test_a_generate_timeout_504_is_ambiguous_because_the_task_may_exist(hook, server):
    server.add_fault(kind="error", endpoint="generate", code="TIMEOUT", times=None)

    with pytest.raises(ReveAmbiguousSubmissionError, match="paid task may exist") as raised:
        hook.generate(SYNC_MODEL, PROMPT)

    assert raised.value.http_status == 504
    assert raised.value.code == "TIMEOUT"
    assert not raised.value.retryable
    assert server.requests_to("generate") == 1


def test_a_status_timeout_504_is_an_ordinary_retryable_server_error(hook, server, task_id):
    hook.retry_policy = NO_RETRIES
    server.add_fault(kind="error", endpoint="status", code="TIMEOUT")

    with pytest.raises(ReveServerError) as raised:
        hook.get_status(task_id)

    assert not isinstance(raised.value, ReveAmbiguousSubmissionError)
    assert raised.value.retryable


def test_the_retry_after_header_is_kept_on_the_error(hook, server, task_id):
    hook.retry_policy = NO_RETRIES
    server.add_fault(kind="error", endpoint="status", code="RATE_LIMITED", retry_after=7)

    with pytest.raises(ReveRateLimitError) as raised:
        hook.get_status(task_id)

    assert raised.value.retry_after == 7.0


def test_too_many_tasks_on_generate_is_raised_at_once_for_the_operator_to_wait(hook, server):
    server.add_fault(kind="error", endpoint="generate", code="TOO_MANY_TASKS", times=None)

    with pytest.raises(ReveRateLimitError) as raised:
        hook.generate(SYNC_MODEL, PROMPT)

    assert raised.value.too_many_tasks
    assert server.requests_to("generate") == 1
    assert server.submissions == 0


# -- malformed answers ----------------------------------------------------------------------------

MALFORMED_STATUS = {
    "html": Fault(kind="html", endpoint="status"),
    "garbled": Fault(kind="garbled", endpoint="status"),
    "missing_data": Fault(kind="missing_data", endpoint="status"),
    "unknown_status": Fault(kind="unknown_status", endpoint="status"),
}


@pytest.mark.parametrize("fault", MALFORMED_STATUS.values(), ids=MALFORMED_STATUS.keys())
def test_a_malformed_status_answer_raises_a_malformed_response_error_naming_the_endpoint(
    hook, server, task_id, fault
):
    hook.retry_policy = NO_RETRIES
    server.add_fault(fault)

    with pytest.raises(ReveMalformedResponseError) as raised:
        hook.get_status(task_id)

    assert raised.value.endpoint == STATUS_ENDPOINT
    assert STATUS_ENDPOINT in str(raised.value)
    assert "unexpected body" in str(raised.value)
    assert raised.value.retryable
    assert server.requests_to("status") == 1


def test_an_unknown_task_status_is_named_in_the_error(hook, server, task_id):
    hook.retry_policy = NO_RETRIES
    server.add_fault(kind="unknown_status", endpoint="status", code="PAUSED")

    with pytest.raises(ReveMalformedResponseError, match="unknown task status 'PAUSED'"):
        hook.get_status(task_id)


def test_a_proxy_html_page_on_generate_is_ambiguous_and_not_sent_again(hook, server):
    server.add_fault(kind="html", endpoint="generate", status=502, times=None)

    with pytest.raises(ReveAmbiguousSubmissionError, match="paid task may") as raised:
        hook.generate(SYNC_MODEL, PROMPT)

    assert raised.value.http_status == 502
    assert GENERATE_ENDPOINT in str(raised.value)
    assert server.requests_to("generate") == 1


def test_a_proxy_html_page_with_a_4xx_on_generate_is_malformed_but_not_ambiguous(hook, server):
    server.add_fault(kind="html", endpoint="generate", status=400, times=None)

    with pytest.raises(ReveMalformedResponseError) as raised:
        hook.generate(SYNC_MODEL, PROMPT)

    assert not isinstance(raised.value, ReveAmbiguousSubmissionError)
    assert server.requests_to("generate") == 1


def test_a_rate_limiter_429_page_on_generate_is_retried_because_nothing_was_created(hook, server):
    server.add_fault(kind="html", endpoint="generate", status=429, times=2)

    task = hook.generate(SYNC_MODEL, PROMPT)

    assert task.succeeded
    assert server.requests_to("generate") == 3
    assert server.submissions == 1


def test_a_proxy_503_page_on_generate_is_ambiguous_and_not_resent(hook, server):
    # Proxies answer 503 after forwarding too (an upstream reset or timeout): a task may exist.
    server.add_fault(kind="html", endpoint="generate", status=503, times=None)

    with pytest.raises(ReveAmbiguousSubmissionError, match="paid task may") as raised:
        hook.generate(SYNC_MODEL, PROMPT)

    assert raised.value.http_status == 503
    assert server.requests_to("generate") == 1


# -- retries of status reads ----------------------------------------------------------------------

TRANSIENT_STATUS_FAULTS = {
    "429 RATE_LIMITED": Fault(kind="error", endpoint="status", code="RATE_LIMITED", times=2),
    "500 GENERATION_FAILED": Fault(kind="error", endpoint="status", code="GENERATION_FAILED", times=2),
    "502 JSON": Fault(kind="error", endpoint="status", code="BAD_GATEWAY", status=502, times=2),
    "502 HTML": Fault(kind="html", endpoint="status", status=502, times=2),
    "503 SERVICE_UNAVAILABLE": Fault(kind="error", endpoint="status", code="SERVICE_UNAVAILABLE", times=2),
    "504 TIMEOUT": Fault(kind="error", endpoint="status", code="TIMEOUT", times=2),
    "connection dropped": Fault(kind="drop_before", endpoint="status", times=2),
    "garbled": Fault(kind="garbled", endpoint="status", times=2),
}


@pytest.mark.parametrize("fault", TRANSIENT_STATUS_FAULTS.values(), ids=TRANSIENT_STATUS_FAULTS.keys())
def test_a_status_read_is_retried_through_transient_failures_and_then_succeeds(hook, server, task_id, fault):
    server.add_fault(fault)

    task = hook.get_status(task_id)

    assert task.status == "SUCCESS"
    assert task.task_id == task_id
    assert server.requests_to("status") == 3


def test_a_status_read_waits_as_long_as_retry_after_asks(hook, server, task_id):
    server.add_fault(kind="error", endpoint="status", code="RATE_LIMITED", retry_after=1)
    started = time.monotonic()

    task = hook.get_status(task_id)

    assert time.monotonic() - started >= 1.0  # the policy's own backoff is at most 0.05 s
    assert task.status == "SUCCESS"
    assert server.requests_to("status") == 2


def test_status_retries_stop_after_max_attempts_and_raise_the_last_error(hook, server, task_id):
    hook.retry_policy = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.05)
    server.add_fault(kind="error", endpoint="status", code="GENERATION_FAILED", times=2)
    server.add_fault(kind="error", endpoint="status", code="SERVICE_UNAVAILABLE", times=None)

    with pytest.raises(ReveServerError) as raised:
        hook.get_status(task_id)

    assert raised.value.code == "SERVICE_UNAVAILABLE"
    assert raised.value.http_status == 503
    assert server.requests_to("status") == 3


def test_a_retry_after_beyond_the_time_budget_is_not_waited_for(hook, server, task_id):
    hook.retry_policy = RetryPolicy(max_attempts=5, max_elapsed_seconds=0.5, initial_backoff=0.01)
    server.add_fault(kind="error", endpoint="status", code="RATE_LIMITED", retry_after=1, times=None)

    with pytest.raises(ReveRateLimitError):
        hook.get_status(task_id)

    assert server.requests_to("status") == 1


@pytest.mark.parametrize("code", ["INVALID_API_KEY", "TASK_NOT_FOUND", "INVALID_PARAMETER"])
def test_a_status_read_is_not_retried_after_a_permanent_error(hook, server, task_id, code):
    server.add_fault(kind="error", endpoint="status", code=code, times=None)

    with pytest.raises(ReveAPIError):
        hook.get_status(task_id)

    assert server.requests_to("status") == 1


def test_a_status_read_is_retried_when_the_connection_is_refused(monkeypatch, closed_port, caplog):
    use_connection(monkeypatch, f"http://127.0.0.1:{closed_port}")
    hook = ReveHook(retry_policy=RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.05))

    with (
        caplog.at_level(logging.WARNING, logger="airflow_provider_reve"),
        pytest.raises(ReveConnectionError) as raised,
    ):
        hook.get_status("some-task")

    assert raised.value.request_sent is False
    assert len(retry_log_lines(caplog)) == 2


# -- retries of generate --------------------------------------------------------------------------


@pytest.mark.parametrize("code", ["RATE_LIMITED", "GENERATION_FAILED", "SERVICE_UNAVAILABLE"])
def test_generate_is_retried_when_the_api_says_nothing_was_created(hook, server, code):
    server.add_fault(kind="error", endpoint="generate", code=code, times=2)

    task = hook.generate(SYNC_MODEL, PROMPT)

    assert task.status == "SUCCESS"
    assert server.requests_to("generate") == 3
    assert server.submissions == 1
    assert [entry["task_id"] for entry in server.ledger] == [task.task_id]


def test_generate_waits_as_long_as_retry_after_asks(hook, server):
    server.add_fault(kind="error", endpoint="generate", code="RATE_LIMITED", retry_after=1)
    started = time.monotonic()

    task = hook.generate(SYNC_MODEL, PROMPT)

    assert time.monotonic() - started >= 1.0
    assert task.status == "SUCCESS"
    assert server.requests_to("generate") == 2
    assert server.submissions == 1


def test_generate_retries_stop_after_max_attempts_and_raise_the_last_error(hook, server):
    hook.retry_policy = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.05)
    server.add_fault(kind="error", endpoint="generate", code="RATE_LIMITED", times=None)

    with pytest.raises(ReveRateLimitError):
        hook.generate(SYNC_MODEL, PROMPT)

    assert server.requests_to("generate") == 3
    assert server.submissions == 0


AMBIGUOUS_GENERATE_FAULTS = {
    "connection dropped after the task was created": Fault(kind="drop_after", endpoint="generate"),
    "truncated JSON": Fault(kind="garbled", endpoint="generate"),
    "envelope without data": Fault(kind="missing_data", endpoint="generate"),
}


@pytest.mark.parametrize("fault", AMBIGUOUS_GENERATE_FAULTS.values(), ids=AMBIGUOUS_GENERATE_FAULTS.keys())
def test_generate_is_not_retried_after_the_request_was_sent(hook, server, fault):
    server.add_fault(fault)

    with pytest.raises(ReveAmbiguousSubmissionError, match="paid task may") as raised:
        hook.generate(SYNC_MODEL, PROMPT)

    assert raised.value.endpoint == GENERATE_ENDPOINT
    assert not raised.value.retryable
    assert server.requests_to("generate") == 1
    assert server.submissions == 1


def test_generate_is_not_retried_after_a_read_timeout(server, monkeypatch):
    use_connection(monkeypatch, server.url, read_timeout=0.3)
    hook = ReveHook(retry_policy=FAST)
    server.add_fault(kind="slow", endpoint="generate", delay=1.0)

    # An asynchronous model: a synchronous one's submission waits longer (see the next test file).
    with pytest.raises(ReveAmbiguousSubmissionError, match="paid task may") as raised:
        hook.generate("seedream-5", PROMPT)

    assert "ReadTimeout" in str(raised.value)
    assert hook.settings.read_timeout == 0.3
    assert server.requests_to("generate") == 1
    assert server.submissions == 1


def test_generate_dropped_before_any_answer_is_ambiguous_because_the_client_cannot_tell(hook, server):
    # The fake dropped it before creating anything, but the client saw a sent request go unanswered.
    server.add_fault(kind="drop_before", endpoint="generate")

    with pytest.raises(ReveAmbiguousSubmissionError):
        hook.generate(SYNC_MODEL, PROMPT)

    assert server.requests_to("generate") == 1
    assert server.submissions == 0


def test_generate_is_retried_when_the_connection_is_refused_because_nothing_was_sent(
    monkeypatch, closed_port, caplog
):
    use_connection(monkeypatch, f"http://127.0.0.1:{closed_port}")
    hook = ReveHook(retry_policy=RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.05))

    with (
        caplog.at_level(logging.WARNING, logger="airflow_provider_reve"),
        pytest.raises(ReveConnectionError) as raised,
    ):
        hook.generate(SYNC_MODEL, PROMPT)

    assert type(raised.value) is ReveConnectionError
    assert raised.value.request_sent is False
    assert raised.value.endpoint == GENERATE_ENDPOINT
    retries = retry_log_lines(caplog)
    assert len(retries) == 2
    assert all(GENERATE_ENDPOINT in line for line in retries)


# -- connection settings --------------------------------------------------------------------------


def test_a_plain_http_base_url_is_refused_before_any_network_call(monkeypatch):
    use_connection(monkeypatch, "http://example.com")
    hook = ReveHook(retry_policy=NO_RETRIES)

    # Had it tried the network, the loopback-only machine would have raised a connection error.
    with pytest.raises(ReveConfigurationError) as raised:
        hook.generate(SYNC_MODEL, PROMPT)

    assert "allow_insecure_http" in str(raised.value)
    assert "example.com" in str(raised.value)
    assert DEFAULT_API_KEY not in str(raised.value)


@pytest.mark.parametrize("flag", [True, "true", "yes"])
def test_a_plain_http_base_url_is_allowed_with_allow_insecure_http(monkeypatch, flag):
    use_connection(monkeypatch, "http://example.com/", allow_insecure_http=flag)

    assert ReveHook().settings.base_url == "http://example.com"


@pytest.mark.parametrize("flag", [False, "false", "no"])
def test_allow_insecure_http_set_to_false_still_refuses_plain_http(monkeypatch, flag):
    use_connection(monkeypatch, "http://example.com", allow_insecure_http=flag)

    with pytest.raises(ReveConfigurationError, match="allow_insecure_http"):
        _ = ReveHook().settings


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_plain_http_to_loopback_is_allowed(server, monkeypatch, host):
    use_connection(monkeypatch, f"http://{host}:{server.port}")
    hook = ReveHook(retry_policy=FAST)

    assert hook.settings.base_url == f"http://{host}:{server.port}"
    assert hook.test_connection()[0] is True


def test_plain_http_to_ipv6_loopback_is_allowed(monkeypatch):
    use_connection(monkeypatch, "http://[::1]:8080")

    assert ReveHook().settings.base_url == "http://[::1]:8080"


def test_a_bare_host_name_means_https_and_the_port_field_is_used(monkeypatch):
    use_connection(monkeypatch, "reve.internal", port=8443)

    assert ReveHook().settings.base_url == "https://reve.internal:8443"


def test_no_host_means_the_public_api(monkeypatch):
    use_connection(monkeypatch, None)

    assert ReveHook().settings.base_url == "https://reve2img.com"


@pytest.mark.parametrize("password", [None, "", "   "])
def test_a_missing_api_key_is_a_configuration_error_naming_the_field(server, monkeypatch, password):
    use_connection(monkeypatch, server.url, password=password)

    with pytest.raises(ReveConfigurationError) as raised:
        ReveHook().generate(SYNC_MODEL, PROMPT)

    assert "API key" in str(raised.value)
    assert "password" in str(raised.value)
    assert server.requests_to("total") == 0


@pytest.mark.parametrize("value", [0, -1, "soon"])
def test_a_bad_timeout_extra_is_a_configuration_error_naming_it(monkeypatch, value):
    use_connection(monkeypatch, "https://reve2img.com", read_timeout=value)

    with pytest.raises(ReveConfigurationError, match="read_timeout"):
        _ = ReveHook().settings


def test_timeouts_come_from_the_connection_extras_unless_the_hook_overrides_them(monkeypatch):
    use_connection(monkeypatch, "https://reve2img.com", connect_timeout="2.5", read_timeout=7)

    assert ReveHook()._timeouts == (2.5, 7.0)
    assert ReveHook(timeout=(1.0, 3.0))._timeouts == (1.0, 3.0)


def test_unknown_extras_are_not_sent_as_http_headers(server, monkeypatch):
    use_connection(monkeypatch, server.url, **{"X-Leak": "value", "Authorization": "Basic bad"})
    hook = ReveHook()

    assert hook.test_connection()[0] is True
    assert "X-Leak" not in hook.get_conn().headers
    assert hook.get_conn().headers["Authorization"] == f"Bearer {DEFAULT_API_KEY}"


# -- test_connection ------------------------------------------------------------------------------


def test_test_connection_accepts_a_valid_key_without_spending_credits(hook, server):
    balance = server.balance()

    ok, message = hook.test_connection()

    assert ok is True
    assert "no credits spent" in message
    assert server.ledger == []
    assert server.submissions == 0
    assert server.balance() == balance
    assert server.requests_to("status") == 1
    assert server.requests_to("generate") == 0


def test_test_connection_reports_a_rejected_key(server, monkeypatch):
    use_connection(monkeypatch, server.url, password="sk-not-a-key-the-server-knows")

    ok, message = ReveHook().test_connection()

    assert ok is False
    assert message.startswith("API key rejected")
    assert "sk-not-a-key-the-server-knows" not in message


def test_test_connection_reports_a_refused_connection(monkeypatch, closed_port):
    use_connection(monkeypatch, f"http://127.0.0.1:{closed_port}")

    ok, message = ReveHook().test_connection()

    assert ok is False
    assert STATUS_ENDPOINT in message


def test_test_connection_reports_an_insecure_url_without_calling_it(monkeypatch):
    use_connection(monkeypatch, "http://example.com")

    ok, message = ReveHook().test_connection()

    assert ok is False
    assert "allow_insecure_http" in message


# -- validation before any HTTP call --------------------------------------------------------------

INVALID_REQUESTS = {
    "blank prompt": (SYNC_MODEL, "   ", {}),
    "missing prompt": (SYNC_MODEL, None, {}),
    "prompt not a string": (SYNC_MODEL, 42, {}),
    "bad aspect ratio": (SYNC_MODEL, PROMPT, {"aspect_ratio": "5:4"}),
    "not JSON-serialisable": (SYNC_MODEL, PROMPT, {"seed": object()}),
    "NaN": (SYNC_MODEL, PROMPT, {"seed": float("nan")}),
    "empty model": ("", PROMPT, {}),
}


@pytest.mark.parametrize(
    ("model", "prompt", "params"), INVALID_REQUESTS.values(), ids=INVALID_REQUESTS.keys()
)
def test_an_invalid_request_is_refused_before_any_http_call(hook, server, model, prompt, params):
    with pytest.raises(ReveValidationError):
        hook.generate(model, prompt, **params)

    assert server.requests_to("total") == 0
    assert server.connections == 0


@pytest.mark.parametrize("task_id", ["", "   ", None, 42])
def test_a_blank_task_id_is_refused_before_any_http_call(hook, server, task_id):
    with pytest.raises(ReveValidationError):
        hook.get_status(task_id)

    assert server.requests_to("total") == 0


# -- the API key never shows ----------------------------------------------------------------------


@pytest.fixture
def all_logs_at_debug(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    for name in (None, "airflow", "airflow.task", "urllib3", "requests", "airflow_provider_reve"):
        caplog.set_level(logging.DEBUG, logger=name)
    yield caplog


def test_the_api_key_appears_in_no_log_line_and_no_error(server, monkeypatch, all_logs_at_debug, capfd):
    custom_key, wrong_key = "sk-custom-secret-4f1c9a", "sk-wrong-secret-77d0be"
    server.add_key(custom_key, 1000)
    errors: list[BaseException] = []

    def expect_error(call: Any) -> None:
        with pytest.raises(ReveAPIError) as raised:
            call()
        errors.append(raised.value)

    for key in (DEFAULT_API_KEY, custom_key):
        use_connection(monkeypatch, server.url, password=key)
        hook = ReveHook(retry_policy=FAST)
        task = hook.generate(SYNC_MODEL, PROMPT)  # a success
        hook.get_status(task.task_id)
        server.add_fault(kind="garbled", endpoint="status", times=None)  # malformed, retried
        expect_error(lambda h=hook, t=task: h.get_status(t.task_id))
        server.clear_faults()
        server.add_fault(kind="drop_after", endpoint="generate")  # ambiguous
        expect_error(lambda h=hook: h.generate(SYNC_MODEL, PROMPT))
        server.add_fault(kind="error", endpoint="generate", code="INVALID_PARAMETER", detail=f"echo {key}")
        expect_error(lambda h=hook: h.generate(SYNC_MODEL, PROMPT))  # a key echoed back
        assert repr(hook.settings).count(key) == 0
        hook.close()
    use_connection(monkeypatch, server.url, password=wrong_key)
    expect_error(lambda: ReveHook(retry_policy=FAST).generate(SYNC_MODEL, PROMPT))  # a 401

    assert [type(e) for e in errors] == [
        ReveMalformedResponseError,
        ReveAmbiguousSubmissionError,
        ReveBadRequestError,
    ] * 2 + [ReveAuthenticationError]
    captured = capfd.readouterr()
    logged = all_logs_at_debug.text + "\n".join(r.getMessage() for r in all_logs_at_debug.records)
    # The capture is real: it holds urllib3's request lines and the hook's retry warnings.
    assert '"GET /api/v1/status' in logged
    assert "retry 1" in logged
    assert f"submitted (model {SYNC_MODEL})" in captured.out + captured.err
    everything = "\n".join(
        [logged, captured.out, captured.err]
        + [text for e in errors for text in (str(e), repr(e), *map(str, e.args), str(e.detail))]
    )
    for key in (DEFAULT_API_KEY, custom_key, wrong_key):
        assert key not in everything
    assert "echo ***" in everything


def test_the_settings_repr_hides_the_api_key(hook):
    assert DEFAULT_API_KEY not in repr(hook.settings)
    assert DEFAULT_API_KEY not in str(hook.settings)
    assert hook.settings.api_key == DEFAULT_API_KEY


# -- keep-alive -----------------------------------------------------------------------------------


def test_one_hook_reuses_one_tcp_connection_for_all_its_calls(hook, server):
    task = hook.generate(ASYNC_MODEL, PROMPT)
    for _ in range(3):
        hook.get_status(task.task_id)

    assert server.requests_to("total") == 4
    assert server.connections == 1


def test_separate_hooks_use_separate_connections(server, reve_connection_env):
    for _ in range(2):
        ReveHook(retry_policy=FAST).test_connection()

    assert server.connections == 2


def test_the_hook_reconnects_after_the_server_dropped_its_connection(hook, server, task_id):
    server.add_fault(kind="drop_before", endpoint="status")

    assert hook.get_status(task_id).status == "SUCCESS"
    assert hook.get_status(task_id).status == "SUCCESS"
    assert server.requests_to("status") == 3
    assert server.connections == 2

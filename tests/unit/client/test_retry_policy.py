"""The one place that decides retries: what is retried, how long we wait, what is permanent."""

from __future__ import annotations

import email.utils
import time

import pytest

from airflow_provider_reve.client.retry import (
    RetryPolicy,
    backoff_seconds,
    call_with_retries,
    is_permanent,
    is_retryable,
    parse_retry_after,
)
from airflow_provider_reve.exceptions import (
    GENERATE_ENDPOINT,
    STATUS_ENDPOINT,
    ReveAmbiguousSubmissionError,
    ReveAPIError,
    ReveConnectionError,
    ReveValidationError,
    api_error_class,
)

CODES = {
    "INVALID_PROMPT": 400,
    "INVALID_MODEL": 400,
    "INVALID_PARAMETER": 400,
    "CONTENT_POLICY_VIOLATION": 400,
    "INVALID_API_KEY": 401,
    "INSUFFICIENT_CREDITS": 402,
    "TASK_NOT_FOUND": 404,
    "RATE_LIMITED": 429,
    "TOO_MANY_TASKS": 429,
    "GENERATION_FAILED": 500,
    "SERVICE_UNAVAILABLE": 503,
    "TIMEOUT": 504,
}
RETRYABLE_AT_STATUS = {
    "RATE_LIMITED",
    "TOO_MANY_TASKS",
    "GENERATION_FAILED",
    "SERVICE_UNAVAILABLE",
    "TIMEOUT",
}
RETRYABLE_AT_GENERATE = {"RATE_LIMITED", "TOO_MANY_TASKS", "GENERATION_FAILED", "SERVICE_UNAVAILABLE"}


def _error(endpoint: str, code: str) -> ReveAPIError:
    status = CODES[code]
    return api_error_class(status, code)("x", endpoint=endpoint, http_status=status, code=code)


@pytest.mark.parametrize("code", sorted(CODES))
def test_status_polls_retry_exactly_the_transient_codes(code):
    assert is_retryable(_error(STATUS_ENDPOINT, code)) is (code in RETRYABLE_AT_STATUS)


@pytest.mark.parametrize("code", sorted(CODES))
def test_generate_is_retried_only_when_the_api_says_nothing_was_created(code):
    assert is_retryable(_error(GENERATE_ENDPOINT, code)) is (code in RETRYABLE_AT_GENERATE)


def test_a_connection_error_is_retried_for_generate_only_if_the_request_never_left():
    assert is_retryable(ReveConnectionError("x", endpoint=GENERATE_ENDPOINT, request_sent=False))
    assert not is_retryable(ReveConnectionError("x", endpoint=GENERATE_ENDPOINT, request_sent=True))
    assert is_retryable(ReveConnectionError("x", endpoint=STATUS_ENDPOINT, request_sent=True))
    assert not is_retryable(ReveAmbiguousSubmissionError("x", endpoint=GENERATE_ENDPOINT))


def test_permanent_errors_are_exactly_those_no_retry_can_fix():
    permanent = {code for code in CODES if is_permanent(_error(STATUS_ENDPOINT, code))}
    assert permanent == {
        "INVALID_PROMPT",
        "INVALID_MODEL",
        "INVALID_PARAMETER",
        "CONTENT_POLICY_VIOLATION",
        "INVALID_API_KEY",
        "INSUFFICIENT_CREDITS",
        "TASK_NOT_FOUND",
    }
    assert is_permanent(ReveValidationError("bad input"))
    assert not is_permanent(ReveAPIError("odd", endpoint=STATUS_ENDPOINT, http_status=500, code="NEW_CODE"))


def test_retry_after_is_read_as_seconds_or_http_date():
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    in_ten = email.utils.formatdate(time.time() + 10, usegmt=True)
    assert 8 <= parse_retry_after(in_ten) <= 10


def test_backoff_honours_a_sane_retry_after_and_otherwise_grows_exponentially_with_a_cap():
    assert backoff_seconds(1, retry_after=3) == 3
    assert backoff_seconds(1, retry_after=3600, rng=lambda: 1.0) == 0.5  # insane Retry-After ignored
    waits = [backoff_seconds(n, rng=lambda: 1.0) for n in range(1, 8)]
    assert waits == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert 0.375 <= backoff_seconds(1) <= 0.5  # jitter stays within a quarter


def test_retry_loop_stops_at_max_attempts_and_reraises_the_last_error():
    calls = []

    def always_busy():
        calls.append(1)
        raise _error(STATUS_ENDPOINT, "SERVICE_UNAVAILABLE")

    with pytest.raises(ReveAPIError):
        call_with_retries(always_busy, RetryPolicy(max_attempts=3), what="t", sleep=lambda s: None)
    assert len(calls) == 3


def test_retry_loop_stops_when_the_total_time_budget_would_be_exceeded():
    clock = [0.0]
    calls = []

    def busy():
        calls.append(1)
        raise _error(STATUS_ENDPOINT, "RATE_LIMITED")

    def sleep(seconds):
        clock[0] += seconds

    policy = RetryPolicy(max_attempts=100, max_elapsed_seconds=10, initial_backoff=4, max_backoff=4)
    with pytest.raises(ReveAPIError):
        call_with_retries(busy, policy, what="t", sleep=sleep, clock=lambda: clock[0])
    assert clock[0] <= 10
    assert len(calls) < 5


def test_retry_loop_never_resends_a_permanent_error():
    calls = []

    def bad_key():
        calls.append(1)
        raise _error(STATUS_ENDPOINT, "INVALID_API_KEY")

    with pytest.raises(ReveAPIError):
        call_with_retries(bad_key, RetryPolicy(), what="t", sleep=lambda s: None)
    assert len(calls) == 1

"""The one place that decides what is retried, how long to wait, and what is permanent.

Three questions, three answers:

* :func:`is_retryable` -- may the *same HTTP request* be sent again? Status polls are reads and
  are retried on 408/409/429/5xx, garbled answers and connection errors. ``generate`` creates a
  paid task, so it is retried only when the request provably created nothing.
* :func:`backoff_seconds` -- how long to wait before the next attempt: exponential backoff from
  0.5 s capped at 8 s, with jitter, lengthened (never shortened) by a sane ``Retry-After`` (<= 60 s).
* :func:`is_permanent_code` -- will *trying the whole Airflow task again* never help?

Result-file downloads (:class:`~airflow_provider_reve.exceptions.ReveDownloadError`) are reads
too: connection failures, 408/429/5xx are retried by the same loop; a refused URL, a file over
``max_bytes`` or a 403/404/410 (an expired signed URL) are not.

:func:`call_with_retries` / :func:`acall_with_retries` are the only retry loops in the codebase.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from airflow_provider_reve.exceptions import (
    GENERATE_ENDPOINT,
    ReveAmbiguousSubmissionError,
    ReveAPIError,
    ReveConnectionError,
    ReveDownloadError,
    ReveDownloadTooLargeError,
    ReveMalformedResponseError,
    ReveUnsafeURLError,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

#: API error codes for which no retry, by us or by Airflow, can ever succeed.
PERMANENT_CODES = frozenset(
    {
        "INVALID_PROMPT",
        "INVALID_MODEL",
        "INVALID_PARAMETER",
        "CONTENT_POLICY_VIOLATION",
        "INVALID_API_KEY",
        "INSUFFICIENT_CREDITS",
        "TASK_NOT_FOUND",
    }
)

# A status poll is a read: any of these may go away on their own.
_RETRYABLE_STATUS_FOR_READS = frozenset({408, 409, 429, 500, 502, 503, 504})
# A submission is retried only when the API tells us nothing was created: "slow down",
# "internal error, safe to retry" (the reference's words) and "temporarily unavailable".
_SAFE_TO_RESUBMIT_CODES = frozenset({"RATE_LIMITED", "GENERATION_FAILED", "SERVICE_UNAVAILABLE"})

MAX_SANE_RETRY_AFTER = 60.0
# Answers without a machine code whose status alone says "this request is wrong".
_PERMANENT_STATUS_WITHOUT_CODE = frozenset({400, 401, 402, 403, 404, 422})


def is_retryable(error: BaseException) -> bool:
    """Whether the request that raised ``error`` may be sent again as it is."""
    if isinstance(error, ReveAmbiguousSubmissionError):
        return False
    if isinstance(error, ReveDownloadError):
        if isinstance(error, (ReveUnsafeURLError, ReveDownloadTooLargeError)):
            return False
        return error.http_status is None or error.http_status in _RETRYABLE_STATUS_FOR_READS
    if not isinstance(error, ReveAPIError):
        return False
    if isinstance(error, ReveConnectionError):
        # A read may always be re-sent; a submission only if it never left this machine.
        return error.endpoint != GENERATE_ENDPOINT or not error.request_sent
    if error.endpoint == GENERATE_ENDPOINT:
        if error.code == "TOO_MANY_TASKS":
            # Nothing was created, so re-sending is safe -- but the wait is for other tasks to
            # finish (minutes), which the operator handles by deferring, not the hook by sleeping.
            return True
        # Without a documented machine code (a gateway's page), only a 429 proves nothing was
        # made: rate limiters refuse before forwarding, while proxies also answer 503 after
        # forwarding (an upstream reset or timeout), when the task may already exist.
        return error.code in _SAFE_TO_RESUBMIT_CODES or (error.code is None and error.http_status == 429)
    if isinstance(error, ReveMalformedResponseError):
        return True
    return error.http_status in _RETRYABLE_STATUS_FOR_READS


def should_retry_in_hook(error: BaseException) -> bool:
    """Whether the hook's own short retry loop should try again (vs. raising at once)."""
    if isinstance(error, ReveAPIError) and error.code == "TOO_MANY_TASKS":
        return False
    return is_retryable(error)


def is_permanent_code(code: str | None) -> bool:
    """Whether an API error code (at submit, or on a FAILED task) can never succeed on retry.

    Unknown codes are treated as transient: failed tasks are refunded, so one more try costs
    nothing, while wrongly calling an error permanent would drop work a retry could have done.
    """
    return code in PERMANENT_CODES


def is_permanent(error: BaseException) -> bool:
    """Whether an error means the Airflow task can never succeed by being tried again."""
    from airflow_provider_reve.exceptions import ReveConfigurationError, ReveValidationError

    if isinstance(error, (ReveValidationError, ReveConfigurationError)):
        return True
    if isinstance(error, ReveDownloadError):
        # A refused URL, an oversized file or an expired link stays so on every try.
        return not is_retryable(error)
    if isinstance(error, ReveAPIError):
        if error.code is not None:
            return is_permanent_code(error.code)
        if error.endpoint != GENERATE_ENDPOINT and error.http_status == 404:
            # A gateway's bare 404 on a status read says nothing about the task; only the API's
            # own TASK_NOT_FOUND may end a wait for a paid task.
            return False
        return error.http_status in _PERMANENT_STATUS_WITHOUT_CODE
    return False


def too_many_tasks_wait(attempt: int, retry_after: float | None = None) -> float:
    """Seconds to wait before submitting again after ``TOO_MANY_TASKS`` (other tasks must finish).

    Slower than :func:`backoff_seconds`: from 10 s doubling to 60 s; a sane ``Retry-After`` may
    lengthen a step but never brings it below that schedule.
    Other tasks have to finish first, which takes tens of seconds, and each round trip through
    a timer deferral costs a worker start-up; a wait much shorter than that only adds churn.
    """
    return backoff_seconds(attempt, retry_after, initial=10.0, cap=60.0)


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds (it may be a number or an HTTP date); ``None`` if absent/bad."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if parsed is None:
            return None
        seconds = parsed.timestamp() - time.time()
    return max(0.0, seconds)


def backoff_seconds(
    attempt: int,
    retry_after: float | None = None,
    *,
    initial: float = 0.5,
    cap: float = 8.0,
    rng: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before retry number ``attempt`` (1 = the first retry).

    A sane ``Retry-After`` (0-60 s) may lengthen the wait, never shorten it: ``Retry-After: 0``
    from a busy server must not turn a back-off into a tight loop.
    """
    # The exponent is bounded: a long outage ridden out by a trigger reaches high attempt counts.
    base = min(cap, initial * 2 ** min(max(0, attempt - 1), 32))
    # Jitter keeps many clients (a mapped fan-out) from retrying in lockstep.
    wait = base * (0.75 + 0.25 * rng())
    if retry_after is not None and 0 <= retry_after <= MAX_SANE_RETRY_AFTER:
        return max(wait, retry_after)
    return wait


@dataclass(frozen=True)
class RetryPolicy:
    """Bounds for the hook's retry loop: attempts *and* total time, whichever ends first."""

    max_attempts: int = 5
    max_elapsed_seconds: float = 60.0
    initial_backoff: float = 0.5
    max_backoff: float = 8.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("RetryPolicy.max_attempts must be >= 1")

    def next_wait(self, attempt: int, error: BaseException, started: float, now: float) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or ``None`` to give up and raise."""
        if attempt >= self.max_attempts or not should_retry_in_hook(error):
            return None
        retry_after = error.retry_after if isinstance(error, ReveAPIError) else None
        wait = backoff_seconds(attempt, retry_after, initial=self.initial_backoff, cap=self.max_backoff)
        if now + wait - started > self.max_elapsed_seconds:
            return None
        return wait


NO_RETRIES = RetryPolicy(max_attempts=1)


def call_with_retries(
    func: Callable[[], T],
    policy: RetryPolicy,
    *,
    what: str,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """Call ``func`` until it succeeds or :class:`RetryPolicy` says stop; re-raise the last error."""
    started = clock()
    attempt = 0
    while True:
        attempt += 1
        try:
            return func()
        except (ReveAPIError, ReveDownloadError) as error:
            wait = policy.next_wait(attempt, error, started, clock())
            if wait is None:
                raise
            log.warning("%s failed (%s); retry %d in %.1fs", what, _short(error), attempt, wait)
            sleep(wait)


async def acall_with_retries(
    func: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    what: str,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """Async twin of :func:`call_with_retries`; waits with ``asyncio.sleep`` (never blocks the loop)."""
    started = clock()
    attempt = 0
    while True:
        attempt += 1
        try:
            return await func()
        except ReveAPIError as error:
            wait = policy.next_wait(attempt, error, started, clock())
            if wait is None:
                raise
            log.warning("%s failed (%s); retry %d in %.1fs", what, _short(error), attempt, wait)
            await asyncio.sleep(wait)


def _short(error: ReveAPIError | ReveDownloadError) -> str:
    code = getattr(error, "code", None)
    return f"{error.http_status or 'no answer'} {code or type(error).__name__}"

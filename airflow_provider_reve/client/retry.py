"""How the provider retries: how long to wait, how often, and the only retry loops.

* :func:`backoff_seconds` -- how long to wait before the next attempt: exponential backoff from
  0.5 s capped at 8 s, with jitter, lengthened (never shortened) by a sane ``Retry-After`` (<= 60 s).
* :class:`RetryPolicy` -- bounds for the hook's loop: attempts *and* total time.
* :func:`call_with_retries` / :func:`acall_with_retries` are the only retry loops in the codebase.

*Whether* an error may be retried is a fact about the error, stated beside the error classes in
:mod:`airflow_provider_reve.exceptions` (``is_retryable``, ``is_permanent``, ``PERMANENT_CODES``)
and re-exported here, so that hook, trigger and operators ask this one module. This module
imports ``exceptions``; never the other way round.
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
    PERMANENT_CODES,
    ReveAPIError,
    ReveDownloadError,
    is_permanent,
    is_permanent_code,
    is_retryable,
)

__all__ = [
    "MAX_SANE_RETRY_AFTER",
    "NO_RETRIES",
    "PERMANENT_CODES",
    "RetryPolicy",
    "acall_with_retries",
    "backoff_seconds",
    "call_with_retries",
    "is_permanent",
    "is_permanent_code",
    "is_retryable",
    "parse_retry_after",
    "should_retry_in_hook",
    "too_many_tasks_wait",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_SANE_RETRY_AFTER = 60.0


def should_retry_in_hook(error: BaseException) -> bool:
    """Whether the hook's own short retry loop should try again (vs. raising at once).

    A submission refused with ``TOO_MANY_TASKS`` waits for other tasks to finish (minutes): the
    operator does that, deferring. A status read refused so is a read like any other 429.

    :param error: what the attempt raised.
    :return: ``True`` to try again.
    """
    if (
        isinstance(error, ReveAPIError)
        and error.code == "TOO_MANY_TASKS"
        and error.endpoint == GENERATE_ENDPOINT
    ):
        return False
    return is_retryable(error)


def too_many_tasks_wait(attempt: int, retry_after: float | None = None) -> float:
    """Seconds to wait before submitting again after ``TOO_MANY_TASKS`` (other tasks must finish).

    Slower than :func:`backoff_seconds`: from 10 s doubling to 60 s; a sane ``Retry-After`` may
    lengthen a step but never brings it below that schedule.
    Other tasks have to finish first, which takes tens of seconds, and each round trip through
    a timer deferral costs a worker start-up; a wait much shorter than that only adds churn.

    :param attempt: the retry's number (1 = the first).
    :param retry_after: the server's ``Retry-After``, in seconds, if any.
    :return: seconds to wait.
    """
    return backoff_seconds(attempt, retry_after, initial=10.0, cap=60.0)


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds (it may be a number or an HTTP date); ``None`` if absent/bad.

    :param value: the header's value.
    :return: seconds (never negative), or ``None``.
    """
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

    :param attempt: the retry's number (1 = the first retry).
    :param retry_after: the server's ``Retry-After``, in seconds, if any.
    :param initial: the wait before the first retry, in seconds.
    :param cap: the longest wait, in seconds.
    :param rng: returns a random number in [0, 1), for the jitter.
    :return: seconds to wait.
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
    """Bounds for the hook's retry loop: attempts *and* total time, whichever ends first.

    :param max_attempts: attempts in all, the first included.
    :param max_elapsed_seconds: seconds after the first attempt past which no retry starts.
    :param initial_backoff: seconds before the first retry (doubling after it, with jitter).
    :param max_backoff: the longest wait between two attempts, in seconds.
    """

    max_attempts: int = 5
    max_elapsed_seconds: float = 60.0
    initial_backoff: float = 0.5
    max_backoff: float = 8.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("RetryPolicy.max_attempts must be >= 1")

    def next_wait(self, attempt: int, error: BaseException, started: float, now: float) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or ``None`` to give up and raise.

        :param attempt: the number of the attempt that failed (1 = the first).
        :param error: what it raised.
        :param started: the ``time.monotonic()`` of the first attempt.
        :param now: the ``time.monotonic()`` now.
        :return: seconds to wait, or ``None``.
        """
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
    """Call ``func`` until it succeeds or :class:`RetryPolicy` says stop; re-raise the last error.

    :param func: one attempt.
    :param policy: when to stop.
    :param what: what is being done, for the log lines of the retries.
    :param sleep: waits between attempts.
    :param clock: the monotonic clock the policy's elapsed time is read from.
    :return: what ``func`` returned.
    """
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
    """Async twin of :func:`call_with_retries`; waits with ``asyncio.sleep`` (never blocks the loop).

    :param func: makes the coroutine of one attempt.
    :param policy: when to stop.
    :param what: what is being done, for the log lines of the retries.
    :param clock: the monotonic clock the policy's elapsed time is read from.
    :return: what ``func``'s coroutine returned.
    """
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

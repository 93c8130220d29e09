"""Answers no real Reve API sends, but a proxy or a broken server does -- over real loopback HTTP.

* A proxy's 503 page after the request was forwarded: a paid task may exist, so ``generate`` is
  not sent again (a rate limiter's 429 page still is: it refuses before forwarding).
* ``SUCCESS`` without a single result URL: never a result. A status read reads again; a
  ``generate`` is ambiguous and names the task that exists.
* An answer hundreds of MiB long: only the first 256 KiB are ever read.

The server is the hostile stub of ``tests/support/hostile_stub.py``.
"""

from __future__ import annotations

import asyncio
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hostile_stub import HostileStub, Reply, html_reply, task_reply
from reve_test_helpers import fire, use_connection

from airflow_provider_reve.client.retry import NO_RETRIES, RetryPolicy
from airflow_provider_reve.exceptions import (
    ReveAmbiguousSubmissionError,
    ReveMalformedResponseError,
)
from airflow_provider_reve.hooks.reve import ReveAsyncHook, ReveHook
from airflow_provider_reve.testing import DEFAULT_API_KEY
from airflow_provider_reve.triggers.reve import OUTCOME_TIMEOUT, ReveTaskTrigger

MODEL = "seedream-5"
PROMPT = "a lighthouse in a storm"
TASK_ID = "task-7"
URLS = ["https://cdn.example/task-7/1.png"]
FAST = RetryPolicy(max_attempts=4, initial_backoff=0.01, max_backoff=0.01)
MiB = 1024 * 1024
HUGE = 64 * MiB


@pytest.fixture
def stub(monkeypatch: pytest.MonkeyPatch) -> Iterator[HostileStub]:
    with HostileStub() as hostile:
        use_connection(monkeypatch, hostile.url, password=DEFAULT_API_KEY)
        yield hostile


@pytest.fixture
def hook(stub: HostileStub) -> Iterator[ReveHook]:
    reve_hook = ReveHook(retry_policy=FAST)
    yield reve_hook
    reve_hook.close()


def in_turn(*replies: Reply) -> Callable[[Any], Reply]:
    """Answer with each reply in turn, then keep answering with the last one."""
    queue = list(replies)

    def answer(request: Any) -> Reply:
        return queue.pop(0) if len(queue) > 1 else queue[0]

    return answer


# -- a proxy's 503 page ---------------------------------------------------------------------------


def test_a_proxy_503_after_the_request_was_forwarded_is_not_resent(hook, stub):
    billed: list[str] = []

    def bill_then_fail(request: Any) -> Reply:
        billed.append(request.path)  # the task was created and charged upstream...
        return html_reply(503, "<h1>503 Service Temporarily Unavailable</h1>")  # ...then the proxy

    stub.script = bill_then_fail

    with pytest.raises(ReveAmbiguousSubmissionError, match="paid task may have been created"):
        hook.generate(MODEL, PROMPT)

    assert len(billed) == 1  # once sent 4 POSTs: four charges for one generate()


# -- SUCCESS without result URLs ------------------------------------------------------------------


def test_a_generate_success_without_result_urls_is_ambiguous_and_names_the_task(hook, stub):
    stub.script = lambda request: task_reply(TASK_ID, "SUCCESS", consumed_credits=12)

    with pytest.raises(ReveAmbiguousSubmissionError) as raised:
        hook.generate(MODEL, PROMPT)

    assert raised.value.task_id == TASK_ID
    assert stub.requests_to("/generate") == 1


def test_a_status_success_without_result_urls_is_read_again_until_the_urls_come(hook, stub):
    stub.script = in_turn(
        task_reply(TASK_ID, "SUCCESS", response={"resultUrls": []}),
        task_reply(TASK_ID, "SUCCESS"),
        task_reply(TASK_ID, "SUCCESS", response={"resultUrls": URLS}),
    )

    task = hook.get_status(TASK_ID)

    assert task.result_urls == tuple(URLS)
    assert stub.requests_to("/status") == 3


def test_a_trigger_never_reports_success_without_result_urls(stub):
    stub.script = lambda request: task_reply(TASK_ID, "SUCCESS", response={"resultUrls": []})

    event = fire(ReveTaskTrigger(TASK_ID, poll_interval=0.01, deadline=time.time() + 1.0))

    assert event["outcome"] == OUTCOME_TIMEOUT, event
    assert "resultUrls" in event["message"] or "result URL" in event["message"], event["message"]
    assert stub.requests_to("/status") >= 2  # read again, not taken as done


# -- answers too long to read ---------------------------------------------------------------------


def read_peak(call: Callable[[], Any]) -> tuple[BaseException | None, int]:
    """The exception ``call`` raised (or None) and the most memory Python held meanwhile."""
    tracemalloc.start()
    raised: BaseException | None = None
    try:
        call()
    except Exception as error:  # returned for the test to inspect
        raised = error
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return raised, peak


def hung_up_early(stub: HostileStub) -> bool:
    """The client stopped reading long before the end (a reset, not a drained 64 MiB)."""
    assert stub.stream_ended.wait(10), "the stub is still sending: the client neither read nor hung up"
    return stub.streamed_bytes < HUGE // 2


def test_a_huge_503_page_on_a_status_read_is_read_only_up_to_the_cap(hook, stub):
    hook.retry_policy = NO_RETRIES
    stub.script = lambda request: Reply(503, b"<html>", content_type="text/html", stream_bytes=HUGE)

    error, peak = read_peak(lambda: hook.get_status(TASK_ID))

    assert isinstance(error, ReveMalformedResponseError)
    assert "longer than 256 KiB" in str(error)
    assert error.retryable
    assert peak < 16 * MiB
    assert hung_up_early(stub)


def test_a_huge_answer_to_generate_is_ambiguous_and_read_only_up_to_the_cap(hook, stub):
    stub.script = lambda request: Reply(200, b'{"code": 200, ', stream_bytes=HUGE)

    error, peak = read_peak(lambda: hook.generate(MODEL, PROMPT))

    assert isinstance(error, ReveAmbiguousSubmissionError)
    assert stub.requests_to("/generate") == 1
    assert peak < 16 * MiB
    assert hung_up_early(stub)


def test_a_huge_503_page_is_read_only_up_to_the_cap_by_the_async_hook_too(stub):
    stub.script = lambda request: Reply(503, b"<html>", content_type="text/html", stream_bytes=HUGE)

    async def read() -> None:
        await ReveAsyncHook(retry_policy=NO_RETRIES).aget_status(TASK_ID)

    error, peak = read_peak(lambda: asyncio.run(read()))

    assert isinstance(error, ReveMalformedResponseError)
    assert "longer than 256 KiB" in str(error)
    assert peak < 16 * MiB
    assert hung_up_early(stub)

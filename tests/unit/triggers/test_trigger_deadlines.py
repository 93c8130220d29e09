"""``ReveTaskTrigger`` at the edges of its wait: deadlines, slow answers and API outages.

A paid task that finished must never be reported as timed out just because nobody looked; a
server that answers slowly must not hold a trigger past its deadline; and a short outage must
be ridden out in the triggerer as a poking sensor rides it out in a worker.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from reve_test_helpers import use_connection
from structlog.testing import capture_logs
from trickle_stub import trickling_status_server

from airflow_provider_reve.hooks.reve import ReveHook
from airflow_provider_reve.testing import FakeReveServer
from airflow_provider_reve.triggers.reve import (
    OUTCOME_ERROR,
    OUTCOME_SUCCESS,
    OUTCOME_TIMEOUT,
    ReveTaskTrigger,
)

ASYNC_MODEL = "seedream-5"
POLL = 0.05
EVENT_BOUND = 20.0  # seconds: far beyond what any of these waits needs when it works


@pytest.fixture
def server(fake_reve_server: FakeReveServer, reve_connection_env: str) -> FakeReveServer:
    fake_reve_server.set_async_seconds(60)  # tasks run until a test finishes or fails them
    return fake_reve_server


def submit() -> str:
    hook = ReveHook()
    try:
        return hook.generate(ASYNC_MODEL, prompt="A lighthouse on a cliff").task_id
    finally:
        hook.close()


def trigger_for(task_id: str, *, deadline_in: float | None, **kwargs: Any) -> ReveTaskTrigger:
    kwargs.setdefault("poll_interval", POLL)
    deadline = None if deadline_in is None else time.time() + deadline_in
    return ReveTaskTrigger(reve_task_id=task_id, deadline=deadline, model=ASYNC_MODEL, **kwargs)


async def the_one_event(trigger: ReveTaskTrigger) -> dict[str, Any]:
    async def collect() -> list[dict[str, Any]]:
        return [event.payload async for event in trigger.run()]

    events = await asyncio.wait_for(collect(), timeout=EVENT_BOUND)
    assert len(events) == 1, events
    return events[0]


# ---------------------------------------------------------------------- 12.8: look before timing out


async def test_a_task_that_finished_while_the_triggerer_was_down_is_reported_as_succeeded(server):
    task_id = submit()
    server.finish_task(task_id)

    # The triggerer comes back after the deadline has passed.
    event = await the_one_event(trigger_for(task_id, deadline_in=-30))

    assert event["outcome"] == OUTCOME_SUCCESS
    assert event["task"]["status"] == "SUCCESS"
    assert event["task"]["result_urls"] == server.tasks[task_id]["result_urls"]


async def test_a_deadline_shorter_than_the_first_wait_still_reads_the_finished_task(server):
    task_id = submit()
    server.finish_task(task_id)

    event = await the_one_event(trigger_for(task_id, deadline_in=0.2, poll_interval=30))

    assert event["outcome"] == OUTCOME_SUCCESS
    assert server.requests_to("status") == 1


async def test_the_last_look_after_a_passed_deadline_still_waits_for_not_before(server):
    server.set_async_seconds(0.3)
    task_id = submit()  # finishes 0.3 s from now, long before not_before

    trigger = trigger_for(task_id, deadline_in=-30, not_before=time.time() + 1.5)
    event = await the_one_event(trigger)

    # Had it looked before not_before, it would have seen IN_PROGRESS and timed out.
    assert event["outcome"] == OUTCOME_SUCCESS
    assert server.requests_to("status") == 1


# ---------------------------------------------------------------- 12.10: slow answers, hard deadline


async def test_a_trickling_answer_cannot_hold_the_trigger_past_its_deadline(monkeypatch):
    # A byte every 0.1 s for two minutes: no per-read timeout (1 s here) ever fires.
    async with trickling_status_server(byte_every=0.1, for_seconds=120) as stub:
        use_connection(monkeypatch, stub.url, connect_timeout=1, read_timeout=1)

        event = await the_one_event(trigger_for("trickled-task", deadline_in=1.0))

    assert event["outcome"] == OUTCOME_TIMEOUT
    assert event["task"] is None
    assert "could not be read" in event["message"]


async def test_without_a_deadline_each_trickling_answer_is_cut_and_read_again(monkeypatch):
    async with trickling_status_server(byte_every=0.1, for_seconds=120) as stub:
        use_connection(monkeypatch, stub.url, connect_timeout=0.5, read_timeout=0.5)
        waiting = asyncio.ensure_future(the_one_event(trigger_for("trickled-task", deadline_in=None)))
        try:
            for _ in range(int(EVENT_BOUND / 0.05)):
                if waiting.done() or stub.requests >= 3:
                    break
                await asyncio.sleep(0.05)
            # Each cut answer is a transient error: logged, read again, and the wait goes on.
            assert not waiting.done(), waiting.result()
            assert stub.requests >= 3
        finally:
            waiting.cancel()


# ------------------------------------------------------------- 14.3: an outage is ridden out


async def test_a_dozen_503s_while_the_task_runs_do_not_end_the_wait(server):
    task_id = submit()
    server.add_fault(kind="error", endpoint="status", code="SERVICE_UNAVAILABLE", times=12)
    trigger = trigger_for(task_id, deadline_in=60)
    waiting = asyncio.ensure_future(the_one_event(trigger))

    for _ in range(int(EVENT_BOUND / 0.02)):  # the outage is over...
        if waiting.done() or not server.faults:
            break
        await asyncio.sleep(0.02)
    assert not waiting.done(), waiting.result()
    server.finish_task(task_id)  # ...and then the task finishes
    event = await waiting

    assert event["outcome"] == OUTCOME_SUCCESS
    assert event["task"]["status"] == "SUCCESS"
    assert server.requests_to("status") >= 13


async def test_every_transient_error_in_the_trigger_is_logged_with_its_code(server):
    task_id = submit()
    server.finish_task(task_id)
    server.add_fault(kind="error", endpoint="status", code="SERVICE_UNAVAILABLE", times=3)
    server.add_fault(kind="error", endpoint="status", code="RATE_LIMITED", times=2)

    with capture_logs() as logs:
        event = await the_one_event(trigger_for(task_id, deadline_in=60, max_consecutive_errors=4))

    assert event["outcome"] == OUTCOME_SUCCESS
    transient = [line for line in _messages(logs, "warning") if "Transient error reading Reve task" in line]
    assert len(transient) == 5
    assert sum("SERVICE_UNAVAILABLE" in line for line in transient) == 3
    assert sum("RATE_LIMITED" in line for line in transient) == 2
    # max_consecutive_errors now only says, once, that this is a long outage.
    assert [line for line in _messages(logs, "error") if "4 times in a row" in line] != []
    assert len(_messages(logs, "error")) == 1


def _messages(logs: list[dict[str, Any]], level: str) -> list[str]:
    return [str(entry["event"]) for entry in logs if entry.get("log_level") == level]


async def test_an_outage_is_ridden_out_but_a_permanent_error_after_it_ends_the_wait_at_once(server):
    task_id = submit()
    server.add_fault(kind="error", endpoint="status", code="SERVICE_UNAVAILABLE", times=8)
    server.add_fault(kind="error", endpoint="status", code="INVALID_API_KEY", times=None)

    event = await the_one_event(trigger_for(task_id, deadline_in=60))

    assert event["outcome"] == OUTCOME_ERROR
    assert event["error_code"] == "INVALID_API_KEY"
    assert event["retryable"] is False
    assert server.requests_to("status") == 9  # eight transient errors, then one permanent


@pytest.mark.parametrize("poll_interval", [0.05, 3.0, 20.0, 60.0])
def test_the_wait_after_a_transient_error_grows_from_the_poll_interval_but_stays_capped(poll_interval):
    from airflow_provider_reve.exceptions import STATUS_ENDPOINT, ReveServerError

    trigger = ReveTaskTrigger(reve_task_id="t", poll_interval=poll_interval)
    error = ReveServerError("503", endpoint=STATUS_ENDPOINT, http_status=503, code="SERVICE_UNAVAILABLE")
    cap = max(poll_interval, min(4 * poll_interval, 30.0))

    waits = [trigger._error_backoff(n, error) for n in range(1, 30)]

    assert all(poll_interval <= wait <= cap for wait in waits)  # never faster than asked, never long
    if poll_interval < 30:
        assert waits[-1] > waits[0]  # but it does back off

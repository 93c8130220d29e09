"""A deferred task's log while it waits: one line per status change, a progress line per ~30 s.

Run against the fake Reve API over loopback HTTP, polling fast. The time the log lines measure is
a stepping clock handed to the trigger, so "30 s of waiting" takes a fraction of a second and the
assertions count lines, not seconds.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import structlog

from airflow_provider_reve.hooks.reve import ReveHook
from airflow_provider_reve.testing import FakeReveServer
from airflow_provider_reve.triggers.reve import (
    OUTCOME_FAILED,
    OUTCOME_SUCCESS,
    PROGRESS_LOG_INTERVAL,
    ReveTaskTrigger,
)

MODEL = "seedream-5"
POLL = 0.01
STEP = 5.0  # clock seconds that pass between two status reads
ELAPSED = re.compile(r"after (\d+)s of waiting")


class SteppingClock:
    """A monotonic clock that moves ``step`` seconds each time it is read."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 1000.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


@pytest.fixture
def server(fake_reve_server: FakeReveServer, reve_connection_env: str) -> FakeReveServer:
    fake_reve_server.set_async_seconds(600)  # runs until the test finishes or fails it
    return fake_reve_server


@pytest.fixture
def wait_lines() -> Iterator[Callable[[], list[str]]]:
    """The trigger's INFO lines about the wait (Airflow's structlog loggers, captured)."""
    with structlog.testing.capture_logs() as logs:
        yield lambda: [
            entry["event"]
            for entry in logs
            if entry["log_level"] == "info" and "of waiting" in entry["event"]
        ]


def submit() -> str:
    hook = ReveHook()
    try:
        return hook.generate(MODEL, prompt="A slow, long video of the sea").task_id
    finally:
        hook.close()


def trigger_for(task_id: str, clock: SteppingClock) -> ReveTaskTrigger:
    trigger = ReveTaskTrigger(
        reve_task_id=task_id, poll_interval=POLL, deadline=time.time() + 60, model=MODEL
    )
    trigger._clock = clock
    return trigger


async def events_after(server: FakeReveServer, trigger: ReveTaskTrigger, reads: int, end: Any) -> list[Any]:
    """Let the trigger read the status ``reads`` times, then ``end()`` the task; its events."""
    running = asyncio.ensure_future(_collect(trigger))
    deadline = time.monotonic() + 30
    while server.requests_to("status") < reads:
        assert not running.done(), running.result()
        assert time.monotonic() < deadline, "the trigger stopped polling"
        await asyncio.sleep(0.01)
    end()
    return await asyncio.wait_for(running, timeout=30)


async def _collect(trigger: ReveTaskTrigger) -> list[Any]:
    return [event.payload async for event in trigger.run()]


async def test_a_long_unchanged_status_logs_a_progress_line_per_interval_not_a_line_per_poll(
    server, wait_lines
):
    task_id = submit()

    events = await events_after(
        server, trigger_for(task_id, SteppingClock(STEP)), 60, lambda: server.finish_task(task_id)
    )

    assert [e["outcome"] for e in events] == [OUTCOME_SUCCESS]
    reads = server.requests_to("status")
    lines = wait_lines()
    progress = [line for line in lines if "still IN_PROGRESS" in line]
    # 60+ reads, 5 clock-seconds apart: one progress line per 30 s, plus the two status changes.
    assert len(lines) <= reads * STEP / PROGRESS_LOG_INTERVAL + 2 < reads / 4
    assert len(progress) >= 60 * STEP / PROGRESS_LOG_INTERVAL - 2
    elapsed = [int(ELAPSED.search(line)[1]) for line in progress]  # type: ignore[index]
    assert all(later - earlier >= PROGRESS_LOG_INTERVAL for earlier, later in itertools.pairwise(elapsed))
    assert all(task_id in line for line in lines)


async def test_every_status_change_is_logged_at_once_whatever_the_interval(server, wait_lines):
    task_id = submit()
    frozen = SteppingClock(0.0)  # no time passes: only a change of status can earn a line

    events = await events_after(
        server,
        trigger_for(task_id, frozen),
        20,
        lambda: server.fail_task(task_id, "GENERATION_FAILED", "The GPU fell over"),
    )

    assert [e["outcome"] for e in events] == [OUTCOME_FAILED]
    assert server.requests_to("status") >= 20
    assert wait_lines() == [
        f"Reve task {task_id} is IN_PROGRESS (after 0s of waiting).",
        f"Reve task {task_id} is FAILED (after 0s of waiting).",
    ]


async def test_after_an_outage_the_next_status_read_is_logged_again(server, wait_lines):
    task_id = submit()
    server.add_fault(kind="error", endpoint="status", code="SERVICE_UNAVAILABLE", retry_after=0.01, times=1)
    frozen = SteppingClock(0.0)

    events = await events_after(server, trigger_for(task_id, frozen), 10, lambda: server.finish_task(task_id))

    assert [e["outcome"] for e in events] == [OUTCOME_SUCCESS]
    # The failed first read logged its own warning; the first good read says where things stand.
    assert wait_lines()[0] == f"Reve task {task_id} is IN_PROGRESS (after 0s of waiting)."
    assert len(wait_lines()) == 2


def test_the_log_cadence_is_thirty_seconds_and_not_stored_with_the_trigger():
    trigger = ReveTaskTrigger(reve_task_id="t-1", deadline=time.time() + 60)

    assert ReveTaskTrigger.progress_log_interval == PROGRESS_LOG_INTERVAL == 30.0
    assert not any("log" in key or "clock" in key for key in trigger.serialize()[1])

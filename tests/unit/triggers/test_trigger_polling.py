"""How often ``ReveTaskTrigger`` reads its task, and over which HTTP session.

Against the fake Reve API over loopback, whose request log says when each read arrived. The
rule (README, "ReveTaskTrigger"): first read at a random moment of the interval after the later
of one interval and ``not_before``; then one current interval after each answer; after
``long_wait_after`` seconds of waiting the interval becomes ``max(poll_interval, 5 s)``. Those
class-level numbers are shrunk here so a "long" wait takes a second, and the assertions are
lower bounds on gaps ("never sooner than"), never upper bounds on time.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import pytest

from airflow_provider_reve.client.async_client import _SESSIONS
from airflow_provider_reve.client.polling import current_interval, first_read_at, wait_origin
from airflow_provider_reve.hooks.reve import ReveHook
from airflow_provider_reve.testing import FakeReveServer
from airflow_provider_reve.triggers.reve import OUTCOME_SUCCESS, ReveTaskTrigger

MODEL = "seedream-5"
EVENT_BOUND = 60.0
# asyncio may wake a timer up to its clock resolution early; this is far more than that.
EARLY = 0.005


@pytest.fixture
def server(fake_reve_server: FakeReveServer, reve_connection_env: str) -> FakeReveServer:
    fake_reve_server.set_async_seconds(600)  # tasks run until the test finishes them
    return fake_reve_server


def submit(count: int = 1) -> list[str]:
    hook = ReveHook()
    try:
        return [hook.generate(MODEL, prompt=f"a long video {i}").task_id for i in range(count)]
    finally:
        hook.close()


def trigger_for(task_id: str, poll_interval: float, **kwargs: Any) -> ReveTaskTrigger:
    return ReveTaskTrigger(
        reve_task_id=task_id, poll_interval=poll_interval, deadline=time.time() + 120, model=MODEL, **kwargs
    )


async def the_event(trigger: ReveTaskTrigger) -> dict[str, Any]:
    events = [event.payload async for event in trigger.run()]
    assert len(events) == 1, events
    return events[0]


async def until(condition: Any, running: Any) -> None:
    deadline = time.monotonic() + EVENT_BOUND
    while not condition():
        if running.done():
            running.result()
            raise AssertionError("the wait ended before the condition was met")
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def reads(server: FakeReveServer, task_id: str) -> list[float]:
    return [p["at"] for p in server.request_log("status") if p["task_id"] == task_id]


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


# ----------------------------------------------------------------------------- the rule itself


@pytest.mark.parametrize(
    ("poll_interval", "waited", "expected"),
    [
        (3.0, 0.0, 3.0),
        (3.0, 59.9, 3.0),
        (3.0, 60.0, 5.0),  # a long task: the slow end of the API's 2-5 s
        (0.5, 600.0, 5.0),
        (10.0, 0.0, 10.0),  # the user's own longer interval always wins
        (10.0, 600.0, 10.0),
    ],
)
def test_a_task_running_past_a_minute_is_read_every_five_seconds_or_the_users_longer_interval(
    poll_interval, waited, expected
):
    assert current_interval(poll_interval, waited) == expected


def test_a_five_minute_video_at_the_default_interval_costs_68_reads_not_100():
    t, count = 0.0, 0
    while t < 300:
        t += current_interval(3.0, t)
        count += 1
    assert count == 68


@pytest.mark.parametrize("draw", [0.0, 0.5, 0.999])
def test_the_first_read_is_one_interval_after_start_or_not_before_plus_a_random_part_of_one(draw):
    assert first_read_at(1000.0, 3.0, None, lambda: draw) == 1003.0 + 3.0 * draw
    assert first_read_at(1000.0, 3.0, 1006.0, lambda: draw) == 1006.0 + 3.0 * draw  # settle wins
    assert first_read_at(1000.0, 3.0, 900.0, lambda: draw) == 1003.0 + 3.0 * draw  # a restart


def test_a_restarted_triggerer_counts_the_wait_from_not_before():
    assert wait_origin(now=2000.0, not_before=1006.0) == 1006.0
    assert wait_origin(now=1000.0, not_before=1006.0) == 1000.0
    assert wait_origin(now=1000.0, not_before=None) == 1000.0


# ------------------------------------------------------------------------------ over loopback


async def test_triggers_started_together_spread_their_first_reads_over_an_interval(server):
    task_ids = submit(3)
    triggers = [trigger_for(task_id, poll_interval=1.0) for task_id in task_ids]
    for trigger, draw in zip(triggers, (0.0, 0.5, 0.99), strict=True):
        trigger._rng = lambda draw=draw: draw
    started = time.monotonic()
    running = asyncio.ensure_future(asyncio.gather(*(the_event(t) for t in triggers)))

    await until(lambda: all(reads(server, t) for t in task_ids), running)
    for task_id in task_ids:
        server.finish_task(task_id)
    await asyncio.wait_for(running, EVENT_BOUND)

    first = [reads(server, task_id)[0] - started for task_id in task_ids]
    assert first[0] >= 1.0 - EARLY  # never sooner than one interval after the start
    assert first[1] >= 1.5 - EARLY
    assert first[2] >= 1.99 - EARLY  # not all at 1.0 s, as before


async def test_a_long_running_task_is_read_less_often_and_never_more_often_than_its_interval(server):
    (task_id,) = submit()
    trigger = trigger_for(task_id, poll_interval=0.05)
    trigger.long_wait_after, trigger.long_wait_interval = 0.6, 0.2  # "60 s" and "5 s", shrunk
    started = time.monotonic()
    running = asyncio.ensure_future(the_event(trigger))

    thinned_from = started + 0.6 + 0.15  # slack for the trigger's own start
    await until(lambda: sum(at > thinned_from for at in reads(server, task_id)) >= 6, running)
    finished_at = time.monotonic()
    server.finish_task(task_id)
    event = await asyncio.wait_for(running, EVENT_BOUND)

    assert event["outcome"] == OUTCOME_SUCCESS
    times = reads(server, task_id)
    assert all(gap >= 0.05 - EARLY for gap in gaps(times))
    early = [at for at in times if at < started + 0.6]
    assert len(early) >= 4  # read at the short interval at first...
    late = [at for at in times if at > thinned_from]
    assert all(gap >= 0.2 - EARLY for gap in gaps(late))  # ...then at the long one
    # The end was seen by the first read after it: detection within one current interval.
    assert len([at for at in times if at > finished_at]) == 1


async def test_an_error_after_the_wait_grew_long_backs_off_from_the_long_interval(server):
    (task_id,) = submit()
    trigger = trigger_for(task_id, poll_interval=0.05)
    trigger.long_wait_after, trigger.long_wait_interval = 0.3, 0.4
    started = time.monotonic()
    running = asyncio.ensure_future(the_event(trigger))

    thinned_from = started + 0.3 + 0.15  # slack for the trigger's own start
    await until(lambda: sum(at > thinned_from for at in reads(server, task_id)) >= 2, running)
    server.add_fault(kind="error", endpoint="status", code="SERVICE_UNAVAILABLE", times=1)
    await until(
        lambda: not server.faults and sum(at > thinned_from for at in reads(server, task_id)) >= 5, running
    )
    server.finish_task(task_id)
    await asyncio.wait_for(running, EVENT_BOUND)

    # Every read after the wait grew long -- the one after the 503 included -- came at least the
    # long interval after the one before, not the short poll_interval.
    late = [at for at in reads(server, task_id) if at > thinned_from]
    assert all(gap >= 0.4 - EARLY for gap in gaps(late))


async def test_triggers_on_one_loop_share_one_session_and_close_it_when_the_last_leaves(server):
    task_ids = submit(5)
    loop = asyncio.get_running_loop()
    connections_before = server.connections
    running = asyncio.ensure_future(
        asyncio.gather(*(the_event(trigger_for(task_id, poll_interval=0.05)) for task_id in task_ids))
    )

    await until(lambda: all(len(reads(server, t)) >= 3 for t in task_ids), running)
    shared = _SESSIONS[loop]
    assert shared.users >= len(task_ids)  # every waiting trigger holds the one session
    for task_id in task_ids:
        server.finish_task(task_id)
    events = await asyncio.wait_for(running, EVENT_BOUND)

    assert [event["outcome"] for event in events] == [OUTCOME_SUCCESS] * 5
    assert shared.session.closed
    assert loop not in _SESSIONS
    # Twenty reads from five triggers, over kept-alive connections: never one per read.
    assert len(server.request_log("status")) >= 20
    assert server.connections - connections_before <= len(task_ids)

"""One request budget per Reve account: ``max_requests_per_second`` and 429 pauses, shared.

Run over real loopback HTTP against the fake Reve API, which records when each request arrived;
the assertions count requests in windows of that log (with slack), they do not time anything.
The schedule's own arithmetic is checked on a virtual clock.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from typing import Any

import jsonschema
import pytest
from reve_test_helpers import use_connection

from airflow_provider_reve.client import ratelimit as _ratelimit
from airflow_provider_reve.client.ratelimit import AsyncRequestGate, SyncRequestGate
from airflow_provider_reve.client.settings import settings_from_connection
from airflow_provider_reve.exceptions import (
    STATUS_ENDPOINT,
    ReveConfigurationError,
    ReveRateLimitError,
)
from airflow_provider_reve.get_provider_info import get_provider_info
from airflow_provider_reve.hooks.reve import ReveHook
from airflow_provider_reve.testing import DEFAULT_API_KEY, FakeReveServer
from airflow_provider_reve.triggers.reve import OUTCOME_SUCCESS, ReveTaskTrigger

MODEL = "seedream-5"
EVENT_BOUND = 60.0  # seconds: far beyond what any wait here needs when it works


@pytest.fixture
def server(fake_reve_server: FakeReveServer, reve_connection_env: str) -> FakeReveServer:
    fake_reve_server.set_async_seconds(600)  # tasks run until the test finishes them
    return fake_reve_server


def submit(count: int) -> list[str]:
    hook = ReveHook()
    try:
        return [hook.generate(MODEL, prompt=f"a slow video {i}").task_id for i in range(count)]
    finally:
        hook.close()


def start_waiting(task_ids: list[str], poll_interval: float, conn_id: str = "reve_default") -> Any:
    triggers = [
        ReveTaskTrigger(
            reve_task_id=task_id,
            reve_conn_id=conn_id,
            poll_interval=poll_interval,
            deadline=time.time() + 120,
            model=MODEL,
        )
        for task_id in task_ids
    ]

    async def one(trigger: ReveTaskTrigger) -> dict[str, Any]:
        events = [event.payload async for event in trigger.run()]
        assert len(events) == 1, events
        return events[0]

    return asyncio.gather(*(one(trigger) for trigger in triggers))


async def until(condition: Any, running: Any = None, bound: float = EVENT_BOUND) -> None:
    deadline = time.monotonic() + bound
    while not condition():
        if running is not None and running.done():
            running.result()  # a wait that ended early: show why
            raise AssertionError("the waits ended before the condition was met")
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def polls(server: FakeReveServer) -> list[dict[str, Any]]:
    return server.request_log("status")


def finish_all(server: FakeReveServer, task_ids: list[str]) -> None:
    for task_id in task_ids:
        server.finish_task(task_id)


def most_in_any_window(times: list[float], window: float) -> int:
    """The largest number of ``times`` inside any half-open window of ``window`` seconds."""
    ordered, best, first = sorted(times), 0, 0
    for last, at in enumerate(ordered):
        while at - ordered[first] >= window:
            first += 1
        best = max(best, last - first + 1)
    return best


# ------------------------------------------------------------------------- 429: everyone pauses


async def test_a_429_with_retry_after_on_one_trigger_holds_every_trigger_of_the_connection(server):
    task_ids = submit(10)
    # The first status read of all gets the 429; Retry-After: 2.
    server.add_fault(kind="error", endpoint="status", code="RATE_LIMITED", retry_after=2, times=1)

    running = asyncio.ensure_future(start_waiting(task_ids, poll_interval=0.1))
    await until(lambda: len(polls(server)) >= 1, running)
    limited_at = polls(server)[0]["at"]
    # Until every trigger has read its task well after the pause.
    await until(
        lambda: {p["task_id"] for p in polls(server) if p["at"] > limited_at + 2.5} == set(task_ids),
        running,
    )
    finish_all(server, task_ids)
    events = await asyncio.wait_for(running, EVENT_BOUND)

    assert all(event["outcome"] == OUTCOME_SUCCESS for event in events)
    # Unlimited, ten triggers polling every 0.1 s would have sent ~150 reads in this window. Reads
    # already on their way when the 429 arrived may land in its first moments: 0.5 s of slack.
    inside = [p for p in polls(server) if limited_at + 0.5 < p["at"] < limited_at + 2.0]
    assert inside == []
    # Resumed with jitter: the ten first reads after the pause do not arrive in one burst.
    resumed = {}
    for p in polls(server):
        if p["at"] > limited_at + 0.5:
            resumed.setdefault(p["task_id"], p["at"])
    assert max(resumed.values()) - min(resumed.values()) > 0.05


async def test_too_many_tasks_is_not_a_rate_limit_and_pauses_nothing(server):
    # TOO_MANY_TASKS is about tasks in flight (a submission), not about reading too fast.
    task_ids = submit(3)
    server.add_fault(kind="error", endpoint="status", code="TOO_MANY_TASKS", retry_after=3, times=1)

    running = asyncio.ensure_future(start_waiting(task_ids, poll_interval=0.05))
    await until(lambda: len(polls(server)) >= 1, running)
    refused = polls(server)[0]
    await until(lambda: polls(server)[-1]["at"] > refused["at"] + 3, running)
    finish_all(server, task_ids)
    await asyncio.wait_for(running, EVENT_BOUND)

    # The other two kept reading while the refused one waited out its own Retry-After.
    meanwhile = [p for p in polls(server) if refused["at"] + 0.5 < p["at"] < refused["at"] + 2.5]
    assert {p["task_id"] for p in meanwhile} == set(task_ids) - {refused["task_id"]}


def test_a_429_seen_by_one_worker_hook_holds_the_other_hooks_of_the_process(server):
    (task_id,) = submit(1)
    server.add_fault(kind="error", endpoint="status", code="RATE_LIMITED", retry_after=1.5, times=1)
    reads_per_thread = 15

    def poll_a_few() -> None:
        hook = ReveHook()
        try:
            for _ in range(reads_per_thread):
                hook.get_status(task_id)
                time.sleep(0.02)
        finally:
            hook.close()

    threads = [threading.Thread(target=poll_a_few) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=EVENT_BOUND)

    log = polls(server)
    limited_at = log[0]["at"]
    assert len(log) == 3 * reads_per_thread + 1  # the 429'd read was retried once
    assert [p for p in log if limited_at + 0.3 < p["at"] < limited_at + 1.5] == []


# ------------------------------------------------------------------- max_requests_per_second


async def test_max_requests_per_second_caps_what_the_api_sees_from_all_triggers_together(server, monkeypatch):
    use_connection(monkeypatch, server.url, max_requests_per_second=25)
    task_ids = submit(20)

    # Twenty triggers polling every 0.02 s would send ~1,000 reads a second.
    running = asyncio.ensure_future(start_waiting(task_ids, poll_interval=0.02))
    await until(lambda: len(polls(server)) >= 60, running)
    finish_all(server, task_ids)
    events = await asyncio.wait_for(running, EVENT_BOUND)

    assert all(event["outcome"] == OUTCOME_SUCCESS for event in events)
    times = [p["at"] for p in polls(server)]
    span = times[-1] - times[0]
    # Slack for a loop stall releasing a few due requests together; unlimited, it would be hundreds.
    assert len(times) <= 25 * span + 6
    assert most_in_any_window(times, 1.0) <= 25 + 6


async def test_two_connections_to_the_same_account_share_one_budget(server, monkeypatch):
    use_connection(monkeypatch, server.url, conn_id="reve_a", max_requests_per_second=10)
    use_connection(monkeypatch, server.url, conn_id="reve_b", max_requests_per_second=10)
    task_ids = submit(10)

    running = asyncio.gather(
        start_waiting(task_ids[:5], poll_interval=0.02, conn_id="reve_a"),
        start_waiting(task_ids[5:], poll_interval=0.02, conn_id="reve_b"),
    )
    await until(lambda: len(polls(server)) >= 30, running)
    finish_all(server, task_ids)
    await asyncio.wait_for(running, EVENT_BOUND)

    times = [p["at"] for p in polls(server)]
    assert len(times) <= 10 * (times[-1] - times[0]) + 6


def test_the_worker_hook_honours_max_requests_per_second_across_threads(server, monkeypatch):
    use_connection(monkeypatch, server.url, max_requests_per_second=10)
    (task_id,) = submit(1)

    def poll_fast() -> None:
        hook = ReveHook()
        try:
            for _ in range(6):
                hook.get_status(task_id)
        finally:
            hook.close()

    threads = [threading.Thread(target=poll_fast) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=EVENT_BOUND)

    times = [p["at"] for p in polls(server)]
    assert len(times) == 18
    # 18 requests at 10 a second cannot arrive within less than 1.7 s (0.2 s slack for transit);
    # unlimited, they take a few milliseconds.
    assert times[-1] - times[0] >= 1.5


def test_without_the_extra_the_worker_hook_is_not_slowed(server):
    (task_id,) = submit(1)
    hook = ReveHook()
    try:
        for _ in range(30):
            hook.get_status(task_id)
    finally:
        hook.close()

    assert len(polls(server)) == 30  # nothing held them; a rate limit of 1/s would take 29 s


# ----------------------------------------------------------------------- the connection field


BAD_RATES = {
    "zero": 0,
    "negative": -1,
    "words": "fast",
    "a checkbox": True,
    "not a number": float("nan"),
    "infinite": float("inf"),
}


@pytest.mark.parametrize("value", BAD_RATES.values(), ids=BAD_RATES.keys())
def test_a_rate_that_is_not_a_positive_number_is_refused_naming_the_field(value):
    with pytest.raises(ReveConfigurationError) as refused:
        settings_from_connection("reve_default", None, None, "sk-x", {"max_requests_per_second": value})

    assert "max_requests_per_second" in str(refused.value)


@pytest.mark.parametrize("value", [None, ""])
def test_an_empty_rate_field_means_no_limit(value):
    settings = settings_from_connection(
        "reve_default", None, None, "sk-x", {"max_requests_per_second": value}
    )

    assert settings.max_requests_per_second is None


@pytest.mark.parametrize("value", [0, -1, 0.5, 20, "20"])
def test_the_forms_rate_field_accepts_exactly_the_rates_the_hook_accepts(value):
    # A form that saves a value the hook then refuses lets a user break a working connection.
    schema = get_provider_info()["connection-types"][0]["conn-fields"]["max_requests_per_second"]["schema"]
    number = float(value)
    try:
        settings = settings_from_connection(
            "reve_default", None, None, "sk-x", {"max_requests_per_second": value}
        )
        hook_accepts = True
    except ReveConfigurationError:
        hook_accepts = False
    try:
        jsonschema.validate(number, schema)
        form_accepts = True
    except jsonschema.ValidationError:
        form_accepts = False

    assert form_accepts == hook_accepts == (number > 0)
    if hook_accepts:
        assert settings.max_requests_per_second == number


def test_the_key_is_not_kept_in_the_shared_limiters(server, monkeypatch):
    use_connection(monkeypatch, server.url, max_requests_per_second=50)
    (task_id,) = submit(1)
    hook = ReveHook()
    hook.get_status(task_id)
    hook.close()

    async def one_trigger_read() -> None:
        await start_waiting([task_id], poll_interval=0.01)
        shared = repr(dict(_ratelimit._LOOP_GATES)) + repr(
            [vars(gate) for gates in _ratelimit._LOOP_GATES.values() for gate in gates.values()]
        )
        assert DEFAULT_API_KEY not in shared

    server.finish_task(task_id)
    asyncio.run(one_trigger_read())
    shared = repr(_ratelimit._PROCESS_GATES) + repr([vars(g) for g in _ratelimit._PROCESS_GATES.values()])
    assert DEFAULT_API_KEY not in shared
    assert _ratelimit._PROCESS_GATES  # the worker's gate exists, keyed by a hash


# ------------------------------------------------------------------ the schedule, on a virtual clock


class VirtualTime:
    """A clock that only moves when someone sleeps on it."""

    def __init__(self) -> None:
        self.now = 100.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def sync_gate(rate: float | None, time_: VirtualTime, draws: list[float]) -> SyncRequestGate:
    gate = SyncRequestGate(rate, clock=time_.clock, rng=lambda: draws.pop(0))
    gate.sleep = time_.sleep
    return gate


def rate_limited(retry_after: float | None) -> ReveRateLimitError:
    return ReveRateLimitError(
        "429", endpoint=STATUS_ENDPOINT, http_status=429, code="RATE_LIMITED", retry_after=retry_after
    )


def test_requests_are_spaced_one_over_the_rate_apart():
    time_ = VirtualTime()
    gate = sync_gate(4.0, time_, [])

    sent = []
    for _ in range(5):
        gate.acquire(STATUS_ENDPOINT)
        sent.append(time_.now)

    assert [round(b - a, 6) for a, b in itertools.pairwise(sent)] == [0.25] * 4


def test_after_a_pause_requests_resume_spread_over_retry_after_not_at_once():
    time_ = VirtualTime()
    draws = [0.0, 0.5, 0.99]
    gate = sync_gate(None, time_, draws)
    gate.observe(rate_limited(4.0))

    resumed = []
    for _ in range(3):
        start = time_.now
        gate.acquire(STATUS_ENDPOINT)
        resumed.append(round(time_.now - 100.0, 6))
        time_.now = start  # three callers waiting at the same moment

    assert resumed == [4.0, 6.0, 7.96]  # the pause, then spread over max(1 s, Retry-After)


def test_a_429_without_retry_after_still_pauses_for_a_second_and_a_huge_one_for_a_minute():
    for retry_after, expected in ((None, 1.0), (3600.0, 60.0)):
        time_ = VirtualTime()
        gate = sync_gate(None, time_, [0.0])
        gate.observe(rate_limited(retry_after))
        gate.acquire(STATUS_ENDPOINT)
        assert time_.now - 100.0 == expected


def test_a_wait_past_the_callers_time_limit_is_refused_without_taking_a_slot():
    time_ = VirtualTime()
    gate = sync_gate(1.0, time_, [])
    gate.acquire(STATUS_ENDPOINT)  # takes the slot at 100.0; the next is at 101.0

    with pytest.raises(ReveRateLimitError) as refused:
        gate.acquire(STATUS_ENDPOINT, ends_at=100.5)

    assert refused.value.http_status is None  # nothing was sent
    assert refused.value.retry_after == pytest.approx(1.0)
    gate.acquire(STATUS_ENDPOINT)  # the refused caller took no slot: 101.0 is still free
    assert time_.now == 101.0


async def test_an_async_wait_that_a_new_pause_overtakes_waits_for_the_new_pause():
    gate = AsyncRequestGate(20.0, rng=lambda: 0.0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    first = asyncio.ensure_future(gate.acquire(STATUS_ENDPOINT))
    await first
    waiting = asyncio.ensure_future(gate.acquire(STATUS_ENDPOINT))  # its slot is 0.05 s away
    await asyncio.sleep(0)
    gate.observe(rate_limited(0.3))  # a 429 arrives meanwhile

    await waiting

    assert loop.time() - started >= 0.3 - 0.01


async def test_beyond_the_in_flight_cap_requests_wait_in_the_gate_until_an_answer_frees_a_place():
    gate = AsyncRequestGate(None, max_in_flight=2)
    entered: list[int] = []
    release = asyncio.Event()

    async def one(number: int) -> None:
        async with gate.request(STATUS_ENDPOINT):
            entered.append(number)
            await release.wait()

    waiting = [asyncio.ensure_future(one(n)) for n in range(3)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert entered == [0, 1]  # the third holds no request yet
    release.set()
    await asyncio.gather(*waiting)
    assert entered == [0, 1, 2]


async def test_a_request_that_gets_no_place_before_its_time_limit_is_refused_unsent():
    gate = AsyncRequestGate(None, max_in_flight=1)
    async with gate.request(STATUS_ENDPOINT):
        with pytest.raises(ReveRateLimitError) as refused:
            async with gate.request(STATUS_ENDPOINT, ends_at=time.monotonic() + 0.05):
                raise AssertionError("entered without a place")

    assert refused.value.http_status is None
    assert "waiting for answers" in str(refused.value)
    async with gate.request(STATUS_ENDPOINT, ends_at=time.monotonic() + 0.05):
        pass  # the refused one gave its place back: nothing leaked

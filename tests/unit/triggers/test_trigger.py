"""``ReveTaskTrigger`` run against the fake Reve API over real loopback HTTP.

The trigger is what the triggerer runs while a deferred task waits: it must fire exactly one
event that says what happened (success, failed, timeout, error), ride out transient errors,
and store nothing but plain, secret-free kwargs in the metadata DB.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import TaskDeferred
from airflow.sdk.serde import deserialize, serialize

from airflow_provider_reve.hooks.reve import ReveHook
from airflow_provider_reve.models import ReveTask
from airflow_provider_reve.testing import DEFAULT_API_KEY, FakeReveServer
from airflow_provider_reve.triggers.reve import (
    OUTCOME_ERROR,
    OUTCOME_FAILED,
    OUTCOME_SUCCESS,
    OUTCOME_TIMEOUT,
    ReveTaskTrigger,
    read_event,
)

ASYNC_MODEL = "seedream-5"
PROMPT = "A lighthouse on a cliff at golden hour"
POLL = 0.05
EVENT_KEYS = {"outcome", "reve_task_id", "task", "message", "error_code", "retryable"}


@pytest.fixture
def server(fake_reve_server: FakeReveServer, reve_connection_env: str) -> FakeReveServer:
    fake_reve_server.set_async_seconds(0.2)
    return fake_reve_server


def submit(model: str = ASYNC_MODEL, **params: Any) -> str:
    """Create a task on the fake server the way a worker would, and return its id."""
    hook = ReveHook()
    try:
        return hook.generate(model, prompt=PROMPT, **params).task_id
    finally:
        hook.close()


def trigger_for(task_id: str, *, deadline_in: float | None = 30.0, **kwargs: Any) -> ReveTaskTrigger:
    deadline = None if deadline_in is None else time.time() + deadline_in
    kwargs.setdefault("poll_interval", POLL)
    return ReveTaskTrigger(reve_task_id=task_id, deadline=deadline, model=ASYNC_MODEL, **kwargs)


async def all_events(trigger: ReveTaskTrigger) -> list[dict[str, Any]]:
    return [event.payload async for event in trigger.run()]


async def the_one_event(trigger: ReveTaskTrigger) -> dict[str, Any]:
    events = await all_events(trigger)
    assert len(events) == 1, events
    assert set(events[0]) == EVENT_KEYS
    return events[0]


async def wait_until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


# ------------------------------------------------------------------------------------- outcomes


async def test_a_task_that_succeeds_fires_one_success_event_carrying_the_finished_task(server):
    task_id = submit()

    event = await the_one_event(trigger_for(task_id))

    served = server.tasks[task_id]
    assert event["outcome"] == OUTCOME_SUCCESS
    assert event["reve_task_id"] == task_id
    assert event["task"] == {
        "reve_task_id": task_id,
        "task_id": task_id,
        "status": "SUCCESS",
        "result_urls": served["result_urls"],
        "consumed_credits": served["cost"],
        "error_code": None,
        "error_message": None,
        "model": ASYNC_MODEL,
        "prompt": None,
        "request": None,
        "metadata": None,
    }
    assert served["result_urls"]
    assert task_id in event["message"]
    assert event["error_code"] is None
    assert read_event(event, task_id).task == ReveTask.from_dict(event["task"])


async def test_a_task_that_fails_fires_a_failed_event_with_the_apis_error_code(server):
    server.add_fault(
        kind="fail_task", endpoint="generate", code="CONTENT_POLICY_VIOLATION", detail="A banned subject"
    )
    task_id = submit()

    event = await the_one_event(trigger_for(task_id))

    assert event["outcome"] == OUTCOME_FAILED
    assert event["error_code"] == "CONTENT_POLICY_VIOLATION"
    assert event["task"]["status"] == "FAILED"
    assert event["task"]["error_code"] == "CONTENT_POLICY_VIOLATION"
    assert event["task"]["error_message"] == "A banned subject"
    assert "CONTENT_POLICY_VIOLATION" in event["message"]
    assert "A banned subject" in event["message"]


async def test_the_trigger_keeps_polling_until_a_running_task_fails(server):
    server.set_async_seconds(60)
    task_id = submit()
    running = asyncio.ensure_future(all_events(trigger_for(task_id)))

    await wait_until(lambda: server.requests_to("status") >= 2)
    assert not running.done()
    server.fail_task(task_id, "GENERATION_FAILED", "The GPU fell over")
    events = await asyncio.wait_for(running, timeout=10)

    assert len(events) == 1
    assert events[0]["outcome"] == OUTCOME_FAILED
    assert events[0]["error_code"] == "GENERATION_FAILED"
    assert events[0]["task"]["error_message"] == "The GPU fell over"


async def test_a_task_still_running_at_the_deadline_fires_a_timeout_event_with_the_last_state(server):
    server.set_async_seconds(60)
    task_id = submit()

    event = await the_one_event(trigger_for(task_id, deadline_in=0.3))

    assert event["outcome"] == OUTCOME_TIMEOUT
    assert event["task"]["task_id"] == task_id
    assert event["task"]["status"] == "IN_PROGRESS"
    assert "IN_PROGRESS" in event["message"]
    assert server.requests_to("status") >= 1
    assert server.tasks[task_id]["status"] == "IN_PROGRESS"


async def test_a_deadline_already_passed_still_reads_the_task_once_before_reporting_a_timeout(server):
    server.set_async_seconds(60)
    task_id = submit()

    event = await the_one_event(trigger_for(task_id, deadline_in=-1))

    assert event["outcome"] == OUTCOME_TIMEOUT
    assert event["reve_task_id"] == task_id
    assert event["task"]["status"] == "IN_PROGRESS"  # what the one look saw
    assert server.requests_to("status") == 1


async def test_without_a_deadline_the_trigger_waits_until_the_task_finishes(server):
    task_id = submit()

    event = await the_one_event(trigger_for(task_id, deadline_in=None))

    assert event["outcome"] == OUTCOME_SUCCESS


# ------------------------------------------------------------------------------------- errors


async def test_transient_status_errors_are_ridden_out_and_the_wait_still_succeeds(server):
    task_id = submit()
    server.add_fault(kind="drop_before", endpoint="status", times=1)
    server.add_fault(kind="error", endpoint="status", code="SERVICE_UNAVAILABLE", retry_after=0.01, times=2)

    event = await the_one_event(trigger_for(task_id))

    assert event["outcome"] == OUTCOME_SUCCESS
    assert event["task"]["status"] == "SUCCESS"
    assert server.faults == []  # every injected failure was met...
    assert server.requests_to("status") >= 4  # ...and each was followed by another poll


async def test_an_error_that_persists_until_the_deadline_ends_the_wait_as_a_timeout_not_an_error(server):
    task_id = submit()
    server.add_fault(
        kind="error", endpoint="status", code="SERVICE_UNAVAILABLE", retry_after=0.01, times=None
    )

    event = await the_one_event(trigger_for(task_id, deadline_in=1.0, max_consecutive_errors=2))

    assert event["outcome"] == OUTCOME_TIMEOUT
    assert "SERVICE_UNAVAILABLE" in event["message"]
    assert event["task"] is None
    assert server.requests_to("status") > 3  # well past max_consecutive_errors + 1


async def test_an_unknown_task_id_fires_a_not_found_error_event_without_retrying(server):
    event = await the_one_event(trigger_for("no-such-task"))

    assert event["outcome"] == OUTCOME_ERROR
    assert event["error_code"] == "TASK_NOT_FOUND"
    assert event["retryable"] is False
    assert server.requests_to("status") == 1


async def test_a_rejected_key_fires_a_permanent_error_event_that_does_not_contain_the_key(
    server, monkeypatch
):
    task_id = submit()
    wrong_key = "sk-wrong-key-that-must-not-leak"
    connection = {"conn_type": "reve", "host": server.url, "password": wrong_key}
    monkeypatch.setenv("AIRFLOW_CONN_REVE_DEFAULT", json.dumps(connection))

    event = await the_one_event(trigger_for(task_id))

    assert event["outcome"] == OUTCOME_ERROR
    assert event["error_code"] == "INVALID_API_KEY"
    assert event["retryable"] is False
    assert wrong_key not in json.dumps(event)


async def test_a_connection_without_a_key_fires_a_non_retryable_error_event(server, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_REVE_DEFAULT", json.dumps({"conn_type": "reve", "host": server.url}))

    event = await the_one_event(trigger_for("any-task"))

    assert event["outcome"] == OUTCOME_ERROR
    assert event["retryable"] is False
    assert "API key" in event["message"]
    assert server.requests_to("total") == 0


# ------------------------------------------------------------------------ what goes into the DB


def plain_json_values(value: Any) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and plain_json_values(v) for k, v in value.items())
    if isinstance(value, list):
        return all(plain_json_values(v) for v in value)
    return value is None or isinstance(value, (str, int, float, bool))


def test_serialize_holds_only_plain_json_values_and_no_secret(fake_reve_server, reve_connection_env):
    trigger = trigger_for("task-123", reve_conn_id=reve_connection_env)

    classpath, kwargs = trigger.serialize()

    assert classpath == "airflow_provider_reve.triggers.reve.ReveTaskTrigger"
    assert plain_json_values(kwargs)
    stored = json.dumps([classpath, kwargs])
    for secret in (DEFAULT_API_KEY, "Bearer", "Authorization", fake_reve_server.url, "127.0.0.1"):
        assert secret not in stored
    assert kwargs["reve_task_id"] == "task-123"
    assert kwargs["reve_conn_id"] == reve_connection_env


def rebuilt(trigger: ReveTaskTrigger) -> ReveTaskTrigger:
    """What a (restarted) triggerer does: kwargs through Airflow's serde, then the class again."""
    from airflow.sdk._shared.module_loading import import_string

    classpath, kwargs = trigger.serialize()
    stored = json.loads(json.dumps(serialize(kwargs)))
    return import_string(classpath)(**deserialize(stored))


async def test_a_trigger_rebuilt_from_its_kwargs_resumes_polling_the_same_task(server):
    task_id = submit()
    original = trigger_for(task_id)

    restarted = rebuilt(original)
    event = await the_one_event(restarted)

    assert restarted.serialize() == original.serialize()
    assert event["outcome"] == OUTCOME_SUCCESS
    assert event["task"]["task_id"] == task_id
    assert event["task"]["model"] == ASYNC_MODEL


async def test_a_trigger_rebuilt_after_its_deadline_does_not_start_a_new_wait(server):
    server.set_async_seconds(60)
    task_id = submit()
    original = trigger_for(task_id, deadline_in=0.2)
    await wait_until(lambda: time.time() > (original.deadline or 0))

    restarted = rebuilt(original)
    event = await the_one_event(restarted)

    assert restarted.deadline == original.deadline
    assert event["outcome"] == OUTCOME_TIMEOUT


def test_a_deferring_operator_keeps_its_trigger_from_firing_before_the_worker_exit_is_recorded(
    server, monkeypatch
):
    from reve_test_helpers import REAL_SETTLE_TIME

    from airflow_provider_reve.operators.reve import ReveGenerateOperator
    from airflow_provider_reve.triggers import reve as trigger_module

    monkeypatch.setattr(trigger_module, "settle_time", REAL_SETTLE_TIME)
    monkeypatch.setenv("AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL", "5")
    started = time.time()
    with pytest.raises(TaskDeferred) as deferred:
        ReveGenerateOperator(task_id="t", model=ASYNC_MODEL, prompt=PROMPT, deferrable=True).execute({})

    _, kwargs = deferred.value.trigger.serialize()
    assert started + 6 <= kwargs["not_before"] <= time.time() + 6


async def test_the_trigger_makes_no_poll_before_not_before(server):
    server.set_async_seconds(0)
    task_id = submit()
    trigger = trigger_for(task_id, poll_interval=0.01, not_before=time.time() + 1.0)

    run = asyncio.ensure_future(the_one_event(trigger))
    await asyncio.sleep(0.5)
    assert server.requests_to("status") == 0  # finished already, but not asked yet
    event = await run

    assert event["outcome"] == "success"
    assert server.requests_to("status") == 1

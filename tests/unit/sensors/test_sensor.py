"""``ReveTaskSensor`` against the fake Reve API over real loopback HTTP.

The sensor waits for a task submitted elsewhere (``wait_for_completion=False``): it must accept
the id in every shape a DAG hands it over, push the finished task as its XCom, and fail (or skip)
with the API's own reason when the task fails.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import (
    AirflowException,
    AirflowFailException,
    AirflowSensorTimeout,
    AirflowSkipException,
    PokeReturnValue,
    TaskDeferred,
)
from reve_test_helpers import fire, return_values

from airflow_provider_reve.client.retry import NO_RETRIES
from airflow_provider_reve.hooks.reve import ReveHook
from airflow_provider_reve.models import ReveTask
from airflow_provider_reve.sensors.reve import ReveTaskSensor
from airflow_provider_reve.testing import DEFAULT_API_KEY, FakeReveServer
from airflow_provider_reve.triggers.reve import ReveTaskTrigger

ASYNC_MODEL = "seedream-5"
TEST_DAGS = Path(__file__).resolve().parents[2] / "dags" / "core"


@pytest.fixture
def server(fake_reve_server: FakeReveServer, reve_connection_env: str) -> FakeReveServer:
    fake_reve_server.set_async_seconds(60)  # tasks run until a test finishes or fails them
    return fake_reve_server


@pytest.fixture
def submitted(server: FakeReveServer) -> dict[str, Any]:
    """What ``ReveGenerateOperator(wait_for_completion=False)`` returns: an IN_PROGRESS task dict."""
    hook = ReveHook()
    try:
        return hook.generate(ASYNC_MODEL, prompt="A lighthouse at night").to_dict()
    finally:
        hook.close()


def sensor(reve_task_id: Any, **kwargs: Any) -> ReveTaskSensor:
    kwargs.setdefault("task_id", "wait_for_it")
    kwargs.setdefault("poke_interval", 0.05)
    kwargs.setdefault("timeout", 30)
    return ReveTaskSensor(reve_task_id=reve_task_id, **kwargs)


def deferral(waiter: ReveTaskSensor) -> TaskDeferred:
    with pytest.raises(TaskDeferred) as deferred:
        waiter.execute({})
    return deferred.value


def resume(waiter: ReveTaskSensor, deferred: TaskDeferred) -> Any:
    """Wait in the trigger, then resume the sensor the way the worker does."""
    next_kwargs = {"event": fire(deferred.trigger), **(deferred.kwargs or {})}
    return waiter.resume_execution(deferred.method_name, next_kwargs, {})


# --------------------------------------------------------------------------------- poking


def test_poke_is_not_done_while_the_task_runs_and_returns_the_task_once_it_succeeded(server, submitted):
    waiter = sensor(submitted)

    running = waiter.poke({})
    server.finish_task(submitted["task_id"])
    finished = waiter.poke({})

    assert isinstance(running, PokeReturnValue)
    assert running.is_done is False
    assert isinstance(finished, PokeReturnValue)
    assert finished.is_done is True
    served = server.tasks[submitted["task_id"]]
    assert (
        finished.xcom_value
        == ReveTask(
            task_id=submitted["task_id"],
            status="SUCCESS",
            result_urls=tuple(served["result_urls"]),
            consumed_credits=served["cost"],
            model=ASYNC_MODEL,  # carried over from the operator's dict
        ).to_dict()
    )
    assert served["result_urls"]


def test_execute_keeps_poking_in_the_worker_until_the_task_succeeds(server, submitted):
    with ThreadPoolExecutor(max_workers=1) as pool:
        waiting = pool.submit(sensor(submitted).execute, {})
        deadline = time.monotonic() + 10
        while server.requests_to("status") < 3:  # it has poked, and poked again
            if waiting.done():
                pytest.fail(f"the sensor stopped waiting for a running task: {waiting.result()!r}")
            assert time.monotonic() < deadline, "the sensor did not poke again"
            time.sleep(0.01)
        server.finish_task(submitted["task_id"])
        result = waiting.result(timeout=10)

    assert result["task_id"] == submitted["task_id"]
    assert result["status"] == "SUCCESS"
    assert result["result_urls"] == server.tasks[submitted["task_id"]]["result_urls"]


@pytest.mark.parametrize("code", ["CONTENT_POLICY_VIOLATION", "GENERATION_FAILED"])
def test_a_failed_task_fails_the_sensor_for_good_with_the_apis_code_and_message(server, submitted, code):
    server.fail_task(submitted["task_id"], code, "The API's own reason")

    with pytest.raises(AirflowFailException) as raised:
        sensor(submitted).poke({})

    assert code in str(raised.value)
    assert "The API's own reason" in str(raised.value)


def test_a_failed_task_skips_the_sensor_with_soft_fail(server, submitted):
    server.fail_task(submitted["task_id"], "GENERATION_FAILED")

    with pytest.raises(AirflowSkipException):
        sensor(submitted, soft_fail=True).execute({})


def test_an_unknown_task_fails_the_sensor_for_good(server):
    with pytest.raises(AirflowFailException, match="TASK_NOT_FOUND"):
        sensor("no-such-task").poke({})


def test_a_transient_api_error_while_poking_means_poke_again_later(server, submitted):
    waiter = sensor(submitted)
    waiter.hook.retry_policy = NO_RETRIES
    server.add_fault(kind="error", endpoint="status", code="SERVICE_UNAVAILABLE")

    blip = waiter.poke({})
    server.finish_task(submitted["task_id"])
    after = waiter.poke({})

    assert blip.is_done is False
    assert after.is_done is True
    assert server.requests_to("status") == 2


# ------------------------------------------------------------------------- what it accepts


@pytest.mark.parametrize(
    "shape",
    [
        pytest.param(lambda task: task["task_id"], id="the plain id"),
        pytest.param(lambda task: f"  {task['task_id']}\n", id="the id with whitespace"),
        pytest.param(lambda task: task, id="the operator's dict"),
        pytest.param(str, id="the dict rendered as its Python repr"),
        pytest.param(json.dumps, id="the dict rendered as JSON"),
    ],
)
def test_reve_task_id_accepts_every_shape_a_dag_hands_over(server, submitted, shape):
    server.finish_task(submitted["task_id"])

    result = sensor(shape(submitted)).poke({})

    assert result.is_done is True
    assert result.xcom_value["task_id"] == submitted["task_id"]


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param("", id="an empty string"),
        pytest.param({"status": "SUCCESS"}, id="a dict without task_id"),
        pytest.param("{'status': 'SUCCESS'}", id="a rendered dict without task_id"),
        pytest.param(None, id="None"),
    ],
)
def test_a_reve_task_id_that_names_no_task_fails_for_good_before_any_request(server, bad):
    with pytest.raises(AirflowFailException, match="reve_task_id"):
        sensor(bad).poke({})

    assert server.requests_to("total") == 0


# ------------------------------------------------------------------------------ deferrable


def test_a_deferrable_sensor_defers_to_a_secret_free_trigger_for_the_task(server, submitted):
    deferred = deferral(sensor(submitted, deferrable=True, timeout=600))

    assert isinstance(deferred.trigger, ReveTaskTrigger)
    assert deferred.trigger.reve_task_id == submitted["task_id"]
    assert deferred.method_name == "execute_complete"
    assert deferred.kwargs == {"reve_task_id": submitted["task_id"]}
    stored = json.dumps(deferred.trigger.serialize())
    for secret in (DEFAULT_API_KEY, "Bearer", server.url):
        assert secret not in stored
    assert server.requests_to("status") == 1  # one look in the worker, then no waiting there


def test_a_deferred_sensor_resumes_with_the_finished_task(server, submitted):
    waiter = sensor(submitted, deferrable=True)
    deferred = deferral(waiter)
    server.finish_task(submitted["task_id"])

    result = resume(waiter, deferred)

    assert result["task_id"] == submitted["task_id"]
    assert result["status"] == "SUCCESS"
    assert result["result_urls"] == server.tasks[submitted["task_id"]]["result_urls"]


def test_a_deferred_sensor_fails_for_good_when_the_task_failed(server, submitted):
    waiter = sensor(submitted, deferrable=True)
    deferred = deferral(waiter)
    server.fail_task(submitted["task_id"], "CONTENT_POLICY_VIOLATION", "A banned subject")

    with pytest.raises(AirflowFailException) as raised:
        resume(waiter, deferred)

    assert "CONTENT_POLICY_VIOLATION" in str(raised.value)
    assert "A banned subject" in str(raised.value)


def test_a_deferred_sensor_skips_a_failed_task_with_soft_fail(server, submitted):
    waiter = sensor(submitted, deferrable=True, soft_fail=True)
    deferred = deferral(waiter)
    server.fail_task(submitted["task_id"], "GENERATION_FAILED")

    with pytest.raises(AirflowSkipException):
        resume(waiter, deferred)


def test_a_deferred_sensor_times_out_as_a_sensor_timeout(server, submitted):
    waiter = sensor(submitted, deferrable=True, timeout=0.3)
    deferred = deferral(waiter)

    with pytest.raises(AirflowSensorTimeout):
        resume(waiter, deferred)

    assert server.tasks[submitted["task_id"]]["status"] == "IN_PROGRESS"


def test_a_deferrable_sensor_fails_for_good_at_once_when_the_task_is_unknown(server):
    waiter = sensor("no-such-task", deferrable=True)

    with pytest.raises(AirflowFailException, match="TASK_NOT_FOUND"):
        waiter.execute({})  # raises instead of deferring

    assert server.requests_to("status") == 1


def test_a_deferred_sensor_rides_out_api_errors_until_its_timeout_as_poke_mode_does(server, submitted):
    waiter = sensor(submitted, deferrable=True, timeout=1)
    deferred = deferral(waiter)
    server.add_fault(kind="error", endpoint="status", code="SERVICE_UNAVAILABLE", times=None)

    with pytest.raises(AirflowSensorTimeout) as raised:
        resume(waiter, deferred)

    assert "SERVICE_UNAVAILABLE" in str(raised.value)
    assert server.requests_to("status") > 2  # it kept reading through the outage


def test_a_deferred_sensor_rejects_an_event_for_another_task(server, submitted):
    event = {"outcome": "success", "reve_task_id": "other", "task": {"task_id": "other", "status": "SUCCESS"}}

    with pytest.raises(AirflowException, match="Reve trigger event"):
        sensor(submitted).execute_complete({}, event=event, reve_task_id=submitted["task_id"])


# ------------------------------------------------------------------------------ in a DAG run


@pytest.fixture
def test_dags(use_dags_folder: Callable[[Path], Path]) -> Path:
    return use_dags_folder(TEST_DAGS)


def test_in_a_dag_run_the_sensor_reads_a_dict_rendered_by_xcom_pull_and_an_xcom_arg(server, test_dags):
    from airflow.dag_processing.dagbag import DagBag

    server.set_async_seconds(0.3)
    bag = DagBag(dag_folder=str(test_dags))
    assert bag.import_errors == {}

    dag_run = bag.dags["reve_test_submit_then_sense"].test()

    assert dag_run.state == "success"
    assert {ti.task_id: (ti.state, ti.try_number) for ti in dag_run.get_task_instances()} == {
        "generate": ("success", 1),
        "sense_rendered_dict": ("success", 1),
        "sense_deferred": ("success", 1),
    }
    submitted = return_values(dag_run, "generate")[-1]
    assert submitted["status"] == "IN_PROGRESS"
    assert server.submissions == 1
    for sensor_id in ("sense_rendered_dict", "sense_deferred"):
        finished = return_values(dag_run, sensor_id)[-1]
        assert finished["task_id"] == submitted["task_id"]
        assert finished["status"] == "SUCCESS"
        assert finished["result_urls"] == server.tasks[submitted["task_id"]]["result_urls"]


def test_the_sensor_result_names_the_model_when_it_was_handed_the_operators_dict(server, submitted):
    deferred = deferral(sensor(submitted, deferrable=True))
    server.finish_task(submitted["task_id"])

    from_dict = sensor(submitted).poke({})
    from_id = sensor(submitted["task_id"]).poke({})

    assert from_dict.xcom_value["model"] == ASYNC_MODEL
    assert from_id.xcom_value["model"] is None  # a bare id says nothing about the model
    assert resume(sensor(submitted, deferrable=True), deferred)["model"] == ASYNC_MODEL


@pytest.mark.parametrize(("interval", "expect_every_poke"), [(3600.0, False), (0.0, True)])
def test_a_long_wait_in_poke_mode_logs_progress_at_most_once_per_interval_not_once_per_poke(
    server, submitted, capfd, monkeypatch, interval, expect_every_poke
):
    monkeypatch.setenv("AIRFLOW__REVE__PROGRESS_LOG_INTERVAL", str(interval))
    with ThreadPoolExecutor(max_workers=1) as pool:
        waiting = pool.submit(sensor(submitted).execute, {})
        deadline = time.monotonic() + 10
        while server.requests_to("status") < 6:
            assert time.monotonic() < deadline, "the sensor did not keep poking"
            time.sleep(0.01)
        server.finish_task(submitted["task_id"])
        waiting.result(timeout=10)

    log = capfd.readouterr()
    lines = (log.out + log.err).splitlines()
    progress = [line for line in lines if "still IN_PROGRESS" in line]
    pokes_while_running = server.requests_to("status") - 1
    if expect_every_poke:
        assert len(progress) >= 5  # the counterpart: the check is what thins the lines out
    else:
        assert len(progress) == 1
    assert len(progress) <= pokes_while_running
    assert any("SUCCESS: 1 result URL(s)" in line and "credits" in line for line in lines)

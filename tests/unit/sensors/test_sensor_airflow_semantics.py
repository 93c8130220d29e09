"""``ReveTaskSensor`` behaves like an Airflow sensor whichever way it waits.

``soft_fail``/``never_fail``, outages, permanent errors, finished tasks and ``execution_timeout``
must mean the same thing in poke, reschedule and deferrable mode. Real loopback HTTP against the
fake Reve API throughout.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import (
    AirflowException,
    AirflowFailException,
    AirflowSkipException,
    AirflowTaskTimeout,
    TaskDeferred,
)
from reve_test_helpers import fire, return_values, use_connection

from airflow_provider_reve.hooks.reve import ReveHook
from airflow_provider_reve.mixins.deadline import deferral_budget
from airflow_provider_reve.sensors.reve import ReveTaskSensor
from airflow_provider_reve.testing import FakeReveServer

ASYNC_MODEL = "seedream-5"
OUTAGE_DAGS = Path(__file__).resolve().parents[2] / "dags" / "sensor_semantics"


@pytest.fixture
def server(fake_reve_server: FakeReveServer, reve_connection_env: str) -> FakeReveServer:
    fake_reve_server.set_async_seconds(60)  # tasks run until a test finishes or fails them
    return fake_reve_server


@pytest.fixture
def submitted(server: FakeReveServer) -> dict[str, Any]:
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


def deferral(waiter: ReveTaskSensor, context: Any = None) -> TaskDeferred:
    with pytest.raises(TaskDeferred) as deferred:
        waiter.execute(context or {})
    return deferred.value


def resume(waiter: ReveTaskSensor, deferred: TaskDeferred) -> Any:
    """Wait in the trigger, then resume the sensor the way the worker does."""
    next_kwargs = {"event": fire(deferred.trigger), **(deferred.kwargs or {})}
    return waiter.resume_execution(deferred.method_name, next_kwargs, {})


# ------------------------------------------------------ 14.5: soft_fail / never_fail, every mode


@pytest.mark.parametrize("flag", ["soft_fail", "never_fail"])
def test_a_reve_task_id_that_names_no_task_is_skipped_with_soft_fail_or_never_fail_in_every_mode(
    server, flag
):
    for deferrable in (False, True):
        waiter = sensor("", deferrable=deferrable, **{flag: True})

        with pytest.raises(AirflowSkipException):
            waiter.execute({})

    assert server.requests_to("total") == 0


def test_a_deferrable_sensor_skips_a_task_that_already_failed_with_soft_fail_without_deferring(
    server, submitted
):
    server.fail_task(submitted["task_id"], "CONTENT_POLICY_VIOLATION", "A banned subject")

    with pytest.raises(AirflowSkipException):
        sensor(submitted, deferrable=True, soft_fail=True).execute({})


# ------------------------------------------------------------- look once before deferring


def test_a_deferrable_sensor_returns_a_task_that_already_finished_without_deferring(server, submitted):
    server.finish_task(submitted["task_id"])

    result = sensor(submitted, deferrable=True).execute({})

    assert result["task_id"] == submitted["task_id"]
    assert result["status"] == "SUCCESS"
    assert result["model"] == ASYNC_MODEL
    assert server.requests_to("status") == 1


# ------------------------------------------------- 14.4: the trigger's retryable flag is trusted


def test_a_gateway_401_page_seen_in_the_triggerer_fails_the_sensor_without_spending_retries(
    server, submitted
):
    waiter = sensor(submitted, deferrable=True)
    deferred = deferral(waiter)
    server.add_fault(kind="html", endpoint="status", status=401, times=None)

    with pytest.raises(AirflowFailException, match="401"):
        resume(waiter, deferred)


def test_an_insecure_base_url_seen_in_the_triggerer_fails_the_sensor_without_spending_retries(
    server, submitted, monkeypatch
):
    waiter = sensor(submitted, deferrable=True)
    deferred = deferral(waiter)
    # The triggerer resolves the connection itself (another secrets backend, an edited connection).
    use_connection(monkeypatch, "http://reve.example.com")

    with pytest.raises(AirflowFailException, match="allow_insecure_http"):
        resume(waiter, deferred)


def test_only_error_events_the_trigger_marked_permanent_fail_for_good(server, submitted):
    task_id = submitted["task_id"]

    def error_event(code: str | None, retryable: bool) -> dict[str, Any]:
        message = f"Reve API error {code or 'without a code'}"
        return {"outcome": "error", "reve_task_id": task_id, "task": None, "message": message,
                "error_code": code, "retryable": retryable}  # fmt: skip

    with pytest.raises(AirflowFailException):  # e.g. a configuration error: no code at all
        sensor(submitted).execute_complete({}, event=error_event(None, False), reve_task_id=task_id)
    with pytest.raises(AirflowException) as transient:
        sensor(submitted).execute_complete(
            {}, event=error_event("SERVICE_UNAVAILABLE", True), reve_task_id=task_id
        )
    assert not isinstance(transient.value, AirflowFailException)  # Airflow's retries apply


# ------------------------------------------------------- 14.3: an outage is ridden out in every mode


@pytest.fixture
def outage_dags(use_dags_folder: Callable[[Path], Path]) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(use_dags_folder(OUTAGE_DAGS)))
    assert bag.import_errors == {}
    return bag.dags


def test_a_dozen_503s_while_the_task_runs_are_ridden_out_in_every_sensor_mode(server, outage_dags):
    server.set_async_seconds(2)
    outcome = {}
    for mode in ("poke", "reschedule", "deferrable"):
        submissions = server.submissions
        server.add_fault(kind="error", endpoint="status", code="SERVICE_UNAVAILABLE", times=12)

        dag_run = outage_dags[f"reve_test_sensor_outage_{mode}"].test()

        assert server.faults == []  # the whole outage was met
        assert server.submissions == submissions + 1
        states = {ti.task_id: ti.state for ti in dag_run.get_task_instances()}
        finished = return_values(dag_run, "sense").get(-1) or {}
        outcome[mode] = (states["sense"], finished.get("status"))

    # Not skipped (the sensors have soft_fail=True): every mode waited the outage out.
    assert outcome == {mode: ("success", "SUCCESS") for mode in ("poke", "reschedule", "deferrable")}


# --------------------------------------------------- 14.2: execution_timeout bounds a deferred wait


def test_a_deferred_sensor_waits_no_longer_than_its_execution_timeout(server, submitted):
    waiter = sensor(submitted, deferrable=True, timeout=3600, execution_timeout=timedelta(seconds=1))

    deferred = deferral(waiter)

    assert 0 < deferred.trigger.deadline - time.time() <= 1
    assert deferred.timeout is not None and deferred.timeout <= timedelta(seconds=1) + timedelta(minutes=2)
    # Ended by execution_timeout, the try fails as Airflow's own timeout does: retries apply.
    with pytest.raises(AirflowTaskTimeout):
        resume(waiter, deferred)
    assert server.tasks[submitted["task_id"]]["status"] == "IN_PROGRESS"


def test_time_already_spent_in_the_try_counts_against_execution_timeout(server, submitted):
    waiter = sensor(submitted, deferrable=True, timeout=3600, execution_timeout=timedelta(minutes=15))
    ten_minutes_ago = datetime.now(timezone.utc) - timedelta(minutes=10)

    deferred = deferral(waiter, {"ti": SimpleNamespace(start_date=ten_minutes_ago)})

    left = deferred.trigger.deadline - time.time()
    assert 4 * 60 < left <= 5 * 60
    assert json.dumps(deferred.trigger.serialize()[1])  # still plain JSON


def test_a_try_already_past_its_execution_timeout_fails_after_one_look_without_deferring(server, submitted):
    waiter = sensor(submitted, deferrable=True, timeout=3600, execution_timeout=timedelta(minutes=15))
    an_hour_ago = datetime.now(timezone.utc) - timedelta(hours=1)

    with pytest.raises(AirflowTaskTimeout):
        waiter.execute({"ti": SimpleNamespace(start_date=an_hour_ago)})

    assert server.requests_to("status") == 1


@pytest.mark.parametrize(
    ("timeout_s", "execution_timeout", "spent", "expected"),
    [
        pytest.param(600, None, 9999, 600, id="no execution_timeout: the timeout"),
        pytest.param(600, timedelta(minutes=5), 0, 300, id="execution_timeout is shorter"),
        pytest.param(600, timedelta(minutes=30), 0, 600, id="timeout is shorter"),
        pytest.param(600, timedelta(minutes=15), 600, 300, id="time spent in the try counts"),
        pytest.param(600, timedelta(minutes=5), 900, 0, id="already past: zero, never negative"),
    ],
)
def test_deferral_budget_is_the_smaller_of_timeout_and_what_is_left_of_execution_timeout(
    timeout_s, execution_timeout, spent, expected
):
    now = 1_900_000_000.0
    as_float = deferral_budget(timeout_s, execution_timeout, now - spent, now=now)
    as_datetime = deferral_budget(
        timeout_s, execution_timeout, datetime.fromtimestamp(now - spent, timezone.utc), now=now
    )

    assert as_float == as_datetime == pytest.approx(expected)
    assert deferral_budget(timeout_s, execution_timeout, None, now=now) == min(
        timeout_s, execution_timeout.total_seconds() if execution_timeout else timeout_s
    )

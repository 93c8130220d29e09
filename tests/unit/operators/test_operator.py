"""``ReveGenerateOperator`` against the fake Reve API over real loopback HTTP.

``execute()`` is called directly with a minimal context where a test is about one decision of
the operator (the operator only reads ``task_state_store`` from it, and works without it);
templating of mapped tasks and deferral inside a real DAG run go through ``dag.test()``.
Trigger events fed to ``execute_complete`` come from running the operator's own trigger.
"""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import (
    AirflowException,
    AirflowFailException,
    AirflowSkipException,
    TaskDeferred,
)
from reve_test_helpers import fire, return_values

from airflow_provider_reve.mixins.reattach import STATE_KEY
from airflow_provider_reve.models import ReveTask
from airflow_provider_reve.operators.reve import ReveGenerateOperator
from airflow_provider_reve.testing import DEFAULT_API_KEY, FakeReveServer
from airflow_provider_reve.triggers.reve import ReveTaskTrigger

SYNC_MODEL = "reve-2.0"
ASYNC_MODEL = "seedream-5"
PROMPT = "A lighthouse on a cliff at golden hour"
TEST_DAGS = Path(__file__).resolve().parents[2] / "dags" / "core"


@pytest.fixture
def server(fake_reve_server: FakeReveServer, reve_connection_env: str) -> FakeReveServer:
    fake_reve_server.set_async_seconds(0.2)
    return fake_reve_server


def operator(**kwargs: Any) -> ReveGenerateOperator:
    kwargs.setdefault("task_id", "generate")
    kwargs.setdefault("model", ASYNC_MODEL)
    kwargs.setdefault("prompt", PROMPT)
    kwargs.setdefault("poll_interval", 0.05)
    return ReveGenerateOperator(**kwargs)


def deferral(op: ReveGenerateOperator, context: dict[str, Any] | None = None) -> TaskDeferred:
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(context if context is not None else {})
    return deferred.value


def resume(op: ReveGenerateOperator, deferred: TaskDeferred, context: dict[str, Any] | None = None) -> Any:
    """Wait in the trigger, then resume the operator as the worker would."""
    event = fire(deferred.trigger)
    method = getattr(op, deferred.method_name)
    return method(context if context is not None else {}, event=event, **(deferred.kwargs or {}))


class StateStore:
    """The task instance's ``task_state_store``, as far as the operator uses it."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def get(self, key: str) -> Any:
        return self.values.get(key)

    def set(self, key: str, value: Any) -> None:
        self.values[key] = json.loads(json.dumps(value))

    def delete(self, key: str) -> None:
        self.values.pop(key, None)


# --------------------------------------------------------------------------- how it waits


def test_a_deferrable_operator_defers_to_a_secret_free_trigger_for_the_task_it_submitted(server):
    started = time.time()
    deferred = deferral(operator(deferrable=True, timeout=120))

    (task_id,) = server.tasks
    assert isinstance(deferred.trigger, ReveTaskTrigger)
    assert deferred.method_name == "execute_complete"
    assert deferred.kwargs == {"reve_task_id": task_id}
    classpath, kwargs = deferred.trigger.serialize()
    assert kwargs["reve_task_id"] == task_id
    assert kwargs["model"] == ASYNC_MODEL
    assert started + 120 <= kwargs["deadline"] <= time.time() + 120
    stored = json.dumps([classpath, kwargs])
    for secret in (DEFAULT_API_KEY, "Bearer", server.url):
        assert secret not in stored
    assert server.submissions == 1


def test_a_synchronous_model_returns_the_finished_task_at_once_and_never_defers(server):
    result = operator(model=SYNC_MODEL, deferrable=True, num_images=2).execute({})

    (task_id,) = server.tasks
    served = server.tasks[task_id]
    assert (
        result
        == ReveTask(
            task_id=task_id,
            status="SUCCESS",
            result_urls=tuple(served["result_urls"]),
            consumed_credits=served["cost"],
            model=SYNC_MODEL,
            prompt=served["params"]["prompt"],
            request=served["params"],  # the XCom says what was asked for, not only what came back
        ).to_dict()
    )
    assert len(result["result_urls"]) == 2
    assert server.requests_to("status") == 0


def test_without_wait_for_completion_the_in_progress_task_is_returned_for_a_sensor(server):
    server.set_async_seconds(60)

    result = operator(wait_for_completion=False, deferrable=True).execute({})

    (task_id,) = server.tasks
    assert result["task_id"] == task_id
    assert result["status"] == "IN_PROGRESS"
    assert result["model"] == ASYNC_MODEL
    assert result["result_urls"] == []
    assert server.requests_to("status") == 0


def test_a_non_deferrable_operator_polls_in_the_worker_until_the_task_succeeds(server):
    result = operator(deferrable=False).execute({})

    (task_id,) = server.tasks
    assert result["task_id"] == task_id
    assert result["status"] == "SUCCESS"
    assert result["result_urls"] == server.tasks[task_id]["result_urls"]
    assert result["consumed_credits"] == server.tasks[task_id]["cost"]
    assert server.requests_to("status") >= 1


def test_a_non_deferrable_operator_gives_up_at_its_timeout_without_failing_for_good(server):
    server.set_async_seconds(60)

    with pytest.raises(AirflowException) as raised:
        operator(deferrable=False, timeout=0.3).execute({})

    assert not isinstance(raised.value, AirflowFailException)
    assert "Timed out" in str(raised.value)
    assert server.submissions == 1


def test_a_non_deferrable_operator_fails_for_good_when_the_task_fails_permanently(server):
    server.add_fault(kind="fail_task", endpoint="generate", code="CONTENT_POLICY_VIOLATION", detail="No.")

    with pytest.raises(AirflowFailException, match="CONTENT_POLICY_VIOLATION"):
        operator(deferrable=False).execute({})


# -------------------------------------------------------------------- resuming from the trigger


def test_resuming_after_success_returns_the_task_with_its_model(server):
    op = operator(deferrable=True)

    result = resume(op, deferral(op))

    (task_id,) = server.tasks
    assert result["task_id"] == task_id
    assert result["status"] == "SUCCESS"
    assert result["model"] == ASYNC_MODEL
    assert result["result_urls"] == server.tasks[task_id]["result_urls"]
    assert result["consumed_credits"] == server.tasks[task_id]["cost"]


def test_resuming_after_a_permanent_failure_fails_for_good_with_the_apis_code_and_message(server):
    server.add_fault(
        kind="fail_task", endpoint="generate", code="CONTENT_POLICY_VIOLATION", detail="A banned subject"
    )
    op = operator(deferrable=True)
    deferred = deferral(op)

    with pytest.raises(AirflowFailException) as raised:
        resume(op, deferred)

    assert "CONTENT_POLICY_VIOLATION" in str(raised.value)
    assert "A banned subject" in str(raised.value)


def test_resuming_after_a_content_policy_failure_skips_when_asked_to(server):
    server.add_fault(kind="fail_task", endpoint="generate", code="CONTENT_POLICY_VIOLATION")
    op = operator(deferrable=True, on_content_policy_violation="skip")
    deferred = deferral(op)

    with pytest.raises(AirflowSkipException):
        resume(op, deferred)


def test_resuming_after_a_transient_failure_fails_the_try_so_airflow_retries_apply(server):
    server.add_fault(kind="fail_task", endpoint="generate", code="GENERATION_FAILED", detail="GPU fell over")
    op = operator(deferrable=True)
    deferred = deferral(op)

    with pytest.raises(AirflowException) as raised:
        resume(op, deferred)

    assert not isinstance(raised.value, AirflowFailException)
    assert "GENERATION_FAILED" in str(raised.value)
    assert "GPU fell over" in str(raised.value)


def test_resuming_after_the_deadline_raises_a_retryable_timeout_not_a_failure(server):
    server.set_async_seconds(60)
    op = operator(deferrable=True, timeout=0.3)
    deferred = deferral(op)

    with pytest.raises(AirflowException) as raised:
        resume(op, deferred)

    message = str(raised.value)
    assert not isinstance(raised.value, AirflowFailException)
    assert "Timed out" in message
    assert "FAILED" not in message
    assert deferred.kwargs["reve_task_id"] in message


def test_resuming_after_persistent_api_errors_fails_the_try_so_airflow_retries_apply(server):
    op = operator(deferrable=True)
    deferred = deferral(op)
    server.add_fault(
        kind="error", endpoint="status", code="SERVICE_UNAVAILABLE", retry_after=0.01, times=None
    )

    deferred.trigger.deadline = time.time() + 1.0  # the trigger rides errors out until then

    with pytest.raises(AirflowException) as raised:
        resume(op, deferred)

    assert not isinstance(raised.value, AirflowFailException)
    assert "SERVICE_UNAVAILABLE" in str(raised.value)


def test_resuming_after_the_task_vanished_fails_for_good_with_task_not_found(server):
    op = operator(deferrable=True)
    deferred = deferral(op)
    server.reset()  # the API no longer knows the task

    with pytest.raises(AirflowFailException, match="TASK_NOT_FOUND"):
        resume(op, deferred)


def test_resuming_finds_its_task_in_the_state_store_when_airflow_drops_the_defer_kwargs(server):
    # Airflow 3.3's dag.test() resumes with the event only (apache/airflow#69942).
    store = StateStore()
    op = operator(deferrable=True)
    deferred = deferral(op, {"task_state_store": store})
    event = fire(deferred.trigger)

    result = op.execute_complete({"task_state_store": store}, event=event)

    assert result["task_id"] == deferred.kwargs["reve_task_id"]
    assert result["status"] == "SUCCESS"
    # Still remembered: Airflow may fail the try after this returns, and the retry must find it.
    assert store.values[STATE_KEY]["task_id"] == result["task_id"]


OUR_TASK = "our-task"
OTHER_TASK = "someone-elses-task"


def event(outcome: Any = "success", task: Any = "default", **overrides: Any) -> dict[str, Any]:
    if task == "default":
        status = {"success": "SUCCESS", "failed": "FAILED"}.get(str(outcome), "SUCCESS")
        task = {"task_id": OUR_TASK, "status": status}
    return {"outcome": outcome, "reve_task_id": OUR_TASK, "task": task, "message": "", **overrides}


@pytest.mark.parametrize(
    "bad_event",
    [
        pytest.param(None, id="no event"),
        pytest.param("success", id="a string"),
        pytest.param(["success"], id="a list"),
        pytest.param({}, id="an empty dict"),
        pytest.param(event(outcome="done"), id="an unknown outcome"),
        pytest.param(event(outcome=["success"]), id="an unhashable outcome"),
        pytest.param(event(task=None), id="success without a task"),
        pytest.param(event(outcome="failed", task=None), id="failed without a task"),
        pytest.param(event(reve_task_id=OTHER_TASK), id="an event for another task"),
        pytest.param(event(task={"task_id": OTHER_TASK, "status": "SUCCESS"}), id="another task inside"),
        pytest.param(event(task={"task_id": OUR_TASK, "status": "FAILED"}), id="success with a FAILED task"),
        pytest.param(event(task={"task_id": OUR_TASK, "status": "DONE"}), id="an unknown task status"),
        pytest.param(event(task="SUCCESS"), id="a task that is not a dict"),
        pytest.param(event(task={"task_id": OUR_TASK}), id="a task without a status"),
        pytest.param(
            event(task={"task_id": OUR_TASK, "status": "SUCCESS", "result_urls": "https://x"}),
            id="result_urls that are not a list",
        ),
        pytest.param(
            event(task={"task_id": OUR_TASK, "status": "SUCCESS", "consumed_credits": "12"}),
            id="credits that are not a number",
        ),
        pytest.param(
            event(task={"task_id": OUR_TASK, "status": "SUCCESS", "password": "x"}), id="unexpected fields"
        ),
    ],
)
def test_a_malformed_event_raises_a_clear_airflow_exception(bad_event):
    with pytest.raises(AirflowException, match="Reve trigger event") as raised:
        operator(deferrable=True).execute_complete({}, event=bad_event, reve_task_id=OUR_TASK)

    assert not isinstance(raised.value, AirflowFailException)  # a retry re-attaches and reads the truth


def test_an_event_is_not_trusted_when_the_operator_cannot_tell_which_task_it_waits_for():
    with pytest.raises(AirflowException, match="Reve trigger event"):
        operator(deferrable=True).execute_complete({}, event=event(), reve_task_id=None)


# ------------------------------------------------------------------------------ templating


def test_templated_fields_are_rendered_into_the_request_the_api_receives(server):
    op = operator(
        model=SYNC_MODEL,
        prompt="A lighthouse on {{ ds }} for run {{ run_id }}",
        image_urls=["https://images.example/{{ ds }}/reference.png"],
        extra_params={"style_tag": "poster-{{ run_id }}", "note": "{{ ds }}"},
    )
    op.render_template_fields({"ds": "2026-03-04", "run_id": "manual__2026-03-04"})

    op.execute({})

    (served,) = server.tasks.values()
    assert served["params"] == {
        "prompt": "A lighthouse on 2026-03-04 for run manual__2026-03-04",
        "image_urls": ["https://images.example/2026-03-04/reference.png"],
        "style_tag": "poster-manual__2026-03-04",
        "note": "2026-03-04",
    }


# ------------------------------------------------------------------------------ in a DAG run


@pytest.fixture
def test_dags(use_dags_folder: Callable[[Path], Path]) -> Path:
    return use_dags_folder(TEST_DAGS)


def run_dag(folder: Path, dag_id: str) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(folder))
    assert bag.import_errors == {}
    return bag.dags[dag_id].test()


def dag_file_constant(name: str) -> Any:
    spec = importlib.util.spec_from_file_location("reve_test_dags", TEST_DAGS / "reve_test_dags.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


def test_a_mapped_deferrable_operator_creates_one_reve_task_per_prompt(server, test_dags):
    dag_run = run_dag(test_dags, "reve_test_mapped_generation")

    assert dag_run.state == "success"
    instances = dag_run.get_task_instances()
    assert sorted(ti.map_index for ti in instances) == [0, 1, 2]
    assert all(ti.state == "success" and ti.try_number == 1 for ti in instances)
    results = return_values(dag_run, "generate")
    expected = [
        prompt.replace("{{ run_id }}", dag_run.run_id) for prompt in dag_file_constant("MAPPED_PROMPTS")
    ]
    assert server.submissions == len(expected)
    served = server.tasks
    for index, prompt in enumerate(expected):
        task = served[results[index]["task_id"]]
        assert task["params"]["prompt"] == prompt
        assert results[index]["status"] == "SUCCESS"
        assert results[index]["model"] == "nano-banana"
        assert results[index]["result_urls"] == task["result_urls"]
    assert server.requests_to("status") >= len(expected)  # each waited in its trigger


# --------------------------------------------------------------------------- what it costs


def test_consumed_credits_reach_the_xcom_the_task_log_and_a_metric_tagged_by_model(
    server, monkeypatch, capfd
):
    from airflow_provider_reve.operators import reve as operator_module

    metrics: list[tuple[str, int, dict[str, str] | None]] = []

    def record(stat: str, count: int = 1, rate: int = 1, *, tags: dict[str, str] | None = None) -> None:
        metrics.append((stat, count, tags))

    # The metrics backend is Airflow's to configure; here we only read what the operator emits.
    monkeypatch.setattr(operator_module.Stats, "incr", record)

    result = operator(model=SYNC_MODEL, num_images=2).execute({})

    assert result["consumed_credits"] == 24
    assert ("reve.credits_consumed", 24, {"model": SYNC_MODEL}) in metrics
    assert ("reve.tasks_submitted", 1, {"model": SYNC_MODEL}) in metrics
    assert "24 credits" in capfd.readouterr().out
    assert -sum(entry["delta"] for entry in server.ledger) == 24

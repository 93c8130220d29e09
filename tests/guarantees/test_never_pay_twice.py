"""Retries that never pay twice: proven against the fake Reve API over loopback HTTP.

The fake server counts what it received (``submissions``, ``requests_to``) and keeps a credits
ledger, so every test can say exactly how many paid tasks an Airflow behaviour cost.

Two kinds of tests:

* full task runs with ``dag.test()`` of the DAGs in ``tests/dags/never_pay_twice/`` (``retries=2``,
  ``retry_delay=0``): they count Airflow tries (``try_number``, ``task_instance_history``) and read the
  XCom ``return_value``. In Airflow 3.3.2 ``dag.test()`` gives tasks a real ``task_state_store`` (the
  crash tests below fail if it did not), and runs triggers inline.
* direct ``execute()`` calls with a minimal context and :class:`InMemoryTaskStateStore` where a full
  run per error code would be too slow. Deferrable paths are resumed the way the triggerer does:
  the trigger runs to its event, then ``method_name(context, event=..., **kwargs)``.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from types import ModuleType
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import (
    AirflowException,
    AirflowFailException,
    AirflowSkipException,
)
from airflow.sdk.exceptions import TaskDeferred
from never_pay_twice_support import (  # server and dags are fixtures
    ASYNC_MODEL,
    FAST_RETRIES,
    START_BALANCE,
    SYNC_MODEL,
    InMemoryTaskStateStore,
    Run,
    api_result,
    dags,  # noqa: F401 -- fixture
    execute_to_the_end,
    make_context,
    make_operator,
    net_charged,
    occupy_slots,
    resume,
    server,  # noqa: F401 -- fixture
)

from airflow_provider_reve.client.catalog import estimate_credits
from airflow_provider_reve.client.retry import RetryPolicy
from airflow_provider_reve.mixins import reattach as _reattach
from airflow_provider_reve.testing import FakeReveServer
from airflow_provider_reve.triggers.reve import ReveTaskTrigger

PERMANENT_CODES = [
    "INVALID_PROMPT",
    "INVALID_MODEL",
    "INVALID_PARAMETER",
    "CONTENT_POLICY_VIOLATION",
    "INVALID_API_KEY",
    "INSUFFICIENT_CREDITS",
    "TASK_NOT_FOUND",
]
# Error answers the hook may safely send again (the API says nothing was created).
SAFE_TO_RESUBMIT_CODES = ["RATE_LIMITED", "GENERATION_FAILED", "SERVICE_UNAVAILABLE"]
UNKNOWN_CODE = "SOMETHING_NEW_AND_ODD"  # served as HTTP 500
# Codes a status read may hit that go away on their own.
TRANSIENT_STATUS_CODES = ["RATE_LIMITED", "GENERATION_FAILED", "SERVICE_UNAVAILABLE", "TIMEOUT", UNKNOWN_CODE]
# Error codes of a FAILED generation that one more try may fix (failed tasks are refunded).
TRANSIENT_FAILURE_CODES = ["GENERATION_FAILED", "TIMEOUT", "SERVICE_UNAVAILABLE", UNKNOWN_CODE]


# ============================================================================================
# 1. Which Airflow exception, and so which retry behaviour, each API error leads to
# ============================================================================================


@pytest.mark.parametrize("code", PERMANENT_CODES)
def test_a_permanent_api_error_at_submit_fails_the_task_without_spending_a_retry(
    server: FakeReveServer, code: str, capsys: pytest.CaptureFixture[str]
) -> None:
    server.add_fault(kind="error", endpoint="generate", code=code, times=None)
    operator = make_operator()

    with pytest.raises(AirflowFailException, match=code):
        operator.execute(make_context(InMemoryTaskStateStore()))

    assert server.requests_to("generate") == 1, "a permanent error must not be re-sent by the hook"
    assert server.submissions == 0
    assert "PERMANENT" in capsys.readouterr().out


@pytest.mark.parametrize("code", SAFE_TO_RESUBMIT_CODES)
def test_a_transient_api_error_at_submit_fails_only_this_try_after_the_hooks_bounded_retries(
    server: FakeReveServer, code: str, capsys: pytest.CaptureFixture[str]
) -> None:
    server.add_fault(kind="error", endpoint="generate", code=code, times=None)
    operator = make_operator()

    with pytest.raises(AirflowException, match=code) as raised:
        operator.execute(make_context(InMemoryTaskStateStore()))

    assert not isinstance(raised.value, (AirflowFailException, AirflowSkipException))
    assert server.requests_to("generate") == FAST_RETRIES.max_attempts
    assert server.submissions == 0
    assert "TRANSIENT" in capsys.readouterr().out


@pytest.mark.parametrize("code", ["TIMEOUT", UNKNOWN_CODE])
def test_a_5xx_at_submit_that_may_hide_a_created_task_is_treated_as_an_ambiguous_submission(
    server: FakeReveServer, code: str
) -> None:
    server.add_fault(kind="error", endpoint="generate", code=code, status=504 if code == "TIMEOUT" else 500)

    with pytest.raises(AirflowFailException, match=r"(?i)paid task may"):
        make_operator().execute(make_context(InMemoryTaskStateStore()))
    assert server.requests_to("generate") == 1, "never re-sent silently"


@pytest.mark.parametrize("deferrable", [False, True], ids=["in the worker", "in the triggerer"])
@pytest.mark.parametrize("code", PERMANENT_CODES)
def test_a_permanent_api_error_while_waiting_fails_the_task_without_spending_a_retry(
    server: FakeReveServer, code: str, deferrable: bool
) -> None:
    server.set_async_seconds(30)
    server.add_fault(
        kind="error", endpoint="status", code=code, status=500 if code == UNKNOWN_CODE else None, times=None
    )
    operator = make_operator(model=ASYNC_MODEL, deferrable=deferrable)

    with pytest.raises(AirflowFailException, match=code):
        execute_to_the_end(operator, make_context(InMemoryTaskStateStore()))

    assert server.submissions == 1
    assert server.requests_to("status") == 1, "a permanent error must not be re-read"


@pytest.mark.parametrize("deferrable", [False, True], ids=["in the worker", "in the triggerer"])
@pytest.mark.parametrize("code", TRANSIENT_STATUS_CODES)
def test_a_transient_api_error_while_waiting_fails_only_this_try_and_the_retry_reattaches(
    server: FakeReveServer, code: str, deferrable: bool
) -> None:
    server.set_async_seconds(30)
    server.add_fault(
        kind="error", endpoint="status", code=code, status=500 if code == UNKNOWN_CODE else None, times=None
    )
    operator = make_operator(model=ASYNC_MODEL, deferrable=deferrable)
    store = InMemoryTaskStateStore()
    context = make_context(store)

    with pytest.raises(AirflowException) as raised:
        try:
            operator.execute(context)
        except TaskDeferred as deferred:
            # The trigger rides transient errors out until its deadline, kept short here.
            deferred.trigger.deadline = time.time() + 1.0
            resume(operator, context, deferred)

    assert not isinstance(raised.value, (AirflowFailException, AirflowSkipException)), raised.value
    assert code in str(raised.value), "the error that kept the wait from ending is named"
    if deferrable:
        assert server.requests_to("status") >= 2, "the trigger kept reading through the errors"
    else:
        assert server.requests_to("status") == 2, "bounded retries of the status read, then give up"
    (task_id,) = server.tasks

    # The next Airflow try, once the API is healthy again, re-attaches instead of paying again.
    server.clear_faults()
    server.finish_task(task_id)
    result = execute_to_the_end(make_operator(model=ASYNC_MODEL, deferrable=deferrable), make_context(store))
    assert result == api_result(server, task_id)
    assert server.submissions == 1


@pytest.mark.parametrize("deferrable", [False, True], ids=["in the worker", "in the triggerer"])
def test_a_wait_that_times_out_fails_only_this_try_and_the_retry_reattaches(
    server: FakeReveServer, deferrable: bool
) -> None:
    server.set_async_seconds(30)
    store = InMemoryTaskStateStore()

    with pytest.raises(AirflowException, match="Timed out") as raised:
        execute_to_the_end(
            make_operator(model=ASYNC_MODEL, deferrable=deferrable, timeout=0.3), make_context(store)
        )

    assert not isinstance(raised.value, (AirflowFailException, AirflowSkipException))
    (task_id,) = server.tasks
    server.finish_task(task_id)
    result = execute_to_the_end(make_operator(model=ASYNC_MODEL, deferrable=deferrable), make_context(store))
    assert result == api_result(server, task_id)
    assert server.submissions == 1


@pytest.mark.parametrize("code", PERMANENT_CODES + TRANSIENT_FAILURE_CODES)
def test_a_failed_generation_is_permanent_or_transient_by_its_error_code(
    server: FakeReveServer, code: str, capsys: pytest.CaptureFixture[str]
) -> None:
    server.add_fault(kind="fail_task", code=code)
    store = InMemoryTaskStateStore()
    expected = AirflowFailException if code in PERMANENT_CODES else AirflowException

    with pytest.raises(AirflowException, match=code) as raised:
        make_operator().execute(make_context(store))

    assert type(raised.value) is expected
    assert ("PERMANENT" if code in PERMANENT_CODES else "TRANSIENT") in capsys.readouterr().out
    assert server.submissions == 1
    assert server.balance() == START_BALANCE, "a failed task is refunded"
    server.clear_faults()
    assert make_operator().execute(make_context(store, try_number=2))["status"] == "SUCCESS"
    assert server.submissions == 2, "a FAILED (refunded) task is not re-attached: the next try submits afresh"


@pytest.mark.parametrize("deferrable", [False, True], ids=["in the worker", "in the triggerer"])
@pytest.mark.parametrize("code", ["INVALID_PARAMETER", "GENERATION_FAILED"])
def test_a_generation_that_fails_while_waiting_is_classified_by_its_error_code(
    server: FakeReveServer, code: str, deferrable: bool
) -> None:
    server.add_fault(kind="fail_task", code=code)
    store = InMemoryTaskStateStore()
    expected = AirflowFailException if code in PERMANENT_CODES else AirflowException

    with pytest.raises(AirflowException, match=code) as raised:
        execute_to_the_end(make_operator(model=ASYNC_MODEL, deferrable=deferrable), make_context(store))

    assert type(raised.value) is expected
    assert server.submissions == 1
    assert server.balance() == START_BALANCE
    server.clear_faults()
    retry = make_operator(model=ASYNC_MODEL, deferrable=deferrable)
    assert execute_to_the_end(retry, make_context(store, try_number=2))["status"] == "SUCCESS"
    assert server.submissions == 2, "a FAILED (refunded) task is not re-attached: the next try submits afresh"


@pytest.mark.parametrize(
    ("where", "model", "fault", "deferrable"),
    [
        ("at submit", SYNC_MODEL, {"kind": "error", "endpoint": "generate"}, False),
        ("on FAILED at once", SYNC_MODEL, {"kind": "fail_task"}, False),
        ("on FAILED while waiting in the worker", ASYNC_MODEL, {"kind": "fail_task"}, False),
        ("on FAILED while waiting in the triggerer", ASYNC_MODEL, {"kind": "fail_task"}, True),
    ],
)
def test_a_content_policy_violation_skips_the_task_when_asked_and_fails_it_by_default(
    server: FakeReveServer, where: str, model: str, fault: dict[str, Any], deferrable: bool
) -> None:
    for choice, expected in (
        ({"on_content_policy_violation": "skip"}, AirflowSkipException),
        ({}, AirflowFailException),
    ):
        server.add_fault(code="CONTENT_POLICY_VIOLATION", **fault)
        operator = make_operator(model=model, deferrable=deferrable, **choice)
        with pytest.raises(expected, match="CONTENT_POLICY_VIOLATION"):
            execute_to_the_end(operator, make_context(InMemoryTaskStateStore()))
    assert server.balance() == START_BALANCE, "nothing is charged for a rejected prompt"


@pytest.mark.parametrize(
    ("fault", "tries", "generate_requests", "submissions"),
    [
        pytest.param(
            {"kind": "error", "endpoint": "generate", "code": "INVALID_API_KEY", "times": None},
            1,
            1,
            0,
            id="a permanent error at submit spends one try",
        ),
        pytest.param(
            {
                "kind": "error",
                "endpoint": "generate",
                "code": "SERVICE_UNAVAILABLE",
                "retry_after": 0,
                "times": None,
            },
            3,
            3 * RetryPolicy().max_attempts,
            0,
            id="a transient error at submit spends every retry",
        ),
        pytest.param(
            {"kind": "fail_task", "code": "INVALID_PROMPT", "times": None},
            1,
            1,
            1,
            id="a permanently FAILED generation spends one try",
        ),
        pytest.param(
            {"kind": "fail_task", "code": "GENERATION_FAILED", "times": None},
            3,
            3,
            3,
            id="a transiently FAILED generation spends every retry at no cost",
        ),
    ],
)
def test_under_dag_test_an_error_spends_exactly_the_tries_its_class_allows(
    dags: ModuleType,
    server: FakeReveServer,
    fault: dict[str, Any],
    tries: int,
    generate_requests: int,
    submissions: int,
) -> None:
    server.add_fault(**fault)

    run = Run(dags.generate_once)

    assert run.state == "failed"
    (ti,) = run.task_instances().values()
    assert (ti.state, ti.try_number) == ("failed", tries)
    assert run.earlier_tries().get(-1, []) == [(n, "failed") for n in range(1, tries)]
    assert server.requests_to("generate") == generate_requests
    assert server.submissions == submissions
    assert server.balance() == START_BALANCE, "failed tasks are refunded; refused ones never charged"


# ============================================================================================
# 2. A worker killed after submitting: the retry re-attaches instead of paying again
# ============================================================================================


@pytest.mark.parametrize(
    "dag_name",
    ["crash_after_submit_in_worker", "crash_after_submit_deferrable"],
    ids=["waiting in the worker", "waiting in the triggerer"],
)
def test_a_worker_killed_after_submitting_is_retried_without_creating_a_second_reve_task(
    dags: ModuleType, server: FakeReveServer, dag_name: str
) -> None:
    # Long enough that the retry finds the task still IN_PROGRESS and has to re-attach to it.
    server.set_async_seconds(3)

    run = Run(getattr(dags, dag_name))

    assert run.state == "success"
    persisted = dags.CrashAfterSubmitOperator.persisted.get((run.dag_id, run.run_id, -1))
    assert persisted is not None, "dag.test() gave the task no task_state_store: nothing was persisted"
    assert server.submissions == 1, "the retry must not create a second Reve task"
    (task_id,) = server.tasks
    assert task_id in json.dumps(persisted)
    assert server.requests_to("status") >= 2, "the retry re-attached to an IN_PROGRESS task"
    assert run.xcom() == {-1: api_result(server, task_id)}
    (ti,) = run.task_instances().values()
    assert (ti.state, ti.try_number) == ("success", 2)
    assert run.earlier_tries() == {-1: [(1, "failed")]}
    assert net_charged(server) == estimate_credits(ASYNC_MODEL)


@pytest.mark.parametrize(
    "dag_name",
    ["crash_after_submit_mapped_in_worker", "crash_after_submit_mapped_deferrable"],
    ids=["waiting in the worker", "waiting in the triggerer"],
)
def test_each_map_index_reattaches_to_its_own_reve_task_after_a_worker_crash(
    dags: ModuleType, server: FakeReveServer, dag_name: str
) -> None:
    server.set_async_seconds(3)

    run = Run(getattr(dags, dag_name))

    assert run.state == "success"
    assert server.submissions == len(dags.MAPPED_PROMPTS) == 3
    by_prompt = {info["params"]["prompt"]: task_id for task_id, info in server.tasks.items()}
    xcom = run.xcom()
    assert sorted(xcom) == [0, 1, 2]
    task_ids = {index: xcom[index]["task_id"] for index in xcom}
    assert len(set(task_ids.values())) == 3, "each map index has its own Reve task"
    for index, prompt in enumerate(dags.MAPPED_PROMPTS):
        assert task_ids[index] == by_prompt[prompt], f"map index {index} re-attached to another's task"
        persisted = dags.CrashAfterSubmitOperator.persisted[(run.dag_id, run.run_id, index)]
        assert task_ids[index] in json.dumps(persisted), "the id changed across the retry"
        assert xcom[index] == api_result(server, task_ids[index])
    assert {i: (ti.state, ti.try_number) for i, ti in run.task_instances().items()} == {
        index: ("success", 2) for index in range(3)
    }


def test_a_worker_killed_after_the_generation_finished_returns_the_result_without_paying_again(
    dags: ModuleType, server: FakeReveServer
) -> None:
    run = Run(dags.crash_on_resume)

    assert run.state == "success"
    assert server.submissions == 1
    (task_id,) = server.tasks
    assert run.xcom() == {-1: api_result(server, task_id)}
    (ti,) = run.task_instances().values()
    assert ti.try_number == 2


def test_a_deferrable_generation_succeeds_in_its_first_try_under_dag_test(
    dags: ModuleType, server: FakeReveServer
) -> None:
    run = Run(dags.deferrable_once)

    assert run.state == "success"
    assert server.submissions == 1
    (task_id,) = server.tasks
    assert run.xcom() == {-1: api_result(server, task_id)}
    (ti,) = run.task_instances().values()
    assert ti.try_number == 1, "the resumption after the trigger failed and spent an Airflow retry"


def test_a_retry_reattaches_in_the_triggerer_to_the_task_an_earlier_try_submitted(
    server: FakeReveServer,
) -> None:
    server.set_async_seconds(30)
    store = InMemoryTaskStateStore()
    with pytest.raises(TaskDeferred):
        make_operator(model=ASYNC_MODEL, deferrable=True).execute(make_context(store))
    # ... and the worker died; the triggerer never reported back. Next try:
    (task_id,) = server.tasks

    with pytest.raises(TaskDeferred) as deferred:
        make_operator(model=ASYNC_MODEL, deferrable=True).execute(make_context(store, try_number=2))

    assert server.submissions == 1
    assert isinstance(deferred.value.trigger, ReveTaskTrigger)
    assert deferred.value.trigger.reve_task_id == task_id
    server.finish_task(task_id)
    operator = make_operator(model=ASYNC_MODEL, deferrable=True)
    assert resume(operator, make_context(store, 2), deferred.value) == api_result(server, task_id)
    assert server.submissions == 1
    # Airflow may still fail the try after the result was returned: the next try hands on the
    # same result instead of paying again.
    again = make_operator(model=ASYNC_MODEL, deferrable=True).execute(make_context(store, try_number=3))
    assert again == api_result(server, task_id)
    assert server.submissions == 1


def test_without_task_state_store_the_operator_warns_once_and_still_generates(
    server: FakeReveServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(_reattach, "_warned_unavailable", False)

    first = make_operator().execute(make_context(store=None))
    second = make_operator().execute(make_context(store=None))

    assert first["status"] == second["status"] == "SUCCESS"
    assert server.submissions == 2
    assert capsys.readouterr().out.count("task_state_store is not available") == 1


# ============================================================================================
# 3. A remembered task that FAILED, or that the API no longer knows, is submitted afresh
# ============================================================================================


def test_a_remembered_task_that_failed_is_submitted_afresh_on_the_next_try(
    dags: ModuleType, server: FakeReveServer
) -> None:
    server.add_fault(kind="fail_task", code="GENERATION_FAILED", times=1)

    run = Run(dags.crash_after_submit_instant)

    assert run.state == "success"
    assert server.submissions == 2
    assert server.requests_to("status") == 1, "the retry looked the remembered task up first"
    failed, fresh = server.tasks
    assert server.tasks[failed]["status"] == "FAILED"
    persisted = dags.CrashAfterSubmitOperator.persisted[(run.dag_id, run.run_id, -1)]
    assert failed in json.dumps(persisted)
    cost = estimate_credits(SYNC_MODEL)
    assert [(e["task_id"], e["delta"], e["reason"]) for e in server.ledger] == [
        (failed, -cost, "charge"),
        (failed, cost, "refund"),
        (fresh, -cost, "charge"),
    ]
    assert run.xcom() == {-1: api_result(server, fresh)}
    (ti,) = run.task_instances().values()
    assert ti.try_number == 2


def test_a_remembered_task_the_api_no_longer_knows_is_submitted_afresh_on_the_next_try(
    dags: ModuleType, server: FakeReveServer
) -> None:
    # The only status read is the retry's look-up of the remembered task (reve-2.0 never waits).
    server.add_fault(kind="error", endpoint="status", code="TASK_NOT_FOUND", times=1)

    run = Run(dags.crash_after_submit_instant)

    assert run.state == "success"
    assert server.submissions == 2
    assert server.requests_to("status") == 1, "the retry looked the remembered task up first"
    assert server.faults == []
    forgotten, fresh = server.tasks
    assert forgotten in json.dumps(dags.CrashAfterSubmitOperator.persisted[(run.dag_id, run.run_id, -1)])
    assert run.xcom() == {-1: api_result(server, fresh)}
    (ti,) = run.task_instances().values()
    assert ti.try_number == 2


# ============================================================================================
# 4. TOO_MANY_TASKS back-pressure: wait (deferred on a timer) and submit again, no retry spent
# ============================================================================================


def test_too_many_tasks_in_a_mapped_fan_out_defers_on_a_timer_and_every_task_succeeds_in_one_try(
    dags: ModuleType, server: FakeReveServer
) -> None:
    # dag.test() runs mapped task instances one after another. The tasks hand their Reve task on
    # (wait_for_completion=False), so the account's tasks pile up to the limit and later
    # submissions are refused until earlier ones finish (after 3 s; a back-off is >= 3.75 s).
    limit = 2
    server.set_async_seconds(3)
    server.set_max_in_flight(limit)
    dags.BackoffRecordingOperator.resumed_after_backoff.clear()

    run = Run(dags.backpressure_fanout)

    fan_out = len(dags.BACKPRESSURE_PROMPTS)
    assert fan_out == 3 * limit
    assert run.state == "success"
    assert {i: (ti.state, ti.try_number) for i, ti in run.task_instances().items()} == {
        index: ("success", 1) for index in range(fan_out)
    }
    assert run.earlier_tries() == {}, "no Airflow retry was spent"
    assert server.submissions == fan_out
    refusals = server.requests_to("generate") - fan_out
    assert refusals >= 1, "the in-flight limit never pushed back: the test proved nothing"
    resumed = [
        entry for entry in dags.BackoffRecordingOperator.resumed_after_backoff if entry[0] == run.run_id
    ]
    assert len(resumed) == refusals, "every refusal was waited out on a timer trigger"
    xcom = run.xcom()
    assert len({xcom[index]["task_id"] for index in range(fan_out)}) == fan_out
    server.set_async_seconds(0)  # let every task finish now
    assert server.stats()["tasks_by_status"] == {"IN_PROGRESS": 0, "SUCCESS": fan_out, "FAILED": 0}


def test_too_many_tasks_defers_on_a_timer_with_a_growing_backoff_instead_of_holding_the_worker(
    server: FakeReveServer,
) -> None:
    from airflow.providers.standard.triggers.temporal import DateTimeTrigger

    server.set_async_seconds(30)
    server.set_max_in_flight(1)
    (blocker,) = occupy_slots(server, 1)
    operator = make_operator(deferrable=True)
    context = make_context(InMemoryTaskStateStore())

    started = time.time()
    with pytest.raises(TaskDeferred) as first:
        operator.execute(context)
    assert time.time() - started < 2, "the worker slept instead of deferring"
    assert isinstance(first.value.trigger, DateTimeTrigger)
    assert first.value.method_name == "execute_after_backoff"
    kwargs = first.value.kwargs or {}
    assert kwargs["submit_attempt"] == 2
    first_wait = (first.value.trigger.moment - datetime.now(timezone.utc)).total_seconds()
    assert 7.5 <= first_wait <= 10.1

    # Resumed by the timer while the account is still full: defer again, longer.
    with pytest.raises(TaskDeferred) as second:
        operator.execute_after_backoff(context, event=None, **kwargs)
    assert second.value.kwargs is not None
    assert second.value.kwargs["submit_attempt"] == 3
    assert second.value.kwargs["first_refusal"] == kwargs["first_refusal"]
    second_wait = (second.value.trigger.moment - datetime.now(timezone.utc)).total_seconds()
    assert 15.0 <= second_wait <= 20.1

    server.finish_task(blocker)
    result = operator.execute_after_backoff(context, event=None, **second.value.kwargs)
    assert result["status"] == "SUCCESS"
    assert server.submissions == 2  # the blocker and ours
    assert server.requests_to("generate") == 1 + 3


def test_a_sane_retry_after_longer_than_the_backoff_on_too_many_tasks_sets_the_timer(
    server: FakeReveServer,
) -> None:
    server.add_fault(kind="error", endpoint="generate", code="TOO_MANY_TASKS", retry_after=25)
    operator = make_operator(deferrable=True)
    context = make_context(InMemoryTaskStateStore())

    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(context)

    wait = (deferred.value.trigger.moment - datetime.now(timezone.utc)).total_seconds()
    assert 24 < wait <= 25.05
    assert server.submissions == 0
    # The timer fired: resumed as the triggerer would.
    result = operator.execute_after_backoff(context, event=None, **(deferred.value.kwargs or {}))
    assert result["status"] == "SUCCESS"
    assert server.submissions == 1


@pytest.mark.parametrize("retry_after", [0, 1, "Thu, 01 Jan 1970 00:00:00 GMT"])
def test_a_retry_after_shorter_than_the_documented_backoff_never_shortens_the_timer(
    server: FakeReveServer, retry_after: Any
) -> None:
    server.add_fault(kind="error", endpoint="generate", code="TOO_MANY_TASKS", retry_after=retry_after)

    with pytest.raises(TaskDeferred) as deferred:
        make_operator(deferrable=True).execute(make_context(InMemoryTaskStateStore()))

    wait = (deferred.value.trigger.moment - datetime.now(timezone.utc)).total_seconds()
    assert wait >= 7.4, "the 10 s (-25% jitter) floor holds whatever Retry-After says"


def test_retry_after_zero_on_too_many_tasks_does_not_spin_in_the_worker(server: FakeReveServer) -> None:
    server.add_fault(kind="error", endpoint="generate", code="TOO_MANY_TASKS", retry_after=0, times=None)

    with pytest.raises(AirflowException, match=r"TOO_MANY_TASKS.*max_submit_wait"):
        make_operator(deferrable=False, max_submit_wait=5).execute(make_context(InMemoryTaskStateStore()))

    # The first back-off (>= 7.5 s) is already longer than max_submit_wait: one request, no loop.
    assert server.requests_to("generate") == 1


def test_a_too_many_tasks_timer_never_fires_before_the_deferring_worker_has_settled(
    server: FakeReveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The triggerer must not resume a task before the executor recorded the deferring worker's
    # exit (Airflow 3.3's defer/executor-event race); here "settled" is 40 s away.
    monkeypatch.setattr("airflow_provider_reve.triggers.reve.settle_time", lambda: time.time() + 40)
    server.add_fault(kind="error", endpoint="generate", code="TOO_MANY_TASKS")

    with pytest.raises(TaskDeferred) as deferred:
        make_operator(deferrable=True).execute(make_context(InMemoryTaskStateStore()))

    wait = (deferred.value.trigger.moment - datetime.now(timezone.utc)).total_seconds()
    assert wait >= 39


def test_without_deferral_too_many_tasks_waits_in_the_worker_and_then_submits_once(
    server: FakeReveServer,
) -> None:
    server.set_async_seconds(1)  # the other task finishes long before the first back-off ends
    server.set_max_in_flight(1)
    occupy_slots(server, 1)

    started = time.time()
    result = make_operator(deferrable=False).execute(make_context(InMemoryTaskStateStore()))

    assert result["status"] == "SUCCESS"
    assert time.time() - started >= 3.5, "it must have waited out the back-off"
    assert server.submissions == 2  # the blocker and ours
    assert server.requests_to("generate") == 1 + 2


@pytest.mark.parametrize("deferrable", [False, True], ids=["in the worker", "deferrable"])
def test_too_many_tasks_for_longer_than_max_submit_wait_fails_clearly_without_submitting(
    server: FakeReveServer, deferrable: bool
) -> None:
    server.set_async_seconds(30)
    server.set_max_in_flight(1)
    occupy_slots(server, 1)
    operator = make_operator(deferrable=deferrable, max_submit_wait=3600)
    context = make_context(InMemoryTaskStateStore())

    with pytest.raises(AirflowException, match=r"TOO_MANY_TASKS.*max_submit_wait"):
        operator.execute_after_backoff(context, submit_attempt=4, first_refusal=time.time() - 3599)
    started = time.time()
    with pytest.raises(AirflowException, match=r"TOO_MANY_TASKS.*max_submit_wait"):
        make_operator(deferrable=deferrable, max_submit_wait=1).execute(context)
    assert time.time() - started < 2, "it gave up without waiting"
    assert server.submissions == 1  # only the other DAG's task


def test_under_dag_test_too_many_tasks_beyond_max_submit_wait_fails_instead_of_deferring_on(
    dags: ModuleType, server: FakeReveServer
) -> None:
    # max_submit_wait=12 s: the first back-off (7.5-10 s) fits, the second (15-20 s more) does not.
    # The other DAG's task would free the account only after 25 s.
    server.set_async_seconds(25)
    server.set_max_in_flight(1)
    occupy_slots(server, 1)

    run = Run(dags.backpressure_deadline)

    assert run.state == "failed"
    (ti,) = run.task_instances().values()
    assert (ti.state, ti.try_number) == ("failed", 1)
    assert server.requests_to("generate") == 1 + 2, "refused, waited once on a timer, refused: gave up"
    assert server.submissions == 1  # only the other DAG's task


# ============================================================================================
# 5. Credits: max_credits refuses before any HTTP call; the ledger matches the XCom results
# ============================================================================================


@pytest.mark.parametrize(
    ("request_", "max_credits", "why"),
    [
        ({"model": SYNC_MODEL, "prompt": "a fox"}, 11, "cost about 12 credits"),
        ({"model": "nano-banana-pro", "prompt": "a fox", "resolution": "4K"}, 139, "cost about 140"),
        ({"model": "a-model-nobody-priced", "prompt": "a fox"}, 10_000, "cannot be estimated"),
        ({"model": "kling3-pro-text-to-video", "prompt": "a fox"}, 10_000, "cannot be estimated"),
    ],
    ids=["above it", "above it at 4K", "unknown model", "video without a duration"],
)
def test_max_credits_refuses_a_request_it_cannot_afford_or_price_before_any_http_call(
    server: FakeReveServer, request_: dict[str, Any], max_credits: int, why: str
) -> None:
    operator = make_operator(max_credits=max_credits, **request_)

    with pytest.raises(AirflowFailException, match=why):
        operator.execute(make_context(InMemoryTaskStateStore()))

    assert server.requests_to("total") == 0
    assert server.ledger == []


def test_the_credits_ledger_equals_the_sum_of_consumed_credits_in_the_xcom_results(
    dags: ModuleType, server: FakeReveServer
) -> None:
    run = Run(dags.credits_fanout)  # max_credits=140: the dearest request costs exactly that

    assert run.state == "success"
    results = run.xcom()
    assert len(results) == len(dags.CREDITS_FANOUT) == server.submissions
    for index, request_ in enumerate(dags.CREDITS_FANOUT):
        params = {k: v for k, v in request_.items() if k != "model"}
        assert results[index]["consumed_credits"] == estimate_credits(request_["model"], **params)
    assert net_charged(server) == sum(result["consumed_credits"] for result in results.values()) == 177
    assert server.balance() == START_BALANCE - 177


# ============================================================================================
# 6. Ambiguous submissions, and a flagged prompt in a mapped fan-out
# ============================================================================================


@pytest.mark.parametrize(
    "fault",
    [
        {"kind": "drop_after"},
        {"kind": "garbled"},
        {"kind": "missing_data"},
        {"kind": "html", "status": 502},
    ],
    ids=["connection dropped", "truncated JSON", "no data", "HTML from a proxy"],
)
def test_an_ambiguous_submission_fails_without_retry_by_default_saying_a_paid_task_may_exist(
    server: FakeReveServer, fault: dict[str, Any]
) -> None:
    server.add_fault(endpoint="generate", **fault)

    with pytest.raises(AirflowFailException, match=r"(?i)paid task may"):
        make_operator().execute(make_context(InMemoryTaskStateStore()))

    assert server.requests_to("generate") == 1, "never re-sent silently"


def test_an_ambiguous_submission_with_on_ambiguous_submit_retry_fails_only_this_try(
    server: FakeReveServer,
) -> None:
    server.add_fault(kind="drop_after", endpoint="generate")

    with pytest.raises(AirflowException, match=r"(?i)paid task may") as raised:
        make_operator(on_ambiguous_submit="retry").execute(make_context(InMemoryTaskStateStore()))

    assert not isinstance(raised.value, (AirflowFailException, AirflowSkipException))
    assert server.requests_to("generate") == 1
    assert server.submissions == 1


@pytest.mark.parametrize(
    ("dag_name", "tries", "submissions", "state"),
    [
        ("generate_once", 1, 1, "failed"),
        ("ambiguous_retry", 2, 2, "success"),
    ],
    ids=["on_ambiguous_submit=fail spends no retry", "on_ambiguous_submit=retry resubmits once"],
)
def test_under_dag_test_an_ambiguous_submission_is_retried_only_when_the_dag_says_so(
    dags: ModuleType, server: FakeReveServer, dag_name: str, tries: int, submissions: int, state: str
) -> None:
    server.add_fault(kind="drop_after", endpoint="generate", times=1)

    run = Run(getattr(dags, dag_name))

    assert run.state == state
    (ti,) = run.task_instances().values()
    assert ti.try_number == tries
    assert server.submissions == submissions, "the lost answer's task was paid for all the same"
    assert net_charged(server) == submissions * estimate_credits(SYNC_MODEL)


def test_a_flagged_prompt_is_skipped_and_does_not_fail_the_mapped_fan_out(
    dags: ModuleType, server: FakeReveServer
) -> None:
    flagged_at_submit, flagged_while_generating, innocent = dags.CONTENT_POLICY_FANOUT
    server.add_fault(
        kind="error",
        endpoint="generate",
        code="CONTENT_POLICY_VIOLATION",
        model=flagged_at_submit["model"],
        times=None,
    )
    server.add_fault(
        kind="fail_task", code="CONTENT_POLICY_VIOLATION", model=flagged_while_generating["model"], times=None
    )

    run = Run(dags.content_policy_fanout)

    assert run.state == "success"
    assert {i: (ti.state, ti.try_number) for i, ti in run.task_instances().items()} == {
        0: ("skipped", 1),
        1: ("skipped", 1),
        2: ("success", 1),
    }
    assert server.submissions == 2  # the one refused at submit created nothing
    results = run.xcom()
    assert sorted(results) == [2]
    assert results[2]["model"] == innocent["model"]
    assert net_charged(server) == results[2]["consumed_credits"] == estimate_credits(innocent["model"])

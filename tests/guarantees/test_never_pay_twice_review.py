"""Regression tests for the defects an adversarial review found in "never pay twice" and in how
the operator behaves inside Airflow. Each test failed on the code before its fix.

Like ``test_never_pay_twice.py``, every test counts what the fake Reve API received and charged.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from types import ModuleType
from typing import Any

import pytest
import requests
from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException
from airflow.sdk.exceptions import TaskDeferred
from never_pay_twice_support import (
    ASYNC_MODEL,
    SYNC_MODEL,
    InMemoryTaskStateStore,
    Run,
    api_result,
    dags,  # noqa: F401 -- fixture
    execute_to_the_end,
    make_context,
    make_operator,
    server,  # noqa: F401 -- fixture
)
from reve_test_helpers import use_connection

from airflow_provider_reve.client.retry import RetryPolicy
from airflow_provider_reve.exceptions import (
    ReveAmbiguousSubmissionError,
    ReveConnectionError,
    ReveMalformedResponseError,
)
from airflow_provider_reve.hooks.reve import ReveHook
from airflow_provider_reve.testing import DEFAULT_API_KEY, FakeReveServer
from airflow_provider_reve.triggers.reve import ReveTaskTrigger

RETRIES = 2


def ti_fields(try_number: int, max_tries: int) -> dict[str, Any]:
    """What Airflow's task instance says about its tries (a clear raises ``max_tries``)."""
    return {"try_number": try_number, "max_tries": max_tries}


# ============================================================================================
# The remembered task survives until Airflow has recorded success; a clear starts afresh
# ============================================================================================


@pytest.mark.parametrize(
    "dag_name",
    ["fails_after_execute_sync", "fails_after_execute_deferrable", "fails_after_execute_handed_on"],
    ids=["synchronous model", "waiting in the triggerer", "handed on IN_PROGRESS"],
)
def test_a_try_that_fails_after_execute_returned_is_retried_without_paying_again(
    dags: ModuleType, server: FakeReveServer, dag_name: str
) -> None:
    run = Run(getattr(dags, dag_name))

    assert run.state == "success"
    assert server.submissions == 1, "the retry submitted a second paid task"
    (task_id,) = server.tasks
    assert run.xcom()[-1]["task_id"] == task_id
    (ti,) = run.task_instances().values()
    assert ti.try_number == 2


def test_a_retry_after_success_returns_the_same_task_but_a_clear_generates_afresh(
    server: FakeReveServer,
) -> None:
    store = InMemoryTaskStateStore()
    first = make_operator(retries=RETRIES).execute(make_context(store, **ti_fields(1, RETRIES)))

    # Airflow failed try 1 after execute() returned; try 2 of the same run of tries:
    retried = make_operator(retries=RETRIES).execute(make_context(store, **ti_fields(2, RETRIES)))
    assert retried == first
    assert server.submissions == 1

    # The user cleared the task: Airflow gives it a fresh set of tries (max_tries = 2 + retries).
    cleared = make_operator(retries=RETRIES).execute(make_context(store, **ti_fields(3, 2 + RETRIES)))
    assert cleared["task_id"] != first["task_id"]
    assert server.submissions == 2, "a clear asks for a new generation"


# ============================================================================================
# Only what provably never left is re-sent
# ============================================================================================


@pytest.fixture
def tls_fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeReveServer]:
    """The fake over HTTPS, trusted by ``requests`` through ``REQUESTS_CA_BUNDLE``."""
    with FakeReveServer(tls=True) as fake:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(fake.ca_file))
        use_connection(monkeypatch, fake.url)
        yield fake


def test_a_tls_break_after_the_request_was_written_is_not_resent(tls_fake: FakeReveServer) -> None:
    tls_fake.add_fault(kind="tls_break_after_request", endpoint="generate")

    with pytest.raises(ReveAmbiguousSubmissionError, match="may have been created"):
        ReveHook().generate(SYNC_MODEL, prompt="a red fox")

    assert tls_fake.requests_to("generate") == 1, "a TLS error after the request was written was re-sent"
    assert tls_fake.submissions == 1


def test_a_tls_handshake_failure_is_known_to_have_sent_nothing(
    tls_fake: FakeReveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")  # the fake's CA is not trusted: the handshake fails

    with pytest.raises(ReveConnectionError) as raised:
        ReveHook().generate(SYNC_MODEL, prompt="a red fox")

    assert raised.value.request_sent is False
    assert tls_fake.submissions == 0
    assert tls_fake.requests_to("generate") == 0


def test_a_gateway_404_while_re_attaching_is_transient_and_never_pays_again(server: FakeReveServer) -> None:
    server.set_async_seconds(30)
    store = InMemoryTaskStateStore()
    with pytest.raises(TaskDeferred):
        make_operator(model=ASYNC_MODEL, deferrable=True).execute(make_context(store))
    (task_id,) = server.tasks
    server.add_fault(kind="bare_404", endpoint="status")

    with pytest.raises(AirflowException) as raised:
        make_operator(model=ASYNC_MODEL, deferrable=True).execute(make_context(store, try_number=2))

    assert not isinstance(raised.value, AirflowFailException)
    assert server.submissions == 1, "a gateway's 404 made the operator forget a running paid task"
    with pytest.raises(TaskDeferred) as deferred:
        make_operator(model=ASYNC_MODEL, deferrable=True).execute(make_context(store, try_number=3))
    assert isinstance(deferred.value.trigger, ReveTaskTrigger)
    assert deferred.value.trigger.reve_task_id == task_id
    assert server.submissions == 1


class StoreThatFails(InMemoryTaskStateStore):
    """A ``task_state_store`` whose API-server calls fail as configured."""

    def __init__(self, *, fail_delete: bool = False, fail_set_with_task_id: bool = False) -> None:
        super().__init__()
        self.fail_delete = fail_delete
        self.fail_set_with_task_id = fail_set_with_task_id

    def set(self, key: str, value: Any, *, retention: Any = None) -> None:
        if self.fail_set_with_task_id and isinstance(value, dict) and value.get("task_id"):
            raise RuntimeError("API server error 500 while writing the task state")
        super().set(key, value, retention=retention)

    def delete(self, key: str) -> None:
        if self.fail_delete:
            raise RuntimeError("API server error 500 while deleting the task state")
        super().delete(key)


def test_after_a_too_many_tasks_back_off_the_paid_task_is_remembered_even_if_tidying_up_fails(
    server: FakeReveServer,
) -> None:
    server.add_fault(kind="error", endpoint="generate", code="TOO_MANY_TASKS")
    store = StoreThatFails(fail_delete=True)
    operator = make_operator(deferrable=True)
    with pytest.raises(TaskDeferred) as backoff:
        operator.execute(make_context(store))

    result = operator.execute_after_backoff(make_context(store), event=None, **(backoff.value.kwargs or {}))

    assert server.submissions == 1
    # A retry of this try (say the XCom push failed) finds the paid task instead of paying again.
    again = make_operator(deferrable=True).execute(make_context(store, try_number=2))
    assert again == result
    assert server.submissions == 1


def test_a_paid_task_the_state_store_could_not_record_is_still_waited_for_and_never_paid_again(
    server: FakeReveServer,
) -> None:
    server.set_async_seconds(0.3)
    store = StoreThatFails(fail_set_with_task_id=True)

    result = make_operator(model=ASYNC_MODEL).execute(make_context(store))
    assert result == api_result(server, result["task_id"])

    # Had that try failed later, the in-flight marker makes the retry stop instead of paying.
    with pytest.raises(AirflowFailException, match="paid Reve task may exist"):
        make_operator(model=ASYNC_MODEL).execute(make_context(store, try_number=2))
    assert server.submissions == 1


# ============================================================================================
# A kill or execution_timeout while the paid request is in flight
# ============================================================================================


def test_an_execution_timeout_during_the_submit_request_never_pays_twice(
    dags: ModuleType, server: FakeReveServer
) -> None:
    # The API creates (and charges) the task, then takes 4 s to answer; execution_timeout is 2 s.
    server.add_fault(kind="slow", endpoint="generate", delay=4)

    run = Run(dags.timeout_mid_submit)

    assert run.state == "failed"
    assert server.submissions == 1, "the retry submitted again after a timeout mid-request"
    (ti,) = run.task_instances().values()
    assert (ti.state, ti.try_number) == ("failed", 2), "try 2 stopped at the in-flight marker"


def test_with_on_ambiguous_submit_retry_a_timed_out_submission_is_sent_again_as_the_user_chose(
    dags: ModuleType, server: FakeReveServer
) -> None:
    server.add_fault(kind="slow", endpoint="generate", delay=4)

    run = Run(dags.timeout_mid_submit_retry)

    assert run.state == "success"
    assert server.submissions == 2


# ============================================================================================
# Arguments and answers the operator must not misread
# ============================================================================================


def test_documented_fields_in_extra_params_are_sent_and_priced(server: FakeReveServer) -> None:
    extra = {"resolution": "4K", "aspect_ratio": "16:9"}

    with pytest.raises(AirflowFailException, match="about 140 credits"):
        make_operator(model="nano-banana-pro", extra_params=extra, max_credits=100).execute(
            make_context(InMemoryTaskStateStore())
        )
    assert server.requests_to("generate") == 0

    server.set_async_seconds(0)
    result = execute_to_the_end(
        make_operator(model="nano-banana-pro", extra_params=extra), make_context(InMemoryTaskStateStore())
    )
    sent = server.tasks[result["task_id"]]["params"]
    assert (sent["resolution"], sent["aspect_ratio"]) == ("4K", "16:9")
    assert result["consumed_credits"] == 140


@pytest.mark.parametrize("field", ["model", "prompt"])
def test_extra_params_that_would_replace_the_operators_own_fields_are_refused_before_any_call(
    server: FakeReveServer, field: str
) -> None:
    with pytest.raises(AirflowFailException, match=rf"extra_params may not set \['{field}'\]"):
        make_operator(extra_params={field: "something else"}).execute(make_context(InMemoryTaskStateStore()))
    assert server.requests_to("generate") == 0


def test_a_submission_answered_success_without_files_is_waited_for_not_paid_again(
    server: FakeReveServer,
) -> None:
    server.add_fault(kind="success_without_urls", endpoint="generate")

    result = make_operator(model=SYNC_MODEL).execute(make_context(InMemoryTaskStateStore()))

    assert server.submissions == 1
    assert result == api_result(server, result["task_id"])
    assert result["result_urls"], "a success without files was accepted"


def test_templated_fields_rendered_as_strings_become_the_values_the_api_expects(
    dags: ModuleType, server: FakeReveServer
) -> None:
    server.set_async_seconds(0.2)

    run = Run(dags.templated_strings)

    assert run.state == "success"
    sent = {info["params"]["prompt"]: info["params"] for info in server.tasks.values()}
    image, video = sent["a red fox"], sent["a wave"]
    assert image["num_images"] == 2
    assert image["image_urls"] == ["https://example.com/a.png"]
    assert image["test_time_scaling"] == 2
    assert (video["duration"], video["generate_audio"]) == (5, True)


@pytest.mark.parametrize(
    ("field", "value"),
    [("num_images", "two"), ("duration", "5s"), ("generate_audio", "maybe"), ("extra_params", "[1, 2]")],
)
def test_a_templated_string_that_means_nothing_is_refused_naming_native_rendering(
    server: FakeReveServer, field: str, value: str
) -> None:
    model = "kling26-text-to-video" if field in ("duration", "generate_audio") else SYNC_MODEL
    with pytest.raises(AirflowFailException, match="render_template_as_native_obj"):
        make_operator(model=model, **{field: value}).execute(make_context(InMemoryTaskStateStore()))
    assert server.requests_to("generate") == 0


# ============================================================================================
# Deferred waits obey execution_timeout and the trigger's retryable flag
# ============================================================================================


def test_a_deferred_wait_ends_within_execution_timeout(server: FakeReveServer) -> None:
    server.set_async_seconds(30)
    started = datetime.now(timezone.utc) - timedelta(seconds=4)  # this try has run for 4 s
    operator = make_operator(model=ASYNC_MODEL, deferrable=True, execution_timeout=timedelta(seconds=10))

    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(make_context(InMemoryTaskStateStore(), start_date=started))

    trigger = deferred.value.trigger
    assert isinstance(trigger, ReveTaskTrigger)
    assert trigger.deadline is not None
    assert 5.0 < trigger.deadline - time.time() <= 6.1, "the wait must end with execution_timeout, not before"
    assert deferred.value.timeout is not None
    assert deferred.value.timeout <= timedelta(seconds=6.1) + timedelta(minutes=2)


@pytest.mark.parametrize("code", [None, "SOMETHING_ODD"])
def test_a_trigger_error_marked_not_retryable_fails_without_spending_retries(
    server: FakeReveServer, code: str | None
) -> None:
    server.set_async_seconds(30)
    operator = make_operator(model=ASYNC_MODEL, deferrable=True)
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(make_context(InMemoryTaskStateStore()))
    task_id = deferred.value.kwargs["reve_task_id"]
    event = {
        "outcome": "error",
        "reve_task_id": task_id,
        "task": None,
        "message": "Reve API GET /api/v1/status answered HTTP 403 without an error code",
        "error_code": code,
        "retryable": False,
    }

    with pytest.raises(AirflowFailException):
        operator.execute_complete(make_context(InMemoryTaskStateStore()), event=event, reve_task_id=task_id)


def test_the_tls_fixture_really_serves_https_with_the_trusted_ca(tls_fake: FakeReveServer) -> None:
    # Guards the TLS tests above: the fake really speaks HTTPS with the CA we trust.
    answer = requests.get(
        f"{tls_fake.url}/api/v1/status",
        params={"task_id": "nope"},
        headers={"Authorization": f"Bearer {DEFAULT_API_KEY}"},
        timeout=5,
    )
    assert tls_fake.url.startswith("https://")
    assert answer.status_code == 404


def test_a_slow_synchronous_generation_is_waited_for_not_left_ambiguous(
    server: FakeReveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # reve-2.0 answers only when the image is made; the connection's read timeout is 1 s.
    use_connection(monkeypatch, server.url, read_timeout=1)
    server.add_fault(kind="slow", endpoint="generate", delay=2.5)

    task = ReveHook().generate(SYNC_MODEL, prompt="an upscaled red fox")

    assert task.status == "SUCCESS"
    assert server.submissions == 1


# ============================================================================================
# Found by the adversarial review of the fixes above
# ============================================================================================


def test_changing_retries_in_the_dag_file_between_two_tries_does_not_look_like_a_clear(
    server: FakeReveServer,
) -> None:
    store = InMemoryTaskStateStore()
    first = make_operator(retries=2).execute(make_context(store, **ti_fields(1, 2)))

    # The retry runs a redeployed DAG file with retries=3; Airflow left max_tries alone.
    retried = make_operator(retries=3).execute(make_context(store, **ti_fields(2, 2)))

    assert retried == first
    assert server.submissions == 1


class StoreThatFailsOnce(InMemoryTaskStateStore):
    """The API server fails the first write of a task id, then recovers."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    def set(self, key: str, value: Any, *, retention: Any = None) -> None:
        if not self.failed and isinstance(value, dict) and value.get("task_id"):
            self.failed = True
            raise RuntimeError("API server error 503 while writing the task state")
        super().set(key, value, retention=retention)


def test_a_state_store_hiccup_while_recording_the_paid_task_is_retried(server: FakeReveServer) -> None:
    server.set_async_seconds(30)
    store = StoreThatFailsOnce()

    with pytest.raises(TaskDeferred) as deferred:
        make_operator(model=ASYNC_MODEL, deferrable=True, on_ambiguous_submit="retry").execute(
            make_context(store)
        )

    assert store.failed
    (task_id,) = server.tasks
    # A retry of this try re-attaches to the task rather than treating it as unknown.
    with pytest.raises(TaskDeferred) as again:
        make_operator(model=ASYNC_MODEL, deferrable=True, on_ambiguous_submit="retry").execute(
            make_context(store, try_number=2)
        )
    assert again.value.trigger.reve_task_id == deferred.value.trigger.reve_task_id == task_id
    assert server.submissions == 1


def test_a_status_answer_about_another_task_is_never_taken_for_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class CacheThatIgnoresTheQuery(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(
                {
                    "code": 200,
                    "message": "success",
                    "data": {
                        "task_id": "someone-elses-task",
                        "status": "SUCCESS",
                        "response": {"resultUrls": ["https://cdn.example/theirs.png"]},
                    },
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    stub = ThreadingHTTPServer(("127.0.0.1", 0), CacheThatIgnoresTheQuery)
    threading.Thread(target=stub.serve_forever, daemon=True).start()
    try:
        use_connection(monkeypatch, f"http://127.0.0.1:{stub.server_port}")
        hook = ReveHook(retry_policy=RetryPolicy(max_attempts=1))
        with pytest.raises(ReveMalformedResponseError, match="someone-elses-task"):
            hook.get_status("our-task")
    finally:
        stub.shutdown()


def test_one_gateway_404_while_waiting_fails_only_this_try_and_the_retry_reattaches(
    server: FakeReveServer,
) -> None:
    server.set_async_seconds(1)
    server.add_fault(kind="bare_404", endpoint="status")
    store = InMemoryTaskStateStore()

    with pytest.raises(AirflowException) as raised:
        make_operator(model=ASYNC_MODEL).execute(make_context(store))
    assert not isinstance(raised.value, AirflowFailException), "a gateway's 404 abandoned a paid task"

    result = make_operator(model=ASYNC_MODEL).execute(make_context(store, try_number=2))
    assert result == api_result(server, result["task_id"])
    assert server.submissions == 1


def test_too_many_tasks_never_submits_after_execution_timeout_would_have_ended_the_try(
    server: FakeReveServer,
) -> None:
    server.add_fault(kind="error", endpoint="generate", code="TOO_MANY_TASKS")
    operator = make_operator(deferrable=True, execution_timeout=timedelta(seconds=5))

    with pytest.raises(AirflowException, match="execution_timeout"):
        operator.execute(make_context(InMemoryTaskStateStore(), start_date=datetime.now(timezone.utc)))

    assert server.requests_to("generate") == 1
    assert server.submissions == 0


def test_a_trickling_status_answer_cannot_hold_the_worker_past_connect_plus_read_timeout(
    server: FakeReveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_connection(monkeypatch, server.url, connect_timeout=0.5, read_timeout=0.5)
    (task_id,) = [ReveHook().generate(SYNC_MODEL, prompt="a red fox").task_id]
    # About 60 chunks, 0.2 s apart: 12 s in all, each chunk well within the read timeout.
    server.add_fault(kind="trickle", endpoint="status", chunk_size=4, delay=0.2)

    with pytest.raises(ReveConnectionError, match="ReadTimeout"):
        ReveHook(retry_policy=RetryPolicy(max_attempts=1)).get_status(task_id)


def test_an_unresolved_paid_request_of_this_run_stops_a_retry_that_renders_differently(
    server: FakeReveServer,
) -> None:
    store = InMemoryTaskStateStore()
    # Try 1 was killed mid-POST; its prompt had a templated timestamp in it.
    from airflow_provider_reve.mixins.reattach import SubmittedTaskMemory

    SubmittedTaskMemory(make_context(store), log=None).begin_submission("fingerprint-of-try-1")

    with pytest.raises(AirflowFailException, match="paid Reve task may exist"):
        make_operator(prompt="a red fox at 10:02").execute(make_context(store, try_number=2))
    assert server.requests_to("generate") == 0


def test_a_success_event_without_files_is_not_a_result(server: FakeReveServer) -> None:
    server.set_async_seconds(30)
    operator = make_operator(model=ASYNC_MODEL, deferrable=True)
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(make_context(InMemoryTaskStateStore()))
    task_id = deferred.value.kwargs["reve_task_id"]
    event = {
        "outcome": "success",
        "reve_task_id": task_id,
        "task": {"task_id": task_id, "status": "SUCCESS", "result_urls": []},
        "message": "",
    }

    with pytest.raises(AirflowException, match="no result URLs") as raised:
        operator.execute_complete(make_context(InMemoryTaskStateStore()), event=event, reve_task_id=task_id)
    assert not isinstance(raised.value, AirflowFailException)


def test_test_connection_does_not_call_a_gateways_bare_404_a_success(
    server: FakeReveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_connection(monkeypatch, server.url)
    server.add_fault(kind="bare_404", endpoint="status")

    ok, message = ReveHook().test_connection()

    assert not ok, message
    assert DEFAULT_API_KEY not in message

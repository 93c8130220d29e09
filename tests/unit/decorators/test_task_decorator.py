"""``@task.reve`` against the fake Reve API over real loopback HTTP.

Whole DAGs (``tests/dags/task_decorator/``) run with ``dag.test()``, which resumes a deferred task
from a fresh copy of the operator, as a new worker process would. Decisions about one try (what
the function returned, a resume with Airflow's ``defer()`` kwargs intact, a retry) call the
operator's entry points directly with a minimal context holding a ``task_state_store``.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException, TaskDeferred
from reve_test_helpers import fire, return_values, use_connection

from airflow_provider_reve.client.retry import RetryPolicy
from airflow_provider_reve.decorators.reve import REQUEST_STATE_KEY, _ReveDecoratedOperator, reve_task
from airflow_provider_reve.models import ReveTask
from airflow_provider_reve.operators.reve import REQUEST_FIELDS, ReveGenerateOperator
from airflow_provider_reve.testing import FakeReveServer

TEST_DAGS = Path(__file__).resolve().parents[2] / "dags" / "task_decorator"
PROMPT = "A lighthouse on a cliff at golden hour"


@pytest.fixture
def server(fake_reve_server: FakeReveServer, reve_connection_env: str) -> FakeReveServer:
    fake_reve_server.set_async_seconds(0.2)
    return fake_reve_server


class StateStore:
    """The task instance's ``task_state_store``, JSON round-trip included."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def get(self, key: str) -> Any:
        return self.values.get(key)

    def set(self, key: str, value: Any) -> None:
        self.values[key] = json.loads(json.dumps(value))

    def delete(self, key: str) -> None:
        self.values.pop(key, None)


class TaskInstance:
    """What the operator reads from ``context["ti"]``: the try, the run of tries, its own XComs."""

    def __init__(self, try_number: int, max_tries: int) -> None:
        self.try_number = try_number
        self.max_tries = max_tries  # what a retry leaves alone and a clear raises
        self.xcoms: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcoms[key] = value


def context(store: StateStore, try_number: int = 1, max_tries: int = 3) -> dict[str, Any]:
    return {"task_state_store": store, "ti": TaskInstance(try_number, max_tries)}


class Generation:
    """One ``@task.reve`` function; each :meth:`operator` is what a worker process builds from the
    DAG file (request fields unset until ``execute`` calls the function). ``returns(n)`` gives the
    n-th call's return value."""

    def __init__(self, returns: Callable[[int], Any], **decorator_kwargs: Any) -> None:
        self.returns = returns
        self.calls = 0
        self.kwargs = {"model": "seedream-5", "poll_interval": 0.05, **decorator_kwargs}

    def operator(self) -> _ReveDecoratedOperator:
        from airflow.sdk import DAG, task

        def write_request() -> Any:
            self.calls += 1
            return self.returns(self.calls)

        with DAG(dag_id="reve_taskflow_unit", schedule=None, start_date=datetime(2026, 1, 1)):
            output = task.reve(**self.kwargs)(write_request)()
        op = output.operator
        assert isinstance(op, _ReveDecoratedOperator)
        return op


def always(value: Any) -> Callable[[int], Any]:
    return lambda _call: value


# ------------------------------------------------------------------------------ registration


def test_task_reve_resolves_through_the_providers_task_decorators():
    from airflow.sdk import task

    assert task.reve is reve_task


def test_a_prompt_given_to_the_decorator_is_refused_when_the_dag_is_parsed():
    from airflow.sdk import DAG, task

    with DAG(dag_id="reve_taskflow_parse", schedule=None, start_date=datetime(2026, 1, 1)):
        decorated = task.reve(model="seedream-5", prompt="ignored")(lambda: PROMPT)
        with pytest.raises(TypeError, match="prompt from the function's return value"):
            decorated()


# --------------------------------------------------------------------------- in a DAG run


@pytest.fixture
def dags(use_dags_folder: Callable[[Path], Path]) -> Path:
    return use_dags_folder(TEST_DAGS)


@pytest.fixture
def calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[], list[str]]:
    """The names of the DAG functions called so far (see the DAG file's ``note_call``)."""
    log = tmp_path / "calls.log"
    monkeypatch.setenv("REVE_TASKFLOW_CALL_LOG", str(log))
    return lambda: log.read_text(encoding="utf-8").split() if log.exists() else []


@pytest.fixture
def resumed_methods(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The methods deferred ``@task.reve`` tasks resumed into (dag.test() runs them in-process)."""
    seen: list[str] = []
    original = _ReveDecoratedOperator.resume_execution

    def record(self: Any, next_method: str, next_kwargs: Any, context: Any) -> Any:
        seen.append(next_method)
        return original(self, next_method, next_kwargs, context)

    monkeypatch.setattr(_ReveDecoratedOperator, "resume_execution", record)
    yield seen


def run_dag(folder: Path, dag_id: str) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(folder))
    assert bag.import_errors == {}
    return bag.dags[dag_id].test()


def xcom_keys(dag_run: Any, task_id: str) -> set[str]:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.scalars(
            XComModel.get_many(run_id=dag_run.run_id, dag_ids=dag_run.dag_id, task_ids=task_id)
        )
        return {row.key for row in rows}


def rendered_fields(dag_run: Any, task_id: str) -> dict[str, Any]:
    from airflow.models.renderedtifields import RenderedTaskInstanceFields
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        row = session.scalar(
            select(RenderedTaskInstanceFields).where(
                RenderedTaskInstanceFields.dag_id == dag_run.dag_id,
                RenderedTaskInstanceFields.run_id == dag_run.run_id,
                RenderedTaskInstanceFields.task_id == task_id,
            )
        )
        assert row is not None
        return dict(row.rendered_fields)


def test_a_returned_string_is_the_prompt_of_one_deferred_generation_resumed_without_calling_it_again(
    server, dags, calls, resumed_methods
):
    dag_run = run_dag(dags, "reve_taskflow_prompt_deferred")

    assert dag_run.state == "success"
    (task_id,) = server.tasks
    served = server.tasks[task_id]
    prompt = f"{PROMPT} ({dag_run.run_id})"
    assert served["params"] == {"prompt": prompt}
    assert server.submissions == 1
    assert resumed_methods == ["execute_complete"]  # it waited in the trigger, then resumed
    assert calls() == ["write_prompt"]  # not called again by the resumed process
    assert return_values(dag_run, "write_prompt") == {
        -1: ReveTask(
            task_id=task_id,
            status="SUCCESS",
            result_urls=tuple(served["result_urls"]),
            consumed_credits=served["cost"],
            model="seedream-5",
            prompt=prompt,
            request={"prompt": prompt},
        ).to_dict()
    }
    # The UI's Rendered Template shows the prompt the function wrote, also after the resume.
    assert rendered_fields(dag_run, "write_prompt")["prompt"] == prompt


def test_a_returned_dict_sends_its_fields_over_the_decorators_and_unknown_keys_as_extra_params(
    server, dags, calls
):
    dag_run = run_dag(dags, "reve_taskflow_request_dict")

    assert dag_run.state == "success"
    (served,) = server.tasks.values()
    assert served["model"] == "reve-2.0"
    assert served["params"] == {
        "prompt": "A botanical plate of a fern, engraved",
        "aspect_ratio": "16:9",
        "output_format": "webp",
        "num_images": 2,
        "test_time_scaling": 3,
        "version": "latest-fast",
    }
    assert calls() == ["write_request"]
    result = return_values(dag_run, "write_request")[-1]
    assert result["task_id"] == served["task_id"]
    assert result["status"] == "SUCCESS"
    assert len(result["result_urls"]) == 2
    # The function is annotated "-> dict" (its request), yet the task dict is pushed whole,
    # not unrolled into one XCom per key.
    keys = xcom_keys(dag_run, "write_request")
    assert "return_value" in keys
    assert not keys & set(result)


def test_expanding_over_three_subjects_creates_three_paid_tasks_each_with_its_own_prompt(server, dags, calls):
    dag_run = run_dag(dags, "reve_taskflow_mapped")

    assert dag_run.state == "success"
    results = return_values(dag_run, "describe")
    assert sorted(results) == [0, 1, 2]
    assert server.submissions == 3
    subjects = ["a red fox in the snow", "a blue whale at sea", "a green parrot in a palm tree"]
    for index, subject in enumerate(subjects):
        served = server.tasks[results[index]["task_id"]]
        assert served["params"] == {"prompt": f"{subject}, in watercolour"}
        assert results[index]["status"] == "SUCCESS"
        assert results[index]["model"] == "nano-banana"
    assert calls() == ["describe"] * 3


def test_a_function_returning_nothing_fails_for_good_without_a_paid_task_or_a_retry(server, dags, calls):
    dag_run = run_dag(dags, "reve_taskflow_bad_return")

    assert dag_run.state == "failed"
    (ti,) = dag_run.get_task_instances()
    assert ti.state == "failed"
    assert ti.try_number == 1  # retries=2 were not spent on a bug in the DAG
    assert calls() == ["forgot_to_return"]
    assert server.submissions == 0
    assert server.ledger == []


# ------------------------------------------------------------------------- what it returned


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        pytest.param(None, "returned NoneType", id="None"),
        pytest.param(42, "returned int", id="an int"),
        pytest.param([PROMPT], "returned list", id="a list of prompts"),
        pytest.param(PROMPT.encode(), "returned bytes", id="bytes"),
        pytest.param("   ", "empty prompt", id="a blank string"),
        pytest.param({"prompt": 42}, "'prompt' is int, not a str", id="a dict with an int prompt"),
        pytest.param({"prompt": [PROMPT]}, "'prompt' is list, not a str", id="a dict with a list prompt"),
        pytest.param({1: PROMPT}, "keys that are not strings: 1", id="a dict with a non-string key"),
        pytest.param({"prompt": PROMPT, "model": "reve-2.0"}, r"'model' \(the model is the task", id="model"),
        pytest.param(
            {"prompt": PROMPT, "extra_params": {"seed": 1}},
            "put extra request fields at the top",
            id="nested",
        ),
        pytest.param(
            {"prompt": PROMPT, "aspect_ratio": "5:1"}, "Invalid Reve request", id="a value the model refuses"
        ),
        pytest.param({"prompt": PROMPT, "seed": float("nan")}, "not JSON-serialisable", id="NaN extra field"),
    ],
)
@pytest.mark.parametrize("deferrable", [False, True], ids=["polling", "deferrable"])
def test_an_unusable_return_value_fails_for_good_naming_it_and_nothing_is_submitted(
    server, returned, message, deferrable
):
    generation = Generation(always(returned), deferrable=deferrable)
    store = StateStore()

    with pytest.raises(AirflowFailException, match=message) as raised:
        generation.operator().execute(context(store))

    assert "nothing was submitted" in str(raised.value)
    assert server.requests_to("generate") == 0
    assert server.ledger == []
    assert REQUEST_STATE_KEY not in store.values  # nothing kept for a resume that cannot come


# Every argument of the operator that is not a request field: one added later is covered too.
OPERATOR_ARGUMENTS = sorted(
    name
    for name in inspect.signature(ReveGenerateOperator.__init__).parameters
    if name not in {"self", "kwargs", "model", "extra_params", *REQUEST_FIELDS}  # those two: above
)


@pytest.mark.parametrize("key", OPERATOR_ARGUMENTS)
def test_an_operator_argument_in_the_returned_dict_is_refused_before_any_paid_call_naming_the_decorator(
    server, tmp_path, key
):
    # Sent on, it would reach the paid API as a request field and be ignored as an option: a
    # download_to that stores nothing, a max_credits that caps nothing.
    values = {"download_to": str(tmp_path), "deferrable": True, "timeout": 5, "max_credits": 1}
    generation = Generation(always({"prompt": PROMPT, key: values.get(key, "x")}))
    store = StateStore()

    with pytest.raises(AirflowFailException) as raised:
        generation.operator().execute(context(store))

    message = str(raised.value)
    assert repr(key) in message
    assert f"@task.reve({key}=...)" in message
    assert f".override({key}=...)" in message
    assert "nothing was submitted" in message
    assert server.requests_to("generate") == 0
    assert server.ledger == []
    assert REQUEST_STATE_KEY not in store.values


def test_every_operator_argument_returned_at_once_is_named_in_one_refusal(server, tmp_path):
    returned = {"prompt": PROMPT, "download_to": str(tmp_path), "deferrable": True, "timeout": 5}
    generation = Generation(always(returned))

    with pytest.raises(AirflowFailException, match="'deferrable', 'download_to', 'timeout'"):
        generation.operator().execute(context(StateStore()))

    assert server.requests_to("generate") == 0


def test_the_returned_dict_overrides_the_decorators_extra_params_key_by_key(server):
    generation = Generation(
        always({"prompt": PROMPT, "style_tag": "from-function"}),
        model="reve-2.0",
        extra_params={"style_tag": "from-decorator", "note": "kept"},
    )

    generation.operator().execute(context(StateStore()))

    (served,) = server.tasks.values()
    assert served["params"] == {"prompt": PROMPT, "style_tag": "from-function", "note": "kept"}


# --------------------------------------------------------------- across deferrals and retries


def test_a_resume_in_a_new_process_after_too_many_tasks_submits_what_the_function_returned(server):
    # Airflow keeps defer()'s kwargs in production; the new process has only the DAG file's task.
    server.add_fault(kind="error", code="TOO_MANY_TASKS", endpoint="generate", times=1)
    generation = Generation(always({"prompt": PROMPT, "aspect_ratio": "16:9"}), deferrable=True)
    store = StateStore()
    with pytest.raises(TaskDeferred) as backoff:
        generation.operator().execute(context(store))
    assert backoff.value.method_name == "execute_after_backoff"
    assert server.submissions == 0

    fresh = generation.operator()
    assert fresh.prompt is None
    with pytest.raises(TaskDeferred) as waiting:
        fresh.resume_execution(backoff.value.method_name, backoff.value.kwargs, context(store))

    (task_id,) = server.tasks
    assert server.tasks[task_id]["params"] == {"prompt": PROMPT, "aspect_ratio": "16:9"}
    event = fire(waiting.value.trigger)
    result = generation.operator().resume_execution(
        waiting.value.method_name, {**(waiting.value.kwargs or {}), "event": event}, context(store)
    )
    assert result["task_id"] == task_id
    assert result["status"] == "SUCCESS"
    assert generation.calls == 1
    assert server.submissions == 1


def test_download_to_stores_the_files_when_a_new_process_finishes_the_deferred_task(server, tmp_path):
    generation = Generation(
        always({"prompt": PROMPT, "output_format": "webp"}), deferrable=True, download_to=str(tmp_path)
    )
    store = StateStore()
    with pytest.raises(TaskDeferred) as waiting:
        generation.operator().execute(context(store))
    event = fire(waiting.value.trigger)

    result = generation.operator().resume_execution(
        waiting.value.method_name, {**(waiting.value.kwargs or {}), "event": event}, context(store)
    )

    (served,) = server.tasks.values()
    (entry,) = result["files"]
    stored = Path(entry["path"])
    assert stored.parent == tmp_path
    assert stored.suffix == ".webp"
    assert entry["url"] == served["result_urls"][0]
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == entry["sha256"]
    assert generation.calls == 1


@pytest.mark.parametrize(
    "kept",
    [
        pytest.param(None, id="nothing kept"),
        pytest.param(
            {"run": 2, "try": 1, "request": {"prompt": "the prompt of the run before a clear"}},
            id="an earlier run of tries'",
        ),
        pytest.param(
            {"try": 1, "request": {"prompt": "an earlier try's prompt"}},
            id="an earlier try's, run not recorded",
        ),
    ],
)
@pytest.mark.parametrize(
    ("method", "kwargs"),
    [
        pytest.param(
            "execute_after_backoff",
            {"submit_attempt": 2, "first_refusal": time.time()},
            id="after TOO_MANY_TASKS",
        ),
        pytest.param(
            "execute_complete",
            {"reve_task_id": "paid-task", "event": {"outcome": "success", "reve_task_id": "paid-task"}},
            id="after waiting",
        ),
    ],
)
def test_a_resume_without_this_runs_request_submits_nothing_and_leaves_it_to_a_retry(
    server, kept, method, kwargs
):
    store = StateStore()
    if kept is not None:
        store.set(REQUEST_STATE_KEY, kept)
    generation = Generation(always(PROMPT), deferrable=True)

    with pytest.raises(AirflowException, match="not found in task_state_store") as raised:
        generation.operator().resume_execution(method, kwargs, context(store, 2))

    assert not isinstance(raised.value, AirflowFailException)  # a retry calls the function again
    assert generation.calls == 0
    assert server.requests_to("generate") == 0


def test_a_deferred_retry_re_attaches_with_the_first_trys_request_until_a_clear_calls_the_function_afresh(
    server,
):
    # The function is not deterministic (a timestamp, a random seed): called again, it would
    # return a request that no longer matches the task the first try paid for.
    server.set_async_seconds(60)
    generation = Generation(lambda call: f"{PROMPT}, take {call}", deferrable=True)
    store = StateStore()
    with pytest.raises(TaskDeferred) as first:
        generation.operator().execute(context(store, try_number=1))

    with pytest.raises(TaskDeferred) as retry:
        generation.operator().execute(context(store, try_number=2))

    assert generation.calls == 1  # the retry sent what try 1's call returned
    assert server.submissions == 1
    (paid,) = server.tasks
    assert retry.value.kwargs == first.value.kwargs == {"reve_task_id": paid}
    # The retry's wait resumes in yet another process, with the same request.
    server.finish_task(paid)
    result = generation.operator().resume_execution(
        retry.value.method_name,
        {**(retry.value.kwargs or {}), "event": fire(retry.value.trigger)},
        context(store, try_number=2),
    )
    assert result["task_id"] == paid
    assert result["status"] == "SUCCESS"
    assert generation.calls == 1

    # A clear raises max_tries: a new run of tries, which asks the function again.
    with pytest.raises(TaskDeferred) as cleared:
        generation.operator().execute(context(store, try_number=3, max_tries=5))

    assert generation.calls == 2
    assert server.submissions == 2
    assert cleared.value.kwargs != first.value.kwargs
    assert [task["params"]["prompt"] for task in server.tasks.values()] == [
        f"{PROMPT}, take 1",
        f"{PROMPT}, take 2",
    ]


def test_a_clear_while_running_that_airflow_ends_as_a_failed_try_calls_the_function_afresh(server):
    # Airflow 3.3 keeps max_tries when it clears a running instance ("restarting") and may then
    # give it one more try past max_tries: no retry is ever numbered so, only a clear.
    server.set_async_seconds(60)
    generation = Generation(lambda call: f"{PROMPT}, take {call}", deferrable=True)
    store = StateStore()
    with pytest.raises(TaskDeferred):
        generation.operator().execute(context(store, try_number=1, max_tries=0))

    with pytest.raises(TaskDeferred) as cleared:
        generation.operator().execute(context(store, try_number=2, max_tries=0))

    assert generation.calls == 2, "a clear while running re-used the old request"
    assert server.submissions == 2
    # That try's own deferral resumes with the request it kept, without calling the function.
    paid = cleared.value.kwargs["reve_task_id"]
    server.finish_task(paid)
    result = generation.operator().resume_execution(
        cleared.value.method_name,
        {**(cleared.value.kwargs or {}), "event": fire(cleared.value.trigger)},
        context(store, try_number=2, max_tries=0),
    )
    assert result["task_id"] == paid
    assert generation.calls == 2


class FlakyCdn:
    """The loopback host of the fake's result URLs: answers 503 while ``down``, else relays the
    fake's own file (over HTTP). ``hits`` counts the requests it got."""

    def __init__(self) -> None:
        self.down = True
        self.upstream = ""
        self.hits = 0
        cdn = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                cdn.hits += 1
                if cdn.down:
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                with urllib.request.urlopen(cdn.upstream + self.path, timeout=10) as answer:
                    body, content_type = answer.read(), answer.headers["Content-Type"]
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def flaky_cdn() -> Iterator[FlakyCdn]:
    cdn = FlakyCdn()
    yield cdn
    cdn.close()


def test_a_retry_after_a_failed_download_stores_the_paid_files_without_calling_the_function_or_paying_again(
    flaky_cdn, monkeypatch, tmp_path
):
    with FakeReveServer(public_url=flaky_cdn.base) as server:
        flaky_cdn.upstream = server.url
        server.set_async_seconds(0.1)
        use_connection(monkeypatch, server.url)
        generation = Generation(
            lambda call: {"prompt": f"{PROMPT}, take {call}", "output_format": "webp"},
            download_to=str(tmp_path),
        )
        store = StateStore()

        def operator() -> _ReveDecoratedOperator:
            op = generation.operator()
            op.hook.retry_policy = RetryPolicy(max_attempts=2, initial_backoff=0.01, max_backoff=0.01)
            return op

        with pytest.raises(AirflowException) as failed:
            operator().execute(context(store, try_number=1))
        assert not isinstance(failed.value, AirflowFailException)  # transient: Airflow retries
        assert flaky_cdn.hits >= 1  # the CDN was asked, and was down
        assert server.submissions == 1

        flaky_cdn.down = False
        result = operator().execute(context(store, try_number=2))

        assert generation.calls == 1
        assert server.submissions == 1
        assert [entry["reason"] for entry in server.ledger] == ["charge"]
        (served,) = server.tasks.values()
        assert served["params"] == {"prompt": f"{PROMPT}, take 1", "output_format": "webp"}
        assert result["task_id"] == served["task_id"]
        (stored,) = result["files"]
        assert Path(stored["path"]).parent == tmp_path
        assert hashlib.sha256(Path(stored["path"]).read_bytes()).hexdigest() == stored["sha256"]


class BrokenStore(StateStore):
    def set(self, key: str, value: Any) -> None:
        raise ConnectionError("the API server is away")


@pytest.mark.parametrize("deferrable", [False, True], ids=["polling", "deferrable"])
def test_a_request_that_cannot_be_kept_for_a_retry_is_not_submitted_and_the_try_is_retried(
    server, deferrable
):
    # Submitted anyway, a retry would call the function again and might pay for a second task.
    generation = Generation(always(PROMPT), deferrable=deferrable)

    with pytest.raises(AirflowException, match="Could not keep the request") as raised:
        generation.operator().execute(context(BrokenStore()))

    assert not isinstance(raised.value, AirflowFailException)
    assert "nothing was submitted" in str(raised.value)
    assert server.requests_to("generate") == 0

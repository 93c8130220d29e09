"""How the fault matrix (``tests/guarantees/test_fault_matrix*.py``) runs one case in each of the four places
a Reve wait happens, and what it expects of each.

The four places:

* **sync operator** -- ``ReveGenerateOperator(deferrable=False)``: submits and polls in the worker.
* **deferrable operator** -- submits in the worker, waits in :class:`ReveTaskTrigger` (run here
  in-process, as the triggerer runs it), resumes in ``execute_complete``.
* **sensor poke** -- ``ReveTaskSensor(deferrable=False)``: pokes in the worker.
* **sensor deferred** -- looks once in the worker, then waits in the trigger.

A case ends as the Airflow task runner would see it: a result, or an exception that it turns
into *success*, *skipped*, *failed without retry* (``AirflowFailException``,
``AirflowSensorTimeout``) or *failed, retry spent* (any other ``AirflowException``; see
``airflow/sdk/execution_time/task_runner.py``). Anything else escapes the runner and fails the
test with its traceback: an untyped error is a bug.

Faults come from the shipped fake (:class:`~airflow_provider_reve.testing.FakeReveServer`), or,
for the few answers it cannot give (a 200 envelope with another ``code``, SUCCESS for another task
id, a connection reset in the middle of an answer), from :class:`ScriptedApi` below.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from airflow.providers.common.compat.sdk import (
    AirflowException,
    AirflowFailException,
    AirflowSensorTimeout,
    AirflowSkipException,
    TaskDeferred,
)
from never_pay_twice_support import InMemoryTaskStateStore, make_context, run_trigger

from airflow_provider_reve.client.retry import RetryPolicy
from airflow_provider_reve.operators.reve import ReveGenerateOperator
from airflow_provider_reve.sensors.reve import ReveTaskSensor
from airflow_provider_reve.testing import FakeReveServer

MODEL = "seedream-5"  # asynchronous: every wait goes through the status endpoint
PROMPT = "a lighthouse in a storm"
POLL = 0.02
#: How long a wait may last when the case expects it to give up (operator/sensor ``timeout``).
SHORT = 0.35
#: ...and when it expects the task to finish (it ends as soon as it does).
LONG = 20.0
#: How long a task of the fake runs when the worker polls for it (sync operator, sensor poke).
SOON = 0.05
#: The hook's own retries, kept short: 2 attempts.
FAST = RetryPolicy(max_attempts=2, initial_backoff=0.01, max_backoff=0.01)
#: The longest any one case may take before it counts as a hang.
HANG = 60.0

SYNC_OP, DEFERRED_OP, SENSOR_POKE, SENSOR_DEFERRED = (
    "sync operator",
    "deferrable operator",
    "sensor poke",
    "sensor deferred",
)
CONTEXTS = (SYNC_OP, DEFERRED_OP, SENSOR_POKE, SENSOR_DEFERRED)
OPERATORS = (SYNC_OP, DEFERRED_OP)
IN_THE_TRIGGERER = (DEFERRED_OP, SENSOR_DEFERRED)
GENERATE, STATUS, FAILED_TASK = "generate", "status", "task FAILED"


# -------------------------------------------------------------------------- what a case expects


@dataclass(frozen=True)
class Expect:
    """One cell of the matrix: how the Airflow task ends, and the log line that says why.

    :param raises: the exact exception class the task raises (``None``: it succeeds).
    :param retry_spent: whether Airflow spends one of the task's retries on it.
    :param says: per place, what the user reads in the task log (``{what}`` is the row's code,
        empty where a row names none; ``{id}`` the Reve task id); ``"*"`` is the default.
    """

    name: str
    raises: type[BaseException] | None
    retry_spent: bool
    says: dict[str, str]

    def line(self, context: str, what: str, reve_task_id: str) -> str:
        template = self.says.get(context, self.says.get("*", ""))
        return template.format(what=what, id=reve_task_id)

    def __repr__(self) -> str:
        return self.name


_TRIGGER_TRANSIENT = "Transient error reading Reve task {id} ("
SUCCEEDS = Expect("succeeds", None, False, {"*": "Reve task {id} SUCCESS"})
PERMANENT = Expect(
    "fails, no retry (permanent)",
    AirflowFailException,
    False,
    {"*": "Reve error is PERMANENT ({what}", DEFERRED_OP: "failed with a PERMANENT error ({what}"}
    | {SENSOR_DEFERRED: "failed with a PERMANENT error ({what}"},
)
TRANSIENT = Expect(
    "this try fails, Airflow retries",
    AirflowException,
    True,
    {"*": "Reve error is TRANSIENT ({what}", DEFERRED_OP: _TRIGGER_TRANSIENT},
)
TIMES_OUT = Expect(
    "sensor times out, no retry",
    AirflowSensorTimeout,
    False,
    {
        SENSOR_POKE: "Transient error reading Reve task {id}; poking again later",
        SENSOR_DEFERRED: _TRIGGER_TRANSIENT,
    },
)
AMBIGUOUS = Expect(
    "fails, no retry (a paid task may exist)", AirflowFailException, False, {"*": "ubmitted again"}
)
NO_SLOTS = Expect(
    "this try fails after max_submit_wait", AirflowException, True, {"*": "TOO_MANY_TASKS in flight"}
)
SKIPS = Expect("skipped", AirflowSkipException, False, {"*": "Skipping"})
FAILED_PERMANENT = Expect(
    "fails, no retry (task FAILED)", AirflowFailException, False, {"*": "Reve task {id} FAILED: {what}"}
)
FAILED_TRANSIENT = Expect(
    "this try fails, Airflow retries (task FAILED, refunded)",
    AirflowException,
    True,
    {"*": "Reve task {id} FAILED: {what}"},
)


@pytest.fixture(autouse=True)
def no_defer_settle_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    """Overrides conftest's fixture of the same name (import it into a test module): triggers
    may read at once after a deferral, as there -- but "settled" *now*, not at 0.0, which the
    trigger would take for a wait that began in 1970 and so read its task only every 5 s."""
    monkeypatch.setattr("airflow_provider_reve.triggers.reve.settle_time", time.time)


def retry_spent(error: BaseException | None) -> bool:
    """What the Airflow 3.3 task runner does with an exception: only these fail without a retry."""
    if error is None or isinstance(error, (AirflowSkipException, AirflowFailException, AirflowSensorTimeout)):
        return False
    return isinstance(error, AirflowException)


# ------------------------------------------------------------------------------ the APIs faulted


class FakeApi:
    """The shipped fake, shared by a module; tasks stay IN_PROGRESS until a case lets them finish.

    Each case gets an account (API key) of its own, and with it a request budget of its own: a
    429 pause that one case provoked (``client.ratelimit``) holds nothing of the next one.
    """

    def __init__(self, server: FakeReveServer, monkeypatch: pytest.MonkeyPatch, **extra: Any) -> None:
        self.server = server
        self.key = f"sk-matrix-{uuid.uuid4().hex}"
        server.reset()
        server.add_key(self.key, 1_000_000)
        self.connect(monkeypatch, **extra)

    def connect(self, monkeypatch: pytest.MonkeyPatch, **extra: Any) -> None:
        """Point the ``reve_default`` connection at the fake, with this case's key."""
        connection: dict[str, Any] = {"conn_type": "reve", "host": self.url, "password": self.key}
        if extra:
            connection["extra"] = extra
        monkeypatch.setenv("AIRFLOW_CONN_REVE_DEFAULT", json.dumps(connection))

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def submissions(self) -> int:
        return self.server.submissions

    def submit(self) -> str:
        """A task submitted elsewhere (the sensor's), straight over HTTP."""
        answer = requests.post(
            f"{self.url}/api/v1/generate",
            json={"model": MODEL, "prompt": PROMPT},
            headers={"Authorization": f"Bearer {self.key}"},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        return str(answer.json()["data"]["task_id"])

    def hold(self) -> None:
        self.server.set_async_seconds(3600)

    def finish_soon(self) -> None:
        self.server.set_async_seconds(SOON)

    def release(self) -> None:
        self.server.set_async_seconds(0)

    def result_urls(self, task_id: str) -> list[str]:
        return list(self.server.tasks[task_id]["result_urls"])

    def last_task_id(self) -> str:
        return next(reversed(self.server.tasks), "")


@dataclass
class Raw:
    """One answer of :class:`ScriptedApi`; ``cut_after``: send that many body bytes, then reset."""

    status: int = 200
    body: Any = None
    content_type: str = "application/json"
    cut_after: int | None = None

    def payload(self) -> bytes:
        return self.body if isinstance(self.body, bytes) else json.dumps(self.body).encode()


def task_answer(task_id: str, status: str = "IN_PROGRESS", **data: Any) -> Raw:
    return Raw(
        body={"code": 200, "message": "success", "data": {"task_id": task_id, "status": status, **data}}
    )


@dataclass
class ScriptedApi:
    """A loopback HTTP/1.1 server that plays the Reve API, with answers a test scripts.

    ``generate(n)`` answers the n-th submission (default: task ``task-<n>`` IN_PROGRESS);
    ``status(task_id)`` answers a status read (default: IN_PROGRESS until :meth:`release`, then
    SUCCESS with one URL). ``targets`` records every request line's target exactly as received.
    """

    generate: Callable[[int], Raw] | None = None
    status: Callable[[str], Raw] | None = None
    targets: list[str] = field(default_factory=list)
    posts: int = 0
    finished: bool = False

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def submissions(self) -> int:
        return self.posts

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def submit(self) -> str:
        with self._lock:
            self.posts += 1
            return f"task-{self.posts}"

    def hold(self) -> None:
        self.finished = False

    def finish_soon(self) -> None:
        self.finished = True

    release = finish_soon

    def result_urls(self, task_id: str) -> list[str]:
        return [f"https://cdn.example/{task_id}/0.png"]

    def last_task_id(self) -> str:
        return f"task-{self.posts}"

    def answer_generate(self) -> Raw:
        with self._lock:
            self.posts += 1
            n = self.posts
        return self.generate(n) if self.generate else task_answer(f"task-{n}")

    def answer_status(self, task_id: str) -> Raw:
        if self.status is not None:
            return self.status(task_id)
        return self.normal_status(task_id)

    def normal_status(self, task_id: str) -> Raw:
        if not self.finished:
            return task_answer(task_id)
        return task_answer(
            task_id, "SUCCESS", consumed_credits=25, response={"resultUrls": self.result_urls(task_id)}
        )

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                api.targets.append(self.path)
                self._send(api.answer_generate())

            def do_GET(self) -> None:
                api.targets.append(self.path)
                task_id = parse_qs(urlsplit(self.path).query).get("task_id", [""])[0]
                self._send(api.answer_status(task_id))

            def _send(self, raw: Raw) -> None:
                body = raw.payload()
                self.send_response(raw.status)
                self.send_header("Content-Type", raw.content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if raw.cut_after is None:
                    self.wfile.write(body)
                    return
                self.wfile.write(body[: raw.cut_after])
                self.wfile.flush()
                # SO_LINGER 0: close() sends a TCP reset, in the middle of the announced body.
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
                self.close_connection = True

            def finish(self) -> None:
                with contextlib.suppress(OSError):  # the socket was reset on purpose
                    super().finish()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


Api = FakeApi | ScriptedApi


def closed_port() -> int:
    """A loopback port nothing listens on (connection refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -------------------------------------------------------------------------------- running a case


@dataclass
class Ran:
    """How one case ended: its XCom value or its exception, and whether it waited in a trigger."""

    result: dict[str, Any] | None = None
    error: BaseException | None = None
    deferred: bool = False
    reve_task_id: str | None = None


#: Applies a case's fault; it gets the Reve task id when one exists already (the sensors' task).
Inject = Callable[[str | None], None]


def run_case(
    context: str,
    phase: str,
    api: Api,
    inject: Inject,
    *,
    timeout: float,
    before_trigger: Inject | None = None,
    **operator_kwargs: Any,
) -> Ran:
    """Run one case in one place; ``inject`` applies the fault just before the step that meets it.

    ``phase`` is where the fault sits. ``generate``: before the submission. ``status``: before
    the first status read meant to meet it (in the deferred places: after the deferral, so the
    trigger meets it). ``task FAILED``: the task being waited for ends FAILED; the operators
    inject it before they submit (the fake fails the task it creates), the sensors get their
    task's id. ``before_trigger`` runs right before the trigger does.
    """
    runner = {SYNC_OP: _sync_operator, DEFERRED_OP: _deferred_operator}.get(context)
    if runner is not None:
        work = lambda: runner(phase, api, inject, timeout, before_trigger, operator_kwargs)  # noqa: E731
    else:
        deferrable = context == SENSOR_DEFERRED
        work = lambda: _sensor(deferrable, api, inject, timeout, before_trigger)  # noqa: E731
    with ThreadPoolExecutor(max_workers=1) as pool:
        running = pool.submit(work)
        try:
            return running.result(timeout=HANG)
        except FutureTimeout:
            pytest.fail(f"the {context} case hung for {HANG:g}s: a wait ignored its timeout")


def _operator(deferrable: bool, timeout: float, kwargs: dict[str, Any]) -> ReveGenerateOperator:
    kwargs = {"model": MODEL, "prompt": PROMPT, "poll_interval": POLL, "timeout": timeout, **kwargs}
    operator = ReveGenerateOperator(task_id="generate", deferrable=deferrable, **kwargs)
    operator.hook.retry_policy = FAST
    return operator


def _sync_operator(
    phase: str,
    api: Api,
    inject: Inject,
    timeout: float,
    before_trigger: Inject | None,
    kwargs: dict[str, Any],
) -> Ran:
    api.finish_soon()
    inject(None)
    try:
        return Ran(result=_operator(False, timeout, kwargs).execute(make_context(InMemoryTaskStateStore())))
    except AirflowException as error:
        return Ran(error=error)


def _deferred_operator(
    phase: str,
    api: Api,
    inject: Inject,
    timeout: float,
    before_trigger: Inject | None,
    kwargs: dict[str, Any],
) -> Ran:
    api.hold()
    operator = _operator(True, timeout, kwargs)
    context = make_context(InMemoryTaskStateStore())
    ran = Ran()
    if phase != STATUS:
        inject(None)
    try:
        try:
            return Ran(result=operator.execute(context))
        except TaskDeferred as deferred:
            step = deferred
        while True:
            if step.method_name == "execute_complete" and not ran.deferred:
                ran.deferred, ran.reve_task_id = True, step.kwargs["reve_task_id"]
                if phase == STATUS:
                    inject(None)
                api.release()
                if before_trigger is not None:
                    before_trigger()
            event = run_trigger(step.trigger)
            try:
                ran.result = getattr(operator, step.method_name)(context, event=event, **(step.kwargs or {}))
                return ran
            except TaskDeferred as deferred:
                step = deferred
    except AirflowException as error:
        ran.error = error
        return ran


def _sensor(deferrable: bool, api: Api, inject: Inject, timeout: float, before_trigger: Inject | None) -> Ran:
    api.hold()
    task_id = api.submit()
    ran = Ran(reve_task_id=task_id)
    sensor = ReveTaskSensor(
        task_id="wait", reve_task_id=task_id, poke_interval=POLL, timeout=timeout, deferrable=deferrable
    )
    sensor.hook.retry_policy = FAST
    try:
        if not deferrable:
            api.finish_soon()
            inject(task_id)
            ran.result = sensor.execute({})
            return ran
        try:
            ran.result = sensor.execute({})
            return ran  # finished at the first look: the case did not run where it should
        except TaskDeferred as deferred:
            ran.deferred, step = True, deferred
        inject(task_id)
        api.release()
        if before_trigger is not None:
            before_trigger()
        next_kwargs = {"event": run_trigger(step.trigger), **(step.kwargs or {})}
        ran.result = sensor.resume_execution(step.method_name, next_kwargs, {})
    except AirflowException as error:
        ran.error = error
    return ran


def seen_by_the_user(ran: Ran, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> str:
    """Everything the task log would show: every log line, and the exception the task ended with."""
    out, err = capfd.readouterr()
    records = "\n".join(record.getMessage() for record in caplog.records)
    return "\n".join([out, err, records, str(ran.error or "")])


def check(
    ran: Ran,
    expect: Expect,
    *,
    context: str,
    what: str,
    api: Api,
    submissions: int,
    seen: str,
    phase: str,
    shows: str | None = None,
) -> None:
    """The four promises of every cell: exception class, retry or not, submissions, the log line.

    :param what: the code the user must read (``""``: none).
    :param phase: where the fault sat. A fault at the submission ends a deferrable operator
        before it defers: it reads as in the worker, and no trigger is reached.
    :param shows: a pattern the user must read too: what went wrong, in words.
    """
    at_submission = phase == GENERATE
    assert type(ran.error) is (expect.raises or type(None)), f"{context}: {ran.error!r}"
    assert retry_spent(ran.error) is expect.retry_spent, context
    assert api.submissions == submissions, f"{context}: submitted {api.submissions} time(s)"
    if context in IN_THE_TRIGGERER and not at_submission:
        assert ran.deferred, f"{context}: the wait never went through the trigger"
    reve_task_id = ran.reve_task_id or (ran.result or {}).get("task_id") or api.last_task_id()
    line = expect.line(SYNC_OP if at_submission else context, what, reve_task_id)
    assert line in seen, f"{context}: the user never reads {line!r}"
    assert what in seen, f"{context}: the user never reads {what!r}"
    if shows is not None:
        assert re.search(shows, seen), f"{context}: the user never reads {shows!r}"
    if ran.error is None:
        assert ran.result is not None
        assert ran.result["status"] == "SUCCESS"
        assert ran.result["result_urls"], "never SUCCESS without results"
        assert ran.result["result_urls"] == api.result_urls(ran.result["task_id"])

"""The fault matrix, part 2: what the network, a proxy or a broken server does instead of answering.

Same places and the same letters as ``tests/guarantees/test_fault_matrix.py`` (``T`` this try fails and
Airflow retries; ``A`` fails for good, a paid task may exist; ``S`` the sensor times out; ``OK``
the task succeeds; ``-`` does not apply). Each fault persists for the whole case unless the row
says otherwise, so every wait must end by itself within its timeout -- and never with SUCCESS
without result files.

* A fault on a **submission** either proves that nothing was created (the request never left:
  the hook sends it again, and once its attempts are used up this try fails) or it does not
  (the request reached something): then it is never sent again, and the task fails for good
  naming the possibility of a paid task -- except when the answer named its task, which is then
  waited for instead of paid for again.
* A fault on a **status read** costs nothing: every place keeps reading until its timeout.

``submitted`` counts the tasks the fake created (the scripted server: the submissions it
received); the sensors' one task is submitted beforehand.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from fault_matrix_support import (
    AMBIGUOUS,
    CONTEXTS,
    DEFERRED_OP,
    FAST,
    GENERATE,
    LONG,
    OPERATORS,
    SENSOR_DEFERRED,
    SENSOR_POKE,
    SHORT,
    STATUS,
    SUCCEEDS,
    SYNC_OP,
    TIMES_OUT,
    TRANSIENT,
    Api,
    Expect,
    FakeApi,
    Raw,
    ScriptedApi,
    check,
    closed_port,
    no_defer_settle_delay,  # noqa: F401 -- fixture: overrides conftest's
    run_case,
    seen_by_the_user,
    task_answer,
)
from reve_test_helpers import use_connection

from airflow_provider_reve.testing import FakeReveServer

T, A, S, OK = TRANSIENT, AMBIGUOUS, TIMES_OUT, SUCCEEDS
#: How a status-read fault ends each place when it persists.
KEEPS_READING = {SYNC_OP: T, DEFERRED_OP: T, SENSOR_POKE: S, SENSOR_DEFERRED: S}
#: The connection's read timeout in the read-timeout rows; the fake then answers later than it.
READ_TIMEOUT = 0.3


@dataclass
class Env:
    """What a row's fault may use: the API of the case, and the Airflow connection."""

    api: Api
    monkeypatch: pytest.MonkeyPatch

    @property
    def fake(self) -> FakeReveServer:
        assert isinstance(self.api, FakeApi)
        return self.api.server


#: A row's fault: given the case's Env and how many times it strikes (None: every time).
Fault = Callable[[Env, int | None], None]


def fake_fault(kind: str, endpoint: str, **fields: Any) -> Fault:
    def inject(env: Env, times: int | None) -> None:
        env.fake.add_fault(kind=kind, endpoint=endpoint, times=times, **fields)

    return inject


def refused(env: Env, times: int | None) -> None:
    """From now on the connection points at a port nothing listens on."""
    use_connection(env.monkeypatch, f"http://127.0.0.1:{closed_port()}")


def scripted_generate(answer: Callable[[int], Raw]) -> Fault:
    def inject(env: Env, times: int | None) -> None:
        assert isinstance(env.api, ScriptedApi)
        env.api.generate = answer

    return inject


def scripted_status(answer: Callable[[str], Raw]) -> Fault:
    def inject(env: Env, times: int | None) -> None:
        api = env.api
        assert isinstance(api, ScriptedApi)
        left = [times]

        def status(task_id: str) -> Raw:
            if left[0] is not None:
                if left[0] <= 0:
                    return api.normal_status(task_id)
                left[0] -= 1
            return answer(task_id)

        api.status = status

    return inject


def _cut(raw: Raw) -> Raw:
    return Raw(raw.status, raw.body, cut_after=12)


def _other_task(task_id: str) -> Raw:
    urls = {"resultUrls": ["https://cdn.example/someone-else/0.png"]}
    return task_answer("someone-else", "SUCCESS", consumed_credits=25, response=urls)


@dataclass(frozen=True)
class Row:
    name: str
    phase: str
    fault: Fault
    ends: dict[str, Expect]
    submitted: int
    #: What the user reads about the fault (a pattern over every log line and the error).
    shows: str
    scripted: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def on_submit(expect: Expect) -> dict[str, Expect]:
    return dict.fromkeys(OPERATORS, expect)


# fmt: off
ROWS = [
    # -- a fault on the submission (sensors submit nothing) -----------------------------------
    Row("connection refused", GENERATE, refused, on_submit(T), 0,
        r"ConnectionError talking to http://127\.0\.0\.1"),
    Row("connection closed after the task was created", GENERATE, fake_fault("drop_after", "generate"),
        on_submit(A), 1, "no answer arrived"),
    Row("connection reset in the middle of the answer", GENERATE,
        scripted_generate(lambda n: _cut(task_answer(f"task-{n}"))), on_submit(A), 1, "no answer arrived",
        scripted=True),
    Row("read timeout", GENERATE, fake_fault("slow", "generate", delay=1.5), on_submit(A), 1,
        "ReadTimeout", extra={"read_timeout": READ_TIMEOUT}),
    Row("slow answer within the read timeout", GENERATE, fake_fault("slow", "generate", delay=0.2),
        on_submit(OK), 1, "SUCCESS"),
    Row("a proxy's HTML 502 page", GENERATE, fake_fault("html", "generate", status=502), on_submit(A), 0,
        "HTTP 502"),
    Row("truncated JSON", GENERATE, fake_fault("garbled", "generate"), on_submit(A), 1,
        "the body is not a JSON object"),
    Row("HTML with HTTP 200", GENERATE, fake_fault("html_after", "generate", status=200), on_submit(A), 1,
        "the body is not a JSON object"),
    Row("no 'data' in the envelope", GENERATE, fake_fault("missing_data", "generate"), on_submit(A), 1,
        "no 'data' object"),
    Row("unknown status string", GENERATE,
        scripted_generate(lambda n: task_answer(f"task-{n}", "QUEUED")), on_submit(A), 1,
        "unknown task status 'QUEUED'", scripted=True),
    Row("SUCCESS with resultUrls empty: the named task is waited for", GENERATE,
        fake_fault("success_without_urls", "generate"), on_submit(OK), 1, "Waiting for Reve task"),
    Row("SUCCESS without resultUrls: the named task is waited for", GENERATE,
        fake_fault("success_without_urls", "generate", variant="missing"), on_submit(OK), 1,
        "Waiting for Reve task"),
    Row("HTTP 200 whose envelope says 500 GENERATION_FAILED: sent again, 2 attempts", GENERATE,
        scripted_generate(lambda n: Raw(body={"code": 500, "message": "GENERATION_FAILED"})),
        on_submit(T), FAST.max_attempts, "answered HTTP 500 GENERATION_FAILED", scripted=True),
    # -- a fault on every status read -----------------------------------------------------------
    Row("connection refused", STATUS, refused,
        {DEFERRED_OP: T, SENSOR_POKE: S, SENSOR_DEFERRED: S}, 1,
        r"ConnectionError talking to|cannot connect to"),
    Row("connection closed without an answer", STATUS, fake_fault("drop_before", "status"), KEEPS_READING, 1,
        r"\w+ talking to http://127\.0\.0\.1"),
    Row("connection reset in the middle of the answer", STATUS,
        scripted_status(lambda task_id: _cut(task_answer(task_id))), KEEPS_READING, 1,
        r"\w+ talking to http://127\.0\.0\.1", scripted=True),
    Row("read timeout", STATUS, fake_fault("slow", "status", delay=1.0), KEEPS_READING, 1,
        r"(ReadTimeout|TimeoutError) talking to", extra={"read_timeout": READ_TIMEOUT}),
    Row("slow answers within the read timeout", STATUS, fake_fault("slow", "status", delay=0.1),
        dict.fromkeys(CONTEXTS, OK), 1, "SUCCESS"),
    Row("a proxy's HTML 502 page", STATUS, fake_fault("html", "status", status=502), KEEPS_READING, 1,
        "HTTP 502"),
    Row("truncated JSON", STATUS, fake_fault("garbled", "status"), KEEPS_READING, 1,
        "the body is not a JSON object"),
    Row("HTML with HTTP 200", STATUS, fake_fault("html", "status", status=200), KEEPS_READING, 1,
        "the body is not a JSON object"),
    Row("unknown status string", STATUS, fake_fault("unknown_status", "status"), KEEPS_READING, 1,
        "unknown task status 'WEIRD_STATE'"),
    Row("no 'data' in the envelope", STATUS, fake_fault("missing_data", "status"), KEEPS_READING, 1,
        "no 'data' object"),
    Row("SUCCESS with resultUrls empty", STATUS, fake_fault("success_without_urls", "status"),
        KEEPS_READING, 1, "SUCCESS without any result URL"),
    Row("SUCCESS without resultUrls", STATUS,
        fake_fault("success_without_urls", "status", variant="missing"), KEEPS_READING, 1,
        "SUCCESS without any result URL"),
    Row("HTTP 200 whose envelope says 503 SERVICE_UNAVAILABLE", STATUS,
        scripted_status(lambda task_id: Raw(body={"code": 503, "message": "SERVICE_UNAVAILABLE"})),
        KEEPS_READING, 1, "answered HTTP 503 SERVICE_UNAVAILABLE", scripted=True),
    Row("SUCCESS for another task id", STATUS, scripted_status(_other_task), KEEPS_READING, 1,
        "answered for task 'someone-else'", scripted=True),
]
# fmt: on
STATUS_ROWS = [row for row in ROWS if row.phase == STATUS]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeReveServer]:
    with FakeReveServer() as server:
        yield server


@pytest.fixture
def scripted() -> Iterator[ScriptedApi]:
    api = ScriptedApi()
    yield api
    api.close()


def _api_for(row: Row, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Api:
    if row.scripted:
        api: ScriptedApi = request.getfixturevalue("scripted")
        use_connection(monkeypatch, api.url, **row.extra)
        return api
    return FakeApi(request.getfixturevalue("fake"), monkeypatch, **row.extra)


def _cases(rows: list[Row]) -> list[Any]:
    return [
        pytest.param(row, context, expect, id=f"{row.phase} | {row.name} | {context}")
        for row in rows
        for context, expect in row.ends.items()
    ]


@pytest.mark.parametrize(("row", "context", "expect"), _cases(ROWS))
def test_every_network_and_answer_fault_ends_each_kind_of_wait_as_the_matrix_says(
    row: Row,
    context: str,
    expect: Expect,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    api = _api_for(row, request, monkeypatch)
    env = Env(api, monkeypatch)

    ran = run_case(
        context, row.phase, api, lambda task_id: row.fault(env, None), timeout=LONG if expect is OK else SHORT
    )

    check(
        ran,
        expect,
        context=context,
        what="",
        api=api,
        submissions=row.submitted,
        seen=seen_by_the_user(ran, caplog, capfd),
        phase=row.phase,
        shows=row.shows,
    )


@pytest.mark.parametrize(
    ("row", "context", "expect"), _cases([row for row in STATUS_ROWS if row.fault is not refused])
)
def test_a_single_bad_status_answer_is_read_past_and_the_task_succeeds_with_one_submission(
    row: Row,
    context: str,
    expect: Expect,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    api = _api_for(row, request, monkeypatch)
    env = Env(api, monkeypatch)

    ran = run_case(context, row.phase, api, lambda task_id: row.fault(env, 1), timeout=LONG)

    check(
        ran,
        OK,
        context=context,
        what="",
        api=api,
        submissions=1,
        seen=seen_by_the_user(ran, caplog, capfd),
        phase=row.phase,
    )
    if isinstance(api, FakeApi):
        assert api.server.faults == [], "the bad answer was served (and read past)"

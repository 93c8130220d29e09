"""The fault matrix, part 1: every error code the API reference documents, wherever it can arrive.

Read a row as: *the API answers this code to a submission, or to a status read, or a task ends
FAILED with it* -- and the cell says how the Airflow task ends in each place a Reve wait
happens (see ``tests/support/fault_matrix_support.py``; ``def.`` is the deferrable operator, waiting in
the trigger, and the sensor's deferred wait):

* ``P``  fails for good: ``AirflowFailException``, no retry spent (nothing a retry could fix);
* ``T``  this try fails: ``AirflowException``, Airflow's retries apply (the retry re-attaches);
* ``A``  fails for good: the submission may have created a paid task, it is never re-sent;
* ``N``  this try fails once ``max_submit_wait`` is used up waiting for slots to free;
* ``S``  the sensor times out: ``AirflowSensorTimeout``, no retry (as every Airflow sensor);
* ``FP`` / ``FT`` a FAILED task: fails for good / this try fails (refunded: a retry costs nothing);
* ``K``  skipped (``on_content_policy_violation="skip"``);
* ``-``  does not apply (a sensor submits nothing).

Every fault persists for the whole case, so every wait has to end by itself within its timeout.
Each case also checks how many tasks the fake created (a refused submission creates none, and
nothing is ever submitted twice), that a FAILED task is refunded, and the line the user reads.
One fake serves the module; it is reset between cases.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fault_matrix_support import (
    AMBIGUOUS,
    DEFERRED_OP,
    FAILED_PERMANENT,
    FAILED_TASK,
    FAILED_TRANSIENT,
    GENERATE,
    LONG,
    NO_SLOTS,
    PERMANENT,
    SENSOR_DEFERRED,
    SENSOR_POKE,
    SHORT,
    SKIPS,
    STATUS,
    SUCCEEDS,
    SYNC_OP,
    TIMES_OUT,
    TRANSIENT,
    Expect,
    FakeApi,
    check,
    no_defer_settle_delay,  # noqa: F401 -- fixture: overrides conftest's
    run_case,
    seen_by_the_user,
)

from airflow_provider_reve.exceptions import DOCUMENTED_CODES
from airflow_provider_reve.testing import FakeReveServer

P, T, A, N, S = PERMANENT, TRANSIENT, AMBIGUOUS, NO_SLOTS, TIMES_OUT
FP, FT, K = FAILED_PERMANENT, FAILED_TRANSIENT, SKIPS
_ = None

COLUMNS = [
    (GENERATE, SYNC_OP),
    (GENERATE, DEFERRED_OP),
    (STATUS, SYNC_OP),
    (STATUS, DEFERRED_OP),
    (STATUS, SENSOR_POKE),
    (STATUS, SENSOR_DEFERRED),
    (FAILED_TASK, SYNC_OP),
    (FAILED_TASK, DEFERRED_OP),
    (FAILED_TASK, SENSOR_POKE),
    (FAILED_TASK, SENSOR_DEFERRED),
]
# fmt: off
#                                generate      a status read             the task ends FAILED
#                                operators     operators   sensor        operators   sensor
#                                sync  def.    sync  def.  poke  def.    sync  def.  poke  def.
MATRIX: dict[str, tuple[Expect | None, ...]] = {
    "INVALID_PROMPT":           (P,    P,      P,    P,    P,    P,      FP,   FP,   FP,   FP),
    "INVALID_MODEL":            (P,    P,      P,    P,    P,    P,      FP,   FP,   FP,   FP),
    "INVALID_PARAMETER":        (P,    P,      P,    P,    P,    P,      FP,   FP,   FP,   FP),
    "CONTENT_POLICY_VIOLATION": (P,    P,      P,    P,    P,    P,      FP,   FP,   FP,   FP),
    "INVALID_API_KEY":          (P,    P,      P,    P,    P,    P,      FP,   FP,   FP,   FP),
    "INSUFFICIENT_CREDITS":     (P,    P,      P,    P,    P,    P,      FP,   FP,   FP,   FP),
    "TASK_NOT_FOUND":           (P,    P,      P,    P,    P,    P,      FP,   FP,   FP,   FP),
    "RATE_LIMITED":             (T,    T,      T,    T,    S,    S,      FT,   FT,   FP,   FP),
    "TOO_MANY_TASKS":           (N,    N,      T,    T,    S,    S,      FT,   FT,   FP,   FP),
    "GENERATION_FAILED":        (T,    T,      T,    T,    S,    S,      FT,   FT,   FP,   FP),
    "SERVICE_UNAVAILABLE":      (T,    T,      T,    T,    S,    S,      FT,   FT,   FP,   FP),
    "TIMEOUT":                  (A,    A,      T,    T,    S,    S,      FT,   FT,   FP,   FP),
}
# The same code with on_content_policy_violation="skip" (operators only; a sensor has soft_fail).
# A status read is never refused for content: the API reports it as a FAILED task.
SKIP_ROW: tuple[Expect | None, ...] = (K, K, _, _, _, _, K, K, _, _)
# fmt: on

#: Tasks the fake creates in each case: a refused submission creates none; a status read or a
#: FAILED task concerns the one task that was submitted.
SUBMISSIONS = {GENERATE: 0, STATUS: 1, FAILED_TASK: 1}


def _cases() -> Iterator[Any]:
    rows = [(code, row, {}) for code, row in MATRIX.items()]
    rows.append(("CONTENT_POLICY_VIOLATION", SKIP_ROW, {"on_content_policy_violation": "skip"}))
    for code, row, kwargs in rows:
        for (phase, context), expect in zip(COLUMNS, row, strict=True):
            if expect is not None:
                name = f"{code}{' (skip)' if kwargs else ''} | {phase} | {context}"
                yield pytest.param(code, phase, context, expect, kwargs, id=name)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeReveServer]:
    with FakeReveServer() as server:
        yield server


@pytest.fixture
def api(fake: FakeReveServer, monkeypatch: pytest.MonkeyPatch) -> FakeApi:
    # TOO_MANY_TASKS waits 10 s and more between submissions; the matrix is about the decision.
    monkeypatch.setattr(
        "airflow_provider_reve.client.retry.too_many_tasks_wait", lambda attempt, retry_after=None: 0.05
    )
    return FakeApi(fake, monkeypatch)


def inject_code(api: FakeApi, phase: str, code: str) -> Callable[[str | None], None]:
    def inject(task_id: str | None) -> None:
        if phase == FAILED_TASK and task_id is not None:
            api.server.fail_task(task_id, code)
        elif phase == FAILED_TASK:
            api.server.add_fault(kind="fail_task", endpoint="generate", code=code)
        else:
            api.server.add_fault(kind="error", endpoint=phase, code=code, times=None)

    return inject


def test_the_matrix_covers_every_documented_code_and_nothing_else():
    assert set(MATRIX) == DOCUMENTED_CODES


@pytest.mark.parametrize(("code", "phase", "context", "expect", "kwargs"), list(_cases()))
def test_every_documented_code_ends_each_kind_of_wait_as_the_matrix_says(
    api: FakeApi,
    code: str,
    phase: str,
    context: str,
    expect: Expect,
    kwargs: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    start = api.server.balance(api.key)

    ran = run_case(
        context,
        phase,
        api,
        inject_code(api, phase, code),
        timeout=LONG if expect is SUCCEEDS else SHORT,
        max_submit_wait=SHORT,
        **kwargs,
    )

    check(
        ran,
        expect,
        context=context,
        what=code,
        api=api,
        submissions=SUBMISSIONS[phase],
        seen=seen_by_the_user(ran, caplog, capfd),
        phase=phase,
    )
    if phase == FAILED_TASK:
        assert api.server.balance(api.key) == start, "a FAILED task is refunded"


TRANSIENT_CODES = [code for code, row in MATRIX.items() if row[2] is TRANSIENT]


@pytest.mark.parametrize("context", [SYNC_OP, DEFERRED_OP, SENSOR_POKE, SENSOR_DEFERRED])
@pytest.mark.parametrize("code", TRANSIENT_CODES)
def test_one_transient_error_answer_to_a_status_read_is_ridden_out_in_every_place(
    api: FakeApi,
    code: str,
    context: str,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    # TOO_MANY_TASKS on a read is a 429 like RATE_LIMITED: the worker's hook reads again instead
    # of failing the try (only a *submission* refused so waits for slots, in the operator).
    ran = run_case(
        context,
        STATUS,
        api,
        lambda task_id: api.server.add_fault(kind="error", endpoint="status", code=code),
        timeout=LONG,
    )

    check(
        ran,
        SUCCEEDS,
        context=context,
        what="",
        api=api,
        submissions=1,
        seen=seen_by_the_user(ran, caplog, capfd),
        phase=STATUS,
    )
    assert api.server.faults == [], "the error was answered (and read past)"

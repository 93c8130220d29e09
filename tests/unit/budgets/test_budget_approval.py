"""``approval_above_credits``: an expensive generation waits for a person in Required actions.

Whole DAGs run with ``dag.test()``, which keeps a run alive while a task waits for input; a
thread answers as a person would, through the api-server's own ``PATCH .../hitlDetails`` route
function on the same metadata DB. Single tries run with ``execute()`` and an in-memory state
store. The fake's ledger says what was paid; an SQLite ledger holds the budget.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import AirflowFailException, AirflowSkipException
from never_pay_twice_support import InMemoryTaskStateStore, make_context, make_operator

from airflow_provider_reve.budgets import Budget, Ledger
from airflow_provider_reve.budgets.approval import APPROVE, REJECT
from airflow_provider_reve.testing import FakeReveServer

# A person who has not managed to answer by then gives up, so a broken answer fails the test.
GIVE_UP_AFTER_SECONDS = 180
# How long a request is shown before the person answers it.
ANSWER_AFTER_SECONDS = 2.0

DAGS = Path(__file__).resolve().parents[2] / "dags" / "approval"


@pytest.fixture
def server(fake_reve_server: FakeReveServer, reve_connection_env: str) -> FakeReveServer:
    fake_reve_server.set_async_seconds(0.1)
    return fake_reve_server


@pytest.fixture
def ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Ledger:
    monkeypatch.setenv("AIRFLOW_CONN_REVE_LEDGER", f"sqlite:///{tmp_path / 'ledger.db'}")
    monkeypatch.setenv("AIRFLOW__REVE__LEDGER_CONN_ID", "reve_ledger")
    configured = Ledger.configured()
    assert configured is not None
    configured.set_budget(Budget(name="posters", limit_credits=1000, conn_id="reve_default"))
    return configured


def charges(server: FakeReveServer) -> int:
    return -sum(entry["delta"] for entry in server.ledger)


class Person:
    """Answers every open Required action of a DAG with one option, as the UI's PATCH would."""

    def __init__(self, dag_id: str, option: str) -> None:
        self.dag_id, self.option = dag_id, option
        self.asked: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self._seen: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Person:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _loop(self) -> None:
        started = time.monotonic()
        while not self._stop.wait(0.2):
            try:
                self._answer_open_requests()
            except Exception as error:  # e.g. SQLite busy while dag.test() writes: a person tries again
                self.errors.append(repr(error))
            if time.monotonic() - started > GIVE_UP_AFTER_SECONDS:
                # Never hang the suite: end the parked task so dag.test() returns and the test
                # fails on its asserts, naming what went wrong.
                self._fail_parked_tasks()
                return

    def _fail_parked_tasks(self) -> None:
        from airflow.models.taskinstance import TaskInstance
        from airflow.utils.session import create_session
        from sqlalchemy import update

        with create_session() as session:
            session.execute(
                update(TaskInstance)
                .where(TaskInstance.dag_id == self.dag_id, TaskInstance.state == "awaiting_input")
                .values(state="failed")
            )

    def _answer_open_requests(self) -> None:
        from airflow.api_fastapi.core_api.datamodels.hitl import UpdateHITLDetailPayload
        from airflow.api_fastapi.core_api.routes.public.hitl import update_hitl_detail
        from airflow.models.hitl import HITLDetail
        from airflow.models.taskinstance import TaskInstance
        from airflow.utils.session import create_session
        from sqlalchemy import select

        with create_session() as session:
            rows = session.execute(
                select(TaskInstance, HITLDetail)
                .join(HITLDetail, HITLDetail.ti_id == TaskInstance.id)
                .where(
                    TaskInstance.dag_id == self.dag_id,
                    TaskInstance.state == "awaiting_input",
                    HITLDetail.responded_at.is_(None),
                )
            ).all()
            for ti, detail in rows:
                # As a person would, answer a request only once it has been shown for a moment: an
                # answer within a second of the task parking can reach the DB before the parking
                # itself is recorded, which then overwrites the answer (the race the E2E test
                # also waits out, see tests/e2e/test_approval_e2e.py).
                first_seen = self._seen.setdefault(str(ti.id), time.monotonic())
                if time.monotonic() - first_seen < ANSWER_AFTER_SECONDS:
                    continue
                self.asked.append(
                    {
                        "task_id": ti.task_id,
                        "subject": detail.subject,
                        "body": detail.body,
                        "options": detail.options,
                    }
                )
                update_hitl_detail(
                    dag_id=ti.dag_id,
                    dag_run_id=ti.run_id,
                    task_id=ti.task_id,
                    update_hitl_detail_payload=UpdateHITLDetailPayload(
                        chosen_options=[self.option], params_input={}
                    ),
                    user=SimpleNamespace(get_id=lambda: "ada", get_name=lambda: "Ada"),
                    session=session,
                    map_index=ti.map_index,
                )


@pytest.fixture
def run_dag(use_dags_folder: Callable[[Path], Path]) -> Iterator[Callable[[str, str], tuple[Any, Person]]]:
    from airflow.dag_processing.dagbag import DagBag

    use_dags_folder(DAGS)
    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}

    def run(dag_id: str, option: str) -> tuple[Any, Person]:
        with Person(dag_id, option) as person:
            dag_run = bag.dags[dag_id].test(logical_date=None)
        return dag_run, person

    yield run


def states(dag_run: Any) -> dict[str, str]:
    return {ti.task_id: ti.state for ti in dag_run.get_task_instances()}


def test_an_approved_generation_is_shown_with_prompt_model_estimate_and_headroom_then_paid_once(
    server, ledger, run_dag
):
    dag_run, person = run_dag("reve_approval_operator", APPROVE)

    assert states(dag_run) == {"poster": "success", "cheap": "success"}, person.errors[-3:]
    # Only the 50-credit request asked; the 25-credit one is under the threshold.
    (asked,) = person.asked
    assert asked["task_id"] == "poster"
    assert asked["options"] == [APPROVE, REJECT]
    assert "about 50 credits" in asked["subject"] and "seedream-5" in asked["subject"]
    assert "a poster of a lighthouse at dawn" in asked["body"]
    # The covering budget's headroom (the cheap task may have spent its 25 already).
    assert "of 1000 credits left per day" in asked["body"] and "`posters`" in asked["body"]
    assert "Nothing has been reserved or paid" in asked["body"]
    assert server.submissions == 2
    assert charges(server) == 50 + 25
    status = ledger.status("posters")
    assert (status.spent_credits, status.reserved_credits) == (50 + 25, 0)


def test_a_rejected_generation_pays_nothing_reserves_nothing_and_skips_as_configured(server, ledger, run_dag):
    dag_run, person = run_dag("reve_approval_operator", REJECT)

    assert states(dag_run) == {"poster": "skipped", "cheap": "success"}
    assert [asked["task_id"] for asked in person.asked] == ["poster"]
    assert server.submissions == 1  # the cheap one only
    status = ledger.status("posters")
    assert (status.spent_credits, status.reserved_credits) == (25, 0)


def test_task_reve_asks_for_approval_like_the_operator(server, ledger, run_dag):
    dag_run, person = run_dag("reve_approval_taskflow", APPROVE)

    assert states(dag_run) == {"poster": "success"}
    (asked,) = person.asked
    assert "a poster of a harbour at noon" in asked["body"]  # the function's request is shown
    assert server.submissions == 1
    assert ledger.status("posters").spent_credits == 25


# -- one try at a time ----------------------------------------------------------------------------


def context(store: InMemoryTaskStateStore, **ti: Any) -> dict[str, Any]:
    fields = {"dag_id": "posters", "run_id": "manual__1", "task_id": "generate", "max_tries": 3, **ti}
    return make_context(store, **fields)


def test_no_answer_by_the_approval_timeout_fails_without_paying(server):
    operator = make_operator(model="seedream-5", approval_above_credits=0, approval_timeout=60)
    timed_out = {"error": "The Human-in-the-loop response timeout has passed", "error_type": "timeout"}

    with pytest.raises(AirflowFailException, match="within approval_timeout"):
        operator.execute_after_approval(context(InMemoryTaskStateStore()), event=timed_out)

    assert server.submissions == 0


def test_a_rejection_fails_by_default_without_paying(server):
    operator = make_operator(model="seedream-5", approval_above_credits=0)
    answer = {"chosen_options": [REJECT], "responded_by_user": {"id": "1", "name": "Ada"}}

    with pytest.raises(AirflowFailException, match="Rejected in Required actions by Ada"):
        operator.execute_after_approval(context(InMemoryTaskStateStore()), event=answer)

    assert server.submissions == 0


def test_a_retry_after_approval_does_not_ask_again_and_never_pays_twice(server):
    store = InMemoryTaskStateStore()
    operator = make_operator(model="seedream-5", approval_above_credits=0)
    approved = {"chosen_options": [APPROVE], "responded_by_user": {"id": "1", "name": "Ada"}}
    first = operator.execute_after_approval(context(store, try_number=1), event=approved)

    # The retry (same run of tries): no task instance id to ask with, so asking would fail it.
    again = make_operator(model="seedream-5", approval_above_credits=0).execute(context(store, try_number=2))

    assert again["task_id"] == first["task_id"]
    assert server.submissions == 1


def test_approval_options_are_checked_when_the_dag_is_parsed():
    with pytest.raises(ValueError, match="on_approval_rejected"):
        make_operator(approval_above_credits=10, on_approval_rejected="ignore")
    with pytest.raises(ValueError, match="approval_above_credits"):
        make_operator(approval_above_credits=-1)
    assert make_operator(approval_above_credits=10, approval_timeout=90).approval_timeout == timedelta(
        seconds=90
    )


def test_an_unknown_price_asks_for_approval_before_anything_is_submitted(server):
    # A video without duration has no published price: the threshold cannot vouch for it.
    operator = make_operator(model="kling26-text-to-video", approval_above_credits=1000)

    with pytest.raises(AirflowFailException, match="needs a person's approval"):
        operator.execute(context(InMemoryTaskStateStore(), id=None))

    assert server.submissions == 0


def test_a_rejection_skips_when_asked_to(server):
    operator = make_operator(model="seedream-5", approval_above_credits=0, on_approval_rejected="skip")

    with pytest.raises(AirflowSkipException, match="on_approval_rejected='skip'"):
        operator.execute_after_approval(context(InMemoryTaskStateStore()), event={"chosen_options": [REJECT]})

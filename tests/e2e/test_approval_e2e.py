"""``approval_above_credits`` through a real scheduler, worker and api-server: the expensive task
appears in Required actions (the REST API's ``hitlDetails``), nothing is paid while it waits, and
the REST ``PATCH`` a person's click sends decides: approve -> paid once, reject -> nothing paid."""

from __future__ import annotations

import time

import pytest

from airflow_provider_reve.testing.cluster import LocalAirflow
from airflow_provider_reve.testing.fake_server import FakeReveServer

DAG_ID = "reve_e2e_approval"


@pytest.fixture
def api(session_fake_reve_server: FakeReveServer) -> FakeReveServer:
    session_fake_reve_server.reset()
    session_fake_reve_server.set_async_seconds(1)
    return session_fake_reve_server


def wait_until_the_parked_try_has_exited(af: LocalAirflow, run_id: str, timeout: float = 120) -> None:
    """Answer only once the scheduler recorded the parking worker's exit.

    On Airflow 3.3 an answer that resumes the task before then races that record, and the
    scheduler fails the resumed task as "state changed externally" (the same race as a trigger
    firing too soon, apache/airflow#66374). A person never answers that fast; a bot might.
    """
    line = (
        "Received executor event with state success for task instance TaskInstanceKey("
        f"dag_id='{DAG_ID}', task_id='poster', run_id='{run_id}'"
    )
    deadline = time.monotonic() + timeout
    while line not in af.component_log("scheduler").read_text(errors="replace"):
        assert time.monotonic() < deadline, f"the scheduler never recorded the exit of {run_id}'s parked try"
        time.sleep(0.25)


def charged(api: FakeReveServer) -> int:
    return -sum(entry["delta"] for entry in api.ledger)


def test_an_expensive_generation_waits_in_required_actions_and_only_an_approval_pays_once(
    local_airflow: LocalAirflow, api: FakeReveServer
) -> None:
    af = local_airflow
    af.wait_for_dag(DAG_ID, timeout=90)
    approved_run, rejected_run = af.trigger(DAG_ID), af.trigger(DAG_ID)

    for run_id in (approved_run, rejected_run):
        af.wait_for_ti_state(DAG_ID, run_id, "poster", "awaiting_input", timeout=180)
    # Both wait for a person; nothing was submitted, so nothing was paid.
    assert api.submissions == 0

    listed = af.api("GET", f"dags/{DAG_ID}/dagRuns/{approved_run}/hitlDetails")
    (request,) = [entry for entry in listed["hitl_details"] if entry["task_instance"]["task_id"] == "poster"]
    assert request["options"] == ["Approve", "Reject"]
    assert "about 50 credits" in request["subject"]
    assert f"a poster of a lighthouse ({approved_run})" in request["body"]
    assert "seedream-5" in request["body"]
    assert request["response_received"] is False

    def answer(run_id: str, option: str) -> None:
        af.api(
            "PATCH",
            f"dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/poster/-1/hitlDetails",
            {"chosen_options": [option], "params_input": {}},
        )

    for run_id in (approved_run, rejected_run):
        wait_until_the_parked_try_has_exited(af, run_id)
    answer(approved_run, "Approve")
    answer(rejected_run, "Reject")

    assert af.wait_for_run(DAG_ID, approved_run, timeout=180) == "success"
    assert af.wait_for_run(DAG_ID, rejected_run, timeout=180) == "failed"
    paid = af.xcom(DAG_ID, approved_run, "poster")
    assert paid["consumed_credits"] == 50
    assert api.submissions == 1
    assert charged(api) == 50
    shown = af.api("GET", f"dags/{DAG_ID}/dagRuns/{rejected_run}/taskInstances/poster/-1/hitlDetails")
    assert shown["chosen_options"] == ["Reject"]
    states = {
        ti["task_id"]: (ti["state"], ti["try_number"]) for ti in af.task_instances(DAG_ID, rejected_run)
    }
    assert states == {"poster": ("failed", 1)}  # a rejection spends no retries

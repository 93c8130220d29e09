"""The deferrable workflow and crash re-attach, proven through real Airflow processes.

The fake Reve API runs in this test process; the api-server, scheduler, dag-processor,
triggerer and task workers are separate processes that reach it over loopback. Every claim is
checked in the metadata DB (and the fake's counters), not inferred from a green run.
"""

from __future__ import annotations

import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from airflow_provider_reve.testing.cluster import LocalAirflow
from airflow_provider_reve.testing.fake_server import DEFAULT_API_KEY, FakeReveServer

TRIGGER_CLASSPATH = "airflow_provider_reve.triggers.reve.ReveTaskTrigger"
TRIGGER_KWARGS = {
    "reve_task_id",
    "reve_conn_id",
    "poll_interval",
    "deadline",
    "model",
    "max_consecutive_errors",
    "not_before",
}


@pytest.fixture
def api(session_fake_reve_server: FakeReveServer) -> FakeReveServer:
    session_fake_reve_server.reset()
    # Long enough that the waiting tasks are caught deferred, short enough for a quick run.
    session_fake_reve_server.set_async_seconds(12)
    return session_fake_reve_server


def _assert_no_secret(text: str, api: FakeReveServer) -> None:
    assert DEFAULT_API_KEY not in text
    assert "Bearer" not in text
    assert api.url not in text


def test_waiting_happens_in_the_triggerer_and_results_reach_downstream_tasks(
    local_airflow: LocalAirflow, api: FakeReveServer
) -> None:
    af = local_airflow
    dag_id = "reve_e2e_workflow"
    af.wait_for_dag(dag_id, timeout=90)
    run_id = af.trigger(dag_id)

    # Watch both waiting tasks at once: each must be seen deferred with its trigger row.
    with ThreadPoolExecutor(max_workers=2) as pool:
        watches = {
            task_id: pool.submit(af.wait_for_ti_state, dag_id, run_id, task_id, "deferred", 120)
            for task_id in ("async_generate", "wait")
        }
        seen = {task_id: future.result() for task_id, future in watches.items()}

    for task_id, ti in seen.items():
        trigger = ti["trigger"]
        assert trigger is not None, f"{task_id} was deferred without a trigger row: {ti}"
        assert trigger["classpath"] == TRIGGER_CLASSPATH
        assert set(trigger["kwargs"]) == TRIGGER_KWARGS
        assert trigger["kwargs"]["reve_conn_id"] == "reve_default"
        assert (
            isinstance(trigger["kwargs"]["deadline"], float) and trigger["kwargs"]["deadline"] > time.time()
        )
        _assert_no_secret(trigger["kwargs_json"], api)
        _assert_no_secret(json.dumps(ti["next_kwargs"]) if ti["next_kwargs"] else "", api)

    assert af.wait_for_run(dag_id, run_id, timeout=180) == "success"

    states = {ti["task_id"]: (ti["state"], ti["try_number"]) for ti in af.task_instances(dag_id, run_id)}
    assert states == {
        "async_generate": ("success", 1),
        "sync_generate": ("success", 1),
        "submit": ("success", 1),
        "wait": ("success", 1),
        "use_urls": ("success", 1),
    }
    assert af.deferral_evidence(dag_id, run_id, "async_generate")["deferred"]
    assert af.deferral_evidence(dag_id, run_id, "wait")["deferred"]
    # The synchronous model was answered at once: that task never deferred.
    assert not af.deferral_evidence(dag_id, run_id, "sync_generate")["deferred"]

    async_result = af.xcom(dag_id, run_id, "async_generate")
    sync_result = af.xcom(dag_id, run_id, "sync_generate")
    submitted = af.xcom(dag_id, run_id, "submit")
    waited = af.xcom(dag_id, run_id, "wait")
    assert async_result["status"] == "SUCCESS" and async_result["model"] == "seedream-5"
    assert async_result["consumed_credits"] == 25
    assert sync_result["status"] == "SUCCESS" and len(sync_result["result_urls"]) == 2
    assert submitted["status"] == "IN_PROGRESS"
    assert waited["task_id"] == submitted["task_id"] and waited["status"] == "SUCCESS"
    assert af.xcom(dag_id, run_id, "use_urls") == waited["result_urls"]
    assert waited["result_urls"] == api.tasks[submitted["task_id"]]["result_urls"]

    # Three generate tasks, three paid submissions: no more.
    assert api.submissions == 3
    for task_id in ("async_generate", "sync_generate", "submit", "wait"):
        _assert_no_secret(af.task_log(dag_id, run_id, task_id), api)
    _assert_no_secret(af.component_log("triggerer").read_text(errors="replace"), api)


def test_a_worker_killed_while_polling_is_retried_without_paying_again(
    local_airflow: LocalAirflow, api: FakeReveServer
) -> None:
    af = local_airflow
    dag_id = "reve_e2e_crash"
    af.wait_for_dag(dag_id, timeout=90)
    run_id = af.trigger(dag_id)

    # Wait until the first try has submitted and is polling in its worker, then kill it.
    deadline = time.monotonic() + 120
    pid = None
    while time.monotonic() < deadline:
        rows = af.query(
            "SELECT state, pid, try_number FROM task_instance WHERE dag_id = ? AND run_id = ?",
            (dag_id, run_id),
        )
        if rows and rows[0]["state"] == "running" and rows[0]["pid"] and api.submissions == 1:
            pid = rows[0]["pid"]
            break
        time.sleep(0.2)
    assert pid is not None, "the task never reached 'running' with a submitted Reve task"
    first_task_id = next(iter(api.tasks))
    assert api.tasks[first_task_id]["status"] == "IN_PROGRESS"
    os.kill(pid, signal.SIGKILL)

    assert af.wait_for_run(dag_id, run_id, timeout=180) == "success"

    ti = af.task_instances(dag_id, run_id)[0]
    assert ti["state"] == "success"
    assert ti["try_number"] == 2  # the kill cost one Airflow try...
    assert api.submissions == 1  # ...but no second paid Reve task
    result = af.xcom(dag_id, run_id, "generate")
    assert result["task_id"] == first_task_id
    assert result["status"] == "SUCCESS"
    assert "Re-attaching to Reve task" in af.task_log(dag_id, run_id, "generate", try_number=2)


def test_the_example_pipeline_runs_through_the_real_scheduler_and_triggerer(tmp_path: Path) -> None:
    """What `make demo` shows, asserted: the shipped example DAG succeeds and writes real files."""
    from airflow_provider_reve.testing import demo

    example_dags = Path(__file__).resolve().parents[2] / "airflow_provider_reve" / "example_dags"
    args = ["--dags-folder", str(example_dags), "--out", str(tmp_path / "demo"), "--async-seconds", "4"]
    assert demo.main(args) == 0
    generated = list((tmp_path / "demo" / "generated").rglob("*"))
    images = [p for p in generated if p.suffix == ".png" and p.name != "contact_sheet.png"]
    sheets = [p for p in generated if p.name == "contact_sheet.png"]
    prompts = (example_dags / "prompts" / "content_pipeline.txt").read_text().splitlines()
    assert len(images) == len([line for line in prompts if line.strip() and not line.startswith("#")])
    assert all(p.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") for p in images + sheets)
    assert len(sheets) == 1  # the Pillow step ran on what the generations stored
    assert [p for p in generated if p.name.endswith("_preview.jpg")]  # the Asset-scheduled DAG ran


def test_too_many_tasks_is_waited_out_in_the_triggerer_without_failing_or_retrying(
    local_airflow: LocalAirflow, api: FakeReveServer
) -> None:
    af = local_airflow
    dag_id = "reve_e2e_back_pressure"
    limit = 2
    api.set_async_seconds(3)
    api.set_max_in_flight(limit)
    af.wait_for_dag(dag_id, timeout=90)
    run_id = af.trigger(dag_id)

    assert af.wait_for_run(dag_id, run_id, timeout=300) == "success"

    tis = af.task_instances(dag_id, run_id)
    assert len(tis) == 3 * limit
    assert all(ti["state"] == "success" and ti["try_number"] == 1 for ti in tis)
    assert api.submissions == 3 * limit  # one paid task per map index, none twice
    refused = api.requests_to("generate") - api.submissions
    assert refused > 0, "the in-flight limit was never hit, so back-pressure was not exercised"
    # A refused task deferred on a timer (holding no worker slot), then again to wait for its result.
    waited_out = [
        ti
        for ti in tis
        if "TOO_MANY_TASKS" in af.task_log(dag_id, run_id, "fan_out", map_index=ti["map_index"])
    ]
    assert waited_out
    for ti in waited_out:
        evidence = af.deferral_evidence(dag_id, run_id, "fan_out", ti["map_index"])
        assert len(evidence["deferred_events"]) >= 2
    results = [af.xcom(dag_id, run_id, "fan_out", map_index=ti["map_index"]) for ti in tis]
    assert len({result["task_id"] for result in results}) == 3 * limit
    assert all(result["status"] == "SUCCESS" for result in results)

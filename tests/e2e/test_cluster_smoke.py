"""The e2e harness itself: real processes run a deferrable DAG, and stop() cleans up exactly.

If these fail, every other e2e test is meaningless, so they check the harness's claims
directly in the metadata database rather than trusting a green DAG run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil

from airflow_provider_reve.testing.cluster import LocalAirflow

DAG_ID = "smoke_dag"
DATETIME_TRIGGER = "airflow.providers.standard.triggers.temporal.DateTimeTrigger"


def test_deferrable_sensor_runs_in_triggerer_and_downstream_xcom(local_airflow: LocalAirflow) -> None:
    af = local_airflow
    af.wait_for_dag(DAG_ID, timeout=60)
    run_id = af.trigger(DAG_ID, conf={"source": "smoke"})

    # Caught live: the TI is deferred and its trigger row exists, with readable kwargs.
    seen = af.wait_for_ti_state(DAG_ID, run_id, "wait", state="deferred", timeout=60)
    assert seen["state"] == "deferred"
    assert seen["next_method"] == "execute_complete"
    trigger = seen["trigger"]
    assert trigger is not None, seen
    assert trigger["id"] == seen["trigger_id"]
    assert trigger["classpath"] == DATETIME_TRIGGER
    assert set(trigger["kwargs"]) == {"moment", "end_from_trigger"}
    assert "moment" in trigger["kwargs_json"]

    assert af.wait_for_run(DAG_ID, run_id, timeout=90) == "success"

    tis = {(ti["task_id"], ti["map_index"]): ti for ti in af.task_instances(DAG_ID, run_id)}
    assert {key: ti["state"] for key, ti in tis.items()} == {
        ("wait", -1): "success",
        ("answer", -1): "success",
    }
    assert all(ti["try_number"] == 1 for ti in tis.values())
    assert af.xcom(DAG_ID, run_id, "answer") == {"answer": 42}

    # After the fact: the trigger row is gone, but the DB and the log folder still prove it.
    assert af.query("SELECT id FROM trigger WHERE id = ?", (trigger["id"],)) == []
    evidence = af.deferral_evidence(DAG_ID, run_id, "wait")
    assert evidence["deferred"] is True
    assert [e["event"] for e in evidence["deferred_events"]] == ["deferred"]
    assert evidence["trigger_log_files"], "the triggerer wrote no log for this task"
    events = [e["event"] for e in af.task_state_history(DAG_ID, run_id, "wait")]
    assert events[:2] == ["running", "deferred"]
    assert "Pausing task as DEFERRED" in af.task_log(DAG_ID, run_id, "wait")

    logs = af.dump_logs(tail=5)
    assert all(f"===== {name}.log" in logs for name in af.components)


_SLEEPY_DAG = """
from airflow.sdk import dag, task


@dag(dag_id="sleepy", schedule=None)
def sleepy():
    @task
    def nap():
        import subprocess, time
        subprocess.Popen(["sleep", "600"])  # a grandchild the task runner leaves behind
        time.sleep(600)

    nap()


sleepy()
"""


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_stop_kills_running_tasks_and_only_its_own_processes(tmp_path: Path) -> None:
    """A task mid-run (its runner sits in a process group of its own) dies with stop().

    A bystander process in another session, started before the deployment, must survive.
    """
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "sleepy.py").write_text(textwrap.dedent(_SLEEPY_DAG))
    bystander = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True
    )
    try:
        with LocalAirflow(dags, home=tmp_path / "home") as af:
            af.wait_for_dag("sleepy", timeout=60)
            run_id = af.trigger("sleepy")
            ti = af.wait_for_ti_state("sleepy", run_id, "nap", state="running", timeout=90)
            assert ti["trigger"] is None
            task_pid = af.query("SELECT pid FROM task_instance WHERE dag_id = 'sleepy'")[0]["pid"]
            assert task_pid and _alive(task_pid)
            assert os.getpgid(task_pid) not in af.pids.values(), "task runner should have its own group"
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and not psutil.Process(task_pid).children():
                time.sleep(0.2)
            ours = [*af.pids.values(), task_pid, *(c.pid for c in psutil.Process(task_pid).children())]
            assert len(ours) == len(af.components) + 2, "the task's `sleep` subprocess did not start"
        # __exit__ ran stop()
        assert af.pids == {}
        assert [pid for pid in ours if _alive(pid)] == []
        assert _alive(bystander.pid)
    finally:
        bystander.kill()
        bystander.wait()

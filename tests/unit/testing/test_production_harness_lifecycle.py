"""ProductionAirflow stops what it started in the awkward cases too: a component sent a signal it
takes its time over (a Celery worker's warm shutdown on SIGTERM), and a server spawned but not yet
answering when ``start()`` failed. Stand-ins for the components (real processes, started with the
harness's own ``spawn()``), so no PostgreSQL or Redis is needed here; the real cluster is exercised
by ``tests/system/test_production_topology.py``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from airflow_provider_reve.testing._cluster_processes import session_members, spawn
from airflow_provider_reve.testing._cluster_queries import LocalAirflowError
from airflow_provider_reve.testing.production import ProductionAirflow
from tests.support.reve_test_helpers import wait_for

# Stays up for a while after SIGTERM, the way a Celery worker finishes its tasks first.
SLOW_TO_STOP = """
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: None)
print("ready", flush=True)
time.sleep(600)
"""


@pytest.fixture
def production(tmp_path: Path) -> Iterator[ProductionAirflow]:
    af = ProductionAirflow(dags_folder=tmp_path, home=tmp_path / "home")
    yield af
    af.stop(timeout=10)


def stand_in(af: ProductionAirflow, name: str) -> subprocess.Popen[bytes]:
    af.log_dir.mkdir(parents=True, exist_ok=True)
    log = (af.log_dir / f"{name}.log").open("ab")
    proc = spawn([sys.executable, "-c", SLOW_TO_STOP], env={"PATH": os.defpath}, cwd=af.home, log=log)
    log.close()
    wait_for(lambda: b"ready" in (af.log_dir / f"{name}.log").read_bytes(), f"the {name} stand-in to start")
    return proc


def test_a_component_still_stopping_after_sigterm_is_not_started_twice_and_stop_ends_it(
    production: ProductionAirflow,
) -> None:
    af = production
    worker = stand_in(af, "worker-1")
    af._procs["worker-1"] = worker

    af.kill("worker-1", signal.SIGTERM)

    assert session_members([worker.pid]), "the stand-in should still be shutting down"
    with pytest.raises(LocalAirflowError, match="still running"):
        af.start_component("worker-1")  # a second worker with the same Celery node name
    af.stop(timeout=5)
    assert session_members([worker.pid]) == [], "a signalled component outlived stop()"


def test_a_server_spawned_but_not_yet_answering_is_stopped_with_the_rest(
    production: ProductionAirflow,
) -> None:
    af = production
    af.postgres.proc = stand_in(af, "postgresql")  # start() failed while waiting for it

    af.stop(timeout=5)

    assert session_members([af.postgres.proc.pid]) == [], "a half-started server was left running"


# Builds a deployment object in a home of its own making, prints the home, waits to be killed.
BUILDS_AND_DIES = """
import sys, time
from pathlib import Path
from airflow_provider_reve.testing.production import ProductionAirflow
from tests.support.reve_test_helpers import wait_for
af = ProductionAirflow(dags_folder=Path(sys.argv[1]))
print("home:", af.home, flush=True)
time.sleep(600)
"""


def test_a_home_it_created_is_deleted_when_the_test_process_dies(tmp_path: Path) -> None:
    test = subprocess.Popen(
        [sys.executable, "-c", BUILDS_AND_DIES, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert test.stdout is not None
        home = Path(next(line for line in test.stdout if line.startswith("home: "))[6:].strip())
        assert (home / "secrets").is_dir()
        test.kill()
        test.wait(30)
        wait_for(lambda: not home.exists(), f"{home}, made by the dead test process, to be deleted")
    finally:
        if test.poll() is None:
            test.kill()
            test.wait(30)

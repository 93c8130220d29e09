"""Test-wide setup: an isolated AIRFLOW_HOME so no test reads or writes the user's Airflow."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

# Must happen before anything imports airflow: its configuration is read at import time.
_HOME = Path(tempfile.mkdtemp(prefix="reve-tests-airflow-home-"))
os.environ["AIRFLOW_HOME"] = str(_HOME)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
_EXAMPLE_DAGS = Path(__file__).resolve().parent.parent / "airflow_provider_reve" / "example_dags"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(_EXAMPLE_DAGS)
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "True"
os.environ.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{_HOME / 'airflow.db'}")


# The stubs and helpers live in tests/support/ (test files import them by their bare names; the
# conftests of tests/e2e and tests/system too, which is why this happens here, first).
import sys  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))

# -- dag.test() support shared by the test modules ----------------------------------------------
from collections.abc import Callable  # noqa: E402

import pytest  # noqa: E402
from reve_test_helpers import REAL_SETTLE_TIME  # noqa: E402 -- imported before any test patches it


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """``dag.test()`` needs the metadata DB of the tests' AIRFLOW_HOME, migrated once."""
    from airflow.utils.db import initdb

    initdb()


@pytest.fixture
def use_dags_folder(airflow_db: None, monkeypatch: pytest.MonkeyPatch) -> Callable[[Path], Path]:
    """Make a folder the DAGs folder: ``dag.test()`` registers a DAG by parsing that folder."""

    def use(folder: Path) -> Path:
        from airflow import settings

        monkeypatch.setenv("AIRFLOW__CORE__DAGS_FOLDER", str(folder))
        monkeypatch.setattr(settings, "DAGS_FOLDER", str(folder))
        return folder

    return use


@pytest.fixture(autouse=True)
def no_defer_settle_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let in-process triggers poll at once after a deferral.

    In production the first poll waits for the deferring worker's exit to be recorded (see
    ``triggers.reve.settle_time``); in-process runs have no such race and would only get
    slower. The real delay is covered by its own tests and by every E2E run.
    """
    assert REAL_SETTLE_TIME.__name__ == "settle_time"  # kept for the tests of the real delay
    # "Now", not 0.0: polling paces itself from this moment (a wait that began in 1970 would
    # already count as long-running and be polled at the slowest rate).
    monkeypatch.setattr("airflow_provider_reve.triggers.reve.settle_time", time.time)


@pytest.fixture(scope="session")
def example_output_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One output folder for the example DAGs for the whole session, whichever module runs them:
    their Asset URIs name it, and Airflow keeps the first active Asset per name, so a second
    folder would leave the later runs' Assets inactive (and their tasks failing)."""
    return tmp_path_factory.mktemp("example-output")

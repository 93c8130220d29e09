"""``airflow reve budget ...`` as a user runs it: the real ``airflow`` command in a subprocess, with
a throw-away AIRFLOW_HOME and an SQLite ledger named by ``AIRFLOW__REVE__LEDGER_CONN_ID``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from never_pay_twice_support import InMemoryTaskStateStore, make_context, make_operator

from airflow_provider_reve.budgets import Ledger
from airflow_provider_reve.testing import FakeReveServer

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def airflow_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir()
    ledger = tmp_path / "ledger.db"
    monkeypatch.setenv("AIRFLOW_CONN_REVE_LEDGER", f"sqlite:///{ledger}")
    monkeypatch.setenv("AIRFLOW__REVE__LEDGER_CONN_ID", "reve_ledger")
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    env.pop("AIRFLOW__CORE__UNIT_TEST_MODE", None)  # it logs to stdout, unlike a user's Airflow
    return env


def airflow(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    executable = shutil.which("airflow", path=str(Path(sys.executable).parent)) or "airflow"
    done = subprocess.run([executable, *args], env=env, capture_output=True, text=True, timeout=300)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_budgets_set_from_the_cli_are_shown_listed_and_deleted(airflow_env):
    saved = airflow(
        airflow_env,
        "reve", "budget", "set", "marketing-daily", "--limit", "500", "--window", "day",
        "--time-zone", "Europe/Paris", "--dag-tag", "marketing", "--model", "seedream-5",
    )  # fmt: skip
    assert "Budget 'marketing-daily' saved: 500 credits per day" in saved.stdout

    shown = json.loads(airflow(airflow_env, "reve", "budget", "show", "marketing-daily", "--json").stdout)
    assert shown["limit_credits"] == 500
    assert shown["time_zone"] == "Europe/Paris"
    assert shown["dag_tags"] == ["marketing"]
    assert shown["models"] == ["seedream-5"]
    assert (shown["spent_credits"], shown["reserved_credits"], shown["remaining_credits"]) == (0, 0, 500)
    assert shown["resets_at"].endswith("+00:00")

    assert (
        "Budget 'marketing-daily' deleted."
        in airflow(airflow_env, "reve", "budget", "delete", "marketing-daily").stdout
    )
    missing = airflow(airflow_env, "reve", "budget", "show", "marketing-daily", check=False)
    assert missing.returncode != 0
    assert "No budget named 'marketing-daily'" in missing.stderr


def test_a_budget_with_an_unknown_time_zone_is_not_saved_and_the_cli_says_why(airflow_env):
    refused = airflow(
        airflow_env,
        "reve",
        "budget",
        "set",
        "bad",
        "--limit",
        "5",
        "--time-zone",
        "Mars/Olympus",
        check=False,
    )
    assert refused.returncode != 0
    assert "unknown time zone 'Mars/Olympus'" in refused.stderr
    assert Ledger.configured().list_budgets() == []  # type: ignore[union-attr]


def test_a_budget_set_from_python_without_conn_id_covers_what_the_cli_default_covers(airflow_env):
    from airflow_provider_reve.budgets import Budget

    airflow(airflow_env, "reve", "budget", "set", "from-cli", "--limit", "5")
    ledger = Ledger.configured()
    assert ledger is not None
    ledger.set_budget(Budget(name="from-python", limit_credits=5))  # docs/budgets.md: defaults apply

    from_cli, from_python = ledger.get_budget("from-cli"), ledger.get_budget("from-python")
    assert from_cli is not None and from_python is not None
    assert from_python.conn_id == from_cli.conn_id == "reve_default"
    assert (from_python.window, from_python.time_zone) == (from_cli.window, from_cli.time_zone)


def test_the_ledger_option_is_listed_by_airflow_config(airflow_env):
    listed = airflow(airflow_env, "config", "list", "--section", "reve", "--include-descriptions")
    assert "ledger_conn_id" in listed.stdout


def test_reconcile_settles_a_reservation_left_open_from_the_apis_task_status(
    fake_reve_server: FakeReveServer, reve_connection_env: str, airflow_env
):
    from airflow_provider_reve.budgets import Budget

    ledger = Ledger.configured()
    assert ledger is not None
    ledger.set_budget(Budget(name="daily", limit_credits=1000, conn_id="reve_default"))
    fake_reve_server.set_async_seconds(0.1)
    # Returned IN_PROGRESS: nobody waits for it, so its reservation stays open.
    context = make_context(InMemoryTaskStateStore(), dag_id="d", run_id="r", task_id="t", max_tries=1)
    task = make_operator(model="seedream-5", wait_for_completion=False).execute(context)
    assert task["status"] == "IN_PROGRESS"
    assert (ledger.status("daily").spent_credits, ledger.status("daily").reserved_credits) == (0, 25)  # type: ignore[union-attr]

    done = airflow(airflow_env, "reve", "budget", "reconcile", "--older-than-minutes", "0")

    assert f"Reve task {task['task_id']} SUCCESS; settled to 25 credits" in done.stdout
    assert "Reconciled: 1 settled, 0 released, 0 left open." in done.stdout
    status = ledger.status("daily")
    assert status is not None
    assert (status.spent_credits, status.reserved_credits) == (25, 0)

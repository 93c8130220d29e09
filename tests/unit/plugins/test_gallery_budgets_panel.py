"""The gallery's Budgets panel through Airflow's own API app (``create_app()``), against a real SQLite
ledger named by ``[reve] ledger_conn_id``, with real JWTs and Airflow's team rule for DAG access
(the same set-up as ``tests/unit/plugins/test_gallery_plugin.py``)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from airflow_provider_reve.budgets import Budget, Ledger, Scope
from airflow_provider_reve.budgets.ledger import reservation_key
from airflow_provider_reve.budgets.schema import engine_for_url
from airflow_provider_reve.plugins.app import budget_reads
from tests.support.gallery_data import remove_dag, seed_generations
from tests.support.gallery_support import assert_only_safe_urls, db_session, get, read_page, token

# The fixture api (Airflow's API app with the gallery mounted).
pytest_plugins = ("tests.support.gallery_support",)

OPEN_DAG, TEAM_DAG = "reve_budget_posters", "reve_budget_launch"
TEAM, TEAM_BUNDLE = "budget-red", "reve-budget-red"
HOSTILE_BUDGET = "<script>alert('budget')</script>"


@dataclass(frozen=True)
class Spending:
    ledger: Ledger
    path: Path


@pytest.fixture(scope="module")
def team_dag(airflow_db: None) -> Iterator[None]:
    """Two DAGs in the metadata DB; ``TEAM_DAG`` belongs to team ``budget-red`` (its bundle does)."""
    from airflow.models.dag import DagModel
    from airflow.models.dagbundle import DagBundleModel
    from airflow.models.team import Team, dag_bundle_team_association_table
    from sqlalchemy import delete, insert, update

    with db_session() as session:
        for dag_id in (OPEN_DAG, TEAM_DAG):
            seed_generations(session, dag_id, 1)
        session.add(Team(name=TEAM))
        session.add(DagBundleModel(name=TEAM_BUNDLE))
        session.flush()
        session.execute(
            insert(dag_bundle_team_association_table).values(dag_bundle_name=TEAM_BUNDLE, team_name=TEAM)
        )
        session.execute(update(DagModel).where(DagModel.dag_id == TEAM_DAG).values(bundle_name=TEAM_BUNDLE))
    yield
    with db_session() as session:
        for dag_id in (OPEN_DAG, TEAM_DAG):
            remove_dag(session, dag_id)
        session.execute(
            delete(dag_bundle_team_association_table).where(
                dag_bundle_team_association_table.c.dag_bundle_name == TEAM_BUNDLE
            )
        )
        session.execute(delete(DagBundleModel).where(DagBundleModel.name == TEAM_BUNDLE))
        session.execute(delete(Team).where(Team.name == TEAM))


def use_ledger(monkeypatch: pytest.MonkeyPatch, uri: str) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_REVE_LEDGER", uri)
    monkeypatch.setenv("AIRFLOW__REVE__LEDGER_CONN_ID", "reve_ledger")


def spend(ledger: Ledger, dag_id: str, credits: int, *, settle: bool = True, model: str = "reve-2.0") -> None:
    key = reservation_key(dag_id, credits, settle, model, id(object()))
    reservation = ledger.reserve(key, Scope(conn_id="reve_default", dag_id=dag_id, model=model), credits)
    assert reservation is not None
    if settle:
        assert ledger.settle(reservation.id, credits)


@pytest.fixture
def spending(team_dag: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Spending:
    """A ledger with a daily budget (Paris time) over every DAG and a total budget over one model:
    the open DAG settled 30 and holds 20 reserved, the team's DAG settled 50, one reservation was
    released (counts nothing)."""
    path = tmp_path / "ledger.db"
    ledger = Ledger(engine_for_url(f"sqlite:///{path}"))
    ledger.set_budget(Budget("daily", 1000, "reve_default", window="day", time_zone="Europe/Paris"))
    ledger.set_budget(Budget(HOSTILE_BUDGET, 500, "reve_default", window="total", models=("seedream-5",)))
    spend(ledger, OPEN_DAG, 30)
    spend(ledger, OPEN_DAG, 20, settle=False)
    spend(ledger, TEAM_DAG, 50)
    spend(ledger, TEAM_DAG, 40, model="seedream-5")
    key = reservation_key("released")
    released = ledger.reserve(key, Scope(conn_id="reve_default", dag_id=OPEN_DAG, model="reve-2.0"), 10)
    assert released is not None and ledger.release(released.id)
    use_ledger(monkeypatch, f"sqlite:///{path}")
    return Spending(ledger, path)


def budget_rows(html: str) -> dict[str, dict[str, str]]:
    return {row["attrs"]["data-budget"]: row["attrs"] for row in read_page(html).testids.get("budget", [])}


def dag_rows(html: str) -> dict[tuple[str, str], tuple[int, int]]:
    return {
        (row["attrs"]["data-budget"], row["attrs"]["data-dag-id"]): (
            int(row["attrs"]["data-spent"]),
            int(row["attrs"]["data-reserved"]),
        )
        for row in read_page(html).testids.get("budget-dag", [])
    }


def test_the_budgets_panel_shows_each_budgets_limit_spent_reserved_remaining_and_reset(api, spending):
    response = get(api, "/reve/budgets", token(role="admin", username="ada"))
    assert response.status_code == 200, response.text

    shown = budget_rows(response.text)
    assert sorted(shown) == sorted([HOSTILE_BUDGET, "daily"])
    for name, row in shown.items():
        status = spending.ledger.status(name)
        assert status is not None
        assert int(row["data-limit"]) == status.budget.limit_credits
        assert int(row["data-spent"]) == status.spent_credits
        assert int(row["data-reserved"]) == status.reserved_credits
        assert int(row["data-remaining"]) == status.remaining_credits
        assert row["data-window-start"] == status.window_start
        assert row["data-resets-at"] == (status.resets_at.isoformat() if status.resets_at else "")
    assert (shown["daily"]["data-spent"], shown["daily"]["data-reserved"]) == ("120", "20")
    assert shown["daily"]["data-remaining"] == "860"
    assert shown[HOSTILE_BUDGET]["data-resets-at"] == ""  # a total budget never resets
    # Top DAGs by spend in the window, each with its spent and reserved (the released 10: nothing).
    assert dag_rows(response.text) == {
        ("daily", TEAM_DAG): (90, 0),
        ("daily", OPEN_DAG): (30, 20),
        (HOSTILE_BUDGET, TEAM_DAG): (40, 0),
    }
    daily = [key[1] for key in dag_rows(response.text) if key[0] == "daily"]
    assert daily == [TEAM_DAG, OPEN_DAG]  # most spent first
    # A budget's name is text, never markup.
    assert "<script>" not in response.text and "&lt;script&gt;" in response.text
    assert_only_safe_urls(read_page(response.text).urls)
    assert "script-src 'none'" in response.headers["Content-Security-Policy"]


def test_a_dag_the_viewer_may_not_read_is_hidden_from_the_top_dags_but_counted_in_the_totals(api, spending):
    outsider = get(api, "/reve/budgets", token(teams=["blue"], username="bob"))
    assert outsider.status_code == 200, outsider.text
    assert TEAM_DAG not in outsider.text
    assert dag_rows(outsider.text) == {("daily", OPEN_DAG): (30, 20)}
    # Budget totals are the deployment's: the same numbers for everyone.
    assert budget_rows(outsider.text)["daily"]["data-spent"] == "120"
    assert read_page(outsider.text).testids["budget-no-dags"]  # the model budget: nothing readable

    member = get(api, "/reve/budgets", token(teams=[TEAM], username="rita"))
    assert dag_rows(member.text)[("daily", TEAM_DAG)] == (90, 0)


def test_the_gallery_links_to_the_budgets_panel_and_strangers_get_401(api, team_dag):
    gallery = get(api, "/reve/gallery", token(teams=["blue"], username="bob"))
    assert "budgets" in read_page(gallery.text).urls
    anonymous = api.get("/reve/budgets")
    assert anonymous.status_code == 401
    assert read_page(anonymous.text).testids["reve-login"]


def test_without_a_ledger_the_panel_says_budgets_are_off_and_how_to_turn_them_on(api, team_dag, monkeypatch):
    monkeypatch.delenv("AIRFLOW__REVE__LEDGER_CONN_ID", raising=False)
    response = get(api, "/reve/budgets", token(teams=["blue"], username="bob"))
    assert response.status_code == 200
    [off] = read_page(response.text).testids["budgets-off"]
    assert "Budgets are off" in off["text"]
    assert "ledger_conn_id" in off["text"] and "airflow reve budget set" in off["text"]


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("sqlite:////nonexistent-reve-dir/ledger.db", "OperationalError"),
        ("http://ledger.example.test/db", "the Reve ledger supports 'sqlite' and 'postgres'"),
    ],
    ids=["unreachable", "wrong-type"],
)
def test_a_ledger_that_cannot_be_read_fails_only_the_panel_with_a_message_naming_it(
    api, team_dag, monkeypatch, uri, reason
):
    use_ledger(monkeypatch, uri)
    viewer = token(teams=["blue"], username="bob")
    response = get(api, "/reve/budgets", viewer)
    assert response.status_code == 503
    [error] = read_page(response.text).testids["budgets-error"]
    assert "The budget ledger (connection reve_ledger) could not be read" in error["text"]
    assert reason in error["text"]
    assert "/nonexistent-reve-dir" not in response.text  # a driver's details stay in the server log
    # The rest of the gallery is not affected.
    assert get(api, "/reve/gallery", viewer).status_code == 200
    assert get(api, "/reve/credits", viewer).status_code == 200


@pytest.fixture
def locked_ledger(tmp_path: Path) -> Iterator[str]:
    """A fresh SQLite ledger another process holds an exclusive lock on: every read waits."""
    path = tmp_path / "locked.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE other_writer (x INTEGER)")
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("INSERT INTO other_writer VALUES (1)")
    try:
        yield f"sqlite:///{path}"
    finally:
        holder.execute("ROLLBACK")  # the stuck panel reads then finish in their own threads
        holder.close()


def test_a_ledger_that_hangs_fails_only_the_panel_after_its_time_limit(
    api, team_dag, monkeypatch, locked_ledger
):
    use_ledger(monkeypatch, locked_ledger)
    monkeypatch.setattr(budget_reads, "LEDGER_TIMEOUT", 0.5)
    viewer = token(teams=["blue"], username="bob")
    # More requests than the panel has threads: the ones queued behind stuck reads end too.
    for _ in range(budget_reads.LEDGER_THREADS + 2):
        response = get(api, "/reve/budgets", viewer)
        assert response.status_code == 504
        [error] = read_page(response.text).testids["budgets-error"]
        assert error["attrs"]["data-timed-out"] == "true"
        assert "did not answer in time" in error["text"]
        # Meanwhile the gallery and Airflow's own API answer as usual.
        assert get(api, "/reve/gallery", viewer).status_code == 200
        assert api.get("/api/v2/monitor/health").status_code == 200

"""Budgets in the ledger: windows in their time zone, what a budget covers, and how reservations
are reserved, reused, settled and released (one process; the race is in test_budget_race.py)."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timezone

import pytest

from airflow_provider_reve.budgets import Budget, BudgetExhaustedError, Ledger, Scope, window_at
from airflow_provider_reve.budgets.ledger import reservation_key
from airflow_provider_reve.budgets.schema import SCHEMA_VERSION, engine_for_url

NOON = datetime(2026, 12, 7, 12, 0, tzinfo=timezone.utc)  # a Monday
SCOPE = Scope(conn_id="reve_default", dag_id="posters", dag_tags=frozenset({"marketing"}), model="seedream-5")


@pytest.fixture
def ledger(tmp_path) -> Ledger:
    return Ledger(engine_for_url(f"sqlite:///{tmp_path / 'ledger.db'}"))


def budget(name: str = "daily", limit: int = 100, **fields) -> Budget:
    return Budget(name=name, limit_credits=limit, conn_id=fields.pop("conn_id", "reve_default"), **fields)


# -- windows ------------------------------------------------------------------------------------


def test_a_day_window_runs_from_local_midnight_to_local_midnight_in_the_budgets_time_zone():
    window = window_at("day", "America/New_York", datetime(2026, 12, 7, 3, 0, tzinfo=timezone.utc))
    # 03:00 UTC is still the 6th in New York (UTC-5).
    assert window.start == "2026-12-06T05:00:00+00:00"
    assert window.resets_at == datetime(2026, 12, 7, 5, 0, tzinfo=timezone.utc)


def test_the_day_clocks_go_forward_is_a_23_hour_window():
    window = window_at("day", "Europe/Paris", datetime(2026, 3, 29, 12, 0, tzinfo=timezone.utc))
    assert window.start == "2026-03-28T23:00:00+00:00"
    assert window.resets_at == datetime(2026, 3, 29, 22, 0, tzinfo=timezone.utc)


def test_a_week_window_starts_on_monday_and_a_month_window_on_the_first():
    sunday = datetime(2026, 12, 13, 20, 0, tzinfo=timezone.utc)
    assert window_at("week", "UTC", sunday).start == "2026-12-07T00:00:00+00:00"
    assert window_at("week", "UTC", sunday).resets_at == datetime(2026, 12, 14, tzinfo=timezone.utc)
    month = window_at("month", "Asia/Tokyo", datetime(2026, 12, 31, 16, 0, tzinfo=timezone.utc))
    # 16:00 UTC on the 31st is already January 1st in Tokyo (UTC+9).
    assert month.start == "2026-12-31T15:00:00+00:00"
    assert month.resets_at == datetime(2027, 1, 31, 15, 0, tzinfo=timezone.utc)


def test_a_total_window_never_resets():
    assert window_at("total", "UTC", NOON).resets_at is None


def test_a_budget_with_an_unknown_time_zone_or_window_is_refused_naming_it():
    with pytest.raises(ValueError, match="Mars/Olympus"):
        budget(time_zone="Mars/Olympus")
    with pytest.raises(ValueError, match="fortnight"):
        budget(window="fortnight")
    with pytest.raises(ValueError, match="limit_credits"):
        budget(limit=-1)


# -- scope --------------------------------------------------------------------------------------


def test_a_budget_covers_every_task_of_its_connection_and_no_other_connection():
    assert budget().covers(SCOPE)
    assert not budget(conn_id="reve_other").covers(SCOPE)


@pytest.mark.parametrize(
    ("filters", "covered"),
    [
        ({"dag_ids": ["posters"]}, True),
        ({"dag_ids": ["banners"]}, False),
        ({"dag_tags": ["marketing", "ads"]}, True),
        ({"dag_tags": ["research"]}, False),
        ({"models": ["seedream-5"]}, True),
        ({"models": ["reve-2.0"]}, False),
        ({"dag_ids": ["posters"], "models": ["reve-2.0"]}, False),  # every filter must match
    ],
)
def test_a_budget_with_filters_covers_only_the_dags_tags_and_models_it_names(filters, covered):
    assert budget(**filters).covers(SCOPE) is covered


# -- reservations -------------------------------------------------------------------------------


def window_row(ledger: Ledger, name: str) -> tuple[int, int]:
    status = ledger.status(name, NOON)
    assert status is not None
    return status.spent_credits, status.reserved_credits


def test_without_a_covering_budget_nothing_is_reserved(ledger):
    ledger.set_budget(budget(conn_id="reve_other"))
    assert ledger.reserve("k", SCOPE, 25, now=NOON) is None


def test_a_reservation_is_refused_when_it_would_pass_the_limit_naming_spent_reserved_limit_and_reset(ledger):
    ledger.set_budget(budget(limit=60))
    ledger.reserve("a", SCOPE, 25, now=NOON)
    first = ledger.reserve("b", SCOPE, 25, now=NOON)
    assert first is not None
    ledger.settle(first.id, 20)
    with pytest.raises(BudgetExhaustedError) as refused:
        ledger.reserve("c", SCOPE, 25, now=NOON)
    assert str(refused.value) == (
        "budget 'daily' has no room for 25 credits: spent 20, reserved 25, limit 60; "
        "the window resets 2026-12-08T00:00:00+00:00"
    )
    assert window_row(ledger, "daily") == (20, 25)


def test_one_budget_without_room_reserves_nothing_in_the_others(ledger):
    ledger.set_budget(budget("a-roomy", limit=1000))
    ledger.set_budget(budget("b-tight", limit=10, dag_tags=["marketing"]))
    with pytest.raises(BudgetExhaustedError, match="b-tight"):
        ledger.reserve("k", SCOPE, 25, now=NOON)
    assert window_row(ledger, "a-roomy") == (0, 0)
    assert ledger.find("k") is None


def test_reserving_the_same_key_again_reuses_the_reservation_and_reserves_once(ledger):
    ledger.set_budget(budget())
    first = ledger.reserve("k", SCOPE, 25, now=NOON)
    again = ledger.reserve("k", SCOPE, 25, now=NOON)
    assert first is not None and again is not None
    assert again.id == first.id and again.reused
    assert window_row(ledger, "daily") == (0, 25)


def test_settling_counts_the_consumed_credits_once_even_when_settled_twice(ledger):
    ledger.set_budget(budget())
    reservation = ledger.reserve("k", SCOPE, 25, now=NOON)
    assert reservation is not None
    assert ledger.settle(reservation.id, 22) is True
    assert ledger.settle(reservation.id, 22) is False
    assert ledger.release(reservation.id) is False
    assert window_row(ledger, "daily") == (22, 0)


def test_releasing_gives_the_credits_back_and_a_later_try_reserves_afresh(ledger):
    ledger.set_budget(budget())
    reservation = ledger.reserve("k", SCOPE, 25, now=NOON)
    assert reservation is not None
    assert ledger.release(reservation.id) is True
    assert window_row(ledger, "daily") == (0, 0)
    again = ledger.reserve("k", SCOPE, 25, now=NOON)
    assert again is not None and again.id != reservation.id and not again.reused
    assert window_row(ledger, "daily") == (0, 25)


def test_a_new_window_starts_empty(ledger):
    ledger.set_budget(budget(limit=25))
    ledger.reserve("today", SCOPE, 25, now=NOON)
    with pytest.raises(BudgetExhaustedError):
        ledger.reserve("today-2", SCOPE, 25, now=NOON)
    tomorrow = datetime(2026, 12, 8, 0, 0, 1, tzinfo=timezone.utc)
    assert ledger.reserve("tomorrow", SCOPE, 25, now=tomorrow) is not None


def test_an_unknown_price_is_refused_unless_the_budget_names_what_to_reserve_for_it(ledger):
    ledger.set_budget(budget("strict"))
    with pytest.raises(BudgetExhaustedError, match="cannot be estimated"):
        ledger.reserve("k", SCOPE, None, now=NOON)
    ledger.set_budget(budget("strict", unknown_price_credits=40))
    reservation = ledger.reserve("k", SCOPE, None, now=NOON)
    assert reservation is not None and reservation.lines == {"strict": 40}
    ledger.settle(reservation.id, None)  # the API did not say either: the reserved amount counts
    assert window_row(ledger, "strict") == (40, 0)


def test_budgets_are_readable_back_from_python_as_they_were_set(ledger):
    daily = budget(
        time_zone="Europe/Paris", dag_tags=["marketing"], models=["seedream-5"], unknown_price_credits=5
    )
    ledger.set_budget(daily)
    assert ledger.get_budget("daily") == daily
    assert ledger.list_budgets() == [daily]
    assert ledger.delete_budget("daily") is True
    assert ledger.list_budgets() == []


def test_a_ledger_made_by_a_newer_provider_is_refused_rather_than_misread(tmp_path):
    path = tmp_path / "newer.db"
    Ledger(engine_for_url(f"sqlite:///{path}"))
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE reve_ledger_schema SET version = ?", (SCHEMA_VERSION + 1,))
    from airflow_provider_reve.budgets.schema import prepare

    with pytest.raises(RuntimeError, match="newer than this provider"):
        prepare(engine_for_url(f"sqlite:///{path}"))


def test_reservation_keys_differ_for_each_part_of_the_identity():
    keys = {
        reservation_key("dag", "run", "task", -1, 3, "fp"),
        reservation_key("dag", "run", "task", 0, 3, "fp"),
        reservation_key("dag", "run", "task", -1, 4, "fp"),
        reservation_key("dag", "run2", "task", -1, 3, "fp"),
    }
    assert len(keys) == 4

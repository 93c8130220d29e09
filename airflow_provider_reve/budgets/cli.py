"""``airflow reve budget set|show|list|delete|reconcile``: the provider's ``cli`` entry.

Airflow imports this module whenever its CLI starts, so it imports nothing heavy at the top;
the ledger and the hook load when a budget command runs.
"""

from __future__ import annotations

import json
import sys
from argparse import Namespace
from datetime import datetime, timedelta, timezone
from typing import Any

from airflow.cli.cli_config import ActionCommand, Arg, CLICommand, GroupCommand

__all__ = [
    "budget_delete",
    "budget_list",
    "budget_reconcile",
    "budget_set",
    "budget_show",
    "get_reve_cli_commands",
]

_NAME = Arg(("name",), help="the budget's name")
_JSON = Arg(("--json",), help="print JSON instead of text", action="store_true")


def get_reve_cli_commands() -> list[CLICommand]:
    """Named in ``get_provider_info()["cli"]``; Airflow calls it when its CLI starts.

    :return: the ``airflow reve`` command group.
    """
    budget = GroupCommand(
        name="budget",
        help="Credit budgets reserved before paying (needs [reve] ledger_conn_id)",
        subcommands=[
            ActionCommand(
                name="set",
                help="Create or replace a budget",
                func=budget_set,
                args=(
                    _NAME,
                    Arg(("--limit",), help="credit limit per window", type=int, required=True),
                    Arg(("--conn-id",), help="the reve connection it covers", default="reve_default"),
                    Arg(("--window",), help="day, week, month or total", default="day"),
                    Arg(("--time-zone",), help="IANA zone the window is counted in", default="UTC"),
                    Arg(("--dag-id",), help="only these DAGs (repeatable)", action="append", default=[]),
                    Arg(
                        ("--dag-tag",),
                        help="only DAGs with one of these tags (repeatable)",
                        action="append",
                        default=[],
                    ),
                    Arg(("--model",), help="only these models (repeatable)", action="append", default=[]),
                    Arg(
                        ("--unknown-price-credits",),
                        help="reserve this for a request whose price is unknown (default: refuse it)",
                        type=int,
                        default=None,
                    ),
                ),
            ),
            ActionCommand(
                name="show",
                help="A budget's window: spent, reserved, remaining",
                func=budget_show,
                args=(_NAME, _JSON),
            ),
            ActionCommand(
                name="list", help="Every budget and its current window", func=budget_list, args=(_JSON,)
            ),
            ActionCommand(
                name="delete", help="Delete a budget (its history stays)", func=budget_delete, args=(_NAME,)
            ),
            ActionCommand(
                name="reconcile",
                help="Settle or release reservations left open, from the Reve API's task status",
                func=budget_reconcile,
                args=(
                    Arg(
                        ("--older-than-minutes",),
                        help="only reservations at least this old (default 60: leave running tasks alone)",
                        type=float,
                        default=60.0,
                    ),
                    Arg(
                        ("--release-unknown",),
                        help="also release reservations with no Reve task id (a kill before the API "
                        "answered); only when you know nothing was created",
                        action="store_true",
                    ),
                ),
            ),
        ],
    )
    estimate = ActionCommand(
        name="estimate",
        help="What a run or a backfill of a DAG would cost, and each covering budget's headroom "
        "(exits 1 when a budget would be exceeded)",
        func=_estimate,
        args=(
            Arg(("dag_id",), help="the DAG's id"),
            Arg(("--logical-date",), help="the run's logical date (ISO 8601; default: none, a manual run)"),
            Arg(("--conf",), help="the run's conf, a JSON object (overrides params)"),
            Arg(
                ("--backfill",),
                nargs=2,
                metavar=("FROM", "TO"),
                help="every run a backfill from FROM to TO would create (ISO 8601 dates)",
            ),
            Arg(("--subdir",), help="the DAGs folder to load it from (default: [core] dags_folder)"),
            _JSON,
        ),
    )
    return [GroupCommand(name="reve", help="Reve provider commands", subcommands=[budget, estimate])]


def _estimate(args: Namespace) -> None:
    from airflow_provider_reve.budgets.estimate import estimate_command

    estimate_command(args)


def _ledger() -> Any:
    from airflow_provider_reve.budgets.ledger import Ledger

    ledger = Ledger.configured()
    if ledger is None:
        sys.exit(
            "Budgets are off: set [reve] ledger_conn_id (AIRFLOW__REVE__LEDGER_CONN_ID) to an Airflow "
            "connection of type sqlite or postgres. See the docs' Budgets page (docs/budgets.md)."
        )
    return ledger


def budget_set(args: Namespace) -> None:
    """``airflow reve budget set``: create or replace a budget.

    :param args: the parsed command line.
    """
    from airflow_provider_reve.budgets.model import Budget

    try:
        budget = Budget(
            name=args.name,
            limit_credits=args.limit,
            conn_id=args.conn_id,
            window=args.window,
            time_zone=args.time_zone,
            dag_ids=tuple(args.dag_id),
            dag_tags=tuple(args.dag_tag),
            models=tuple(args.model),
            unknown_price_credits=args.unknown_price_credits,
        )
    except ValueError as error:
        sys.exit(f"Budget not saved: {error}")
    _ledger().set_budget(budget)
    print(
        f"Budget {budget.name!r} saved: {budget.limit_credits} credits per {budget.window} "
        f"({budget.describe_scope()})"
    )


def _status_dict(status: Any) -> dict[str, Any]:
    budget = status.budget
    return {
        "name": budget.name,
        "limit_credits": budget.limit_credits,
        "window": budget.window,
        "time_zone": budget.time_zone,
        "conn_id": budget.conn_id,
        "dag_ids": list(budget.dag_ids),
        "dag_tags": list(budget.dag_tags),
        "models": list(budget.models),
        "unknown_price_credits": budget.unknown_price_credits,
        "window_start": status.window_start,
        "resets_at": status.resets_at.isoformat() if status.resets_at else None,
        "spent_credits": status.spent_credits,
        "reserved_credits": status.reserved_credits,
        "remaining_credits": status.remaining_credits,
    }


def _print_status(entry: dict[str, Any]) -> None:
    print(
        f"{entry['name']}: spent {entry['spent_credits']}, reserved {entry['reserved_credits']}, "
        f"remaining {entry['remaining_credits']} of {entry['limit_credits']} credits per {entry['window']} "
        f"({entry['time_zone']}); resets {entry['resets_at'] or 'never'}; "
        f"covers connection {entry['conn_id']!r}"
        + "".join(
            f"; {label} {', '.join(entry[key])}"
            for label, key in (("DAGs", "dag_ids"), ("DAG tags", "dag_tags"), ("models", "models"))
            if entry[key]
        )
        + (
            f"; unknown prices reserve {entry['unknown_price_credits']}"
            if entry["unknown_price_credits"] is not None
            else "; unknown prices refused"
        )
    )


def budget_show(args: Namespace) -> None:
    """``airflow reve budget show NAME``: one budget and its current window.

    :param args: the parsed command line.
    """
    status = _ledger().status(args.name)
    if status is None:
        sys.exit(f"No budget named {args.name!r}")
    entry = _status_dict(status)
    print(json.dumps(entry, indent=2)) if args.json else _print_status(entry)


def budget_list(args: Namespace) -> None:
    """``airflow reve budget list``: every budget and its current window.

    :param args: the parsed command line (``--json``).
    """
    ledger = _ledger()
    entries = [_status_dict(ledger.status(budget.name)) for budget in ledger.list_budgets()]
    if args.json:
        print(json.dumps(entries, indent=2))
        return
    if not entries:
        print("No budgets.")
    for entry in entries:
        _print_status(entry)


def budget_delete(args: Namespace) -> None:
    """``airflow reve budget delete NAME``: forget a budget; exits non-zero when there is none.

    :param args: the parsed command line.
    """
    if not _ledger().delete_budget(args.name):
        sys.exit(f"No budget named {args.name!r}")
    print(f"Budget {args.name!r} deleted.")


def budget_reconcile(args: Namespace) -> None:
    """Ask the API what became of every old open reservation; settle, release or leave it."""
    from airflow_provider_reve.exceptions import ReveNotFoundError
    from airflow_provider_reve.hooks.reve import ReveHook

    ledger = _ledger()
    cutoff = datetime.now(timezone.utc) - timedelta(minutes=args.older_than_minutes)
    counts = {"settled": 0, "released": 0, "left": 0}
    for reservation in ledger.open_reservations():
        if reservation.created_at and datetime.fromisoformat(reservation.created_at) > cutoff:
            continue
        where = (
            f"reservation {reservation.id} ({reservation.dag_id}/{reservation.run_id}/{reservation.task_id})"
        )
        if reservation.reve_task_id is None:
            if args.release_unknown:
                ledger.release(reservation.id)
                counts["released"] += 1
                print(f"{where}: no Reve task id; released (--release-unknown)")
            else:
                counts["left"] += 1
                print(f"{where}: no Reve task id (killed before the API answered?); left reserved")
            continue
        try:
            task = ReveHook(reservation.conn_id or "reve_default").get_status(
                reservation.reve_task_id, model=reservation.model
            )
        except ReveNotFoundError:
            ledger.release(reservation.id)
            counts["released"] += 1
            print(f"{where}: Reve task {reservation.reve_task_id} not found; released")
            continue
        except Exception as error:
            counts["left"] += 1
            print(
                f"{where}: could not read Reve task {reservation.reve_task_id} ({type(error).__name__}); left"
            )
            continue
        if task.succeeded:
            ledger.settle(reservation.id, task.consumed_credits, task.task_id)
            counts["settled"] += 1
            print(f"{where}: Reve task {task.task_id} SUCCESS; settled to {task.consumed_credits} credits")
        elif task.failed:
            ledger.release(reservation.id)
            counts["released"] += 1
            print(f"{where}: Reve task {task.task_id} FAILED (refunded); released")
        else:
            counts["left"] += 1
            print(f"{where}: Reve task {task.task_id} still {task.status}; left reserved")
    print(
        f"Reconciled: {counts['settled']} settled, {counts['released']} released, {counts['left']} left open."
    )

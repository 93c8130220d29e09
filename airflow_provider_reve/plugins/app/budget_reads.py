"""What the Budgets panel reads from the ledger, read in the panel's own threads under a time limit.

The ledger is another database (``[reve] ledger_conn_id``), possibly on another host: it may be
down, slow, locked by a writer or misconfigured. None of that may reach the api-server, so:

* every ledger read of a request runs as one call on :data:`LEDGER_READERS`, two threads of the
  panel's own (never the server's pool, nor the media readers of :mod:`.reading`);
* the request waits at most :data:`LEDGER_TIMEOUT` seconds, then answers with a message; a read
  that is truly stuck keeps one of the panel's threads, and a request queued behind stuck reads
  is cancelled before it starts, so a hung ledger costs at most two threads, for good or ill;
* the outcome is a value (:class:`LedgerOff`, :class:`LedgerFailed` or :class:`BudgetsView`),
  never an exception: the route renders each one as a page with status 200, 503 or 504.

What is read: every budget with its current window (one ``now`` for all), and per budget the DAGs
that spent or hold credits in that window, from ``reve_reservation_lines`` joined with
``reve_reservations``. A settled line counts what :meth:`Ledger.settle` added to the window
(the consumed credits, else the estimate, else the line); a reserved line its reserved credits; a
released line nothing. So each budget's DAG rows add up to its window's spent and reserved.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from airflow_provider_reve.budgets.ledger import BudgetStatus, Ledger

__all__ = [
    "LEDGER_READERS",
    "LEDGER_THREADS",
    "LEDGER_TIMEOUT",
    "TOP_DAGS",
    "BudgetRow",
    "BudgetsView",
    "DagSpend",
    "LedgerFailed",
    "LedgerOff",
    "read_budgets",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Seconds one panel request waits for the ledger (connect, create tables on first use, read).
LEDGER_TIMEOUT = 10.0
#: Threads that read the ledger: at most this many can be held by a ledger that never answers.
LEDGER_THREADS = 2
LEDGER_READERS = ThreadPoolExecutor(max_workers=LEDGER_THREADS, thread_name_prefix="reve-gallery-ledger")
#: DAG rows shown per budget (after hiding the DAGs the user may not read).
TOP_DAGS = 10


@dataclass(frozen=True)
class DagSpend:
    dag_id: str
    spent_credits: int
    reserved_credits: int


@dataclass(frozen=True)
class BudgetRow:
    status: BudgetStatus
    top_dags: list[DagSpend] = field(default_factory=list)


@dataclass(frozen=True)
class BudgetsView:
    """Every budget of the deployment (totals are deployment-wide) with the readable top DAGs."""

    conn_id: str
    now: datetime
    budgets: list[BudgetRow]


@dataclass(frozen=True)
class LedgerOff:
    """``[reve] ledger_conn_id`` is not set: budgets are off."""


@dataclass(frozen=True)
class LedgerFailed:
    """The ledger did not answer (``timed_out``) or answered with an error; ``reason`` is safe to
    show (our own configuration messages, else only the error's type)."""

    conn_id: str
    reason: str
    timed_out: bool = False


def _dag_spend(ledger: Ledger, budget: str, window_start: str) -> list[DagSpend]:
    from sqlalchemy import case, func, select

    from airflow_provider_reve.budgets.schema import reservation_lines, reservations

    state = reservations.c.state
    settled = func.coalesce(
        reservations.c.consumed_credits, reservations.c.estimate_credits, reservation_lines.c.credits
    )
    spent = func.sum(case((state == "settled", settled), else_=0))
    reserved = func.sum(case((state == "reserved", reservation_lines.c.credits), else_=0))
    query = (
        select(reservations.c.dag_id, spent, reserved)
        .select_from(
            reservation_lines.join(reservations, reservations.c.id == reservation_lines.c.reservation_id)
        )
        .where(
            reservation_lines.c.budget == budget,
            reservation_lines.c.window_start == window_start,
            reservations.c.dag_id.is_not(None),
        )
        .group_by(reservations.c.dag_id)
    )
    with ledger.engine.connect() as connection:
        rows = connection.execute(query).all()
    spends = [DagSpend(str(dag_id), int(s or 0), int(r or 0)) for dag_id, s, r in rows]
    return [spend for spend in spends if spend.spent_credits or spend.reserved_credits]


def _read(conn_id: str, readable: Collection[str], now: datetime) -> BudgetsView:
    from airflow_provider_reve.budgets.ledger import Ledger

    ledger = Ledger.configured()
    if ledger is None:  # unset between the route's check and this read: say it is off
        return BudgetsView(conn_id, now, [])
    rows = []
    for budget in ledger.list_budgets():
        status = ledger.status(budget.name, now=now)
        if status is None:  # deleted meanwhile
            continue
        spends = [s for s in _dag_spend(ledger, budget.name, status.window_start) if s.dag_id in readable]
        spends.sort(key=lambda s: (-s.spent_credits, -s.reserved_credits, s.dag_id))
        rows.append(BudgetRow(status, spends[:TOP_DAGS]))
    return BudgetsView(conn_id, now, rows)


async def _within(seconds: float, read: Callable[[], T]) -> T:
    future = LEDGER_READERS.submit(read)
    try:
        return await asyncio.wait_for(asyncio.wrap_future(future), timeout=seconds)
    except TimeoutError:
        future.cancel()  # still queued behind stuck reads: it never starts
        raise


def _safe_reason(error: Exception) -> str:
    # Our own configuration errors name the connection and what to change, never a secret.
    # A driver's message may carry a host, a user or the SQL: only its type is shown.
    if isinstance(error, ValueError):
        return str(error)
    if type(error).__name__ == "AirflowNotFoundException":
        return "its Airflow connection is not defined"
    return f"{type(error).__name__} (the details are in the API server's log)"


async def read_budgets(
    readable: Collection[str], now: datetime | None = None
) -> BudgetsView | LedgerOff | LedgerFailed:
    """The panel's view of the ledger, or why there is none. Never raises for the ledger's sake."""
    from airflow_provider_reve.budgets.schema import ledger_conn_id

    conn_id = ledger_conn_id()
    if conn_id is None:
        return LedgerOff()
    moment = now or datetime.now(timezone.utc)
    wanted = frozenset(readable)
    try:
        return await _within(LEDGER_TIMEOUT, lambda: _read(conn_id, wanted, moment))
    except TimeoutError:
        log.warning("Reve gallery: the budget ledger %r did not answer in %g s", conn_id, LEDGER_TIMEOUT)
        return LedgerFailed(conn_id, f"no answer in {LEDGER_TIMEOUT:g} s", timed_out=True)
    except Exception as error:
        log.warning("Reve gallery: the budget ledger %r could not be read", conn_id, exc_info=True)
        return LedgerFailed(conn_id, _safe_reason(error))

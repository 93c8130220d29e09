"""Budgets and reservations in the ledger database: the one place credits are counted.

Invariants:

* A reservation is one transaction over every budget that covers the generation, windows touched
  in budget-name order (no deadlocks). Each window is charged by a conditional
  ``UPDATE ... SET reserved = reserved + n WHERE spent + reserved + n <= limit``: the database
  decides, never a read-then-write in Python. One refusal rolls the whole transaction back, so a
  refused reservation leaves nothing behind.
* A reservation key names one generation attempt (DAG, run, task, map index, run of tries,
  request fingerprint). Reserving a key that holds a ``reserved`` reservation returns it: a retry
  never reserves twice. Except ``afresh``: a retry that submits again after a request of unknown
  outcome (``on_ambiguous_submit="retry"``) may pay a second time, so it gets a reservation of its
  own; the earlier one stays ``reserved``, detached from the key, for the task it may have paid.
* ``settle`` and ``release`` change a reservation only from ``reserved`` (a conditional update),
  so two processes settling the same one count it once.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Connection, Engine, delete, insert, select, update

from airflow_provider_reve.budgets.model import Budget, BudgetExhaustedError, BudgetRefusal, Scope
from airflow_provider_reve.budgets.schema import (
    budget_windows,
    budgets,
    engine_for_conn_id,
    ledger_conn_id,
    reservation_lines,
    reservations,
)
from airflow_provider_reve.budgets.windows import window_at

__all__ = ["BudgetStatus", "Ledger", "Reservation", "reservation_key"]

RESERVED = "reserved"
SETTLED = "settled"
RELEASED = "released"


def reservation_key(*parts: object) -> str:
    """A stable key for one generation attempt, from its identifying parts.

    :param parts: the attempt's identity (DAG, run, task, map index, try...).
    :return: a hex digest.
    """
    return hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).hexdigest()


@dataclass(frozen=True)
class Reservation:
    """Credits held for one generation in every budget that covers it.

    :param id: the reservation's id.
    :param state: ``reserved``, ``settled`` or ``released``.
    :param estimate_credits: the estimate reserved; ``None``: an unknown price.
    :param lines: credits held per budget window.
    :param reused: an earlier reservation with the same key was returned.
    :param reve_task_id: the Reve task it paid for, once known.
    :param conn_id: the ``reve`` connection.
    :param dag_id: the DAG.
    :param run_id: the DAG run.
    :param task_id: the Airflow task.
    :param model: the model.
    :param created_at: when it was made (ISO 8601).
    """

    id: str
    state: str
    estimate_credits: int | None
    lines: dict[str, int]
    reused: bool = False
    reve_task_id: str | None = None
    conn_id: str | None = None
    dag_id: str | None = None
    run_id: str | None = None
    task_id: str | None = None
    model: str | None = None
    created_at: str | None = None


@dataclass(frozen=True)
class BudgetStatus:
    """One budget and its current window.

    :param budget: the budget.
    :param window_start: the window's key in the ledger.
    :param resets_at: when the window ends; ``None``: never.
    :param spent_credits: credits the window's generations consumed.
    :param reserved_credits: credits held by generations still in flight.
    """

    budget: Budget
    window_start: str
    resets_at: datetime | None
    spent_credits: int
    reserved_credits: int

    @property
    def remaining_credits(self) -> int:
        return max(0, self.budget.limit_credits - self.spent_credits - self.reserved_credits)


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Ledger:
    """The ledger behind one engine. ``Ledger.configured()`` is the deployment's, or ``None``.

    :param engine: the SQLAlchemy engine of the ledger's database.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def configured(cls) -> Ledger | None:
        conn_id = ledger_conn_id()
        return None if conn_id is None else cls(engine_for_conn_id(conn_id))

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        with self.engine.begin() as connection:
            yield connection

    # -- budgets -------------------------------------------------------------------------------
    def set_budget(self, budget: Budget) -> None:
        """Create or replace a budget; its windows (what was spent) are kept.

        :param budget: the budget.
        """
        row = {
            "name": budget.name,
            "limit_credits": budget.limit_credits,
            "window": budget.window,
            "time_zone": budget.time_zone,
            "conn_id": budget.conn_id,
            "dag_ids": json.dumps(list(budget.dag_ids)),
            "dag_tags": json.dumps(list(budget.dag_tags)),
            "models": json.dumps(list(budget.models)),
            "unknown_price_credits": budget.unknown_price_credits,
            "updated_at": _now().isoformat(),
        }
        with self._transaction() as connection:
            # One upsert, not delete + insert: two callers setting the same budget at once on
            # PostgreSQL would otherwise fail one with a unique violation on the name.
            upsert = _dialect_insert(connection)(budgets).values(**row)
            connection.execute(
                upsert.on_conflict_do_update(
                    index_elements=[budgets.c.name],
                    set_={column: upsert.excluded[column] for column in row if column != "name"},
                )
            )

    def get_budget(self, name: str) -> Budget | None:
        with self.engine.connect() as connection:
            row = connection.execute(select(budgets).where(budgets.c.name == name)).mappings().first()
        return None if row is None else _budget(row)

    def list_budgets(self) -> list[Budget]:
        with self.engine.connect() as connection:
            rows = connection.execute(select(budgets).order_by(budgets.c.name)).mappings().all()
        return [_budget(row) for row in rows]

    def delete_budget(self, name: str) -> bool:
        """Forget a budget (its past windows stay as history). ``False`` when there was none.

        :param name: the budget's name.
        :return: ``True`` when it was deleted.
        """
        with self._transaction() as connection:
            return bool(connection.execute(delete(budgets).where(budgets.c.name == name)).rowcount)

    def status(self, name: str, now: datetime | None = None) -> BudgetStatus | None:
        budget = self.get_budget(name)
        if budget is None:
            return None
        window = window_at(budget.window, budget.time_zone, now or _now())
        with self.engine.connect() as connection:
            row = connection.execute(
                select(budget_windows.c.spent_credits, budget_windows.c.reserved_credits).where(
                    budget_windows.c.budget == name, budget_windows.c.window_start == window.start
                )
            ).first()
        spent, reserved = (row[0], row[1]) if row else (0, 0)
        return BudgetStatus(budget, window.start, window.resets_at, spent, reserved)

    def covering(self, scope: Scope) -> list[Budget]:
        return [budget for budget in self.list_budgets() if budget.covers(scope)]

    # -- reservations --------------------------------------------------------------------------
    def reserve(
        self,
        key: str,
        scope: Scope,
        estimate: int | None,
        *,
        run_id: str | None = None,
        task_id: str | None = None,
        map_index: int | None = None,
        now: datetime | None = None,
        afresh: bool = False,
    ) -> Reservation | None:
        """Reserve ``estimate`` in every budget covering ``scope``; ``None`` when none covers it.

        Raises :class:`.BudgetExhaustedError` (and reserves nothing) when one budget has no room
        or refuses an unknown price. ``afresh``: never re-use the key's ``reserved`` reservation;
        it stays reserved, keyless (an earlier request of unknown outcome may have paid with it).

        :param key: the generation attempt's :func:`reservation_key`: a second reservation with it
            reuses the first.
        :param scope: what the generation is.
        :param estimate: its estimated credits; ``None``: the price is unknown.
        :param run_id: the Airflow run, for the record.
        :param task_id: the Airflow task, for the record.
        :param map_index: the mapped index, for the record.
        :param afresh: never re-use the key's ``reserved`` reservation (see above).
        :param now: the time of the reservation (defaults to now).
        :return: the reservation, or ``None``.
        """
        now = now or _now()
        with self._transaction() as connection:
            existing = (
                connection.execute(select(reservations).where(reservations.c.reservation_key == key))
                .mappings()
                .first()
            )
            if existing is not None and existing["state"] == RESERVED and not afresh:
                return _reservation(connection, existing, reused=True)
            rows = connection.execute(select(budgets).order_by(budgets.c.name)).mappings().all()
            covering = [budget for budget in map(_budget, rows) if budget.covers(scope)]
            if not covering:
                return None
            refusals: list[BudgetRefusal] = []
            lines: list[tuple[Budget, str, int]] = []
            for budget in covering:  # in name order: concurrent reservations lock alike
                window = window_at(budget.window, budget.time_zone, now)
                amount = estimate if estimate is not None else budget.unknown_price_credits
                if amount is None:
                    refusals.append(
                        BudgetRefusal(budget.name, budget.limit_credits, 0, 0, None, window.resets_at)
                    )
                    continue
                _ensure_window(connection, budget.name, window.start, window.resets_at)
                charged = connection.execute(
                    update(budget_windows)
                    .where(
                        budget_windows.c.budget == budget.name,
                        budget_windows.c.window_start == window.start,
                        budget_windows.c.spent_credits + budget_windows.c.reserved_credits + amount
                        <= select(budgets.c.limit_credits)
                        .where(budgets.c.name == budget.name)
                        .scalar_subquery(),
                    )
                    .values(reserved_credits=budget_windows.c.reserved_credits + amount)
                ).rowcount
                if charged == 1:
                    lines.append((budget, window.start, amount))
                    continue
                spent, reserved = connection.execute(
                    select(budget_windows.c.spent_credits, budget_windows.c.reserved_credits).where(
                        budget_windows.c.budget == budget.name, budget_windows.c.window_start == window.start
                    )
                ).one()
                refusals.append(
                    BudgetRefusal(
                        budget.name, budget.limit_credits, spent, reserved, amount, window.resets_at
                    )
                )
            if refusals:
                raise BudgetExhaustedError(refusals)  # rolls back every window charged above
            if existing is not None:  # an earlier attempt stays (as history, or held), keyless
                connection.execute(
                    update(reservations)
                    .where(reservations.c.id == existing["id"])
                    .values(reservation_key=None)
                )
            reservation_id = str(uuid.uuid4())
            stamp = now.isoformat()
            connection.execute(
                insert(reservations).values(
                    id=reservation_id,
                    reservation_key=key,
                    state=RESERVED,
                    conn_id=scope.conn_id,
                    dag_id=scope.dag_id,
                    run_id=run_id,
                    task_id=task_id,
                    map_index=map_index,
                    model=scope.model,
                    estimate_credits=estimate,
                    created_at=stamp,
                    updated_at=stamp,
                )
            )
            for budget, window_start, amount in lines:
                connection.execute(
                    insert(reservation_lines).values(
                        reservation_id=reservation_id,
                        budget=budget.name,
                        window_start=window_start,
                        credits=amount,
                    )
                )
        return Reservation(
            reservation_id, RESERVED, estimate, {b.name: amount for b, _, amount in lines}, created_at=stamp
        )

    def find(self, key: str) -> Reservation | None:
        with self.engine.connect() as connection:
            row = (
                connection.execute(select(reservations).where(reservations.c.reservation_key == key))
                .mappings()
                .first()
            )
            return None if row is None else _reservation(connection, row)

    def find_open_for_reve_task(self, reve_task_id: str) -> Reservation | None:
        """The reservation still ``reserved`` for this paid Reve task (noted by
        :meth:`note_reve_task`), or ``None``: how a sensor that sees a task finish, without the
        submitter's key, finds what to settle or release.

        :param reve_task_id: the Reve task's id.
        :return: the oldest open reservation for it, or ``None``.
        """
        with self.engine.connect() as connection:
            row = (
                connection.execute(
                    select(reservations)
                    .where(reservations.c.reve_task_id == reve_task_id, reservations.c.state == RESERVED)
                    .order_by(reservations.c.created_at)
                )
                .mappings()
                .first()
            )
            return None if row is None else _reservation(connection, row)

    def note_reve_task(self, reservation_id: str, reve_task_id: str) -> None:
        """Remember which paid Reve task a reservation is for, so ``reconcile`` can ask the API.

        :param reservation_id: the reservation.
        :param reve_task_id: the Reve task it paid for.
        """
        with self._transaction() as connection:
            connection.execute(
                update(reservations)
                .where(reservations.c.id == reservation_id)
                .values(reve_task_id=reve_task_id, updated_at=_now().isoformat())
            )

    def settle(
        self, reservation_id: str, consumed_credits: int | None, reve_task_id: str | None = None
    ) -> bool:
        """Turn a reservation into spending: every covering window's ``spent`` grows by what the
        generation consumed (the estimate, or each line, when the API did not say). ``False`` when
        it was no longer reserved (settled or released elsewhere): nothing changes.

        :param reservation_id: the reservation.
        :param consumed_credits: what the API said the task consumed; ``None``: not said.
        :param reve_task_id: the Reve task, if not noted before.
        :return: ``True`` when the reservation was settled.
        """
        return self._close(reservation_id, SETTLED, consumed_credits, reve_task_id)

    def release(self, reservation_id: str) -> bool:
        """Give a reservation's credits back (the task FAILED and was refunded, or nothing was
        created). ``False`` when it was no longer reserved.

        :param reservation_id: the reservation.
        :return: ``True`` when it was released.
        """
        return self._close(reservation_id, RELEASED, None, None)

    def _close(self, reservation_id: str, state: str, consumed: int | None, reve_task_id: str | None) -> bool:
        with self._transaction() as connection:
            values: dict[str, Any] = {"state": state, "updated_at": _now().isoformat()}
            if state == SETTLED:
                values["consumed_credits"] = consumed
            if reve_task_id is not None:
                values["reve_task_id"] = reve_task_id
            changed = connection.execute(
                update(reservations)
                .where(reservations.c.id == reservation_id, reservations.c.state == RESERVED)
                .values(**values)
            ).rowcount
            if changed != 1:
                return False
            estimate = connection.execute(
                select(reservations.c.estimate_credits).where(reservations.c.id == reservation_id)
            ).scalar()
            lines = (
                connection.execute(
                    select(reservation_lines).where(reservation_lines.c.reservation_id == reservation_id)
                )
                .mappings()
                .all()
            )
            for line in sorted(lines, key=lambda line: line["budget"]):
                spent = 0
                if state == SETTLED:
                    spent = (
                        consumed
                        if consumed is not None
                        else (estimate if estimate is not None else line["credits"])
                    )
                connection.execute(
                    update(budget_windows)
                    .where(
                        budget_windows.c.budget == line["budget"],
                        budget_windows.c.window_start == line["window_start"],
                    )
                    .values(
                        reserved_credits=budget_windows.c.reserved_credits - line["credits"],
                        spent_credits=budget_windows.c.spent_credits + spent,
                    )
                )
        return True

    def open_reservations(self) -> list[Reservation]:
        """Every reservation still ``reserved`` (in flight, or orphaned by a kill), oldest first.

        :return: the reservations.
        """
        with self.engine.connect() as connection:
            rows = (
                connection.execute(
                    select(reservations)
                    .where(reservations.c.state == RESERVED)
                    .order_by(reservations.c.created_at)
                )
                .mappings()
                .all()
            )
            return [_reservation(connection, row) for row in rows]


def _ensure_window(connection: Connection, budget: str, start: str, resets_at: datetime | None) -> None:
    values = {
        "budget": budget,
        "window_start": start,
        "resets_at": resets_at.isoformat() if resets_at else None,
        "spent_credits": 0,
        "reserved_credits": 0,
    }
    connection.execute(_dialect_insert(connection)(budget_windows).values(**values).on_conflict_do_nothing())


def _dialect_insert(connection: Connection) -> Any:
    """The ledger's database's ``INSERT`` with ``ON CONFLICT`` (PostgreSQL or SQLite)."""
    if connection.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as postgresql_insert

        return postgresql_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert


def _budget(row: Any) -> Budget:
    return Budget(
        name=row["name"],
        limit_credits=row["limit_credits"],
        conn_id=row["conn_id"],
        window=row["window"],
        time_zone=row["time_zone"],
        dag_ids=tuple(json.loads(row["dag_ids"] or "[]")),
        dag_tags=tuple(json.loads(row["dag_tags"] or "[]")),
        models=tuple(json.loads(row["models"] or "[]")),
        unknown_price_credits=row["unknown_price_credits"],
    )


def _reservation(connection: Connection, row: Any, reused: bool = False) -> Reservation:
    lines: Sequence[Any] = connection.execute(
        select(reservation_lines.c.budget, reservation_lines.c.credits).where(
            reservation_lines.c.reservation_id == row["id"]
        )
    ).all()
    return Reservation(
        id=row["id"],
        state=row["state"],
        estimate_credits=row["estimate_credits"],
        lines={budget: credits for budget, credits in lines},
        reused=reused,
        reve_task_id=row["reve_task_id"],
        conn_id=row["conn_id"],
        dag_id=row["dag_id"],
        run_id=row["run_id"],
        task_id=row["task_id"],
        model=row["model"],
        created_at=row["created_at"],
    )

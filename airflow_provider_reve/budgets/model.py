"""What a budget is and what it covers; pure values, no database.

A budget covers a generation when the generation uses the budget's connection and matches every
optional filter the budget sets: one of its DAG ids, at least one of its DAG tags, one of its
models. Several budgets may cover one generation; all of them must have room.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from airflow_provider_reve.budgets.windows import WINDOWS, check_time_zone

__all__ = ["Budget", "BudgetExhaustedError", "BudgetRefusal", "Scope"]


@dataclass(frozen=True)
class Scope:
    """What one generation is, as budgets see it.

    :param conn_id: its ``reve`` connection.
    :param dag_id: its DAG.
    :param dag_tags: its DAG's tags.
    :param model: its model.
    """

    conn_id: str
    dag_id: str | None = None
    dag_tags: frozenset[str] = frozenset()
    model: str | None = None


@dataclass(frozen=True)
class Budget:
    """A credit ceiling over a window, for the generations it covers.

    ``unknown_price_credits``: what to reserve for a request whose price cannot be estimated;
    ``None`` refuses such requests before any paid call.

    :param name: the budget's name, unique in the ledger.
    :param limit_credits: the most credits the window's generations may spend.
    :param conn_id: the ``reve`` connection it covers.
    :param window: ``"day"``, ``"week"``, ``"month"`` or ``"total"`` (never resets).
    :param time_zone: the IANA zone the windows start in.
    :param dag_ids: the DAGs it covers; empty: all.
    :param dag_tags: covers DAGs with any of these tags; empty: all.
    :param models: the models it covers; empty: all.
    :param unknown_price_credits: see above.
    """

    name: str
    limit_credits: int
    conn_id: str
    window: str = "day"
    time_zone: str = "UTC"
    dag_ids: tuple[str, ...] = ()
    dag_tags: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    unknown_price_credits: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip() or self.name != self.name.strip():
            raise ValueError(f"a budget needs a name without surrounding spaces, got {self.name!r}")
        if not _is_count(self.limit_credits):
            raise ValueError(f"limit_credits must be a whole number >= 0, got {self.limit_credits!r}")
        if not isinstance(self.conn_id, str) or not self.conn_id.strip():
            raise ValueError("a budget covers one connection: conn_id must be given")
        if self.window not in WINDOWS:
            raise ValueError(f"window must be one of {WINDOWS}, got {self.window!r}")
        check_time_zone(self.time_zone)
        if self.unknown_price_credits is not None and not _is_count(self.unknown_price_credits):
            raise ValueError(
                "unknown_price_credits must be a whole number >= 0 or None, "
                f"got {self.unknown_price_credits!r}"
            )
        for name in ("dag_ids", "dag_tags", "models"):
            object.__setattr__(self, name, _names(getattr(self, name), name))

    def covers(self, scope: Scope) -> bool:
        if scope.conn_id != self.conn_id:
            return False
        if self.dag_ids and scope.dag_id not in self.dag_ids:
            return False
        if self.dag_tags and not set(self.dag_tags) & scope.dag_tags:
            return False
        return not (self.models and scope.model not in self.models)

    def describe_scope(self) -> str:
        parts = [f"connection {self.conn_id!r}"]
        for label, values in (("DAGs", self.dag_ids), ("DAG tags", self.dag_tags), ("models", self.models)):
            if values:
                parts.append(f"{label} {', '.join(values)}")
        return "; ".join(parts)


@dataclass(frozen=True)
class BudgetRefusal:
    """Why one budget refused a reservation, with the numbers a person needs to act on it.

    :param budget: the budget's name.
    :param limit_credits: its limit.
    :param spent_credits: what its window has spent.
    :param reserved_credits: what is held for generations in flight.
    :param requested_credits: what this generation asked for; ``None``: an unknown price.
    :param resets_at: when the window resets; ``None``: never.
    :param reason: why it refused (``"no room"`` or an unknown price).
    """

    budget: str
    limit_credits: int
    spent_credits: int
    reserved_credits: int
    requested_credits: int | None
    resets_at: datetime | None
    reason: str = "no room"

    def message(self) -> str:
        reset = self.resets_at.isoformat() if self.resets_at else "never (a 'total' budget)"
        if self.requested_credits is None:
            return (
                f"budget {self.budget!r} refuses requests whose price cannot be estimated "
                "(set its unknown_price_credits to reserve a fixed amount for them)"
            )
        return (
            f"budget {self.budget!r} has no room for {self.requested_credits} credits: spent "
            f"{self.spent_credits}, reserved {self.reserved_credits}, limit {self.limit_credits}; "
            f"the window resets {reset}"
        )


@dataclass
class BudgetExhaustedError(Exception):
    """A reservation was refused; nothing was reserved in any budget.

    :param refusals: one per budget that refused.
    """

    refusals: list[BudgetRefusal] = field(default_factory=list)

    def __str__(self) -> str:
        return "; ".join(refusal.message() for refusal in self.refusals)

    @property
    def resets_at(self) -> datetime | None:
        """When every refusing window has reset; ``None`` when one of them never does."""
        moments = [refusal.resets_at for refusal in self.refusals]
        if not moments or any(moment is None for moment in moments):
            return None
        return max(moment for moment in moments if moment is not None)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _names(values: Iterable[str] | str | None, label: str) -> tuple[str, ...]:
    if values is None:
        return ()
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, Collection) or not all(isinstance(v, str) and v.strip() for v in values):
        raise ValueError(f"{label} must be a list of non-empty names, got {values!r}")
    return tuple(sorted({v.strip() for v in values}))

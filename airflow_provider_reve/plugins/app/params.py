"""The query parameters of the gallery's routes, typed, and parsed leniently.

Every route takes its parameters through one dependency here (``Depends(gallery_query)``...), which
returns a typed dataclass. FastAPI sees each parameter as an optional string, so a bad value never
becomes a ``422``: links are shared, bookmarked and typed by hand, and a page that names what it
ignored ("Ignored from='yesterday'") is more use than an error. So:

* text is stripped, cut to a length no id exceeds, and dropped when it holds a NUL (PostgreSQL
  refuses one in a query);
* numbers that are not numbers fall back to their default; numbers out of range are clamped;
* a filter that is not understood (a status, a date) is dropped with a note shown on the page.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Annotated

from fastapi import Query

from airflow_provider_reve import config
from airflow_provider_reve.plugins.app import queries

__all__ = [
    "CREDIT_DAYS",
    "DEFAULT_PER_PAGE",
    "MAX_PAGE",
    "CreditsQuery",
    "GalleryQuery",
    "MediaQuery",
    "Paging",
    "TaskInstanceQuery",
    "credits_query",
    "gallery_query",
    "media_query",
    "task_instance_query",
]

DEFAULT_PER_PAGE = 48  # [reve] gallery_page_size / media_tab_page_size, read at each request
MAX_PAGE = 100_000
CREDIT_DAYS = 30
_MAX_DB_INT = 2**31  # beyond what a DB integer column holds

Raw = Annotated[str | None, Query()]


def text(value: str | None, limit: int = 250) -> str | None:
    """``value`` stripped and cut to ``limit``; ``None`` when empty or holding a NUL."""
    if value is None:
        return None
    value = value.strip()
    if "\x00" in value:
        return None
    return value[:limit] or None


def number(value: str | None, default: int, low: int, high: int) -> int:
    """``value`` as an int in ``[low, high]``; ``default`` when it is not a number."""
    try:
        parsed = int(value) if value is not None else default
    except ValueError:
        return default
    return min(max(parsed, low), high)


def strict_number(value: str | None) -> int | None:
    """``value`` as an int, or ``None`` when it is not one (no default: the caller decides)."""
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def day(name: str, value: str | None, notes: list[str]) -> date | None:
    cleaned = text(value, 20)
    if cleaned is None:
        return None
    try:
        parsed: date | None = date.fromisoformat(cleaned)
    except ValueError:
        parsed = None
    if parsed is None or not date.min < parsed < date.max:  # the day after date.max overflows
        notes.append(f"Ignored {name}={cleaned!r}: not a date (YYYY-MM-DD).")
        return None
    return parsed


@dataclass(frozen=True)
class Paging:
    page: int
    per_page: int
    default_per_page: int = DEFAULT_PER_PAGE

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.per_page

    @classmethod
    def read(cls, page: str | None, per_page: str | None, default: int = DEFAULT_PER_PAGE) -> Paging:
        return cls(
            page=number(page, 1, 1, MAX_PAGE),
            per_page=number(per_page, default, 1, queries.MAX_PER_PAGE),
            default_per_page=default,
        )

    def link_value(self) -> str | None:
        """``per_page`` as the page's links carry it (only when it is not the default)."""
        return str(self.per_page) if self.per_page != self.default_per_page else None


@dataclass(frozen=True)
class GalleryQuery:
    filters: queries.Filters
    paging: Paging
    notes: list[str] = field(default_factory=list)

    def link_params(self) -> dict[str, str | None]:
        """The filters as the page's links (pager, form) carry them."""
        f = self.filters
        return {
            "dag_id": f.dag_id,
            "run_id": f.run_id,
            "model": f.model,
            "status": f.status,
            "from": f.since.isoformat() if f.since else None,
            "to": f.until.isoformat() if f.until else None,
            "per_page": self.paging.link_value(),
        }


def gallery_query(
    dag_id: Raw = None,
    run_id: Raw = None,
    model: Raw = None,
    status: Raw = None,
    since: Annotated[str | None, Query(alias="from")] = None,
    until: Annotated[str | None, Query(alias="to")] = None,
    page: Raw = None,
    per_page: Raw = None,
) -> GalleryQuery:
    notes: list[str] = []
    chosen = text(status, 40)
    if chosen is not None and chosen not in queries.STATUS_FILTERS:
        notes.append(f"Ignored status={chosen!r}: use one of {', '.join(queries.STATUS_FILTERS)}.")
        chosen = None
    filters = queries.Filters(
        dag_id=text(dag_id),
        run_id=text(run_id),
        model=text(model),
        status=chosen,
        since=day("from", since, notes),
        until=day("to", until, notes),
    )
    paging = Paging.read(page, per_page, config.gallery_page_size())
    return GalleryQuery(filters=filters, paging=paging, notes=notes)


@dataclass(frozen=True)
class TaskInstanceQuery:
    dag_id: str | None
    run_id: str | None
    task_id: str | None
    map_index: int | None  # None: a task that is not mapped (the UI sends "{MAP_INDEX}")
    paging: Paging

    def link_params(self) -> dict[str, str | None]:
        return {
            "dag_id": self.dag_id,
            "run_id": self.run_id,
            "task_id": self.task_id,
            "map_index": str(self.map_index) if self.map_index is not None else None,
            "per_page": self.paging.link_value(),
        }


def task_instance_query(
    dag_id: Raw = None,
    run_id: Raw = None,
    task_id: Raw = None,
    map_index: Raw = None,
    page: Raw = None,
    per_page: Raw = None,
) -> TaskInstanceQuery:
    return TaskInstanceQuery(
        dag_id=text(dag_id),
        run_id=text(run_id),
        task_id=text(task_id),
        map_index=strict_number(map_index),
        paging=Paging.read(page, per_page, config.media_tab_page_size()),
    )


@dataclass(frozen=True)
class CreditsQuery:
    days: int
    dag_id: str | None


def credits_query(days: Raw = None, dag_id: Raw = None) -> CreditsQuery:
    return CreditsQuery(days=number(days, CREDIT_DAYS, 1, 90), dag_id=text(dag_id))


@dataclass(frozen=True)
class MediaQuery:
    """One stored file: a task instance and a (Reve task id, index) of its manifest."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    reve_task_id: str
    index: int


def media_query(
    dag_id: Raw = None,
    run_id: Raw = None,
    task_id: Raw = None,
    map_index: Raw = None,
    reve_task_id: Raw = None,
    index: Raw = None,
) -> MediaQuery | None:
    """The file asked for, or ``None`` when the request cannot name one (the route says 404)."""
    mapped = strict_number(map_index if map_index is not None else "-1")
    position = strict_number(index)
    ids = (text(dag_id), text(run_id), text(task_id), text(reve_task_id))
    if mapped is None or position is None or not all(ids):
        return None
    if not (-1 <= mapped < _MAX_DB_INT and 0 <= position < _MAX_DB_INT):
        return None
    dag, run, task, reve = (str(value) for value in ids)
    return MediaQuery(dag, run, task, mapped, reve, position)

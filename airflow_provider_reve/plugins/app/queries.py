"""Read-only, paged queries of Airflow's metadata DB for the gallery.

What is a "generation" here: a task instance of ``ReveGenerateOperator``, ``@task.reve`` or
``ReveTaskSensor`` that ran (success, failed, skipped by itself, or in progress), with its XCom
``return_value`` (``ReveTask.to_dict()`` plus ``files``) and its rendered ``prompt``. A
``wait_for_completion=False`` submission that succeeded hands its Reve task on (its XCom says
``IN_PROGRESS``): the grid shows that task through whoever waited for it, not twice.

Every statement is a SELECT, filtered to the DAGs the caller may read, with a LIMIT where the
rows could be many. JSON fields are read in SQL (``value["status"]``) so filters and paging
happen in the database; SQLAlchemy renders that for SQLite, PostgreSQL and MySQL alike. The
XCom values are read from the DB as Airflow's own API does (no custom XCom backend call).
"""

from __future__ import annotations

import json
import time as clock
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, func, or_, select, tuple_
from sqlalchemy.orm import aliased, outerjoin

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

__all__ = [
    "DAG_IDS_TTL",
    "DOWNLOAD_OPERATORS",
    "GENERATE_OPERATORS",
    "IN_PROGRESS_STATES",
    "MAX_PER_PAGE",
    "REVE_OPERATORS",
    "SENSOR_OPERATORS",
    "SHOWN_OPERATORS",
    "SHOWN_STATES",
    "STATUS_FILTERS",
    "CreditRow",
    "Filters",
    "Manifest",
    "Related",
    "Submitter",
    "TaskRow",
    "credit_rows",
    "download_manifests",
    "gallery_dag_ids",
    "gallery_page",
    "parse_value",
    "related_tasks",
    "reve_return_value",
    "task_rows",
]

#: ``TaskInstance.operator`` of the tasks that submit a Reve task (class names, as Airflow stores them).
GENERATE_OPERATORS = ("ReveGenerateOperator", "_ReveDecoratedOperator")
SENSOR_OPERATORS = ("ReveTaskSensor",)
DOWNLOAD_OPERATORS = ("ReveDownloadResultsOperator",)
SHOWN_OPERATORS = GENERATE_OPERATORS + SENSOR_OPERATORS
REVE_OPERATORS = SHOWN_OPERATORS + DOWNLOAD_OPERATORS

IN_PROGRESS_STATES = ("running", "deferred", "up_for_retry", "up_for_reschedule", "restarting")
SHOWN_STATES = ("success", "failed", "skipped", *IN_PROGRESS_STATES)
#: The status filter's choices and the task instance states each one means.
STATUS_FILTERS: dict[str, tuple[str, ...]] = {
    "success": ("success",),
    "failed": ("failed",),
    "skipped": ("skipped",),
    "in_progress": IN_PROGRESS_STATES,
}
MAX_PER_PAGE = 200


@dataclass(frozen=True)
class Filters:
    """The gallery's filters; every field is optional (``None``: no filter)."""

    dag_id: str | None = None
    run_id: str | None = None
    model: str | None = None
    status: str | None = None
    since: date | None = None  # inclusive, UTC days
    until: date | None = None  # inclusive, UTC days


@dataclass(frozen=True)
class TaskRow:
    """One task instance and what the DB holds about its Reve work."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    state: str | None
    operator: str | None
    start_date: datetime | None
    end_date: datetime | None
    duration: float | None
    value: Any  # the parsed XCom return_value, or None
    prompt: str | None
    rendered_model: str | None

    @property
    def when(self) -> datetime | None:
        return self.end_date or self.start_date


def parse_value(raw: Any) -> Any:
    """An XCom value as stored: native JSON (the Task Execution API) or a JSON string (``XCom.set``)."""
    if isinstance(raw, (str, bytes)):
        try:
            return json.loads(raw)
        except ValueError:
            return None
    return raw


def _models() -> tuple[Any, Any, Any]:
    from airflow.models.renderedtifields import RenderedTaskInstanceFields
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel

    return TaskInstance, XComModel, RenderedTaskInstanceFields


def _joined(with_rendered: bool) -> tuple[Any, Any, Any, Any]:
    """``TaskInstance`` LEFT JOIN its ``return_value`` XCom (LEFT JOIN its rendered fields)."""
    ti, xcom_model, rtif_model = _models()
    xcom = aliased(xcom_model)
    rtif = aliased(rtif_model)
    frm = outerjoin(
        ti,
        xcom,
        and_(
            xcom.dag_id == ti.dag_id,
            xcom.run_id == ti.run_id,
            xcom.task_id == ti.task_id,
            xcom.map_index == ti.map_index,
            xcom.key == "return_value",
        ),
    )
    if with_rendered:
        frm = frm.outerjoin(
            rtif,
            and_(
                rtif.dag_id == ti.dag_id,
                rtif.run_id == ti.run_id,
                rtif.task_id == ti.task_id,
                rtif.map_index == ti.map_index,
            ),
        )
    return ti, xcom, rtif, frm


def _when(ti: Any) -> Any:
    return func.coalesce(ti.end_date, ti.start_date)


def _utc_midnight(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=timezone.utc)


def _gallery_conditions(
    ti: Any, xcom: Any, rtif: Any, readable: Collection[str], filters: Filters
) -> list[Any]:
    status = func.coalesce(xcom.value["status"].as_string(), "")
    conditions = [
        ti.dag_id.in_(sorted(readable)),
        ti.operator.in_(SHOWN_OPERATORS),
        ti.state.in_(STATUS_FILTERS.get(filters.status or "", SHOWN_STATES)),
        # Skipped without ever running (a trigger rule, a branch) generated nothing; a task
        # that skipped itself (content policy, soft_fail) ran at least once.
        or_(ti.state != "skipped", ti.try_number > 0),
        # A wait_for_completion=False submission hands its task on: shown through its waiter.
        or_(ti.operator.not_in(GENERATE_OPERATORS), ti.state != "success", status != "IN_PROGRESS"),
    ]
    if filters.dag_id:
        conditions.append(ti.dag_id == filters.dag_id)
    if filters.run_id:
        conditions.append(ti.run_id == filters.run_id)
    if filters.model:
        conditions.append(
            func.coalesce(xcom.value["model"].as_string(), rtif.rendered_fields["model"].as_string())
            == filters.model
        )
    if filters.since:
        conditions.append(_when(ti) >= _utc_midnight(filters.since))
    if filters.until:
        conditions.append(_when(ti) < _utc_midnight(filters.until + timedelta(days=1)))
    return conditions


def _row_columns(ti: Any, xcom: Any, rtif: Any) -> list[Any]:
    return [
        ti.dag_id,
        ti.run_id,
        ti.task_id,
        ti.map_index,
        ti.state,
        ti.operator,
        ti.start_date,
        ti.end_date,
        ti.duration,
        xcom.value,
        rtif.rendered_fields["prompt"].as_string(),
        rtif.rendered_fields["model"].as_string(),
    ]


def _to_rows(result: Iterable[Any]) -> list[TaskRow]:
    rows = []
    for (
        dag_id,
        run_id,
        task_id,
        map_index,
        state,
        operator,
        start,
        end,
        duration,
        value,
        prompt,
        model,
    ) in result:
        rows.append(
            TaskRow(
                dag_id=dag_id,
                run_id=run_id,
                task_id=task_id,
                map_index=map_index,
                state=state,
                operator=operator,
                start_date=start,
                end_date=end,
                duration=duration,
                value=parse_value(value),
                prompt=prompt if isinstance(prompt, str) else None,
                rendered_model=model if isinstance(model, str) else None,
            )
        )
    return rows


def gallery_page(
    session: Session, readable: Collection[str], filters: Filters, *, offset: int, limit: int
) -> tuple[list[TaskRow], int]:
    """One page of generations, newest first, and how many match in all."""
    if not readable:
        return [], 0
    # The count needs the rendered fields only to filter by a model no XCom names.
    ti, xcom, rtif, frm = _joined(with_rendered=bool(filters.model))
    counted = select(func.count()).select_from(frm)
    total = session.scalar(counted.where(*_gallery_conditions(ti, xcom, rtif, readable, filters))) or 0
    if offset >= total:
        return [], int(total)
    ti, xcom, rtif, frm = _joined(with_rendered=True)
    stmt = (
        select(*_row_columns(ti, xcom, rtif))
        .select_from(frm)
        .where(*_gallery_conditions(ti, xcom, rtif, readable, filters))
        .order_by(_when(ti).desc(), ti.dag_id, ti.run_id, ti.task_id, ti.map_index)
        .offset(offset)
        .limit(min(limit, MAX_PER_PAGE))
    )
    return _to_rows(session.execute(stmt)), int(total)


def task_rows(session: Session, dag_id: str, run_id: str, task_id: str) -> list[TaskRow]:
    """Every map index of one task in one run (any operator), by map index."""
    ti, xcom, rtif, frm = _joined(with_rendered=True)
    stmt = (
        select(*_row_columns(ti, xcom, rtif))
        .select_from(frm)
        .where(ti.dag_id == dag_id, ti.run_id == run_id, ti.task_id == task_id)
        .order_by(ti.map_index)
        .limit(10_000)  # Airflow's own cap on a mapped task's length is 1024 by default
    )
    return _to_rows(session.execute(stmt))


@dataclass(frozen=True)
class Submitter:
    prompt: str | None
    model: str | None


@dataclass
class Related:
    """Other task instances of the same runs that handled the same Reve tasks."""

    submitters: dict[tuple[str, str, str], Submitter]  # (dag, run, reve id) -> who submitted it
    waiters: dict[tuple[str, str, str], dict[str, Any]]  # -> the sensor's return_value
    waiter_owners: dict[tuple[str, str, str], tuple[str, str, str, int]]


def related_tasks(
    session: Session, runs: Collection[tuple[str, str]], reve_task_ids: Collection[str]
) -> Related:
    """Who submitted, and who waited for, ``reve_task_ids`` in ``runs``.

    A sensor knows only the Reve task id: the prompt is in the submitting task's rendered
    fields. A ``wait_for_completion=False`` submission's XCom says ``IN_PROGRESS``: how it
    ended is in the sensor's.
    """
    related = Related({}, {}, {})
    if not runs or not reve_task_ids:
        return related
    ti, xcom, rtif, frm = _joined(with_rendered=True)
    reve_id = xcom.value["task_id"].as_string()
    stmt = (
        select(
            ti.dag_id,
            ti.run_id,
            ti.task_id,
            ti.map_index,
            ti.operator,
            reve_id,
            rtif.rendered_fields["prompt"].as_string(),
            func.coalesce(xcom.value["model"].as_string(), rtif.rendered_fields["model"].as_string()),
            xcom.value,
        )
        .select_from(frm)
        .where(
            tuple_(ti.dag_id, ti.run_id).in_(sorted(runs)),
            ti.operator.in_(SHOWN_OPERATORS),
            ti.state == "success",
            reve_id.in_(sorted(reve_task_ids)),
        )
        .limit(10_000)
    )
    for dag_id, run_id, task_id, map_index, operator, found_id, prompt, model, value in session.execute(stmt):
        key = (dag_id, run_id, str(found_id))
        if operator in GENERATE_OPERATORS:
            related.submitters.setdefault(
                key,
                Submitter(
                    prompt if isinstance(prompt, str) else None, model if isinstance(model, str) else None
                ),
            )
        else:
            parsed = parse_value(value)
            if isinstance(parsed, dict) and parsed.get("status") != "IN_PROGRESS":
                related.waiters.setdefault(key, parsed)
                related.waiter_owners.setdefault(key, (dag_id, run_id, task_id, map_index))
    return related


@dataclass(frozen=True)
class Manifest:
    """A download operator's ``return_value``: where the files of Reve tasks were stored."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    entries: list[Any]


def download_manifests(session: Session, runs: Collection[tuple[str, str]]) -> list[Manifest]:
    """The manifests ``ReveDownloadResultsOperator`` tasks returned in ``runs``."""
    if not runs:
        return []
    ti, xcom, _, frm = _joined(with_rendered=False)
    stmt = (
        select(ti.dag_id, ti.run_id, ti.task_id, ti.map_index, xcom.value)
        .select_from(frm)
        .where(
            tuple_(ti.dag_id, ti.run_id).in_(sorted(runs)),
            ti.operator.in_(DOWNLOAD_OPERATORS),
            ti.state == "success",
        )
        .limit(1000)
    )
    manifests = []
    for dag_id, run_id, task_id, map_index, value in session.execute(stmt):
        entries = parse_value(value)
        if isinstance(entries, list):
            manifests.append(Manifest(dag_id, run_id, task_id, map_index, entries))
    return manifests


def reve_return_value(session: Session, dag_id: str, run_id: str, task_id: str, map_index: int) -> Any:
    """The parsed ``return_value`` of one task instance of a Reve operator, or ``None``."""
    ti, xcom, _, frm = _joined(with_rendered=False)
    raw = session.scalar(
        select(xcom.value)
        .select_from(frm)
        .where(
            ti.dag_id == dag_id,
            ti.run_id == run_id,
            ti.task_id == task_id,
            ti.map_index == map_index,
            ti.operator.in_(REVE_OPERATORS),
        )
    )
    return parse_value(raw)


@dataclass(frozen=True)
class CreditRow:
    dag_id: str
    when: datetime | None
    state: str | None
    reve_task_id: str | None
    credits: Any


def credit_rows(
    session: Session, readable: Collection[str], since: datetime, dag_id: str | None = None
) -> list[CreditRow]:
    """What the credits panel adds up: every generate/sensor task instance since ``since``.

    Handed-on submissions are included here: a Reve task is counted once, by its id, whoever
    reported it (see ``_credits``).
    """
    if not readable:
        return []
    ti, xcom, _, frm = _joined(with_rendered=False)
    conditions = [
        ti.dag_id.in_(sorted(readable)),
        ti.operator.in_(SHOWN_OPERATORS),
        ti.state.in_(("success", "failed", "skipped")),
        or_(ti.state != "skipped", ti.try_number > 0),
        _when(ti) >= since,
    ]
    if dag_id:
        conditions.append(ti.dag_id == dag_id)
    stmt = (
        select(
            ti.dag_id,
            _when(ti),
            ti.state,
            xcom.value["task_id"].as_string(),
            xcom.value["consumed_credits"].as_string(),
        )
        .select_from(frm)
        .where(*conditions)
    )
    return [CreditRow(*row) for row in session.execute(stmt)]


_dag_ids_cache: tuple[float, list[str]] | None = None
DAG_IDS_TTL = 60.0  # seconds; a new DAG joins the filter's list within a minute


def gallery_dag_ids(session: Session, readable: Collection[str]) -> list[str]:
    """The readable DAGs that have Reve task instances (the DAG filter's choices).

    Finding them scans the task instance table, so the list of all such DAGs is kept for
    ``DAG_IDS_TTL`` seconds per process; each request intersects it with its own readable set.
    """
    global _dag_ids_cache
    if not readable:
        return []
    now = clock.monotonic()
    if _dag_ids_cache is None or now - _dag_ids_cache[0] > DAG_IDS_TTL:
        ti, _, _ = _models()
        stmt = select(ti.dag_id).where(ti.operator.in_(SHOWN_OPERATORS)).distinct().limit(10_000)
        _dag_ids_cache = (now, sorted(session.scalars(stmt)))
    allowed = set(readable)
    return [dag_id for dag_id in _dag_ids_cache[1] if dag_id in allowed]

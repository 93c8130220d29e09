"""Metadata rows for the gallery tests and benchmark, written the way Airflow writes them.

``dag.test()`` runs give real rows but take seconds each; the paging and credits cases need
thousands. :func:`seed_generations` inserts them in bulk: a ``dag`` row, ``dag_run`` rows,
``task_instance`` rows of ``ReveGenerateOperator``, their ``return_value`` XCom (native JSON, as
the Task Execution API stores it) and rendered fields with the prompt -- the same tables and
shapes the real runs in ``tests/dags/gallery`` produce.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import delete, insert, select

BUNDLE = "reve-gallery-seed"
MAPPED = 10  # task instances per run (one mapped task)


@dataclass(frozen=True)
class Seeded:
    """What :func:`seed_generations` wrote, to check pages and sums against."""

    dag_id: str
    count: int
    now: datetime  # the newest generation's end
    newest_first: list[str]  # Reve task ids of the successful generations, newest first
    credits_by_day: dict[str, int]  # UTC day -> credits of the successful generations
    failed: int
    skipped: int


def ensure_bundle(session: Any, name: str = BUNDLE) -> None:
    from airflow.models.dagbundle import DagBundleModel

    if session.scalar(select(DagBundleModel.name).where(DagBundleModel.name == name)) is None:
        session.add(DagBundleModel(name=name))
        session.flush()


def seed_generations(
    session: Any,
    dag_id: str,
    count: int,
    *,
    now: datetime | None = None,
    spacing: timedelta = timedelta(minutes=5),
    failed_every: int = 0,
    skipped_every: int = 0,
) -> Seeded:
    """``count`` generations in ``dag_id``, one every ``spacing`` going back from ``now``.

    Generation ``i`` (0 = newest) costs ``i % 7 + 1`` credits, has the prompt
    ``"Seeded prompt <i>"`` and the result URL ``https://cdn.example.test/<dag>/<i>.png``. With
    ``failed_every=n``, every n-th one failed (no XCom, no credits); ``skipped_every`` likewise.
    """
    from airflow.models.dag import DagModel
    from airflow.models.dagrun import DagRun
    from airflow.models.renderedtifields import RenderedTaskInstanceFields
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel

    now = now or datetime.now(timezone.utc)
    ensure_bundle(session)
    session.execute(
        insert(DagModel.__table__),
        [
            {
                "dag_id": dag_id,
                "bundle_name": BUNDLE,
                "max_active_tasks": 16,
                "max_consecutive_failed_dag_runs": 0,
                "has_task_concurrency_limits": False,
                "is_paused": True,
            }
        ],
    )
    runs = (count + MAPPED - 1) // MAPPED
    run_ids = [f"seeded__{number:06d}" for number in range(runs)]
    session.execute(
        insert(DagRun.__table__),
        [
            {
                "dag_id": dag_id,
                "run_id": run_id,
                "run_type": "manual",
                "state": "success",
                "run_after": now - spacing * (number * MAPPED),
            }
            for number, run_id in enumerate(run_ids)
        ],
    )
    run_pk = dict(session.execute(select(DagRun.run_id, DagRun.id).where(DagRun.dag_id == dag_id)).all())
    tis, xcoms, rendered = [], [], []
    newest_first, credits_by_day = [], {}
    failed = skipped = 0
    for i in range(count):
        run_id, map_index = run_ids[i // MAPPED], i % MAPPED
        end = now - spacing * i
        state = "success"
        if failed_every and i % failed_every == failed_every - 1:
            state, failed = "failed", failed + 1
        elif skipped_every and i % skipped_every == skipped_every - 1:
            state, skipped = "skipped", skipped + 1
        key = {"dag_id": dag_id, "run_id": run_id, "task_id": "generate", "map_index": map_index}
        tis.append(
            {
                **key,
                "state": state,
                "try_number": 1,
                "pool": "default_pool",
                "operator": "ReveGenerateOperator",
                "custom_operator_name": "ReveGenerateOperator",
                "start_date": end - timedelta(seconds=30),
                "end_date": end,
                "duration": 30.0,
            }
        )
        model = ("seedream-5", "nano-banana", "reve-2.0")[i % 3]
        rendered.append({**key, "rendered_fields": {"prompt": f"Seeded prompt {i}", "model": model}})
        if state != "success":
            continue
        reve_id = f"{dag_id}-{i:06d}"
        credits = i % 7 + 1
        newest_first.append(reve_id)
        day = end.date().isoformat()
        credits_by_day[day] = credits_by_day.get(day, 0) + credits
        xcoms.append(
            {
                **key,
                "dag_run_id": run_pk[run_id],
                "key": "return_value",
                "value": {
                    "task_id": reve_id,
                    "status": "SUCCESS",
                    "result_urls": [f"https://cdn.example.test/{dag_id}/{i}.png"],
                    "consumed_credits": credits,
                    "error_code": None,
                    "error_message": None,
                    "model": model,
                },
                "timestamp": end,
            }
        )
    session.execute(insert(TaskInstance.__table__), tis)
    session.execute(insert(RenderedTaskInstanceFields.__table__), rendered)
    if xcoms:
        session.execute(insert(XComModel.__table__), xcoms)
    session.flush()
    return Seeded(dag_id, count, now, newest_first, credits_by_day, failed, skipped)


def remove_dag(session: Any, dag_id: str) -> None:
    """Delete everything :func:`seed_generations` wrote for ``dag_id``."""
    from airflow.models.dag import DagModel
    from airflow.models.dagrun import DagRun
    from airflow.models.renderedtifields import RenderedTaskInstanceFields
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel

    for model in (XComModel, RenderedTaskInstanceFields, TaskInstance, DagRun, DagModel):
        session.execute(delete(model).where(model.dag_id == dag_id))
    session.flush()


def add_ti(
    session: Any,
    dag_id: str,
    run_id: str,
    task_id: str,
    *,
    value: Any = None,
    prompt: str | None = None,
    operator: str = "ReveGenerateOperator",
    map_index: int = -1,
    state: str = "success",
    when: datetime | None = None,
) -> None:
    """One more task instance (and its XCom, rendered prompt) in an existing or new run."""
    from airflow.models.dag import DagModel
    from airflow.models.dagrun import DagRun
    from airflow.models.renderedtifields import RenderedTaskInstanceFields
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel

    when = when or datetime.now(timezone.utc)
    ensure_bundle(session)
    if session.scalar(select(DagModel.dag_id).where(DagModel.dag_id == dag_id)) is None:
        session.execute(
            insert(DagModel.__table__),
            [
                {
                    "dag_id": dag_id,
                    "bundle_name": BUNDLE,
                    "max_active_tasks": 16,
                    "max_consecutive_failed_dag_runs": 0,
                    "has_task_concurrency_limits": False,
                    "is_paused": True,
                }
            ],
        )
    run_pk = session.scalar(select(DagRun.id).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
    if run_pk is None:
        session.execute(
            insert(DagRun.__table__),
            [
                {
                    "dag_id": dag_id,
                    "run_id": run_id,
                    "run_type": "manual",
                    "state": "success",
                    "run_after": when,
                }
            ],
        )
        run_pk = session.scalar(select(DagRun.id).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
    key = {"dag_id": dag_id, "run_id": run_id, "task_id": task_id, "map_index": map_index}
    session.execute(
        insert(TaskInstance.__table__),
        [
            {
                **key,
                "state": state,
                "try_number": 1,
                "pool": "default_pool",
                "operator": operator,
                "start_date": when - timedelta(seconds=5),
                "end_date": when,
                "duration": 5.0,
            }
        ],
    )
    if prompt is not None:
        session.execute(
            insert(RenderedTaskInstanceFields.__table__), [{**key, "rendered_fields": {"prompt": prompt}}]
        )
    if value is not None:
        session.execute(
            insert(XComModel.__table__),
            [{**key, "dag_run_id": run_pk, "key": "return_value", "value": value, "timestamp": when}],
        )
    session.flush()

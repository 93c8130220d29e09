"""``airflow reve estimate``: what a run (or a backfill) of a DAG would cost, before triggering it.

Every Reve generation of the DAG (``ReveGenerateOperator``, ``@task.reve``, mapped or not) is
rendered as the run would render it: templates with the run's dates, ``params`` and ``--conf``,
the DAG's macros, literal ``expand`` inputs one instance each; a ``@task.reve`` function is
called with the same context (it writes the request, it should not act). Its price comes from
``estimate_credits``, the same number a budget reserves before paying.

What cannot be known before the run is said, never guessed: an ``expand`` over another task's
XCom (how many instances), a template or function that reads XCom, a price the catalog does not
publish. Those are left out of the total and listed, so the total is what is known.

Nothing here submits, reserves or writes: the ledger is only read, for each covering budget's
headroom. The command exits 1 when a known total exceeds a covering budget's remaining credits
(or a budget would refuse an unknown price), so CI can gate a deploy on it.
"""

from __future__ import annotations

import copy
import itertools
import json
import sys
from argparse import Namespace
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from types import SimpleNamespace
from typing import Any

from airflow_provider_reve.budgets.model import Scope

__all__ = [
    "DagRunEstimate",
    "GenerationEstimate",
    "NotKnownBeforeRunError",
    "budget_headroom",
    "estimate_command",
    "estimate_dag_run",
]

# Stands in for image URLs another task returns: only whether there are any changes a price.
_FROM_XCOM_URL = "https://from-xcom.invalid/known-at-run-time"
# Fields whose rendering decides what is sent; the rest (download_to, ...) cost nothing.
_PRICED_FIELDS = ("model", "reve_conn_id", "extra_params")


class NotKnownBeforeRunError(Exception):
    """A value only the run itself can know (another task's XCom)."""


@dataclass
class GenerationEstimate:
    """One Reve task of one run: its instances and what each costs (``None``: not known).

    :param task_id: the Airflow task.
    :param model: the model it asks for, or ``None`` when that is not known before the run.
    :param conn_id: its ``reve`` connection.
    :param credits_each: the estimate of each instance (one, or one per mapped index).
    :param unknown: why the count or a price cannot be known before the run, or why the run would
        refuse it; ``None``: known.
    """

    task_id: str
    model: str | None
    conn_id: str
    credits_each: list[int | None] = field(default_factory=list)
    #: why the count or a price cannot be known before the run, or why the run would refuse it
    unknown: str | None = None

    @property
    def instances(self) -> int | None:
        return None if self.unknown_count else len(self.credits_each)

    @property
    def unknown_count(self) -> bool:
        return self.unknown is not None and not self.credits_each

    @property
    def known_credits(self) -> int:
        return sum(credits for credits in self.credits_each if credits is not None)

    @property
    def fully_known(self) -> bool:
        return self.unknown is None and all(credits is not None for credits in self.credits_each)


@dataclass
class DagRunEstimate:
    """What one DAG run would spend, generation by generation.

    :param dag_id: the DAG.
    :param run_after: when the run would start.
    :param logical_date: the run's logical date, or ``None``.
    :param generations: one estimate per Reve generation task.
    """

    dag_id: str
    run_after: datetime
    logical_date: datetime | None
    generations: list[GenerationEstimate]

    @property
    def known_credits(self) -> int:
        return sum(generation.known_credits for generation in self.generations)


def estimate_dag_run(
    dag: Any, *, logical_date: datetime | None, conf: Mapping[str, Any] | None = None
) -> DagRunEstimate:
    """Render every Reve generation of ``dag`` as a run at ``logical_date`` would.

    :param dag: the DAG.
    :param logical_date: the run's logical date.
    :param conf: the run's ``conf``.
    :return: the run's estimate.
    """
    from airflow_provider_reve.operators.reve import ReveGenerateOperator

    run_after = logical_date or datetime.now(timezone.utc)
    context = _context(dag, logical_date, run_after, dict(conf or {}))
    generations = []
    for task in dag.tasks:
        operator_class = getattr(task, "operator_class", type(task))
        if isinstance(operator_class, type) and issubclass(operator_class, ReveGenerateOperator):
            try:
                generations.append(_estimate_task(dag, task, context))
            except Exception as error:  # one odd task must not hide the others' costs
                unknown = GenerationEstimate(task.task_id, None, "reve_default")
                unknown.unknown = f"could not be rendered before the run ({type(error).__name__}: {error})"
                generations.append(unknown)
    return DagRunEstimate(dag.dag_id, run_after, logical_date, generations)


def budget_headroom(
    ledger: Any, dag: Any, estimates: list[DagRunEstimate]
) -> list[tuple[Any, int, list[str]]]:
    """For each covering budget: its status, the credits these runs would reserve, and refusals.

    :param ledger: the deployment's :class:`~airflow_provider_reve.budgets.ledger.Ledger`.
    :param dag: the DAG the runs are of.
    :param estimates: the runs' estimates.
    :return: ``(status, credits needed, task ids refused)`` per budget.
    """
    needed: dict[str, int] = {}
    refused: dict[str, list[str]] = {}
    budgets: dict[str, Any] = {}
    tags = frozenset(str(tag) for tag in (getattr(dag, "tags", None) or ()))
    for run in estimates:
        for generation in run.generations:
            scope = Scope(
                conn_id=generation.conn_id, dag_id=dag.dag_id, dag_tags=tags, model=generation.model
            )
            for budget in ledger.covering(scope):
                budgets[budget.name] = budget
                needed.setdefault(budget.name, 0)
                for credits in generation.credits_each:
                    if credits is None and budget.unknown_price_credits is None:
                        refused.setdefault(budget.name, []).append(generation.task_id)
                    else:
                        needed[budget.name] += (
                            credits if credits is not None else budget.unknown_price_credits
                        )
    return [(ledger.status(name), needed[name], refused.get(name, [])) for name in sorted(budgets)]


# -- rendering -----------------------------------------------------------------------------------
class _RunTimeOnly:
    """Stands in for the task instance: what it knows before the run, and refuses XCom."""

    def __init__(self, task_id: str, run_id: str) -> None:
        self.task_id, self.run_id, self.map_index, self.try_number = task_id, run_id, -1, 1

    def xcom_pull(self, *args: Any, **kwargs: Any) -> Any:
        raise NotKnownBeforeRunError("reads another task's XCom")


def _context(
    dag: Any, logical_date: datetime | None, run_after: datetime, conf: dict[str, Any]
) -> dict[str, Any]:
    params = {key: dag.params[key] for key in dag.params} if dag.params else {}
    params.update(conf)  # as [core] dag_run_conf_overrides_params does by default
    run_id = f"manual__{run_after.isoformat()}"
    interval = getattr(dag.timetable, "infer_manual_data_interval", None)
    start = end = logical_date
    if logical_date is not None and interval is not None:
        try:
            data_interval = interval(run_after=logical_date)
            start, end = data_interval.start, data_interval.end
        except Exception:  # an odd timetable: the logical date for both ends
            start = end = logical_date
    dag_run = SimpleNamespace(
        dag_id=dag.dag_id,
        run_id=run_id,
        run_after=run_after,
        logical_date=logical_date,
        data_interval_start=start,
        data_interval_end=end,
        conf=conf,
        run_type="manual",
    )
    context: dict[str, Any] = {
        "dag": dag,
        "dag_run": dag_run,
        "run_id": run_id,
        "params": params,
        "logical_date": logical_date,
        "data_interval_start": start,
        "data_interval_end": end,
        "ts": logical_date.isoformat() if logical_date else None,
        "ds": f"{logical_date:%Y-%m-%d}" if logical_date else None,
        "ds_nodash": f"{logical_date:%Y%m%d}" if logical_date else None,
        "macros": _macros(),
        "var": {},
    }
    return context


def _macros() -> Any:
    try:
        from airflow.sdk.execution_time import macros

        return macros
    except ImportError:  # pragma: no cover - older Airflow
        return None


def _estimate_task(dag: Any, task: Any, context: dict[str, Any]) -> GenerationEstimate:
    partial = dict(getattr(task, "partial_kwargs", {}) or {})
    model = partial.get("model", getattr(task, "model", None))
    conn_id = partial.get("reve_conn_id", getattr(task, "reve_conn_id", None)) or "reve_default"
    estimate = GenerationEstimate(task.task_id, model, conn_id)
    expand_input = getattr(task, "expand_input", None)
    # A mapped @task.reve maps its function's arguments (op_kwargs), not operator arguments.
    function_input = getattr(task, "op_kwargs_expand_input", None)
    if expand_input is None:
        instances = [copy.copy(task)]  # rendered per run: the DAG's own task stays a template
    else:
        try:
            if function_input is not None:
                instances = [
                    task.unmap({"op_kwargs": kwargs}) for kwargs in _expansions(function_input.value)
                ]
            else:
                instances = [task.unmap(kwargs) for kwargs in _expansions(expand_input.value)]
        except NotKnownBeforeRunError as count_unknown:
            estimate.unknown = f"how many instances: the expand {count_unknown}"
            return estimate
    for index, operator in enumerate(instances):
        task_context = {**context, "task": operator}
        run_time = _RunTimeOnly(task.task_id, context["run_id"])
        run_time.map_index = index if expand_input is not None else -1
        task_context["ti"] = task_context["task_instance"] = run_time
        credits, why = _render_and_price(dag, operator, task_context)
        estimate.model, estimate.conn_id = operator.model, operator.reve_conn_id
        estimate.credits_each.append(credits)
        if why and estimate.unknown is None:
            estimate.unknown = why
    return estimate


def _expansions(value: Any) -> list[dict[str, Any]]:
    """The instances of a literal ``expand`` (the product of its lists) or ``expand_kwargs``."""
    from airflow.sdk.definitions.xcom_arg import XComArg

    if isinstance(value, XComArg):
        raise NotKnownBeforeRunError(f"maps over the XCom of {_xcom_source(value)}")
    if isinstance(value, list):
        if any(isinstance(entry, XComArg) for entry in value):
            raise NotKnownBeforeRunError("maps over XCom")
        return [dict(entry) for entry in value]
    for key, values in value.items():
        if isinstance(values, XComArg):
            raise NotKnownBeforeRunError(f"maps {key!r} over the XCom of {_xcom_source(values)}")
    keys = list(value)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(value[key] for key in keys))]


def _xcom_source(arg: Any) -> str:
    operator = getattr(arg, "operator", None)
    return repr(getattr(operator, "task_id", "another task"))


def _render_and_price(dag: Any, operator: Any, context: dict[str, Any]) -> tuple[int | None, str | None]:
    """Render the request as the run would; its price and, when not known, why."""
    from airflow_provider_reve.client.catalog import estimate_credits
    from airflow_provider_reve.operators.reve import REQUEST_FIELDS

    env = dag.get_template_env()
    from_xcom = []
    for name in (*_PRICED_FIELDS, *REQUEST_FIELDS):
        try:
            setattr(operator, name, operator.render_template(getattr(operator, name), context, env, set()))
        except NotKnownBeforeRunError:
            from_xcom.append(name)
            # Only whether images are given changes a price (an edit), never which ones.
            setattr(operator, name, [_FROM_XCOM_URL] if name == "image_urls" else None)
        except Exception as error:
            return None, f"{name} does not render before the run ({type(error).__name__}: {error})"
    priced_from_xcom = [name for name in from_xcom if name not in ("prompt", "image_urls")]
    if priced_from_xcom:
        return None, f"{', '.join(priced_from_xcom)} read(s) another task's XCom"
    render_request = getattr(operator, "render_request_for_estimate", None)
    if render_request is not None:
        try:
            render_request(context)
        except NotKnownBeforeRunError:
            return None, "its @task.reve function reads another task's XCom"
        except Exception as error:
            return None, f"its @task.reve function raised {type(error).__name__}: {error}"
    if operator.prompt is None and "prompt" in from_xcom:
        operator.prompt = "<from XCom>"
    try:
        params = operator.budget_request_params()
    except Exception as error:
        return None, f"the run would refuse it before paying: {error}"
    credits = estimate_credits(operator.model, **params)
    if credits is None:
        return None, f"no published price for this {operator.model!r} request"
    return credits, None


# -- the command ---------------------------------------------------------------------------------
def _dag(dag_id: str, subdir: str | None) -> Any:
    from airflow.dag_processing.dagbag import DagBag
    from airflow.providers.common.compat.sdk import conf

    folder = subdir or conf.get("core", "dags_folder")
    bag = DagBag(dag_folder=folder)
    if dag_id not in bag.dags:
        errors = "".join(f"\n  {path}: {error}" for path, error in bag.import_errors.items())
        sys.exit(f"No DAG {dag_id!r} in {folder}.{errors}")
    return bag.dags[dag_id]


def _parse_date(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _backfill_dates(dag: Any, start: datetime, end: datetime) -> list[datetime]:
    """The logical dates a backfill from ``start`` to ``end`` creates (as ``airflow backfill``)."""
    from airflow.serialization.serialized_objects import DagSerialization

    serialized = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag))
    now = datetime.now(timezone.utc)
    return [
        info.logical_date
        for info in serialized.iter_dagrun_infos_between(start, end)
        if info.logical_date is not None and (info.data_interval is None or info.data_interval.end < now)
    ]


def estimate_command(args: Namespace) -> None:
    """``airflow reve estimate``: what the next runs of a DAG would spend.

    Exits non-zero when a price is unknown or a budget would refuse the runs, so CI can gate a
    deploy on it.

    :param args: the parsed command line.
    """
    try:
        conf = json.loads(args.conf) if args.conf else {}
    except ValueError as error:
        sys.exit(f"--conf is not JSON: {error}")
    if not isinstance(conf, dict):
        sys.exit("--conf must be a JSON object")
    dag = _dag(args.dag_id, args.subdir)
    if args.backfill:
        dates: list[datetime | None] = list(
            _backfill_dates(dag, _parse_date(args.backfill[0]), _parse_date(args.backfill[1]))
        )
        if not dates:
            sys.exit(
                f"A backfill of {dag.dag_id} from {args.backfill[0]} to {args.backfill[1]} creates no run."
            )
    else:
        dates = [_parse_date(args.logical_date) if args.logical_date else None]
    runs = [estimate_dag_run(dag, logical_date=date, conf=conf) for date in dates]

    from airflow_provider_reve.budgets.ledger import Ledger

    ledger = Ledger.configured()
    headroom = budget_headroom(ledger, dag, runs) if ledger is not None else None
    exceeded = [
        status.budget.name
        for status, needed, refused in headroom or []
        if needed > status.remaining_credits or refused
    ]
    if args.json:
        print(json.dumps(_as_json(runs, headroom, exceeded), indent=2, default=str))
    else:
        _print(dag, runs, headroom)
    if exceeded:
        sys.exit(1)


def _as_json(runs: list[DagRunEstimate], headroom: Any, exceeded: list[str]) -> dict[str, Any]:
    return {
        "runs": [
            {
                "logical_date": run.logical_date,
                "credits": run.known_credits,
                "tasks": [
                    {
                        "task_id": g.task_id,
                        "model": g.model,
                        "conn_id": g.conn_id,
                        "instances": g.instances,
                        "credits_each": g.credits_each,
                        "credits": g.known_credits,
                        "unknown": g.unknown,
                    }
                    for g in run.generations
                ],
            }
            for run in runs
        ],
        "total_credits": sum(run.known_credits for run in runs),
        "fully_known": all(g.fully_known for run in runs for g in run.generations),
        "budgets": None
        if headroom is None
        else [
            {
                "name": status.budget.name,
                "remaining_credits": status.remaining_credits,
                "needed_credits": needed,
                "refused_tasks": refused,
                "exceeded": status.budget.name in exceeded,
            }
            for status, needed, refused in headroom
        ],
    }


def _print(dag: Any, runs: list[DagRunEstimate], headroom: Any) -> None:
    unknown = []
    for run in runs:
        when = run.logical_date.isoformat() if run.logical_date else "none (a manual run)"
        print(f"{dag.dag_id}, logical date {when}:")
        for g in run.generations:
            if g.unknown_count:
                print(f"  {g.task_id:<24} ? x {g.model}: cannot know before the run")
            else:
                each = sorted({c for c in g.credits_each if c is not None})
                each_text = f" ({', '.join(map(str, each))} each)" if len(g.credits_each) > 1 else ""
                cost = f"{g.known_credits} credits" if g.fully_known else "? credits"
                print(f"  {g.task_id:<24} {len(g.credits_each)} x {g.model}: {cost}{each_text}")
            if g.unknown:
                unknown.append(f"{g.task_id}: {g.unknown}")
        print(f"  run total: {run.known_credits} credits")
    total = sum(run.known_credits for run in runs)
    print(f"Total: {total} credits" + (f" over {len(runs)} runs" if len(runs) > 1 else ""))
    for line in sorted(set(unknown)):
        print(f"Not known before the run (left out of the total): {line}")
    if headroom is None:
        print("Budgets: off ([reve] ledger_conn_id is not set).")
        return
    if not headroom:
        print("Budgets: none covers these tasks.")
    for status, needed, refused in headroom:
        verdict = "fits" if needed <= status.remaining_credits and not refused else "WOULD BE EXCEEDED"
        print(
            f"Budget {status.budget.name}: needs {needed} of {status.remaining_credits} remaining "
            f"(limit {status.budget.limit_credits} per {status.budget.window}, spent "
            f"{status.spent_credits}, reserved {status.reserved_credits}): {verdict}"
            + (f"; refuses unknown prices of {', '.join(sorted(set(refused)))}" if refused else "")
        )

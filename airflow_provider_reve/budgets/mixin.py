"""Operator glue: reserve credits in every covering budget before the paid call.

The mixin reaches the ledger only when ``[reve] ledger_conn_id`` is set; otherwise every method
returns at once and the operator behaves as it always did. It finds its reservation by key
(DAG, run, task, map index, run of tries, request fingerprint), never by state carried through
a deferral, so a resumed or retried try finds what an earlier one reserved.

Which error ends a reservation how:

* before the paid call, a budget without room: nothing is reserved anywhere (the ledger rolls
  back), and the task fails, skips or waits (``on_budget_exhausted``);
* the API created nothing (a refusal it answered): released;
* the task FAILED (refunded): released;
* SUCCESS: settled to ``consumed_credits``;
* outcome unknown (a kill or timeout mid-request, an answer lost): stays reserved; a retry that
  re-attaches settles it, ``airflow reve budget reconcile`` settles orphans. A retry that submits
  again instead (``on_ambiguous_submit="retry"``) may pay twice: it reserves afresh and the
  earlier reservation stays held for what the first request may have cost;
* submitted with ``wait_for_completion=False``: the ``ReveTaskSensor`` that sees the task finish
  settles or releases it (:func:`close_reservation_of_finished_task`), found by its Reve task id.

The ledger being down before the paid call is a transient failure (nothing was submitted);
after the paid call it is logged and never fails the task: the money is already spent.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException, AirflowSkipException

from airflow_provider_reve.mixins.deadline import DEFER_TIMEOUT_GRACE, deferral_budget
from airflow_provider_reve.mixins.reattach import SUBMITTING, SubmittedTaskMemory, request_fingerprint

# The budget model, the ledger (SQLAlchemy) and the exceptions are imported where a task runs:
# a DAG file imports this module for the mixin, at every parse.
if TYPE_CHECKING:
    from airflow_provider_reve.budgets.ledger import Ledger, Reservation
    from airflow_provider_reve.budgets.model import BudgetExhaustedError, Scope
    from airflow_provider_reve.models import ReveTask

__all__ = [
    "BUDGET_RECHECK_SECONDS",
    "MIN_BUDGET_WAIT_SECONDS",
    "ON_BUDGET_EXHAUSTED_CHOICES",
    "BudgetHost",
    "LoggingHost",
    "ReveBudgetMixin",
    "budget_recheck_seconds",
    "budget_scope",
    "check_on_budget_exhausted",
    "close_reservation_of_finished_task",
]

ON_BUDGET_EXHAUSTED_CHOICES = ("fail", "skip", "wait")
#: ``"wait"`` looks again at least this often (``[reve] budget_recheck_seconds``): credits
#: released by a FAILED task, or a limit raised with ``airflow reve budget set``, free room
#: before the window resets.
BUDGET_RECHECK_SECONDS = 300.0
#: The shortest wait: Airflow 3.3's scheduler fails a task resumed from a timer that fired before
#: it processed the executor's "success" event of the deferral (apache/airflow#71580; seen in our
#: E2E with 3 s waits under load), so "wait" never defers for less.
MIN_BUDGET_WAIT_SECONDS = 15.0


def budget_recheck_seconds() -> float:
    """``[reve] budget_recheck_seconds`` (at least :data:`MIN_BUDGET_WAIT_SECONDS`), or
    :data:`BUDGET_RECHECK_SECONDS`.

    :return: seconds.
    """
    from airflow.providers.common.compat.sdk import conf

    try:
        value = conf.getfloat("reve", "budget_recheck_seconds", fallback=BUDGET_RECHECK_SECONDS)
    except Exception:  # a malformed setting must not fail a task that is only waiting
        return BUDGET_RECHECK_SECONDS
    return max(MIN_BUDGET_WAIT_SECONDS, value) if value == value else BUDGET_RECHECK_SECONDS  # NaN


def check_on_budget_exhausted(value: str) -> str:
    """The ``on_budget_exhausted`` argument, checked when the DAG is parsed.

    :param value: ``"fail"``, ``"skip"`` or ``"wait"`` (``ON_BUDGET_EXHAUSTED_CHOICES``).
    :return: the value.
    :raises ValueError: for any other value.
    """
    if value not in ON_BUDGET_EXHAUSTED_CHOICES:
        raise ValueError(f"on_budget_exhausted must be one of {ON_BUDGET_EXHAUSTED_CHOICES}, got {value!r}")
    return value


class LoggingHost(Protocol):
    """What closing a finished task's reservation needs from its caller (an operator or a sensor):
    a logger, to say what it settled or released."""

    @property
    def log(self) -> Any: ...


class BudgetHost(Protocol):
    """What the budget mixin and the approval mixin (``budgets.approval``) need from the operator
    they are mixed into: one host, since both guard the same paid call of the same operator."""

    model: str
    reve_conn_id: str
    on_budget_exhausted: str
    execution_timeout: timedelta | None
    approval_above_credits: int | None
    approval_timeout: timedelta | None
    on_approval_rejected: str

    @property
    def log(self) -> Any: ...

    def budget_request_params(self) -> dict[str, Any]:
        """The validated request, as it will be sent (for the estimate and the fingerprint).

        :return: the request's fields.
        """
        ...

    def defer(
        self, *, trigger: Any, method_name: str, kwargs: Any = None, timeout: Any = None
    ) -> NoReturn: ...

    def execute(self, context: Any) -> Any: ...


class ReveBudgetMixin:
    """Reserve, settle and release credit budgets around the paid ``generate`` call.

    .. seealso::
        The guide: :ref:`budgets`.
    """

    def reserve_budget(self: BudgetHost, context: Mapping[str, Any]) -> None:
        """Before the paid call: reserve the worst-case estimate in every covering budget."""
        ledger = _ledger_or_none(self, before_paying=True)
        if ledger is None:
            return
        params = self.budget_request_params()
        from airflow_provider_reve.budgets.model import BudgetExhaustedError
        from airflow_provider_reve.client.catalog import estimate_credits  # where a task runs

        estimate = estimate_credits(self.model, **params)
        ident = _identity(context)
        # An earlier try of this run sent this request and never learned its outcome (killed, or
        # the answer lost); this try submits again (on_ambiguous_submit="retry"). Both may be
        # charged: the earlier reservation stays held for the first, this one gets its own.
        recalled = SubmittedTaskMemory(context, self.log).recall(
            request_fingerprint(self.model, params), quiet=True
        )
        afresh = recalled is not None and recalled.phase == SUBMITTING
        try:
            reservation = ledger.reserve(
                _key(self, context, params),
                _scope(self, context),
                estimate,
                run_id=ident["run_id"],
                task_id=ident["task_id"],
                map_index=ident["map_index"],
                afresh=afresh,
            )
        except BudgetExhaustedError as refused:
            _budget_exhausted(self, refused, context)
        except Exception as error:
            raise AirflowException(
                f"Could not reserve credits in the Reve ledger ({type(error).__name__}: {error}); "
                "nothing was submitted. Airflow's retries apply."
            ) from error
        if reservation is None:
            return
        self.log.info(
            "%s %s credits in budgets %s (reservation %s)%s",
            "Re-using the reservation of" if reservation.reused else "Reserved",
            estimate if estimate is not None else "unknown-price",
            ", ".join(f"{name}={credits}" for name, credits in sorted(reservation.lines.items())),
            reservation.id,
            "; the earlier try's request of unknown outcome keeps its own reservation until "
            "`airflow reve budget reconcile --release-unknown`"
            if afresh
            else "",
        )

    def note_budget_task(self: BudgetHost, context: Mapping[str, Any], task: ReveTask) -> None:
        """A paid task exists: remember its id beside the reservation, for ``reconcile``.

        :param task: the Reve task the API created.
        """
        found = _find(self, context)
        if found is not None:
            ledger, reservation = found
            _after_paying(
                self, "note the paid task", lambda: ledger.note_reve_task(reservation.id, task.task_id)
            )

    def settle_budget(self: BudgetHost, context: Mapping[str, Any], task: ReveTask) -> None:
        """SUCCESS: the reservation becomes what the task consumed.

        :param task: the finished Reve task.
        """
        found = _find(self, context)
        if found is not None:
            ledger, reservation = found
            _after_paying(
                self, "settle", lambda: ledger.settle(reservation.id, task.consumed_credits, task.task_id)
            )

    def release_budget(self: BudgetHost, context: Mapping[str, Any]) -> None:
        """FAILED (refunded) or nothing created: give the reserved credits back."""
        found = _find(self, context)
        if found is not None:
            ledger, reservation = found
            _after_paying(self, "release", lambda: ledger.release(reservation.id))

    def release_budget_if_nothing_created(
        self: BudgetHost, context: Mapping[str, Any], error: BaseException
    ) -> None:
        """The paid call raised: release only when the API answered that it created nothing.

        :param error: what the paid call raised.
        """
        from airflow_provider_reve.exceptions import ReveAmbiguousSubmissionError, ReveError

        cause: BaseException | None = error
        while cause is not None:
            if isinstance(cause, ReveAmbiguousSubmissionError):
                return  # a paid task may exist: stays reserved until settled or reconciled
            if isinstance(cause, ReveError):
                ReveBudgetMixin.release_budget(self, context)
                return
            cause = cause.__cause__
        # Deferred for a back-off (kept for the resumed try), a kill, a timeout: unknown outcome.

    def execute_after_budget_wait(self: BudgetHost, context: Any, event: Any = None, **kwargs: Any) -> Any:
        """Resumed after ``on_budget_exhausted="wait"``: try to reserve (and submit) again.

        :param event: the timer trigger's event (unused).
        :return: what the operator's ``execute()`` returns.
        """
        return self.execute(context)


def close_reservation_of_finished_task(host: LoggingHost, task: ReveTask) -> None:
    """A task submitted elsewhere finished: settle its open reservation, or release it if FAILED.

    For the ``ReveTaskSensor`` waiting for a task submitted with ``wait_for_completion=False``:
    the operator noted the Reve task id beside its reservation, so the reservation is found by
    that id (the sensor cannot know the operator's key). Only a ``reserved`` reservation changes,
    so a sensor run twice, or the submitter's own retry, counts the spend once. Without a ledger,
    or a reservation, nothing happens; the ledger failing is logged, never raised: it is paid.

    :param host: what logs (the sensor).
    :param task: the finished task, as the status API answered it.
    """
    if not task.is_finished:
        return
    ledger = _ledger_or_none(host, before_paying=False)
    if ledger is None:
        return
    try:
        reservation = ledger.find_open_for_reve_task(task.task_id)
    except Exception as error:
        host.log.error("Could not read the Reve ledger (%s): budgets were not updated.", type(error).__name__)
        return
    if reservation is None:
        return
    if task.succeeded:
        _after_paying(
            host, "settle", lambda: ledger.settle(reservation.id, task.consumed_credits, task.task_id)
        )
    else:
        _after_paying(host, "release", lambda: ledger.release(reservation.id))


def _ledger_or_none(host: LoggingHost, *, before_paying: bool) -> Ledger | None:
    from airflow_provider_reve.budgets.ledger import Ledger

    try:
        return Ledger.configured()
    except Exception as error:
        if before_paying:
            raise AirflowException(
                f"The Reve ledger ([reve] ledger_conn_id) cannot be used ({type(error).__name__}: "
                f"{error}); nothing was submitted. Airflow's retries apply."
            ) from error
        host.log.error("The Reve ledger cannot be used (%s): budgets were not updated.", type(error).__name__)
        return None


def _find(host: BudgetHost, context: Mapping[str, Any]) -> tuple[Ledger, Reservation] | None:
    ledger = _ledger_or_none(host, before_paying=False)
    if ledger is None:
        return None
    try:
        reservation = ledger.find(_key(host, context, host.budget_request_params()))
    except Exception as error:
        host.log.error("Could not read the Reve ledger (%s): budgets were not updated.", type(error).__name__)
        return None
    return None if reservation is None else (ledger, reservation)


def _after_paying(host: LoggingHost, what: str, action: Any) -> None:
    try:
        action()
    except Exception as error:  # the money is spent either way; reconcile mends the ledger
        host.log.error(
            "Could not %s the budget reservation (%s); it stays reserved until "
            "`airflow reve budget reconcile` settles it.",
            what,
            type(error).__name__,
        )


def _identity(context: Mapping[str, Any]) -> dict[str, Any]:
    ti = context.get("ti")
    dag = context.get("dag")
    map_index = getattr(ti, "map_index", None)
    return {
        "dag_id": getattr(ti, "dag_id", None) or getattr(dag, "dag_id", None),
        "run_id": getattr(ti, "run_id", None),
        "task_id": getattr(ti, "task_id", None),
        "map_index": map_index if isinstance(map_index, int) else None,
        # A retry keeps max_tries, a clear raises it (see mixins.reattach): a clear reserves afresh.
        "run_of_tries": getattr(ti, "max_tries", None),
    }


def _key(host: BudgetHost, context: Mapping[str, Any], params: dict[str, Any]) -> str:
    from airflow_provider_reve.budgets.ledger import reservation_key

    ident = _identity(context)
    return reservation_key(
        ident["dag_id"],
        ident["run_id"],
        ident["task_id"],
        ident["map_index"],
        ident["run_of_tries"],
        request_fingerprint(host.model, params),
    )


def budget_scope(host: BudgetHost, context: Mapping[str, Any]) -> Scope:
    """What budgets see of this task: its connection, DAG, DAG tags and model.

    :param host: the operator.
    :return: the scope.
    """
    return _scope(host, context)


def _scope(host: BudgetHost, context: Mapping[str, Any]) -> Scope:
    from airflow_provider_reve.budgets.model import Scope

    dag = context.get("dag")
    tags = getattr(dag, "tags", None) or ()
    return Scope(
        conn_id=host.reve_conn_id,
        dag_id=_identity(context)["dag_id"],
        dag_tags=frozenset(str(tag) for tag in tags),
        model=host.model,
    )


def _budget_exhausted(
    host: BudgetHost, refused: BudgetExhaustedError, context: Mapping[str, Any]
) -> NoReturn:
    message = f"No Reve budget room, nothing was submitted: {refused}."
    if host.on_budget_exhausted == "skip":
        raise AirflowSkipException(f"{message} Skipping (on_budget_exhausted='skip').")
    if host.on_budget_exhausted == "wait":
        _wait_for_room(host, refused, context, message)
    raise AirflowFailException(
        f"{message} Raise the limit (`airflow reve budget set`), wait for the reset, or set "
        "on_budget_exhausted='wait' or 'skip'."
    )


def _wait_for_room(
    host: BudgetHost, refused: BudgetExhaustedError, context: Mapping[str, Any], message: str
) -> None:
    if any(refusal.requested_credits is None for refusal in refused.refusals):
        return  # an unknown price is refused for good: waiting cannot change it
    now = datetime.now(timezone.utc)
    resets_at = refused.resets_at
    until_reset = (resets_at - now).total_seconds() if resets_at else float("inf")
    ti = context.get("ti")
    time_left = deferral_budget(float("inf"), host.execution_timeout, getattr(ti, "start_date", None))
    wait = max(MIN_BUDGET_WAIT_SECONDS, min(until_reset, budget_recheck_seconds(), time_left))
    if wait > time_left:
        raise AirflowFailException(f"{message} execution_timeout ended while waiting for budget room.")
    from airflow.providers.standard.triggers.temporal import DateTimeTrigger

    host.log.info("%s Waiting %.0fs (on_budget_exhausted='wait'), no worker slot held.", message, wait)
    host.defer(
        trigger=DateTimeTrigger(moment=now + timedelta(seconds=wait)),
        method_name="execute_after_budget_wait",
        timeout=timedelta(seconds=wait) + DEFER_TIMEOUT_GRACE,
    )

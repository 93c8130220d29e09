"""Operator glue: a person approves an expensive generation before anything is reserved or paid.

``approval_above_credits=N``: a request whose estimate (``estimate_credits``) exceeds ``N``, or
whose price cannot be estimated, is shown in Airflow's Human-in-the-loop "Required actions"
(prompt, model, estimate, each covering budget's headroom) with the options ``Approve`` and
``Reject``. The task waits there without a worker slot, exactly as the standard provider's
``HITLOperator`` does (Airflow 3.3+: the ``awaiting_input`` state; before: ``HITLTrigger``).

Invariants:

* nothing is reserved or submitted before the answer: the host asks here, before
  ``reserve_budget`` and its paid call;
* approve -> the same ``execute`` flow continues (reserve, submit); reject -> fail or skip
  (``on_approval_rejected``); no answer by ``approval_timeout`` -> fail, nothing paid;
* one approval per run of tries and request: it is kept in ``task_state_store`` (beside the
  request's fingerprint and the run of tries, as ``mixins.reattach`` does), so a retry of an approved
  task does not ask again, and a retry that re-attaches to a paid task never reaches this at all;
  a clear, or a request that renders differently, asks afresh.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any, NoReturn

from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException, AirflowSkipException

from airflow_provider_reve.budgets.mixin import BudgetHost, budget_scope
from airflow_provider_reve.mixins.reattach import request_fingerprint

__all__ = [
    "APPROVAL_OPTIONS",
    "APPROVAL_STATE_KEY",
    "APPROVE",
    "ON_APPROVAL_REJECTED_CHOICES",
    "REJECT",
    "ApprovalHost",
    "ReveApprovalMixin",
    "check_approval_options",
]

APPROVE = "Approve"
REJECT = "Reject"
APPROVAL_OPTIONS = [APPROVE, REJECT]
ON_APPROVAL_REJECTED_CHOICES = ("fail", "skip")
#: the task_state_store entry that keeps an approval for a run of tries
APPROVAL_STATE_KEY = "reve_approval"
_PROMPT_SHOWN = 2000  # characters of the prompt shown in the approval body


def check_approval_options(
    approval_above_credits: int | None, approval_timeout: timedelta | float | None, on_approval_rejected: str
) -> tuple[int | None, timedelta | None, str]:
    """The three approval arguments, checked when the DAG is parsed.

    :param approval_above_credits: ask a person above this estimate; ``None``: never ask.
    :param approval_timeout: how long to wait for the answer (a ``timedelta`` or seconds).
    :param on_approval_rejected: what a rejection does (one of ``ON_APPROVAL_REJECTED_CHOICES``).
    :return: the three values, the timeout as a ``timedelta``.
    :raises ValueError: naming the argument to fix.
    """
    if approval_above_credits is not None and (
        not isinstance(approval_above_credits, int)
        or isinstance(approval_above_credits, bool)
        or approval_above_credits < 0
    ):
        raise ValueError(
            f"approval_above_credits must be a whole number >= 0, got {approval_above_credits!r}"
        )
    if on_approval_rejected not in ON_APPROVAL_REJECTED_CHOICES:
        raise ValueError(
            f"on_approval_rejected must be one of {ON_APPROVAL_REJECTED_CHOICES}, "
            f"got {on_approval_rejected!r}"
        )
    if approval_timeout is not None and not isinstance(approval_timeout, timedelta):
        approval_timeout = timedelta(seconds=float(approval_timeout))
    if approval_timeout is not None and approval_timeout.total_seconds() <= 0:
        raise ValueError(f"approval_timeout must be positive, got {approval_timeout!r}")
    return approval_above_credits, approval_timeout, on_approval_rejected


#: What the mixin needs from the operator it is mixed into: the budget mixin's host (one Protocol
#: for both; this name stays for the imports that use it).
ApprovalHost = BudgetHost


class ReveApprovalMixin:
    """Ask a person in Airflow's Required actions before an expensive generation.

    .. seealso::
        The guide: :ref:`budgets` ("Approval above a threshold").
    """

    def wait_for_approval(self: BudgetHost, context: Mapping[str, Any]) -> None:
        """Before reserving: return when no approval is needed or it was given; else park the task."""
        if self.approval_above_credits is None:
            return
        from airflow_provider_reve.client.catalog import estimate_credits  # where a task runs

        params = self.budget_request_params()
        estimate = estimate_credits(self.model, **params)
        if estimate is not None and estimate <= self.approval_above_credits:
            return
        fingerprint = request_fingerprint(self.model, params)
        if _approved(context, fingerprint):
            self.log.info("Approved in Required actions earlier in this run of tries; not asking again.")
            return
        ti = context.get("ti") or context.get("task_instance")
        ti_id = getattr(ti, "id", None)
        if ti_id is None:
            raise AirflowFailException(
                f"approval_above_credits={self.approval_above_credits}: this request needs a person's "
                "approval, which needs a task instance of a real run; nothing was submitted."
            )
        from airflow.sdk.execution_time.hitl import upsert_hitl_detail

        cost = f"about {estimate} credits" if estimate is not None else "an unknown number of credits"
        upsert_hitl_detail(
            ti_id=ti_id,
            options=list(APPROVAL_OPTIONS),
            subject=f"Approve a Reve generation costing {cost} ({self.model})?",
            body=_body(self, context, params, estimate),
            defaults=None,  # no answer by the timeout fails: nothing is paid unless a person says so
            multiple=False,
            params={},
        )
        self.log.info(
            "This %s request costs %s, above approval_above_credits=%d: waiting for approval in "
            "Required actions (timeout %s). Nothing was reserved or submitted.",
            self.model,
            cost,
            self.approval_above_credits,
            self.approval_timeout or "none",
        )
        _park(self, ti_id, {"fingerprint": fingerprint})

    def execute_after_approval(
        self: BudgetHost, context: Any, event: Any = None, fingerprint: str | None = None, **kwargs: Any
    ) -> Any:
        """Resumed with the person's answer (or the timeout): go on, skip or fail.

        :param event: the trigger's event: the answer, or an error (the timeout).
        :param fingerprint: the fingerprint of the request the person was shown; a request that
            renders differently now is not submitted on that approval.
        :return: what the operator's ``execute()`` returns, once approved.
        """
        if not isinstance(event, Mapping):
            raise AirflowFailException(
                f"No usable approval answer ({type(event).__name__}); nothing was submitted."
            )
        if "error" in event:
            if event.get("error_type") == "timeout":
                raise AirflowFailException(
                    f"No one approved this Reve generation within approval_timeout={self.approval_timeout}; "
                    "nothing was reserved or submitted."
                )
            raise AirflowException(
                f"The approval could not be read ({event.get('error')}); nothing was submitted."
            )
        chosen = event.get("chosen_options") or []
        who = _who(event.get("responded_by_user"))
        if chosen != [APPROVE]:
            message = f"Rejected in Required actions by {who}; nothing was reserved or submitted."
            if self.on_approval_rejected == "skip":
                raise AirflowSkipException(f"{message} Skipping (on_approval_rejected='skip').")
            raise AirflowFailException(message)
        params = self.budget_request_params()
        now_fingerprint = request_fingerprint(self.model, params)
        if fingerprint is not None and fingerprint != now_fingerprint:
            # What was shown is not what would be sent (a template rendered differently).
            raise AirflowFailException(
                "The request changed after it was approved; nothing was submitted. Clear the task "
                "to ask again."
            )
        _remember_approval(self, context, now_fingerprint)
        self.log.info("Approved in Required actions by %s: reserving and submitting.", who)
        return self.execute(context)


def _park(host: BudgetHost, ti_id: Any, kwargs: dict[str, Any]) -> NoReturn:
    try:
        from airflow.sdk.exceptions import TaskAwaitingInput
    except ImportError:  # before Airflow 3.3: wait in the triggerer, as HITLOperator does there
        from airflow.providers.standard.triggers.hitl import HITLTrigger
        from airflow.sdk.timezone import utcnow

        timeout = host.approval_timeout
        host.defer(
            trigger=HITLTrigger(
                ti_id=ti_id,
                options=list(APPROVAL_OPTIONS),
                defaults=None,
                params={},
                multiple=False,
                timeout_datetime=utcnow() + timeout if timeout else None,
            ),
            method_name="execute_after_approval",
            kwargs=kwargs,
        )
    raise TaskAwaitingInput(
        method_name="execute_after_approval", kwargs=kwargs, timeout=host.approval_timeout
    )


def _run_of_tries(context: Mapping[str, Any]) -> int | None:
    # A retry keeps max_tries, a clear raises it: an approval holds for one run of tries.
    max_tries = getattr(context.get("ti"), "max_tries", None)
    return max_tries if isinstance(max_tries, int) and not isinstance(max_tries, bool) else None


def _approved(context: Mapping[str, Any], fingerprint: str) -> bool:
    store = context.get("task_state_store")
    entry = store.get(APPROVAL_STATE_KEY) if store is not None else None
    return (
        isinstance(entry, dict)
        and entry.get("fingerprint") == fingerprint
        and entry.get("run") == _run_of_tries(context)
    )


def _remember_approval(host: BudgetHost, context: Mapping[str, Any], fingerprint: str) -> None:
    store = context.get("task_state_store")
    if store is None:
        return
    try:
        store.set(APPROVAL_STATE_KEY, {"fingerprint": fingerprint, "run": _run_of_tries(context)})
    except Exception as error:  # this try goes on; only a retry would ask again
        host.log.warning("Could not keep the approval in task_state_store (%s).", type(error).__name__)


def _who(user: Any) -> str:
    if isinstance(user, Mapping):
        return str(user.get("name") or user.get("id") or "someone")
    return "someone"


def _body(host: BudgetHost, context: Mapping[str, Any], params: dict[str, Any], estimate: int | None) -> str:
    prompt = str(params.get("prompt") or "(none)")
    if len(prompt) > _PROMPT_SHOWN:
        prompt = prompt[:_PROMPT_SHOWN] + " …"
    shown = {key: value for key, value in params.items() if key != "prompt"}
    lines = [
        f"**Model:** `{host.model}`",
        f"**Estimate:** {estimate if estimate is not None else 'unknown (no published price)'} credits "
        f"(approval asked above {host.approval_above_credits})",
        f"**Connection:** `{host.reve_conn_id}`",
        "",
        "**Prompt:**",
        "",
        *(f"> {line}" for line in prompt.splitlines() or [""]),
    ]
    if shown:
        lines += [
            "",
            "**Request:** " + ", ".join(f"`{key}={value!r}`" for key, value in sorted(shown.items())),
        ]
    lines += ["", *_headroom_lines(host, context, estimate)]
    lines += [
        "",
        "Nothing has been reserved or paid. **Approve** to reserve and submit; **Reject** to "
        f"{'skip' if host.on_approval_rejected == 'skip' else 'fail'} the task.",
    ]
    return "\n".join(lines)


def _headroom_lines(host: BudgetHost, context: Mapping[str, Any], estimate: int | None) -> list[str]:
    from airflow_provider_reve.budgets.ledger import Ledger

    try:
        ledger = Ledger.configured()
        if ledger is None:
            return ["**Budgets:** off (set `[reve] ledger_conn_id` to reserve credits in budgets)."]
        statuses = [ledger.status(budget.name) for budget in ledger.covering(budget_scope(host, context))]
    except Exception as error:  # the person still decides; the reservation checks again
        return [f"**Budgets:** could not be read ({type(error).__name__})."]
    if not statuses:
        return ["**Budgets:** none covers this task."]
    lines = ["**Budgets covering it:**", ""]
    for status in statuses:
        if status is None:
            continue
        after = status.remaining_credits - estimate if estimate is not None else None
        lines.append(
            f"- `{status.budget.name}`: {status.remaining_credits} of {status.budget.limit_credits} "
            f"credits left per {status.budget.window} (spent {status.spent_credits}, reserved "
            f"{status.reserved_credits})"
            + (f"; {after} after this one" if after is not None and after >= 0 else "")
            + ("; **not enough room**" if after is not None and after < 0 else "")
        )
    return lines

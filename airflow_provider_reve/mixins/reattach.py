"""Remembers what a task instance submitted, so a retry re-attaches instead of paying again.

XCom is cleared before a retry, so the memory lives in ``context["task_state_store"]`` (Airflow
3.3+), which is scoped to (dag, run, task, map index) and survives retries. One entry per task
instance, written at three moments, each one store call:

* ``submitting`` -- written *before* the paid request is sent. A later try that finds it knows a
  request may have been paid for without an answer (a kill or ``execution_timeout`` mid-request).
* ``refused`` -- the account answered ``TOO_MANY_TASKS`` (nothing was created); the entry keeps
  the back-off's attempt and first refusal so ``max_submit_wait`` holds across deferrals.
* ``submitted`` -- a paid task exists: its id.

The entry is never deleted after success: Airflow may still fail the try after ``execute()``
returned (``post_execute``, the XCom push, the success report), and the retry must find the task
again. A *clear* must generate afresh, and the try number alone cannot tell a clear from a retry
(:func:`cleared_since` says how Airflow 3.3 lets us tell, and where it does not).
``[state_store] clear_on_success = True`` removes entries atomically when success is recorded;
either way works.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn, Protocol

from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException

if TYPE_CHECKING:
    from airflow_provider_reve.exceptions import ReveAmbiguousSubmissionError, ReveError
    from airflow_provider_reve.models import ReveTask

__all__ = [
    "ON_AMBIGUOUS_SUBMIT_CHOICES",
    "REFUSED",
    "STATE_KEY",
    "SUBMITTED",
    "SUBMITTING",
    "ReattachHost",
    "Recalled",
    "ReveReattachMixin",
    "SubmittedTaskMemory",
    "check_on_ambiguous_submit",
    "cleared_since",
    "request_fingerprint",
    "run_of_tries",
]

STATE_KEY = "reve_submitted_task"

SUBMITTING = "submitting"
REFUSED = "refused"
SUBMITTED = "submitted"

#: ``on_ambiguous_submit``: a submission sent without an answer fails, or lets retries resubmit.
ON_AMBIGUOUS_SUBMIT_CHOICES = ("fail", "retry")

_warned_unavailable = False


def check_on_ambiguous_submit(value: str) -> str:
    """``on_ambiguous_submit``, checked when the DAG is parsed.

    :param value: ``"fail"`` or ``"retry"``.
    :return: ``value``.
    :raises ValueError: anything else.
    """
    if value not in ON_AMBIGUOUS_SUBMIT_CHOICES:
        raise ValueError(f"on_ambiguous_submit must be one of {ON_AMBIGUOUS_SUBMIT_CHOICES}")
    return value


def request_fingerprint(model: str, params: Mapping[str, Any]) -> str:
    """A short hash of the request, so a retry re-attaches only to the request it would send.

    :param model: the model id.
    :param params: the request's fields.
    :return: the hash, as hex.
    """
    canonical = json.dumps({"model": model, **params}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


class Recalled(NamedTuple):
    """What an earlier try of this run left behind for the same request.

    A ``NamedTuple``, not a frozen dataclass: as immutable, and a DAG file's parse does not pay
    for generating a dataclass's methods (this module is imported for the mixin at every parse).

    :param phase: ``"submitting"``, ``"submitted"`` or ``"refused"``.
    :param task_id: the paid Reve task, once submitted.
    :param attempt: the submission's number, after a ``TOO_MANY_TASKS`` refusal.
    :param first_refusal: the UNIX time of the first refusal.
    """

    phase: str
    task_id: str | None = None
    attempt: int | None = None
    first_refusal: float | None = None


def run_of_tries(context: Mapping[str, Any]) -> int | None:
    """Which run of tries this is: the task instance's ``max_tries`` (recorded in every entry).

    A retry never changes ``max_tries``; a clear of a queued, scheduled, deferred or finished
    instance sets it to ``try_number + retries``, past any earlier value (unless ``retries`` was
    lowered at the same time: then the clear re-attaches, which costs nothing). Not
    ``max_tries - retries``: ``retries`` comes from the DAG file the worker parsed, which may have
    changed between two tries of one run.

    :param context: the task's context.
    :return: ``max_tries``, or ``None`` when the context has no task instance.
    """
    max_tries = getattr(context.get("ti"), "max_tries", None)
    if not isinstance(max_tries, int) or isinstance(max_tries, bool):
        return None
    return max_tries


def _try_number(context: Mapping[str, Any]) -> int | None:
    number = getattr(context.get("ti"), "try_number", None)
    return number if isinstance(number, int) and not isinstance(number, bool) else None


def cleared_since(entry: Mapping[str, Any], context: Mapping[str, Any]) -> bool:
    """Whether the task instance was cleared after the try that wrote ``entry``.

    Airflow 3.3 (``clear_task_instances``), by the state the instance was cleared in:

    * queued, scheduled, deferred, up for retry or finished: ``max_tries`` is raised to
      ``try_number + retries`` -> the entry's ``run`` differs;
    * running: it goes ``restarting`` and keeps ``max_tries``; the killed try is then either
      reported ended by the executor, and the scheduler raises ``max_tries`` as a clear does
      (-> ``run`` differs), or failed (a lost heartbeat), and ``restarting`` is always eligible
      for a retry, even past ``max_tries``. A try numbered past ``max_tries + 1`` is one no retry
      can be: only a clear while running reaches it (-> cleared, unless this very try wrote the
      entry: a deferral resuming).

    Left indistinguishable from a retry: a clear of a *running* instance with retries left whose
    killed try Airflow fails without raising ``max_tries``. That try re-attaches to the task the
    earlier try paid for (nothing is paid twice); clear it again once it is no longer running to
    generate afresh. ``dag_run.clear_number`` is not used: it also counts clears of the run's
    other tasks, and reading one of those as this task's clear would pay twice.

    :param entry: the state store's entry.
    :param context: the task's context.
    :return: ``True`` when the instance was cleared since.
    """
    run, marker = entry.get("run"), run_of_tries(context)
    if run is not None and marker is not None and run != marker:
        return True
    number = _try_number(context)
    return marker is not None and number is not None and number > marker + 1 and entry.get("try") != number


class SubmittedTaskMemory:
    """Reads and writes the task instance's submission entry in its state store.

    :param context: the task's context.
    :param log: where what it finds is logged.
    """

    def __init__(self, context: Mapping[str, Any], log: logging.Logger | Any) -> None:
        self._store = context.get("task_state_store")
        self._log = log
        self._context = context
        self._run_marker = run_of_tries(context)
        self._try_number = _try_number(context)
        if self._store is None:
            global _warned_unavailable
            if not _warned_unavailable:
                _warned_unavailable = True
                log.warning(
                    "task_state_store is not available (it needs Airflow 3.3+): if this worker "
                    "crashes after submitting, a retry cannot re-attach and will submit again."
                )

    @property
    def available(self) -> bool:
        return self._store is not None

    def recall(self, fingerprint: str, *, quiet: bool = False) -> Recalled | None:
        """What an earlier try of *this run* left for this request; ``None`` after a clear.

        ``quiet``: log nothing (a second look, by the budgets, at what ``_reattach`` already said).

        :param fingerprint: the request's :func:`request_fingerprint`.
        :param quiet: log nothing.
        :return: what is recalled, or ``None``.
        """
        if self._store is None:
            return None
        entry = self._store.get(STATE_KEY)
        if not isinstance(entry, dict):
            return None
        if cleared_since(entry, self._context):
            if quiet:
                return None
            self._log.info(
                "The task was cleared since Reve task %s was submitted (try %s): generating afresh.",
                entry.get("task_id") or "(none)",
                entry.get("try"),
            )
            return None
        if entry.get("fingerprint") != fingerprint and entry.get("phase") == SUBMITTING:
            # This run already sent a paid request whose outcome is unknown; that the request
            # renders differently now (a templated seed, a signed URL) does not make it unpaid.
            return Recalled(SUBMITTING)
        if entry.get("fingerprint") != fingerprint:
            if entry.get("task_id") and not quiet:
                self._log.warning(
                    "An earlier try submitted Reve task %s for a different request; not re-attaching.",
                    entry["task_id"],
                )
            return None
        # Entries written before phases existed hold just the task id and fingerprint.
        phase = entry.get("phase", SUBMITTED)
        task_id = entry.get("task_id") if isinstance(entry.get("task_id"), str) else None
        if phase == SUBMITTED and task_id:
            return Recalled(SUBMITTED, task_id=task_id)
        if phase == REFUSED:
            attempt, first = entry.get("attempt"), entry.get("first_refusal")
            if isinstance(attempt, int) and isinstance(first, (int, float)):
                return Recalled(REFUSED, attempt=attempt, first_refusal=float(first))
            return Recalled(REFUSED)
        return Recalled(SUBMITTING)

    def begin_submission(self, fingerprint: str) -> None:
        """Before the paid request leaves: a later try that finds this knows it may exist.

        :param fingerprint: the request's :func:`request_fingerprint`.
        """
        self._write(fingerprint, phase=SUBMITTING)

    def remember(self, task_id: str, fingerprint: str) -> None:
        """A paid task exists. One write replaces the in-flight or back-off entry.

        :param task_id: the paid Reve task.
        :param fingerprint: the request's :func:`request_fingerprint`.
        """
        self._write(fingerprint, phase=SUBMITTED, task_id=task_id)

    def remember_refusal(self, fingerprint: str, attempt: int, first_refusal: float) -> None:
        """``TOO_MANY_TASKS``: nothing was created; keep the back-off's progress.

        :param fingerprint: the request's :func:`request_fingerprint`.
        :param attempt: the number of the next submission.
        :param first_refusal: the UNIX time of the first refusal.
        """
        self._write(fingerprint, phase=REFUSED, attempt=attempt, first_refusal=first_refusal)

    def submission_created_nothing(self) -> None:
        """The request provably created nothing: a later try may submit without doubt."""
        if self._store is None:
            return
        try:
            self._store.delete(STATE_KEY)
        except Exception as error:  # the original error matters more; the entry only makes a retry careful
            self._log.warning(
                "Could not clear the submission marker (%s); a retry will treat the earlier "
                "submission as of unknown outcome.",
                type(error).__name__,
            )

    def _write(self, fingerprint: str, **fields: Any) -> None:
        if self._store is None:
            return
        entry = {"fingerprint": fingerprint, "run": self._run_marker, "try": self._try_number, **fields}
        self._store.set(STATE_KEY, {k: v for k, v in entry.items() if v is not None})


_REMEMBER_ATTEMPTS = 3


class ReattachHost(Protocol):
    """What :class:`ReveReattachMixin` needs from the operator that mixes it in."""

    @property
    def log(self) -> Any: ...

    @property
    def hook(self) -> Any: ...

    model: str
    on_ambiguous_submit: str

    def _raise_for_error(self, error: ReveError) -> NoReturn: ...


class ReveReattachMixin:
    """The generate operator's memory of what it paid for: re-attach, remember, refuse to guess.

    The host declares ``model``, ``on_ambiguous_submit`` ("fail" or "retry"), a ``hook`` with
    ``get_status`` and a ``log``, and raises for an error by its policy (``ReveErrorPolicyMixin``).
    Its ``on_kill`` says what this memory means for a killed try.
    """

    def on_kill(self: ReattachHost) -> None:
        # There is no cancel endpoint: a killed try leaves its Reve task running (and paid).
        # The state store remembers it, so a retry of this run re-attaches instead of paying again.
        self.log.warning(
            "Killed while working on a Reve request; a task already submitted keeps running and is "
            "remembered: a retry re-attaches to it, a clear generates afresh."
        )

    def _memory(self: ReattachHost, context: Mapping[str, Any]) -> SubmittedTaskMemory:
        return SubmittedTaskMemory(context, self.log)

    def _reattach(self: ReattachHost, memory: SubmittedTaskMemory, fingerprint: str) -> ReveTask | None:
        """The task an earlier try of this run paid for, still usable; ``None`` to submit afresh."""
        from airflow_provider_reve.exceptions import ReveError, ReveNotFoundError

        recalled = memory.recall(fingerprint)
        if recalled is None or recalled.phase == REFUSED:
            return None
        if recalled.phase == SUBMITTING:
            ReveReattachMixin._raise_interrupted_submission(self)
            return None  # on_ambiguous_submit="retry": submit again, as the user accepted
        assert recalled.task_id is not None
        task_id = recalled.task_id
        try:
            task: ReveTask = self.hook.get_status(task_id, model=self.model)
        except ReveNotFoundError as error:
            if error.code != "TASK_NOT_FOUND":
                # A gateway's bare 404 says nothing about the task: treat it as a transient read.
                raise AirflowException(
                    f"Could not read remembered Reve task {task_id} ({error}); not submitting again. "
                    "Airflow's retries apply."
                ) from error
            self.log.warning(
                "Remembered Reve task %s no longer exists (TASK_NOT_FOUND); submitting afresh.", task_id
            )
            return None
        except ReveError as error:
            self._raise_for_error(error)
        if task.failed:
            self.log.warning(
                "Remembered Reve task %s FAILED (%s, refunded); submitting afresh.", task_id, task.error_code
            )
            return None
        self.log.info(
            "Re-attaching to Reve task %s (%s) submitted by an earlier try: not submitting again.",
            task_id,
            task.status,
        )
        return task

    def _raise_interrupted_submission(self: ReattachHost) -> None:
        message = (
            "An earlier try of this task was interrupted while submitting this request (killed, or "
            "execution_timeout, before the API answered): a paid Reve task may exist."
        )
        if self.on_ambiguous_submit == "retry":
            self.log.warning(
                "%s on_ambiguous_submit='retry': submitting again (possible second charge).", message
            )
            return
        raise AirflowFailException(
            f"{message} Nothing was submitted again. Check the Reve dashboard; clear the task to "
            "generate afresh, or set on_ambiguous_submit='retry' to let retries resubmit."
        )

    def _raise_ambiguous(self: ReattachHost, error: ReveAmbiguousSubmissionError) -> NoReturn:
        if self.on_ambiguous_submit == "retry":
            self.log.warning(
                "Submission outcome unknown and on_ambiguous_submit='retry': Airflow's retries will "
                "submit again, which may be charged twice. %s",
                error,
            )
            raise AirflowException(str(error)) from error
        raise AirflowFailException(
            f"{error} Check the Reve dashboard for the task before re-running; set "
            "on_ambiguous_submit='retry' to let Airflow retries resubmit (possible second charge)."
        ) from error

    def _remember_paid_task(
        self: ReattachHost, memory: SubmittedTaskMemory, task: ReveTask, fingerprint: str
    ) -> None:
        for attempt in range(1, _REMEMBER_ATTEMPTS + 1):
            try:
                memory.remember(task.task_id, fingerprint)
                return
            except Exception as error:
                failure = type(error).__name__
                if attempt < _REMEMBER_ATTEMPTS:
                    time.sleep(0.5 * attempt)  # the API server's hiccups are brief
        # The task is paid for; failing now would orphan it, so go on with it. The in-flight
        # marker stays: a retry of this run treats the submission as of unknown outcome.
        self.log.error(
            "Reve task %s was created but could not be remembered in task_state_store (%s, %d "
            "attempts); continuing with it. If this try fails, a retry applies "
            "on_ambiguous_submit=%r to it (note the id: the Reve dashboard shows it).",
            task.task_id,
            failure,
            _REMEMBER_ATTEMPTS,
            self.on_ambiguous_submit,
        )

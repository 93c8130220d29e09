"""Turns what happened to a Reve task into what Airflow should do next.

The classes come from :mod:`airflow_provider_reve.client.retry`; this module only maps them:

* permanent (bad input, bad key, no credits, unknown task, content policy) ->
  ``AirflowFailException``: no Airflow retry is spent on something that cannot succeed;
* content policy with ``on_content_policy_violation="skip"`` -> ``AirflowSkipException``;
* transient (rate limits, 5xx, timeouts, FAILED tasks with a transient code -- refunded, so a
  retry costs nothing extra) -> ``AirflowException``, so the user's ``retries`` apply;
* after a task is paid and finished, every error on the way to its stored files is transient
  (:func:`raise_for_storing_error`): a retry re-attaches for free. Only a result URL that no try
  can fetch (expired, refused by the download policy, over ``max_bytes``) is permanent.

Every decision is logged with its class and reason.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

from airflow.providers.common.compat.sdk import (
    AirflowException,
    AirflowFailException,
    AirflowSkipException,
)

from airflow_provider_reve import defaults

# The retry classes, the exceptions and ReveTask are imported where a task runs: a DAG file
# imports this module for the mixin, at every parse.
if TYPE_CHECKING:
    from airflow_provider_reve.exceptions import ReveError
    from airflow_provider_reve.models import ReveTask
    from airflow_provider_reve.triggers.reve import ReveTaskEvent

__all__ = [
    "CONTENT_POLICY_VIOLATION",
    "ON_CONTENT_POLICY_CHOICES",
    "ErrorPolicyHost",
    "ReveErrorPolicyMixin",
    "check_on_content_policy_violation",
    "raise_for_error",
    "raise_for_failed_task",
    "raise_for_storing_error",
    "raise_for_trigger_error",
]

CONTENT_POLICY_VIOLATION = "CONTENT_POLICY_VIOLATION"
ON_CONTENT_POLICY_CHOICES = defaults.ON_CONTENT_POLICY_CHOICES


def check_on_content_policy_violation(value: str) -> str:
    """``on_content_policy_violation``, checked when the DAG is parsed.

    :param value: ``"fail"`` or ``"skip"``.
    :return: ``value``.
    :raises ValueError: anything else.
    """
    if value not in ON_CONTENT_POLICY_CHOICES:
        raise ValueError(f"on_content_policy_violation must be one of {ON_CONTENT_POLICY_CHOICES}")
    return value


def raise_for_error(
    error: ReveError, log: logging.Logger | Any, *, on_content_policy_violation: str = "fail"
) -> NoReturn:
    """Raise the Airflow exception that fits ``error`` (which is chained as the cause).

    :param error: what the hook or trigger raised.
    :param log: where the decision is logged.
    :param on_content_policy_violation: ``"fail"`` or ``"skip"``.
    :raises AirflowException: retryable, or ``AirflowFailException`` / ``AirflowSkipException``.
    """
    from airflow_provider_reve.client.retry import is_permanent

    code = getattr(error, "code", None)
    if code == CONTENT_POLICY_VIOLATION and on_content_policy_violation == "skip":
        log.warning("Skipping: the Reve API rejected the content (%s). %s", code, error)
        raise AirflowSkipException(f"Content policy violation: {error}") from error
    if is_permanent(error):
        log.error(
            "Reve error is PERMANENT (%s): no retry can succeed, failing without spending Airflow "
            "retries. %s",
            code or type(error).__name__,
            error,
        )
        raise AirflowFailException(str(error)) from error
    log.warning(
        "Reve error is TRANSIENT (%s): failing this try so that Airflow's retries apply. %s",
        code or type(error).__name__,
        error,
    )
    raise AirflowException(str(error)) from error


def raise_for_storing_error(error: BaseException, log: logging.Logger | Any) -> NoReturn:
    """A paid, finished task whose files could not be stored: fail the try so a retry stores them.

    A destination that is read-only, full or unreachable for a moment, or was refused by a check
    that guards *before* paying, is transient here. Never ``AirflowFailException``, which would
    spend no retries and leave the paid result behind, except for a URL no try can fetch.

    :param error: what storing raised.
    :param log: where the decision is logged.
    :raises AirflowException: retryable, or ``AirflowFailException`` for a URL no try can fetch.
    """
    from airflow_provider_reve.client.retry import is_permanent
    from airflow_provider_reve.exceptions import ReveDownloadError

    if isinstance(error, ReveDownloadError) and is_permanent(error):
        raise_for_error(error, log)
    log.warning(
        "Storing the files failed TRANSIENTLY (%s): the Reve task is paid; failing this try so that "
        "Airflow's retries re-attach to it (free) and store them. %s",
        type(error).__name__,
        error,
    )
    raise AirflowException(
        f"The result files could not be stored ({type(error).__name__}): {error}"
    ) from error


def raise_for_failed_task(
    task: ReveTask, log: logging.Logger | Any, *, on_content_policy_violation: str = "fail"
) -> NoReturn:
    """A task that ended FAILED: permanent by its error code, transient otherwise.

    :param task: the task that ended ``FAILED``.
    :param log: where the decision is logged.
    :param on_content_policy_violation: ``"fail"`` or ``"skip"``.
    :raises AirflowException: retryable, or ``AirflowFailException`` / ``AirflowSkipException``.
    """
    from airflow_provider_reve.client.retry import is_permanent_code
    from airflow_provider_reve.exceptions import ReveTaskFailedError

    error = ReveTaskFailedError(task)
    if task.error_code == CONTENT_POLICY_VIOLATION and on_content_policy_violation == "skip":
        log.warning("Skipping: %s", error)
        raise AirflowSkipException(str(error)) from error
    if is_permanent_code(task.error_code):
        log.error("Reve task FAILED with a PERMANENT error (%s): not retrying. %s", task.error_code, error)
        raise AirflowFailException(str(error)) from error
    log.warning(
        "Reve task FAILED with a TRANSIENT error (%s); failed tasks are refunded, so Airflow's "
        "retries may resubmit at no extra cost. %s",
        task.error_code or "no code",
        error,
    )
    raise AirflowException(str(error)) from error


def raise_for_trigger_error(event: ReveTaskEvent, log: logging.Logger | Any, *, what: str) -> NoReturn:
    """An ``error`` event from :class:`.ReveTaskTrigger`: trust its ``retryable`` flag first.

    The trigger has already classified the error it saw (``retryable=False`` for permanent
    ones, including configuration errors and gateway 401/403 pages that carry no code), so a
    permanent error seen in the triggerer fails at once, as it would in the worker.

    :param event: the trigger's ``error`` event.
    :param log: where the decision is logged.
    :param what: what was being waited for, for the message.
    :raises AirflowException: retryable, or ``AirflowFailException``.
    """
    from airflow_provider_reve.client.retry import is_permanent_code

    code = event.error_code
    if event.retryable is False or is_permanent_code(code):
        log.error(
            "%s failed with a PERMANENT error (%s): no retry can succeed, failing without spending "
            "Airflow retries. %s",
            what,
            code or "no code",
            event.message,
        )
        raise AirflowFailException(f"{what} failed permanently ({code or 'no code'}): {event.message}")
    log.warning(
        "%s failed with a TRANSIENT error (%s): failing this try so that Airflow's retries apply. %s",
        what,
        code or "no code",
        event.message,
    )
    raise AirflowException(f"{what} failed ({code or 'no code'}): {event.message}")


class ErrorPolicyHost(Protocol):
    """What :class:`ReveErrorPolicyMixin` needs from the operator that mixes it in."""

    @property
    def log(self) -> Any: ...

    on_content_policy_violation: str


class ReveErrorPolicyMixin:
    """The operator's error policy as two methods, so no call site repeats its settings.

    The host declares ``on_content_policy_violation`` ("fail" or "skip") and has a ``log``.
    """

    def _raise_for_error(self: ErrorPolicyHost, error: ReveError) -> NoReturn:
        raise_for_error(error, self.log, on_content_policy_violation=self.on_content_policy_violation)

    def _raise_for_failed_task(self: ErrorPolicyHost, task: ReveTask) -> NoReturn:
        raise_for_failed_task(task, self.log, on_content_policy_violation=self.on_content_policy_violation)

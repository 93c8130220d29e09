"""The submit back-off: while the account has ``TOO_MANY_TASKS`` in flight, wait and submit again.

Nothing was created by a refused submission, so waiting costs nothing but time; a deferrable
operator waits in the triggerer on a timer (no worker slot), and resumes in
``execute_after_backoff``. The attempt number and the first refusal travel in ``defer()``'s
kwargs and, for a resume that lost them (``dag.test()``), in the re-attach memory, so
``max_submit_wait`` holds across deferrals. No wait outlives ``execution_timeout``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

from airflow.providers.common.compat.sdk import AirflowException

from airflow_provider_reve.mixins.deadline import DEFER_TIMEOUT_GRACE, deferral_budget
from airflow_provider_reve.mixins.reattach import REFUSED, SubmittedTaskMemory, request_fingerprint

if TYPE_CHECKING:
    from airflow_provider_reve.exceptions import ReveRateLimitError

__all__ = ["BackoffHost", "ReveSubmitBackoffMixin"]


class BackoffHost(Protocol):
    """What :class:`ReveSubmitBackoffMixin` needs from the operator that mixes it in."""

    model: str
    deferrable: bool
    max_submit_wait: float

    @property
    def log(self) -> Any: ...

    @property
    def execution_timeout(self) -> timedelta | None: ...

    def defer(
        self,
        *,
        trigger: Any,
        method_name: str,
        kwargs: dict[str, Any] | None = None,
        timeout: timedelta | None = None,
    ) -> NoReturn: ...

    def _memory(self, context: Any) -> SubmittedTaskMemory: ...

    def _validated_params(self) -> dict[str, Any]: ...

    def _run(self, context: Any, *, submit_attempt: int, first_refusal: float | None) -> dict[str, Any]: ...

    def _time_left(self, context: Mapping[str, Any]) -> float: ...

    def _defer_submission(
        self, wait: float, attempt: int, first_refusal: float, context: Mapping[str, Any]
    ) -> None: ...


class ReveSubmitBackoffMixin:
    """Defers a refused submission on a timer and resumes it, bounded by ``execution_timeout``."""

    def execute_after_backoff(
        self: BackoffHost,
        context: Any,
        event: Any = None,
        submit_attempt: int | None = None,
        first_refusal: float | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Resumed after waiting out ``TOO_MANY_TASKS`` in the triggerer: submit again.

        :param event: the timer trigger's event (unused).
        :param submit_attempt: the number of the submission about to be made; ``None`` when the
            deferral's kwargs were lost: the state store has it.
        :param first_refusal: the UNIX time of the first ``TOO_MANY_TASKS`` refusal.
        :return: the XCom value of the finished (or submitted) task.
        """
        if submit_attempt is None:  # defer() kwargs lost (dag.test): the state store has them
            params = self._validated_params()
            recalled = self._memory(context).recall(request_fingerprint(self.model, params))
            if recalled is not None and recalled.phase == REFUSED and recalled.attempt is not None:
                submit_attempt, first_refusal = recalled.attempt, recalled.first_refusal
            else:
                submit_attempt, first_refusal = 1, None
        return self._run(context, submit_attempt=submit_attempt, first_refusal=first_refusal)

    def _wait_to_resubmit(
        self: BackoffHost,
        error: ReveRateLimitError,
        context: Mapping[str, Any],
        memory: SubmittedTaskMemory,
        fingerprint: str,
        attempt: int,
        first_refusal: float | None,
    ) -> tuple[int, float]:
        """``TOO_MANY_TASKS`` refused submission ``attempt`` (nothing was created): wait (in the
        triggerer when deferrable) and return the next attempt and the first refusal's time; raise
        when the wait would outlast ``max_submit_wait`` or ``execution_timeout``."""
        from airflow_provider_reve.client.retry import too_many_tasks_wait
        from airflow_provider_reve.triggers.reve import settle_time

        first_refusal = first_refusal or time.time()
        # Never shorter than the settle time: a timer deferral that fires before the
        # executor recorded this worker's exit races it (see triggers.reve.settle_time).
        wait = max(too_many_tasks_wait(attempt, error.retry_after), settle_time() - time.time())
        waited = time.time() - first_refusal
        if waited + wait > self.max_submit_wait:
            raise AirflowException(
                f"The Reve account still had TOO_MANY_TASKS in flight after {waited:.0f}s "
                f"(max_submit_wait={self.max_submit_wait:g}s); nothing was submitted."
            ) from error
        if wait > self._time_left(context):
            # Submitting after execution_timeout would pay for a result no one waits for.
            raise AirflowException(
                f"The Reve account still had TOO_MANY_TASKS in flight and execution_timeout "
                f"ends before the next attempt in {wait:.0f}s; nothing was submitted."
            ) from error
        self.log.info(
            "Reve account has TOO_MANY_TASKS in flight; submitting again in %.1fs (attempt %d).",
            wait,
            attempt,
        )
        attempt += 1
        memory.remember_refusal(fingerprint, attempt, first_refusal)
        if self.deferrable:
            self._defer_submission(wait, attempt, first_refusal, context)
        time.sleep(wait)
        return attempt, first_refusal

    def _defer_submission(
        self: BackoffHost, wait: float, attempt: int, first_refusal: float, context: Mapping[str, Any]
    ) -> None:
        from airflow.providers.standard.triggers.temporal import DateTimeTrigger
        from airflow.sdk.timezone import utcnow

        self.defer(
            trigger=DateTimeTrigger(moment=utcnow() + timedelta(seconds=wait)),
            method_name="execute_after_backoff",
            kwargs={"submit_attempt": attempt, "first_refusal": first_refusal},
            timeout=timedelta(seconds=min(wait, self._time_left(context))) + DEFER_TIMEOUT_GRACE,
        )

    def _time_left(self: BackoffHost, context: Mapping[str, Any]) -> float:
        """Seconds until ``execution_timeout`` ends this try (counted from its start), or inf."""
        if self.execution_timeout is None:
            return float("inf")
        started = getattr(context.get("ti"), "start_date", None)
        return deferral_budget(float("inf"), self.execution_timeout, started)

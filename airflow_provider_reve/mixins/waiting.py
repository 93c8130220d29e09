"""After the paid submit: wait for the Reve task (in the triggerer or the worker) and finish it.

A submitted task that is already SUCCESS (a synchronous model) is finished at once and never
deferred; ``wait_for_completion=False`` returns it IN_PROGRESS; a deferrable operator waits in
the triggerer (``ReveTaskTrigger``) and resumes in ``execute_complete``; else the worker polls.
A FAILED task releases its budget reservation (it is refunded) and fails by the error policy;
a SUCCESS settles it and goes through :func:`~airflow_provider_reve.mixins.finish.succeeded`.

Every timeout here leaves the task remembered (``mixins.reattach``): an Airflow retry re-attaches
to it without paying again. The trigger, the finishing steps and storage are imported where a
task runs, never when a DAG file imports the operator.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

from airflow.providers.common.compat.sdk import AirflowException

from airflow_provider_reve.defaults import OUTCOME_ERROR, OUTCOME_FAILED, OUTCOME_SUCCESS
from airflow_provider_reve.mixins.deadline import DEFER_TIMEOUT_GRACE, deferral_budget

if TYPE_CHECKING:
    from collections.abc import Mapping

    from airflow_provider_reve.exceptions import ReveError
    from airflow_provider_reve.hooks.reve import ReveHook
    from airflow_provider_reve.mixins.reattach import SubmittedTaskMemory
    from airflow_provider_reve.models import ReveTask

__all__ = ["ReveWaitingMixin", "WaitingHost", "check_download_options"]


def check_download_options(download_to: Any, file_name: str | None, *, wait_for_completion: bool) -> None:
    """``download_to`` and ``file_name`` fit the wait, checked when the DAG is parsed.

    :param download_to: where the files go, or ``None``.
    :param file_name: their name template, or ``None``.
    :param wait_for_completion: whether the operator waits for the task to finish.
    :raises ValueError: a ``file_name`` without ``download_to``, or ``download_to`` without a wait.
    """
    if file_name is not None and download_to is None:
        raise ValueError("file_name names the files download_to stores: give download_to too")
    if download_to is not None and not wait_for_completion:
        raise ValueError(
            "download_to needs wait_for_completion=True: an unfinished task has no files. Store "
            "them where the task is waited for (ReveTaskSensor(download_to=...)) or with "
            "ReveDownloadResultsOperator."
        )


class WaitingHost(Protocol):
    """What :class:`ReveWaitingMixin` needs from the operator that mixes it in: its waiting and
    storing settings, a ``hook``, ``defer``, and the steps of the other mixins (the request, the
    error policy, the re-attach memory, the budget)."""

    model: str
    reve_conn_id: str
    wait_for_completion: bool
    deferrable: bool
    poll_interval: float
    timeout: float
    download_to: Any
    max_download_bytes: int
    allow_private_addresses: bool | None
    file_name: str | None
    metadata: dict[str, Any] | None
    _reve_finished: dict[str, Any] | None

    @property
    def log(self) -> Any: ...

    @property
    def hook(self) -> ReveHook: ...

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

    def _validated_params(self) -> dict[str, Any]: ...

    def _sent_request(self) -> dict[str, Any] | None: ...

    def _output_format(self) -> str | None: ...

    def _memory(self, context: Mapping[str, Any]) -> SubmittedTaskMemory: ...

    def _raise_for_error(self, error: ReveError) -> NoReturn: ...

    def _raise_for_failed_task(self, task: ReveTask) -> NoReturn: ...

    def settle_budget(self, context: Mapping[str, Any], task: ReveTask) -> None: ...

    def release_budget(self, context: Mapping[str, Any]) -> None: ...

    # This mixin's own steps, called through the host so that a subclass may extend them.
    def _poll(self, task: ReveTask, deadline: float, context: Any) -> dict[str, Any]: ...

    def _succeeded(self, task: ReveTask, context: Any) -> dict[str, Any]: ...

    def _described(self, task: ReveTask) -> ReveTask: ...


class ReveWaitingMixin:
    """Waits for a submitted Reve task and finishes it: stored files, Asset events, the XCom."""

    def _after_submit(self: WaitingHost, task: ReveTask, context: Any) -> dict[str, Any]:
        """The task just submitted or re-attached to: finish it, hand it on, or wait for it."""
        from airflow_provider_reve.mixins.finish import finish

        if task.succeeded:
            return self._succeeded(task, context)
        if task.failed:
            self.release_budget(context)
            self._raise_for_failed_task(task)
        if not self.wait_for_completion:
            # Still remembered: if Airflow fails this try after we return, the retry hands on
            # the same task instead of submitting another.
            described = self._described(task)
            finish(self, context, [described], hook=self.hook)
            return described.to_dict()
        deadline = time.time() + self.timeout
        if self.deferrable:
            from airflow_provider_reve.triggers.reve import ReveTaskTrigger, settle_time

            # Airflow 3.3 does not apply execution_timeout while a task is deferred: the wait
            # ends at the earlier of `timeout` and what is left of execution_timeout.
            ti = context.get("ti")
            budget = deferral_budget(self.timeout, self.execution_timeout, getattr(ti, "start_date", None))
            self.defer(
                trigger=ReveTaskTrigger(
                    reve_task_id=task.task_id,
                    reve_conn_id=self.reve_conn_id,
                    poll_interval=self.poll_interval,
                    deadline=time.time() + budget,
                    not_before=settle_time(),
                    model=self.model,
                ),
                method_name="execute_complete",
                kwargs={"reve_task_id": task.task_id},
                timeout=timedelta(seconds=budget) + DEFER_TIMEOUT_GRACE,
            )
        return self._poll(task, deadline, context)

    def _finish_after_trigger(
        self: WaitingHost, context: Any, event: Any, reve_task_id: str | None
    ) -> dict[str, Any]:
        """Resumed by :class:`ReveTaskTrigger` (``execute_complete``). Trusts nothing in ``event``."""
        from airflow_provider_reve.mixins.outcomes import raise_for_trigger_error
        from airflow_provider_reve.mixins.reattach import request_fingerprint
        from airflow_provider_reve.triggers.reve import ReveMalformedEventError, read_event

        if reve_task_id is None:
            # Airflow 3.3's dag.test() drops defer()'s kwargs once the trigger fires
            # (apache/airflow#69942); the state store still knows which task this try submitted.
            params = self._validated_params()
            recalled = self._memory(context).recall(request_fingerprint(self.model, params))
            reve_task_id = recalled.task_id if recalled is not None else None
        try:
            result = read_event(event, reve_task_id)
        except ReveMalformedEventError as error:
            # Not permanent: a retry re-attaches to the remembered task and reads its real state.
            raise AirflowException(f"{error} (the Reve task is remembered; a retry re-attaches)") from error
        if result.outcome == OUTCOME_SUCCESS and result.task is not None:
            return self._succeeded(result.task.with_model(self.model), context)
        if result.outcome == OUTCOME_FAILED and result.task is not None:
            self.release_budget(context)
            self._raise_for_failed_task(result.task)
        if result.outcome == OUTCOME_ERROR:
            raise_for_trigger_error(result, self.log, what=f"Waiting for Reve task {reve_task_id}")
        # OUTCOME_TIMEOUT
        raise AirflowException(
            f"Timed out after {self.timeout:g}s waiting for Reve task {reve_task_id}: {result.message} "
            "The task stays remembered, so an Airflow retry re-attaches to it without paying again."
        )

    def _poll(self: WaitingHost, task: ReveTask, deadline: float, context: Any) -> dict[str, Any]:
        """Wait in the worker: poll the status every ``poll_interval`` until it ends or ``deadline``."""
        from airflow_provider_reve import config
        from airflow_provider_reve.exceptions import ReveError

        started = logged = time.monotonic()
        log_every = config.progress_log_interval()
        while not task.is_finished:
            if time.monotonic() - logged >= log_every:
                logged = time.monotonic()
                self.log.info(
                    "Reve task %s still %s after %.0fs", task.task_id, task.status, logged - started
                )
            remaining = deadline - time.time()
            if remaining <= 0:
                raise AirflowException(
                    f"Timed out after {self.timeout:g}s waiting for Reve task {task.task_id} "
                    "(still IN_PROGRESS). An Airflow retry re-attaches to it without paying again."
                )
            time.sleep(min(self.poll_interval, remaining))
            try:
                task = self.hook.get_status(task.task_id, model=self.model)
            except ReveError as error:
                self._raise_for_error(error)
        if task.failed:
            self.release_budget(context)
            self._raise_for_failed_task(task)
        return self._succeeded(task, context)

    def _succeeded(self: WaitingHost, task: ReveTask, context: Any) -> dict[str, Any]:
        """SUCCESS: settle the budget, store the files (when asked), return the XCom."""
        # The submission entry stays: Airflow may still fail this try after we return, and the
        # retry must find this task again. A clear starts a new run of tries (see mixins/reattach.py).
        from airflow_provider_reve.mixins.finish import check_naming, succeeded

        self.settle_budget(context, task)
        name_template, _ = check_naming(self.file_name, self.metadata, before="after paying", paid=True)
        return succeeded(
            self,
            context,
            self._described(task),
            hook=self.hook,
            download_to=self.download_to,
            max_bytes=self.max_download_bytes,
            allow_private_addresses=self.allow_private_addresses,
            output_format=self._output_format(),
            name_template=name_template,
            if_storing_fails="It stays remembered: a retry re-attaches and stores them without "
            "generating again (a clear generates afresh).",
        )

    def _described(self: WaitingHost, task: ReveTask) -> ReveTask:
        """``task`` with what the API does not say: the model, the request sent, the metadata."""
        from airflow_provider_reve.mixins.finish import check_naming

        _, metadata = check_naming(self.file_name, self.metadata, before="after paying", paid=True)
        return task.with_model(self.model).with_caller_data(request=self._sent_request(), metadata=metadata)

"""``ReveTaskSensor``: wait for a Reve task submitted elsewhere (e.g. ``wait_for_completion=False``)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any, NoReturn

from airflow.providers.common.compat.sdk import (
    AirflowException,
    AirflowFailException,
    AirflowSensorTimeout,
    AirflowTaskTimeout,
    BaseSensorOperator,
    PokeReturnValue,
    conf,
)

from airflow_provider_reve import config
from airflow_provider_reve.defaults import (
    DEFAULT_CONN_ID,
    DEFAULT_MAX_BYTES,
    OUTCOME_ERROR,
    OUTCOME_FAILED,
    OUTCOME_SUCCESS,
    check_max_bytes,
)
from airflow_provider_reve.exceptions import ReveError, ReveStorageError, ReveTaskFailedError
from airflow_provider_reve.links import ReveResultLinkMixin
from airflow_provider_reve.mixins.deadline import DEFER_TIMEOUT_GRACE, deferral_budget
from airflow_provider_reve.mixins.rendered import parse_rendered_literal
from airflow_provider_reve.models import ReveTask
from airflow_provider_reve.results.lineage import ReveLineageMixin

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_reve.hooks.reve import ReveHook

# The hook and the trigger load when a task runs, not when a DAG file is parsed (see defaults.py).


class ReveTaskSensor(ReveResultLinkMixin, ReveLineageMixin, BaseSensorOperator):
    """Wait until a Reve task finishes; push its ``ReveTask.to_dict()`` as XCom ``return_value``.

    :param reve_task_id: the Reve task id (templated), or the whole dict the
        ``ReveGenerateOperator`` returned (an ``XComArg`` works).
    :param reve_conn_id: the ``reve`` connection.
    :param deferrable: wait in the triggerer (no worker slot while waiting). The sensor still
        looks once in the worker first: a task that is already finished returns at once.
    :param poke_interval: seconds between polls (default 5; the API asks for 2-5 s).
    :param timeout: seconds before the sensor times out (default 1 hour); ``soft_fail``,
        ``never_fail``, ``mode="reschedule"`` and the rest behave as for every Airflow sensor.
        A deferred wait also ends when ``execution_timeout`` (counted from the start of the
        try) runs out, whichever comes first.

    :param download_to: store the result files here once the task succeeded (templated): a local
        folder, a ``file://`` / ``s3://``... URL or an ``ObjectStoragePath``; the XCom then
        also holds ``files``, the manifest (see the "Results to storage" how-to).
    :param max_download_bytes: the largest result file accepted (default 1 GiB).
    :param allow_private_addresses: let result URLs point at private/loopback addresses. Default
        ``None``: only when the connection's Base URL is itself such an address (the fake).
    :param file_name: how ``download_to`` names the files (templated); as for the operator.
    :param metadata: the caller's JSON dict (templated). Default: the ``metadata`` of the
        operator's dict given as ``reve_task_id`` (its ``prompt`` and ``request`` carry over too).

    A task that ends ``FAILED`` fails the sensor with the API's error code and message
    (skipped instead with ``soft_fail=True``). ``soft_fail`` / ``never_fail`` / ``silent_fail``
    apply to the *wait* only: once the task succeeded, storing its files happens after Airflow's
    sensor handling, so a storage error fails the try (retries apply, re-attaching is free) and
    is never turned into a skip.

    .. seealso::
        The how-to guide: :ref:`howto/sensor:ReveTaskSensor`.
    """

    template_fields: Sequence[str] = ("reve_task_id", "reve_conn_id", "download_to", "file_name", "metadata")
    ui_color = "#f4e3ff"

    def __init__(
        self,
        *,
        reve_task_id: str | dict[str, Any] | Any,
        reve_conn_id: str = DEFAULT_CONN_ID,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        poke_interval: float | timedelta = 5.0,
        timeout: float | timedelta = timedelta(hours=1),
        download_to: Any = None,
        max_download_bytes: int = DEFAULT_MAX_BYTES,
        allow_private_addresses: bool | None = None,
        file_name: str | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(poke_interval=poke_interval, timeout=timeout, **kwargs)
        if file_name is not None and download_to is None:
            raise ValueError("file_name names the files download_to stores: give download_to too")
        self.file_name = file_name
        self.metadata = metadata
        self.download_to = download_to
        self.max_download_bytes = check_max_bytes(max_download_bytes, "max_download_bytes")
        self.allow_private_addresses = allow_private_addresses
        self.reve_task_id = reve_task_id
        self.reve_conn_id = reve_conn_id
        self.deferrable = deferrable

    @cached_property
    def hook(self) -> ReveHook:
        from airflow_provider_reve.hooks.reve import ReveHook

        return ReveHook(self.reve_conn_id)

    @property
    def resolved_task_id(self) -> str:
        return resolve_reve_task_id(self.reve_task_id)

    @property
    def known_model(self) -> str | None:
        """The model, when ``reve_task_id`` is the operator's dict (the status API omits it)."""
        model = self._handed_on().get("model")
        return model if isinstance(model, str) else None

    def _handed_on(self) -> dict[str, Any]:
        """The operator's dict given as ``reve_task_id``, or ``{}`` for a bare id."""
        value = self.reve_task_id
        if isinstance(value, str) and value.strip().startswith("{"):
            value = parse_rendered_literal(value.strip())
        return value if isinstance(value, dict) else {}

    def _metadata(self) -> Any:
        return self.metadata if self.metadata is not None else self._handed_on().get("metadata")

    def _described(self, task: ReveTask, *, paid: bool) -> tuple[ReveTask, str | None]:
        """``task`` with the request and metadata the submitter knew; the checked name template."""
        from airflow_provider_reve.mixins.finish import check_naming

        template, metadata = check_naming(
            self.file_name, self._metadata(), before="checked before waiting", paid=paid
        )
        request = self._handed_on().get("request")
        return task.with_caller_data(
            request=request if isinstance(request, dict) else None, metadata=metadata
        ), template

    def execute(self, context: Context) -> Any:
        from airflow_provider_reve.mixins.finish import check_naming

        if not (self.reschedule and context.get("task_reschedule_count")):
            # Once per try: a rescheduled poke is already waiting, and a folder unwritable for a
            # moment then must not end a wait for a task paid for elsewhere.
            self._check_destination_before_waiting()
            check_naming(self.file_name, self._metadata(), before="checked before waiting")
        self._reve_succeeded: ReveTask | None = None
        # BaseSensorOperator's, deferrable or not: every poke -- the one a deferrable sensor makes
        # before deferring included -- goes through its soft_fail / never_fail / silent_fail
        # handling, so a bad ``reve_task_id`` is skipped with ``soft_fail`` in both modes.
        waited = super().execute(context)
        return self._finish_after_waiting(waited, context)

    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Context) -> Any:
        self._reve_succeeded = None
        # BaseSensorOperator.resume_execution turns *any* AirflowException into a skip under
        # soft_fail: storing a paid result must happen outside it (see _finish_after_waiting).
        waited = super().resume_execution(next_method, next_kwargs, context)
        return self._finish_after_waiting(waited, context)

    def _finish_after_waiting(self, waited: Any, context: Context) -> Any:
        """Store the files of the task the wait found SUCCESS (log, metric, Asset events too).

        Outside Airflow's sensor handling on purpose: a storage error is not an outcome of the
        wait, and soft_fail must not skip a paid result that a retry could still store.
        """
        task = getattr(self, "_reve_succeeded", None)
        if task is None:
            return waited
        self._reve_succeeded = None
        return self._succeeded(task, context)

    def _check_destination_before_waiting(self) -> None:
        from airflow_provider_reve.mixins.finish import check_download_to

        try:
            check_download_to(self.download_to, before="checked before waiting")
        except AirflowFailException as error:
            # A folder that cannot be written is permanent only before a wait (a typo or a bad
            # URL always is). A task that already succeeded has files to store now: storing them
            # then fails transiently, and a retry stores them once the folder is back.
            if not isinstance(error.__cause__, ReveStorageError) or not self._already_succeeded():
                raise
            self.log.warning(
                "download_to cannot take files right now, but Reve task %s has already succeeded: "
                "trying to store its files anyway (an error then fails this try for a retry).",
                self.resolved_task_id,
            )

    def _already_succeeded(self) -> bool:
        try:
            return self.hook.get_status(self.resolved_task_id, model=self.known_model).succeeded
        except (ReveError, AirflowException):
            return False

    def poke(self, context: Context) -> PokeReturnValue:
        task_id = self.resolved_task_id
        result = self._look(task_id, context)
        if not result.is_done and self.deferrable:
            # Not finished yet: wait in the triggerer instead of sleeping in this worker.
            self._defer(context, task_id)
        return result

    def _look(self, task_id: str, context: Context) -> PokeReturnValue:
        from airflow_provider_reve.client.retry import is_permanent
        from airflow_provider_reve.mixins.outcomes import raise_for_error

        try:
            task = self.hook.get_status(task_id, model=self.known_model)
        except ReveError as error:
            if is_permanent(error):
                raise_for_error(error, self.log)
            self.log.warning("Transient error reading Reve task %s; poking again later: %s", task_id, error)
            return PokeReturnValue(is_done=False)
        if task.failed:
            raise self._failed(task)
        if task.succeeded:
            return PokeReturnValue(is_done=True, xcom_value=self._waited_for(task))
        now = time.monotonic()
        last = getattr(self, "_progress_logged_at", None)
        # One line on the first poke, then at most one per [reve] progress_log_interval: a long
        # video poked every few seconds must not bury the log in identical lines.
        if last is None or now - last >= config.progress_log_interval():
            self._progress_logged_at = now
            self.log.info("Reve task %s still IN_PROGRESS", task_id)
        return PokeReturnValue(is_done=False)

    def _defer(self, context: Context, task_id: str) -> NoReturn:
        from airflow_provider_reve.triggers.reve import ReveTaskTrigger, settle_time

        ti = context.get("ti") if context else None
        budget = deferral_budget(self.timeout, self.execution_timeout, getattr(ti, "start_date", None))
        by_execution_timeout = budget < self.timeout
        if budget <= 0:
            # Nothing left to wait for: we have just looked, a trigger would only look again.
            raise _timed_out(by_execution_timeout, self, "the task was still IN_PROGRESS")
        kwargs: dict[str, Any] = {"reve_task_id": task_id}
        if by_execution_timeout:
            kwargs["ends_at_execution_timeout"] = True
        self.defer(
            trigger=ReveTaskTrigger(
                reve_task_id=task_id,
                reve_conn_id=self.reve_conn_id,
                poll_interval=self.poke_interval,
                deadline=time.time() + budget,
                not_before=settle_time(),
                model=self.known_model,
            ),
            method_name="execute_complete",
            kwargs=kwargs,
            # Only a safety net for a triggerer that is down: the trigger ends the wait itself.
            timeout=timedelta(seconds=budget) + DEFER_TIMEOUT_GRACE,
        )

    def execute_complete(
        self,
        context: Context,
        event: Any = None,
        reve_task_id: str | None = None,
        ends_at_execution_timeout: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        from airflow_provider_reve.mixins.outcomes import raise_for_trigger_error
        from airflow_provider_reve.triggers.reve import ReveMalformedEventError, read_event

        if reve_task_id is None:
            # Airflow 3.3's dag.test() drops defer()'s kwargs once the trigger fires
            # (apache/airflow#69942); the rendered template field names the same task.
            reve_task_id = self.resolved_task_id
        try:
            result = read_event(event, reve_task_id)
        except ReveMalformedEventError as error:
            raise AirflowException(str(error)) from error
        if result.outcome == OUTCOME_SUCCESS and result.task is not None:
            return self._waited_for(result.task.with_model(self.known_model))
        if result.outcome == OUTCOME_FAILED and result.task is not None:
            raise self._failed(result.task)
        if result.outcome == OUTCOME_ERROR:
            raise_for_trigger_error(result, self.log, what=f"Waiting for Reve task {reve_task_id}")
        raise _timed_out(ends_at_execution_timeout, self, result.message)

    def _waited_for(self, task: ReveTask) -> dict[str, Any]:
        """The wait is over: the task succeeded. Its files are stored by ``execute`` /
        ``resume_execution`` once Airflow's sensor handling is behind us."""
        self._reve_succeeded = task
        return task.to_dict()

    def _failed(self, task: ReveTask) -> AirflowFailException:
        # Refunded by the API: a budget reservation the submitter left open is given back.
        from airflow_provider_reve.budgets.mixin import close_reservation_of_finished_task

        close_reservation_of_finished_task(self, task)
        return _failed(task)

    def _succeeded(self, task: ReveTask, context: Context) -> dict[str, Any]:
        # The same line, metric, budget settlement and storage as the generate operator: a task
        # submitted with wait_for_completion=False reports (and settles) its cost only here.
        from airflow_provider_reve.budgets.mixin import close_reservation_of_finished_task
        from airflow_provider_reve.mixins.finish import succeeded

        close_reservation_of_finished_task(self, task)

        task, name_template = self._described(task, paid=True)
        return succeeded(
            self,
            context,
            task,
            name_template=name_template,
            hook=self.hook,
            download_to=self.download_to,
            max_bytes=self.max_download_bytes,
            allow_private_addresses=self.allow_private_addresses,
            if_storing_fails="Run the sensor again to store them: waiting for a task pays nothing.",
        )


def _timed_out(by_execution_timeout: bool, sensor: ReveTaskSensor, why: str) -> BaseException:
    if by_execution_timeout:
        # As when Airflow enforces execution_timeout itself: the try fails, retries apply.
        return AirflowTaskTimeout(f"execution_timeout of {sensor.execution_timeout} reached: {why}")
    return AirflowSensorTimeout(f"Sensor has timed out after {sensor.timeout:g}s: {why}")


def _failed(task: ReveTask) -> AirflowFailException:
    # For a sensor a FAILED task is final whatever its code: polling it again cannot change it.
    error = ReveTaskFailedError(task)
    return AirflowFailException(str(error))


def resolve_reve_task_id(value: Any) -> str:
    """Accept a task id, a ``ReveTask`` dict, or a dict rendered to a string by a template."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            value = parse_rendered_literal(text)
        elif text and text.isprintable():
            return text
    found = value.get("reve_task_id", value.get("task_id")) if isinstance(value, dict) else None
    if isinstance(found, str) and found.strip() and found.strip().isprintable():
        return found.strip()
    # A control character (CR/LF...) in an id would forge lines in every log that names it.
    raise AirflowFailException(
        "reve_task_id must be a Reve task id (printable characters) or the dict "
        f"ReveGenerateOperator returns, got {value!r:.200}"
    )

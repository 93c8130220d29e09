"""``ReveTaskSensor``: wait for a Reve task submitted elsewhere (e.g. ``wait_for_completion=False``)."""

from __future__ import annotations

import ast
import json
import time
from collections.abc import Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import (
    AirflowException,
    AirflowFailException,
    AirflowSensorTimeout,
    BaseSensorOperator,
    PokeReturnValue,
    conf,
)

from airflow_provider_reve._outcomes import raise_for_error
from airflow_provider_reve._retry import is_permanent, is_permanent_code
from airflow_provider_reve.exceptions import ReveError, ReveTaskFailedError
from airflow_provider_reve.hooks.reve import ReveHook
from airflow_provider_reve.models import ReveTask
from airflow_provider_reve.triggers.reve import (
    OUTCOME_ERROR,
    OUTCOME_FAILED,
    OUTCOME_SUCCESS,
    ReveMalformedEventError,
    ReveTaskTrigger,
    read_event,
    settle_time,
)

if TYPE_CHECKING:
    from airflow.sdk import Context


class ReveTaskSensor(BaseSensorOperator):
    """Wait until a Reve task finishes; push its ``ReveTask.to_dict()`` as XCom ``return_value``.

    :param reve_task_id: the Reve task id (templated), or the whole dict the
        ``ReveGenerateOperator`` returned (an ``XComArg`` works).
    :param reve_conn_id: the ``reve`` connection.
    :param deferrable: wait in the triggerer (no worker slot while waiting).
    :param poke_interval: seconds between polls (default 5; the API asks for 2-5 s).
    :param timeout: seconds before the sensor times out (default 1 hour); ``soft_fail``,
        ``mode="reschedule"`` and the rest behave as for every Airflow sensor.

    A task that ends ``FAILED`` fails the sensor with the API's error code and message
    (skipped instead with ``soft_fail=True``).
    """

    template_fields: Sequence[str] = ("reve_task_id", "reve_conn_id")
    ui_color = "#f4e3ff"

    def __init__(
        self,
        *,
        reve_task_id: str | dict[str, Any] | Any,
        reve_conn_id: str = ReveHook.default_conn_name,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        poke_interval: float | timedelta = 5.0,
        timeout: float | timedelta = timedelta(hours=1),
        **kwargs: Any,
    ) -> None:
        super().__init__(poke_interval=poke_interval, timeout=timeout, **kwargs)
        self.reve_task_id = reve_task_id
        self.reve_conn_id = reve_conn_id
        self.deferrable = deferrable

    @cached_property
    def hook(self) -> ReveHook:
        return ReveHook(self.reve_conn_id)

    @property
    def resolved_task_id(self) -> str:
        return resolve_reve_task_id(self.reve_task_id)

    @property
    def known_model(self) -> str | None:
        """The model, when ``reve_task_id`` is the operator's dict (the status API omits it)."""
        value = self.reve_task_id
        if isinstance(value, str) and value.strip().startswith("{"):
            value = _parse_rendered_dict(value.strip())
        model = value.get("model") if isinstance(value, dict) else None
        return model if isinstance(model, str) else None

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        task_id = self.resolved_task_id
        self.defer(
            trigger=ReveTaskTrigger(
                reve_task_id=task_id,
                reve_conn_id=self.reve_conn_id,
                poll_interval=self.poke_interval,
                deadline=time.time() + self.timeout,
                not_before=settle_time(),
                model=self.known_model,
            ),
            method_name="execute_complete",
            kwargs={"reve_task_id": task_id},
            timeout=timedelta(seconds=self.timeout) + timedelta(minutes=2),
        )

    def poke(self, context: Context) -> PokeReturnValue:
        task_id = self.resolved_task_id
        try:
            task = self.hook.get_status(task_id, model=self.known_model)
        except ReveError as error:
            if is_permanent(error):
                raise_for_error(error, self.log)
            self.log.warning("Transient error reading Reve task %s; poking again later: %s", task_id, error)
            return PokeReturnValue(is_done=False)
        if task.failed:
            raise _failed(task)
        if task.succeeded:
            self.log.info("Reve task %s SUCCESS: %d result URL(s)", task_id, len(task.result_urls))
            return PokeReturnValue(is_done=True, xcom_value=task.to_dict())
        self.log.info("Reve task %s still IN_PROGRESS", task_id)
        return PokeReturnValue(is_done=False)

    def execute_complete(
        self, context: Context, event: Any = None, reve_task_id: str | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        if reve_task_id is None:
            # Airflow 3.3's dag.test() drops defer()'s kwargs once the trigger fires
            # (apache/airflow#69942); the rendered template field names the same task.
            reve_task_id = self.resolved_task_id
        try:
            result = read_event(event, reve_task_id)
        except ReveMalformedEventError as error:
            raise AirflowException(str(error)) from error
        if result.outcome == OUTCOME_SUCCESS and result.task is not None:
            return result.task.to_dict()
        if result.outcome == OUTCOME_FAILED and result.task is not None:
            raise _failed(result.task)
        if result.outcome == OUTCOME_ERROR:
            if is_permanent_code(result.error_code):
                raise AirflowFailException(result.message)
            raise AirflowException(result.message)
        raise AirflowSensorTimeout(f"Sensor has timed out after {self.timeout:g}s: {result.message}")


def _failed(task: ReveTask) -> AirflowFailException:
    # For a sensor a FAILED task is final whatever its code: polling it again cannot change it.
    error = ReveTaskFailedError(task)
    return AirflowFailException(str(error))


def resolve_reve_task_id(value: Any) -> str:
    """Accept a task id, a ``ReveTask`` dict, or a dict rendered to a string by a template."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            value = _parse_rendered_dict(text)
        elif text:
            return text
    if isinstance(value, dict) and isinstance(value.get("task_id"), str) and value["task_id"].strip():
        return value["task_id"].strip()
    raise AirflowFailException(
        f"reve_task_id must be a Reve task id or the dict ReveGenerateOperator returns, got {value!r}"
    )


def _parse_rendered_dict(text: str) -> Any:
    # `{{ ti.xcom_pull(...) }}` renders a dict as its Python repr unless the DAG renders native objects.
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text

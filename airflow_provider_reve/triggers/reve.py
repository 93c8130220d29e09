"""``ReveTaskTrigger``: waits for a Reve task in the triggerer, holding no worker slot.

What goes into the metadata DB is exactly what the constructor took: a connection id, the
Reve task id and plain numbers. No key, no headers, no URL: the triggerer stores and logs
kwargs in plain text. The connection is resolved inside ``run()``, asynchronously.
"""

from __future__ import annotations

import asyncio
import importlib
import random
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_reve import config
from airflow_provider_reve.client.polling import (
    LONG_WAIT_AFTER,
    LONG_WAIT_INTERVAL,
    current_interval,
    first_read_at,
    wait_origin,
)
from airflow_provider_reve.client.retry import NO_RETRIES, backoff_seconds, is_permanent
from airflow_provider_reve.defaults import (  # re-exported: the event protocol's names
    DEFAULT_POLL_INTERVAL,
    OUTCOME_ERROR,
    OUTCOME_FAILED,
    OUTCOME_SUCCESS,
    OUTCOME_TIMEOUT,
    OUTCOMES,
    PROGRESS_LOG_INTERVAL,
)
from airflow_provider_reve.exceptions import ReveAPIError, ReveError
from airflow_provider_reve.models import ReveTask

if TYPE_CHECKING:
    from airflow_provider_reve.hooks.reve import ReveAsyncHook

_HOOK_MODULE = "airflow_provider_reve.hooks.reve"
_hook_module: Any = None  # set once the import has *finished*
_hook_module_lock = threading.Lock()


def _import_hooks() -> Any:
    global _hook_module
    with _hook_module_lock:
        if _hook_module is None:
            _hook_module = importlib.import_module(_HOOK_MODULE)
        return _hook_module


async def _hooks() -> Any:
    """The hook module, imported off the event loop the first time.

    The triggerer imports this module on its loop when the first trigger arrives; aiohttp and
    the rest of the hook take ~0.2 s to import, which Airflow reports as a blocked loop. So
    this module imports neither, and the first ``run()`` imports them in a thread. Triggers that
    start meanwhile wait for that import to finish: ``sys.modules`` already holds the module
    while it is only partly initialised.
    """
    if _hook_module is not None:
        return _hook_module
    return await asyncio.to_thread(_import_hooks)


DEFAULT_MAX_CONSECUTIVE_ERRORS = 5
# Transient errors back off from one poll interval up to a few of them, but never past this.
MAX_ERROR_BACKOFF = 30.0
_ERROR_BACKOFF_INTERVALS = 4
# The one look after the deadline gets its own bound: the connection's read timeout, at most this.
FINAL_READ_MAX_SECONDS = 30.0


def settle_time() -> float:
    """The earliest moment a just-deferred task's trigger should fire (an absolute UNIX time).

    A trigger that fires before the executor has reported the deferring worker's exit races
    that report, and Airflow 3.3 may then fail the task as "state changed externally"
    (apache/airflow#66374, #72716). A worker supervisor notices its task's exit within
    ``[workers] min_heartbeat_interval`` (5 s by default), so we wait that long plus a second.

    Under ``dag.test()`` there is no executor and no second process: the task and then its
    trigger run one after the other in this process, so there is nothing to race and the
    trigger may fire at once (offline DAG tests would otherwise wait ~6 s per deferral).

    :return: ``time.time()`` plus ``[workers] min_heartbeat_interval`` plus one second.
    """
    if runs_under_dag_test():
        return time.time()
    from airflow.providers.common.compat.sdk import conf

    return time.time() + conf.getfloat("workers", "min_heartbeat_interval", fallback=5.0) + 1.0


def runs_under_dag_test() -> bool:
    """Whether this task runs in-process, with its triggers run inline (``dag.test()``).

    Told by the task runner's channel to its supervisor: a real worker talks to a supervisor
    process over a socket; ``dag.test()`` (without ``use_executor``) installs an in-process one.
    Only modules already imported are looked at: a worker never pays for importing them here.
    """
    task_runner = sys.modules.get("airflow.sdk.execution_time.task_runner")
    supervisor = sys.modules.get("airflow.sdk.execution_time.supervisor")
    in_process = getattr(supervisor, "InProcessSupervisorComms", None)
    comms = getattr(task_runner, "SUPERVISOR_COMMS", None)
    return isinstance(in_process, type) and isinstance(comms, in_process)


class ReveTaskTrigger(BaseTrigger):
    """Poll ``GET /api/v1/status`` until the task finishes or ``deadline`` passes; fire one event.

    :param reve_task_id: the Reve task to wait for.
    :param reve_conn_id: the ``reve`` connection to use (resolved in the triggerer).
    :param poll_interval: seconds between status polls; after :attr:`long_wait_after` seconds of
        waiting, ``max(poll_interval, long_wait_interval)`` (see ``client.polling`` for the rule).
    :param deadline: absolute UNIX time after which the wait ends with outcome ``timeout``;
        absolute so that a triggerer restart does not extend the wait. The task is always read
        once at or after the deadline before ``timeout`` is reported, so a task that finished
        while the triggerer was down is not reported as timed out.
    :param model: the model id, remembered in the event's task (the status endpoint omits it).
    :param max_consecutive_errors: deprecated meaning, kept so stored triggers still load:
        transient errors (429/5xx/connection) no longer end the wait -- they are logged, backed
        off and ridden out until the deadline, as a poking sensor does. After this many in a
        row the log says so at ERROR level, once per streak.
    :param not_before: absolute UNIX time before which the first poll is not made (see
        :func:`settle_time`), even when the deadline has already passed. The first poll comes at
        a random moment in the ``poll_interval`` after the later of ``not_before`` and one
        ``poll_interval`` after start.

    The log says when the status changes, and otherwise at most every
    :attr:`progress_log_interval` seconds that the task is still waiting (with the time spent).

    .. seealso::
        How the operator and the sensor use it: :ref:`howto/sensor:ReveTaskSensor`.
    """

    #: Class-level, not a kwarg: the cadence of log lines is not part of the stored trigger.
    #: A subclass that sets its own keeps it; this class follows ``[reve] progress_log_interval``
    #: (30 s by default, read as each wait starts).
    progress_log_interval: float = PROGRESS_LOG_INTERVAL
    # The clock of those lines' elapsed time (monotonic: a wall-clock jump must not spam the log).
    _clock: Callable[[], float] = staticmethod(time.monotonic)
    #: Class-level too: after this many seconds of waiting, the task is read every
    #: ``max(poll_interval, long_wait_interval)`` seconds.
    long_wait_after: float = LONG_WAIT_AFTER
    long_wait_interval: float = LONG_WAIT_INTERVAL
    # The first poll's jitter.
    _rng: Callable[[], float] = staticmethod(random.random)

    def __init__(
        self,
        reve_task_id: str,
        reve_conn_id: str = "reve_default",
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        deadline: float | None = None,
        model: str | None = None,
        max_consecutive_errors: int = DEFAULT_MAX_CONSECUTIVE_ERRORS,
        not_before: float | None = None,
    ) -> None:
        super().__init__()
        self.reve_task_id = reve_task_id
        self.reve_conn_id = reve_conn_id
        self.poll_interval = float(poll_interval)
        self.deadline = float(deadline) if deadline is not None else None
        self.model = model
        self.max_consecutive_errors = int(max_consecutive_errors)
        self.not_before = float(not_before) if not_before is not None else None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "reve_task_id": self.reve_task_id,
                "reve_conn_id": self.reve_conn_id,
                "poll_interval": self.poll_interval,
                "deadline": self.deadline,
                "model": self.model,
                "max_consecutive_errors": self.max_consecutive_errors,
                "not_before": self.not_before,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        # This loop is the retry loop: it backs off, logs and keeps waiting on transient errors,
        # so the hook makes one attempt per poll.
        hook = (await _hooks()).ReveAsyncHook(self.reve_conn_id, retry_policy=NO_RETRIES)
        # One keep-alive session for the whole wait, shared with every other trigger on this loop.
        async with hook.keep_session():
            event = await self._wait(hook)
        yield TriggerEvent(event)

    def _progress_log_interval(self) -> float:
        # A subclass's own cadence wins; the class default defers to the deployment's option
        # (whose own default is the same 30 s).
        if self.progress_log_interval != PROGRESS_LOG_INTERVAL:
            return self.progress_log_interval
        return config.progress_log_interval()

    async def _wait(self, hook: ReveAsyncHook) -> dict[str, Any]:
        last: ReveTask | None = None
        last_error: ReveError | None = None
        errors_in_a_row = 0
        progress = _WaitLog(self.log, self.reve_task_id, self._progress_log_interval(), self._clock)
        origin = wait_origin(time.time(), self.not_before)
        await asyncio.sleep(self._first_wait())
        while True:
            remaining = self._remaining()
            # Past the deadline we still look once, so a task that finished while nobody
            # looked (triggerer down, deadline shorter than the first wait) is not reported as
            # timed out -- a paid result would otherwise be thrown away.
            final = remaining is not None and remaining <= 0
            try:
                within = await self._final_read_seconds(hook) if final else remaining
                task = await hook.aget_status(self.reve_task_id, model=self.model, within=within)
            except ReveError as error:
                if not isinstance(error, ReveAPIError) or is_permanent(error):
                    # Bad key, unknown task, insecure URL...: no amount of waiting helps.
                    code = error.code if isinstance(error, ReveAPIError) else None
                    return self._event(OUTCOME_ERROR, last, str(error), error_code=code, retryable=False)
                errors_in_a_row += 1
                last_error = error
                progress.unreadable()
                if final:
                    return self._timeout(last, last_error)
                interval = self._interval(origin)
                wait = self._capped(self._error_backoff(errors_in_a_row, error, interval))
                self._log_transient(error, errors_in_a_row, wait)
                await asyncio.sleep(wait)
                continue
            errors_in_a_row, last_error, last = 0, None, task
            progress.read(task.status)
            if task.succeeded:
                return self._event(OUTCOME_SUCCESS, task, f"Reve task {task.task_id} succeeded.")
            if task.failed:
                return self._event(
                    OUTCOME_FAILED,
                    task,
                    f"Reve task {task.task_id} FAILED: {task.error_code}: {task.error_message}",
                    error_code=task.error_code,
                )
            if final:
                return self._timeout(task, None)
            # Counted from the answer: two reads of a task are never closer than the interval.
            await asyncio.sleep(self._capped(self._interval(origin)))

    def _interval(self, origin: float) -> float:
        return current_interval(
            self.poll_interval,
            time.time() - origin,
            long_wait_after=self.long_wait_after,
            long_wait_interval=self.long_wait_interval,
        )

    def _first_wait(self) -> float:
        # Whoever deferred has just seen the task IN_PROGRESS: wait at least one interval, plus a
        # random part of another so that triggers started together do not poll together -- but
        # not past the deadline. ``not_before`` wins over the deadline: firing sooner races the
        # worker's exit record (see settle_time), and the final look must come after it too.
        now = time.time()
        wait = self._capped(first_read_at(now, self.poll_interval, self.not_before, self._rng) - now)
        if self.not_before is not None:
            wait = max(wait, self.not_before - now)
        return wait

    async def _final_read_seconds(self, hook: ReveAsyncHook) -> float:
        settings = await hook.async_settings()
        return min(settings.read_timeout, FINAL_READ_MAX_SECONDS)

    def _error_backoff(
        self, errors_in_a_row: int, error: ReveAPIError, interval: float | None = None
    ) -> float:
        """From one (current) poll interval, growing to a few of them (at most 30 s); a sane
        Retry-After wins."""
        interval = self.poll_interval if interval is None else interval
        cap = max(interval, min(interval * _ERROR_BACKOFF_INTERVALS, MAX_ERROR_BACKOFF))
        wait = backoff_seconds(errors_in_a_row, error.retry_after, initial=interval, cap=cap)
        # Never poll faster than the interval in force, whatever Retry-After says.
        return max(interval, wait)

    def _log_transient(self, error: ReveAPIError, errors_in_a_row: int, wait: float) -> None:
        self.log.warning(
            "Transient error reading Reve task %s (%s, %d in a row); reading again in %.1fs: %s",
            self.reve_task_id,
            error.code or error.http_status or type(error).__name__,
            errors_in_a_row,
            wait,
            error,
        )
        if errors_in_a_row == self.max_consecutive_errors:
            self.log.error(
                "Reve API failed %d times in a row for task %s; still waiting until the deadline.",
                errors_in_a_row,
                self.reve_task_id,
            )

    def _timeout(self, last: ReveTask | None, last_error: ReveError | None) -> dict[str, Any]:
        if last_error is None:
            message = f"Reve task {self.reve_task_id} was still IN_PROGRESS when the wait's deadline passed."
        else:
            message = (
                f"The wait for Reve task {self.reve_task_id} reached its deadline while its status "
                f"could not be read ({last_error})."
            )
        return self._event(OUTCOME_TIMEOUT, last, message)

    def _capped(self, seconds: float) -> float:
        """``seconds``, or less if the deadline comes sooner (never negative)."""
        remaining = self._remaining()
        return max(0.0, seconds if remaining is None else min(seconds, remaining))

    def _remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.time()

    def _event(
        self,
        outcome: str,
        task: ReveTask | None,
        message: str,
        *,
        error_code: str | None = None,
        retryable: bool | None = None,
    ) -> dict[str, Any]:
        return {
            "outcome": outcome,
            "reve_task_id": self.reve_task_id,
            "task": task.to_dict() if task else None,
            "message": message,
            "error_code": error_code,
            "retryable": retryable,
        }


class _WaitLog:
    """Decides which status reads deserve a log line: every change, else one per ``interval``."""

    def __init__(self, log: Any, reve_task_id: str, interval: float, clock: Callable[[], float]) -> None:
        self._log, self._reve_task_id, self._interval, self._clock = log, reve_task_id, interval, clock
        self._started = self._last_line = clock()
        self._status: str | None = None
        self._reads = 0

    def read(self, status: str) -> None:
        now = self._clock()
        self._reads += 1
        elapsed = now - self._started
        if status != self._status:
            self._log.info(
                "Reve task %s is %s (after %.0fs of waiting).", self._reve_task_id, status, elapsed
            )
        elif now - self._last_line >= self._interval:
            self._log.info(
                "Reve task %s still %s after %.0fs of waiting (%d status reads).",
                self._reve_task_id,
                status,
                elapsed,
                self._reads,
            )
        else:
            return
        self._status, self._last_line = status, now

    def unreadable(self) -> None:
        # Failed reads log their own warnings; the next status read after them is news again.
        self._status = None


@dataclass(frozen=True)
class ReveTaskEvent:
    """A trigger event, checked: what ``execute_complete`` may trust.

    :param outcome: ``"success"``, ``"failed"``, ``"timeout"`` or ``"error"``.
    :param reve_task_id: the Reve task the event is about (the one the Airflow task waits for).
    :param task: the task's last state read, or ``None`` when none was read.
    :param message: what happened, for the task log (scrubbed of the key).
    :param error_code: the API's machine code of a permanent ``error``, if any.
    :param retryable: ``False`` for an ``error`` no retry can fix; ``None`` otherwise.
    """

    outcome: str
    reve_task_id: str
    task: ReveTask | None
    message: str
    error_code: str | None = None
    retryable: bool | None = None


class ReveMalformedEventError(ReveError):
    """A trigger event that is not what :class:`ReveTaskTrigger` sends for this task."""


def read_event(event: Any, expected_task_id: str | None) -> ReveTaskEvent:
    """Validate a trigger event for the Reve task we deferred on; raise a clear error otherwise.

    :param event: the event as Airflow handed it to ``execute_complete``: untrusted data.
    :param expected_task_id: the Reve task this Airflow task deferred on.
    :return: the checked event.
    :raises ReveMalformedEventError: when the event is not what :class:`ReveTaskTrigger` sends
        for this task.
    """
    if not isinstance(event, dict):
        raise ReveMalformedEventError(f"Reve trigger event is not a dict: {type(event).__name__}")
    outcome = event.get("outcome")
    if not isinstance(outcome, str) or outcome not in OUTCOMES:  # a list would raise TypeError
        raise ReveMalformedEventError(f"Reve trigger event has an unknown outcome: {outcome!r}")
    event_task_id = event.get("reve_task_id")
    if not expected_task_id or event_task_id != expected_task_id:
        raise ReveMalformedEventError(
            f"Reve trigger event is for task {event_task_id!r}, but this Airflow task waits for "
            f"{expected_task_id!r}."
        )
    task = None
    if event.get("task") is not None:
        try:
            task = ReveTask.from_dict(event["task"])
        except (ValueError, TypeError) as error:
            raise ReveMalformedEventError(f"Reve trigger event carries an invalid task: {error}") from None
        if task.task_id != expected_task_id:
            raise ReveMalformedEventError(
                f"Reve trigger event carries task {task.task_id!r}, expected {expected_task_id!r}."
            )
    if outcome == OUTCOME_SUCCESS and task is not None and not task.result_urls:
        # A success without files is not a result (an older trigger may have sent one).
        raise ReveMalformedEventError("Reve trigger event says 'success' but carries no result URLs.")
    expected_status = {OUTCOME_SUCCESS: "SUCCESS", OUTCOME_FAILED: "FAILED"}.get(outcome)
    if expected_status and (task is None or task.status != expected_status):
        raise ReveMalformedEventError(
            f"Reve trigger event says {outcome!r} but its task status is "
            f"{task.status if task else 'missing'}."
        )
    message = event.get("message")
    error_code = event.get("error_code")
    retryable = event.get("retryable")
    return ReveTaskEvent(
        outcome=outcome,
        reve_task_id=expected_task_id,
        task=task,
        message=message if isinstance(message, str) else "",
        error_code=error_code if isinstance(error_code, str) else None,
        retryable=retryable if isinstance(retryable, bool) else None,
    )

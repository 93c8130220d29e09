"""``ReveGenerateOperator``: submit a Reve generation and (optionally) wait for it, deferrably.

Flow: validate -> re-attach to an earlier try's task, or submit -> log id and credits ->
SUCCESS already (synchronous model)? return it, never defer -> ``wait_for_completion=False``?
return the IN_PROGRESS task -> deferrable? wait in the triggerer -> else poll in the worker.
The XCom ``return_value`` is always ``ReveTask.to_dict()``.

The steps live in mixins, each with a small host Protocol: the request and ``max_credits``
(``mixins.request``), the error policy (``mixins.outcomes``), the re-attach memory
(``mixins.reattach``), the ``TOO_MANY_TASKS`` back-off (``mixins.backoff``), budgets and approval
(``budgets``), the result link and lineage. This class keeps the flow: ``_run``, ``_submit``,
waiting, and finishing.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import (
    AirflowException,
    BaseOperator,
    Stats,
    conf,
)

from airflow_provider_reve import config
from airflow_provider_reve.budgets.approval import ReveApprovalMixin, check_approval_options
from airflow_provider_reve.budgets.mixin import ReveBudgetMixin, check_on_budget_exhausted
from airflow_provider_reve.client.retry import too_many_tasks_wait  # cheap; tests patch it here
from airflow_provider_reve.defaults import (
    DEFAULT_CONN_ID,
    DEFAULT_MAX_BYTES,
    DEFAULT_MODEL,
    DEFAULT_POLL_INTERVAL,
    ON_CONTENT_POLICY_CHOICES,
    OUTCOME_ERROR,
    OUTCOME_FAILED,
    OUTCOME_SUCCESS,
    check_max_bytes,
)
from airflow_provider_reve.exceptions import (
    ReveAmbiguousSubmissionError,
    ReveError,
    ReveRateLimitError,
)
from airflow_provider_reve.links import ReveResultLinkMixin
from airflow_provider_reve.mixins.backoff import ReveSubmitBackoffMixin
from airflow_provider_reve.mixins.deadline import DEFER_TIMEOUT_GRACE, deferral_budget
from airflow_provider_reve.mixins.outcomes import ReveErrorPolicyMixin
from airflow_provider_reve.mixins.reattach import ReveReattachMixin, SubmittedTaskMemory, request_fingerprint
from airflow_provider_reve.mixins.request import REQUEST_FIELDS, ReveRequestMixin
from airflow_provider_reve.models import ReveTask
from airflow_provider_reve.results.lineage import ReveLineageMixin

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_reve.hooks.reve import ReveHook
    from airflow_provider_reve.operators.download import ReveDownloadResultsOperator

# The hook (aiohttp, requests) and the trigger are imported where a task runs, never at
# import: every scheduler parse of a DAG file imports this module (see defaults.py). So are
# storage, lineage, the finishing steps and the catalog: a DAG file pays for the class, not the run.

__all__ = ["REQUEST_FIELDS", "ReveDownloadResultsOperator", "ReveGenerateOperator"]

ON_AMBIGUOUS_SUBMIT_CHOICES = ("fail", "retry")


def __getattr__(name: str) -> Any:
    # ``from airflow_provider_reve.operators.reve import ReveDownloadResultsOperator`` (as the
    # README shows) loads the download operator on demand, not at every parse of this module.
    if name == "ReveDownloadResultsOperator":
        from airflow_provider_reve.operators.download import ReveDownloadResultsOperator

        return ReveDownloadResultsOperator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _seconds(value: float | timedelta, name: str) -> float:
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if seconds <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return seconds


class ReveGenerateOperator(
    ReveResultLinkMixin,
    ReveRequestMixin,
    ReveErrorPolicyMixin,
    ReveReattachMixin,
    ReveSubmitBackoffMixin,
    ReveLineageMixin,
    ReveApprovalMixin,
    ReveBudgetMixin,
    BaseOperator,
):
    """Generate images or videos with Reve.

    :param model: model id, e.g. ``"reve-2.0"`` (default), ``"seedream-5"``,
        ``"kling3-pro-text-to-video"``. Unknown ids are passed through.
    :param prompt: the text description (templated).
    :param image_urls: source images (edit / image-to-video).
    :param aspect_ratio: e.g. ``"16:9"``.
    :param num_images: images per request (image models).
    :param output_format: ``"png"``, ``"jpeg"`` or ``"webp"``.
    :param resolution: ``"1K"``/``"2K"``/``"4K"`` (image) or ``"720p"``/``"1080p"`` (video).
    :param duration: video length in seconds.
    :param generate_audio: video with sound.
    :param extra_params: any other request fields, passed through as they are.
    :param reve_conn_id: the ``reve`` connection.
    :param wait_for_completion: wait until the task finishes (default) or return it IN_PROGRESS.
    :param deferrable: wait in the triggerer instead of a worker slot.
    :param poll_interval: seconds between status polls (the API asks for 2-5 s).
    :param timeout: how long to wait for the task to finish (seconds or timedelta).
    :param on_content_policy_violation: ``"fail"`` (default) or ``"skip"`` the Airflow task.
    :param on_ambiguous_submit: when the submission was sent but no answer came back:
        ``"fail"`` (default, no retry: a paid task may exist) or ``"retry"`` (let Airflow's
        retries resubmit, accepting a possible second charge).
    :param max_submit_wait: how long to keep re-submitting while the account has
        ``TOO_MANY_TASKS`` in flight (seconds or timedelta).
    :param max_credits: refuse to submit when the estimated cost exceeds this (or cannot be
        estimated).
    :param on_budget_exhausted: when a credit budget covering this task has no room (budgets need
        ``[reve] ledger_conn_id``; see README, "Budgets"): ``"fail"`` (default, before any paid
        call), ``"skip"``, or ``"wait"`` (deferred until the window resets or credits are
        released, bounded by ``execution_timeout``).
    :param approval_above_credits: a request estimated above this many credits (or whose price
        is unknown) waits for a person's approval in Airflow's "Required actions" before anything
        is reserved or paid (default ``None``: never asks).
    :param approval_timeout: how long to wait for that answer (seconds or timedelta; default
        ``None``: no limit); no answer by then fails the task, nothing paid.
    :param on_approval_rejected: ``"fail"`` (default) or ``"skip"`` the task when rejected.
    :param download_to: store the result files here when the task succeeds (templated): a local
        folder, a ``file://`` / ``s3://`` / ``gs://``... URL or an ``ObjectStoragePath``. The XCom
        then also holds ``files``, the manifest (see the "Results to storage" how-to).
    :param max_download_bytes: the largest result file accepted (default 1 GiB).
    :param allow_private_addresses: let result URLs point at private/loopback addresses. Default
        ``None``: only when the connection's Base URL is itself such an address (the fake).
    :param file_name: how ``download_to`` names the files (templated), e.g.
        ``"{{ params.sku }}_{index}"``; placeholders ``{index}``, ``{reve_task_id}``,
        ``{metadata[key]}``; the extension still comes from the content type. Checked before
        anything is paid for (see README, "Results to storage").
    :param metadata: the caller's own JSON dict (templated, at most 16 KiB), carried into the
        XCom, the manifest, Asset event ``extra`` and the gallery card.

    .. seealso::
        The how-to guide: :ref:`howto/operator:ReveGenerateOperator`; errors, retries and never
        paying twice: :ref:`errors`.
    """

    template_fields: Sequence[str] = (
        "model",
        *REQUEST_FIELDS,
        "extra_params",
        "reve_conn_id",
        "download_to",
        "file_name",
        "metadata",
    )
    template_fields_renderers = {"extra_params": "json", "image_urls": "json", "metadata": "json"}
    ui_color = "#f4e3ff"

    def __init__(
        self,
        *,
        prompt: str | None = None,
        model: str = DEFAULT_MODEL,
        image_urls: list[str] | None = None,
        aspect_ratio: str | None = None,
        num_images: int | None = None,
        output_format: str | None = None,
        resolution: str | None = None,
        duration: float | None = None,
        generate_audio: bool | None = None,
        extra_params: dict[str, Any] | None = None,
        reve_conn_id: str = DEFAULT_CONN_ID,
        wait_for_completion: bool = True,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        timeout: float | timedelta = timedelta(hours=1),
        on_content_policy_violation: str = "fail",
        on_ambiguous_submit: str = "fail",
        max_submit_wait: float | timedelta = timedelta(hours=1),
        max_credits: int | None = None,
        on_budget_exhausted: str = "fail",
        approval_above_credits: int | None = None,
        approval_timeout: float | timedelta | None = None,
        on_approval_rejected: str = "fail",
        download_to: Any = None,
        max_download_bytes: int = DEFAULT_MAX_BYTES,
        allow_private_addresses: bool | None = None,
        file_name: str | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if file_name is not None and download_to is None:
            raise ValueError("file_name names the files download_to stores: give download_to too")
        if on_content_policy_violation not in ON_CONTENT_POLICY_CHOICES:
            raise ValueError(f"on_content_policy_violation must be one of {ON_CONTENT_POLICY_CHOICES}")
        if on_ambiguous_submit not in ON_AMBIGUOUS_SUBMIT_CHOICES:
            raise ValueError(f"on_ambiguous_submit must be one of {ON_AMBIGUOUS_SUBMIT_CHOICES}")
        self.model = model
        self.prompt = prompt
        self.image_urls = image_urls
        self.aspect_ratio = aspect_ratio
        self.num_images = num_images
        self.output_format = output_format
        self.resolution = resolution
        self.duration = duration
        self.generate_audio = generate_audio
        self.extra_params = extra_params
        self.reve_conn_id = reve_conn_id
        self.wait_for_completion = wait_for_completion
        self.deferrable = deferrable
        self.poll_interval = _seconds(poll_interval, "poll_interval")
        self.timeout = _seconds(timeout, "timeout")
        self.on_content_policy_violation = on_content_policy_violation
        self.on_ambiguous_submit = on_ambiguous_submit
        self.max_submit_wait = _seconds(max_submit_wait, "max_submit_wait")
        self.max_credits = max_credits
        self.on_budget_exhausted = check_on_budget_exhausted(on_budget_exhausted)
        self.approval_above_credits, self.approval_timeout, self.on_approval_rejected = (
            check_approval_options(approval_above_credits, approval_timeout, on_approval_rejected)
        )
        if download_to is not None and not wait_for_completion:
            raise ValueError(
                "download_to needs wait_for_completion=True: an unfinished task has no files. Store "
                "them where the task is waited for (ReveTaskSensor(download_to=...)) or with "
                "ReveDownloadResultsOperator."
            )
        self.download_to = download_to
        self.max_download_bytes = check_max_bytes(max_download_bytes, "max_download_bytes")
        self.allow_private_addresses = allow_private_addresses
        self.file_name = file_name
        self.metadata = metadata

    @cached_property
    def hook(self) -> ReveHook:
        from airflow_provider_reve.hooks.reve import ReveHook

        return ReveHook(self.reve_conn_id)

    # -- entry points ------------------------------------------------------------------------
    def execute(self, context: Context) -> dict[str, Any]:
        return self._run(context, submit_attempt=1, first_refusal=None)

    def execute_complete(
        self, context: Context, event: Any = None, reve_task_id: str | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """Resumed by :class:`ReveTaskTrigger`. Trusts nothing in ``event``."""
        from airflow_provider_reve.mixins.outcomes import raise_for_trigger_error
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

    def on_kill(self) -> None:
        # There is no cancel endpoint: a killed try leaves its Reve task running (and paid).
        # The state store remembers it, so a retry of this run re-attaches instead of paying again.
        self.log.warning(
            "Killed while working on a Reve request; a task already submitted keeps running and is "
            "remembered: a retry re-attaches to it, a clear generates afresh."
        )

    # -- the flow ----------------------------------------------------------------------------
    def _run(self, context: Context, *, submit_attempt: int, first_refusal: float | None) -> dict[str, Any]:
        from airflow_provider_reve.mixins.finish import check_download_to, check_naming

        params = self._validated_params()
        memory = self._memory(context)
        fingerprint = request_fingerprint(self.model, params)
        task = self._reattach(memory, fingerprint)
        if task is None:
            # Only before paying is an unusable destination the user's error (permanent). A task
            # re-attached to is paid: storing its files is retried like any storage error.
            check_download_to(self.download_to, before="nothing was submitted")
            check_naming(self.file_name, self.metadata, before="nothing was submitted")
            self._check_budget(params)
            self.wait_for_approval(context)
            self.reserve_budget(context)
            try:
                task = self._submit(context, memory, fingerprint, params, submit_attempt, first_refusal)
            except BaseException as error:
                self.release_budget_if_nothing_created(context, error)
                raise
            self.note_budget_task(context, task)
        return self._after_submit(task, context)

    def _submit(
        self,
        context: Context,
        memory: SubmittedTaskMemory,
        fingerprint: str,
        params: dict[str, Any],
        attempt: int,
        first_refusal: float | None,
    ) -> ReveTask:

        while True:
            # Written before the request leaves: if this try dies mid-request (a kill,
            # execution_timeout), the retry knows the outcome is unknown instead of paying again.
            memory.begin_submission(fingerprint)
            try:
                task = self.hook.generate(self.model, **params)
            except ReveRateLimitError as error:
                memory.submission_created_nothing()
                if not error.too_many_tasks:
                    self._raise_for_error(error)
                first_refusal = first_refusal or time.time()
                # Never shorter than the settle time: a timer deferral that fires before the
                # executor recorded this worker's exit races it (see triggers.reve.settle_time).
                from airflow_provider_reve.triggers.reve import settle_time

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
                continue
            except ReveAmbiguousSubmissionError as error:
                if error.task_id is None:
                    self._raise_ambiguous(error)
                # The answer named the task (e.g. SUCCESS without result URLs): it exists and is
                # paid for, so remember it and read its real state instead of guessing.
                self.log.warning("%s Waiting for Reve task %s instead.", error, error.task_id)
                task = ReveTask(task_id=error.task_id, status="IN_PROGRESS")
            except ReveError as error:
                memory.submission_created_nothing()
                self._raise_for_error(error)
            Stats.incr("reve.tasks_submitted", tags={"model": self.model})
            self._remember_paid_task(memory, task, fingerprint)
            return task

    def _after_submit(self, task: ReveTask, context: Context) -> dict[str, Any]:
        from airflow_provider_reve.mixins.finish import finish

        if task.succeeded:
            return self._succeeded(task, context)
        if task.failed:
            self.release_budget(context)
            self._raise_for_failed_task(task)
        if not self.wait_for_completion:
            # Still remembered: if Airflow fails this try after we return, the retry hands on
            # the same task instead of submitting another.
            finish(self, context, [self._described(task)], hook=self.hook)
            return self._described(task).to_dict()
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

    def _poll(self, task: ReveTask, deadline: float, context: Context) -> dict[str, Any]:

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

    def _succeeded(self, task: ReveTask, context: Context) -> dict[str, Any]:
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

    def _described(self, task: ReveTask) -> ReveTask:
        """``task`` with what the API does not say: the model, the request sent, the metadata."""
        from airflow_provider_reve.mixins.finish import check_naming

        _, metadata = check_naming(self.file_name, self.metadata, before="after paying", paid=True)
        return task.with_model(self.model).with_caller_data(request=self._sent_request(), metadata=metadata)

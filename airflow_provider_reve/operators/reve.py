"""``ReveGenerateOperator``: submit a Reve generation and (optionally) wait for it, deferrably.

Flow: validate -> re-attach to an earlier try's task, or submit -> log id and credits ->
SUCCESS already (synchronous model)? return it, never defer -> ``wait_for_completion=False``?
return the IN_PROGRESS task -> deferrable? wait in the triggerer -> else poll in the worker.
The XCom ``return_value`` is always ``ReveTask.to_dict()``.

The steps live in mixins, each with a small host Protocol: the request and ``max_credits``
(``mixins.request``), the error policy (``mixins.outcomes``), the re-attach memory
(``mixins.reattach``), the ``TOO_MANY_TASKS`` back-off (``mixins.backoff``), waiting and
finishing (``mixins.waiting``), budgets and approval (``budgets``), the result link and lineage.
This class keeps the flow up to the paid call: ``_run`` and ``_submit``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import BaseOperator, Stats, conf

from airflow_provider_reve._lazy import lazy_exports
from airflow_provider_reve.budgets.approval import ReveApprovalMixin, check_approval_options
from airflow_provider_reve.budgets.mixin import ReveBudgetMixin, check_on_budget_exhausted
from airflow_provider_reve.defaults import (
    DEFAULT_CONN_ID,
    DEFAULT_MAX_BYTES,
    DEFAULT_MODEL,
    DEFAULT_POLL_INTERVAL,
    check_max_bytes,
)
from airflow_provider_reve.links import ReveResultLinkMixin
from airflow_provider_reve.mixins.backoff import ReveSubmitBackoffMixin
from airflow_provider_reve.mixins.deadline import positive_seconds
from airflow_provider_reve.mixins.outcomes import ReveErrorPolicyMixin, check_on_content_policy_violation
from airflow_provider_reve.mixins.reattach import (
    ReveReattachMixin,
    check_on_ambiguous_submit,
    request_fingerprint,
)
from airflow_provider_reve.mixins.request import REQUEST_FIELDS, ReveRequestMixin
from airflow_provider_reve.mixins.waiting import ReveWaitingMixin, check_download_options
from airflow_provider_reve.results.lineage import ReveLineageMixin

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_reve.hooks.reve import ReveHook
    from airflow_provider_reve.mixins.reattach import SubmittedTaskMemory
    from airflow_provider_reve.models import ReveTask
    from airflow_provider_reve.operators.download import ReveDownloadResultsOperator

# The hook (aiohttp, requests) and the trigger are imported where a task runs, never at
# import: every scheduler parse of a DAG file imports this module (see defaults.py). So are
# storage, the finishing steps, the catalog, the budgets' ledger, even the exceptions and
# ReveTask: a DAG file pays for the class and its mixins, not the run (test_cheap_import.py).

__all__ = ["REQUEST_FIELDS", "ReveDownloadResultsOperator", "ReveGenerateOperator"]


# ``from airflow_provider_reve.operators.reve import ReveDownloadResultsOperator`` (as the
# README shows) loads the download operator on demand, not at every parse of this module.
__getattr__, __dir__ = lazy_exports(globals(), {"ReveDownloadResultsOperator": "download"})


class ReveGenerateOperator(
    ReveResultLinkMixin,
    ReveRequestMixin,
    ReveErrorPolicyMixin,
    ReveReattachMixin,
    ReveSubmitBackoffMixin,
    ReveWaitingMixin,
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
        check_download_options(download_to, file_name, wait_for_completion=wait_for_completion)
        self.on_content_policy_violation = check_on_content_policy_violation(on_content_policy_violation)
        self.on_ambiguous_submit = check_on_ambiguous_submit(on_ambiguous_submit)
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
        self.poll_interval = positive_seconds(poll_interval, "poll_interval")
        self.timeout = positive_seconds(timeout, "timeout")
        self.max_submit_wait = positive_seconds(max_submit_wait, "max_submit_wait")
        self.max_credits = max_credits
        self.on_budget_exhausted = check_on_budget_exhausted(on_budget_exhausted)
        self.approval_above_credits, self.approval_timeout, self.on_approval_rejected = (
            check_approval_options(approval_above_credits, approval_timeout, on_approval_rejected)
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
        return self._finish_after_trigger(context, event, reve_task_id)

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
        from airflow_provider_reve.exceptions import (
            ReveAmbiguousSubmissionError,
            ReveError,
            ReveRateLimitError,
        )
        from airflow_provider_reve.models import ReveTask

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
                attempt, first_refusal = self._wait_to_resubmit(
                    error, context, memory, fingerprint, attempt, first_refusal
                )
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

"""``ReveDownloadResultsOperator``: store the files of finished Reve tasks, return a manifest.

For pipelines that wait elsewhere (``wait_for_completion=False`` + ``ReveTaskSensor``), or that
fan out with ``.expand()`` and store everything in one step. The generate operator and the
sensor do the same at their own end with ``download_to=``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import AirflowFailException, BaseOperator

from airflow_provider_reve.defaults import DEFAULT_CONN_ID, DEFAULT_MAX_BYTES, check_max_bytes
from airflow_provider_reve.exceptions import ReveError, ReveValidationError
from airflow_provider_reve.links import ReveResultLinkMixin
from airflow_provider_reve.mixins.rendered import parse_rendered_literal
from airflow_provider_reve.results.lineage import ReveLineageMixin

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_reve.hooks.reve import ReveHook


def _parse(value: Any) -> Any:
    # A template such as "{{ ti.xcom_pull('gen') }}" renders the dict (or list) as a string.
    if isinstance(value, str) and value.strip()[:1] in ("{", "["):
        return parse_rendered_literal(value.strip())
    return value


class ReveDownloadResultsOperator(ReveResultLinkMixin, ReveLineageMixin, BaseOperator):
    """Download every result file of one or more finished Reve tasks to ``destination``.

    :param results: what ``ReveGenerateOperator`` or ``ReveTaskSensor`` returned: one task
        dict, a list of them, or an ``XComArg`` of either (a mapped task's ``.output`` too;
        its skipped instances are left out). Templated.
    :param destination: a local folder, a ``file://`` / ``s3://`` / ``gs://``... URL, or an
        ``ObjectStoragePath`` (anything Airflow's object storage has a filesystem for). Templated.
    :param reve_conn_id: the ``reve`` connection (its key is never sent to result URLs; it
        decides ``allow_private_addresses=None``).
    :param max_bytes: the largest file accepted (default 1 GiB).
    :param allow_private_addresses: let result URLs point at private/loopback addresses.
        ``None`` (default): only when the connection's Base URL is itself such an address.
    :param output_format: the extension to use when a server sends no known Content-Type.
    :param file_name: how the files are named (templated): ``{index}``, ``{reve_task_id}`` and
        ``{metadata[key]}`` (each task's own metadata: ``"{metadata[sku]}_{index}"`` names a
        mapped fan-out's files by product). Two results with one name refuse the store.

    Returns the manifest, one entry per file (``reve_task_id``, ``index``, ``url``, ``path``,
    ``bytes``, ``sha256``, ``content_type``, ``model``, ``consumed_credits``, ``prompt``,
    ``request``, ``metadata``).

    .. seealso::
        The how-to guide: :ref:`howto/operator:ReveDownloadResultsOperator`.
    """

    template_fields: Sequence[str] = ("results", "destination", "reve_conn_id", "file_name")
    template_fields_renderers = {"results": "json"}
    ui_color = "#f4e3ff"

    def __init__(
        self,
        *,
        results: Any,
        destination: Any,
        reve_conn_id: str = DEFAULT_CONN_ID,
        max_bytes: int = DEFAULT_MAX_BYTES,
        allow_private_addresses: bool | None = None,
        output_format: str | None = None,
        file_name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.file_name = file_name
        self.results = results
        self.destination = destination
        self.reve_conn_id = reve_conn_id
        self.max_bytes = check_max_bytes(max_bytes, "max_bytes")
        self.allow_private_addresses = allow_private_addresses
        self.output_format = output_format

    @cached_property
    def hook(self) -> ReveHook:
        from airflow_provider_reve.hooks.reve import ReveHook  # not at DAG-parse time

        return ReveHook(self.reve_conn_id)

    def execute(self, context: Context) -> list[dict[str, Any]]:
        from airflow_provider_reve.mixins.finish import check_naming, finish
        from airflow_provider_reve.mixins.outcomes import raise_for_error
        from airflow_provider_reve.results.task_list import tasks_from_results

        name_template, _ = check_naming(
            self.file_name, None, before="nothing was downloaded", metadata_per_task=True
        )
        try:
            tasks = tasks_from_results(self.results, parse=_parse)
        except ReveValidationError as error:
            raise AirflowFailException(f"Nothing to download: {error}") from error
        unfinished = [task.task_id for task in tasks if not task.succeeded]
        if unfinished:
            raise AirflowFailException(
                f"Reve task(s) {unfinished} have not succeeded, so they have no files: wait for them "
                "first (ReveTaskSensor, or ReveGenerateOperator with wait_for_completion=True)."
            )
        if not tasks:
            self.log.warning("No Reve tasks in results (all skipped?): nothing to download")
        try:
            stored = finish(
                self,
                context,
                tasks,
                hook=self.hook,
                download_to=self.destination,
                max_bytes=self.max_bytes,
                allow_private_addresses=self.allow_private_addresses,
                output_format=self.output_format,
                name_template=name_template,
            )
        except ReveError as error:
            raise_for_error(error, self.log)
        return stored.files if stored else []

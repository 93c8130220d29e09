"""What every Reve operator does at the moment its task finishes, in one place.

The generate operator, the sensor and the download operator all end the same way:

1. store the result files when asked (``download_to`` / ``destination``);
2. attach Asset event ``extra`` to the task's ``outlets`` -- here, in the method that
   *finishes* the task (``execute_complete`` after a deferral), because the outlet-event
   accessor lives in the process that reports success;
3. remember the "Reve result" extra link's target: the stored copy of the first result (the
   gallery's file route) when there is one, else its first result URL;
4. keep a summary on the operator for OpenLineage's ``get_openlineage_facets_on_complete``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException, Stats

from airflow_provider_reve.exceptions import ReveStorageError, ReveValidationError
from airflow_provider_reve.mixins.outcomes import raise_for_storing_error
from airflow_provider_reve.models import ReveTask
from airflow_provider_reve.results.naming import check_file_name, check_metadata
from airflow_provider_reve.results.storage import (
    StoredResults,
    asset_uri,
    prepare_destination,
    resolve_destination,
)

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_reve.hooks.reve import ReveHook

__all__ = [
    "ASSET_EXTRA_KEYS",
    "FinishingHost",
    "asset_extra",
    "check_download_to",
    "check_naming",
    "emit_asset_events",
    "finish",
    "succeeded",
    "task_instance_owner",
]

log = logging.getLogger(__name__)


class FinishingHost(Protocol):
    """What finishing needs from the operator or sensor it finishes: a task log, and the slot
    ``ReveLineageMixin`` reads for OpenLineage (``outlets`` is read with ``getattr``: optional)."""

    @property
    def log(self) -> Any: ...

    _reve_finished: dict[str, Any] | None


#: Keys of the Asset event ``extra`` (documented in the README).
ASSET_EXTRA_KEYS = (
    "reve_task_ids",
    "model",
    "consumed_credits",
    "file_count",
    "destination",
    "manifest_path",
    "metadata",
)


def check_download_to(download_to: Any, *, before: str) -> None:
    """Fail now, clearly, when ``download_to`` (rendered) cannot take files.

    Called before anything is paid for (the generate operator) or waited for (the sensor), so
    that a typo does not surface an hour later, after a paid generation, with expiring URLs.
    Only then is an unusable destination permanent: once a task is paid, storing it is retried.

    :param download_to: the rendered ``download_to``, or ``None``.
    :param before: what the message says of the spending (``"nothing was submitted"``).
    :raises AirflowFailException: naming what to fix.
    """
    if download_to is None:
        return
    try:
        prepare_destination(resolve_destination(download_to))
    except (ReveValidationError, ReveStorageError) as error:
        raise AirflowFailException(f"Invalid download_to ({before}): {error}") from error


def check_naming(
    file_name: Any, metadata: Any, *, before: str, paid: bool = False, metadata_per_task: bool = False
) -> tuple[str | None, dict[str, Any] | None]:
    """The rendered ``file_name`` and ``metadata``, or a clear failure.

    Called before paying (a permanent failure: nothing was spent) and again where the task
    finishes (``paid=True``): a template that renders differently in the resumed process then
    fails retryably, since a retry re-attaches to the paid task for free.

    :param file_name: the rendered ``file_name`` template, or ``None``.
    :param metadata: the rendered ``metadata``, or ``None``.
    :param before: what the message says of the spending (``"nothing was submitted"``).
    :param paid: the task is paid for: a failure is retryable.
    :param metadata_per_task: each task brings its own metadata (the download operator).
    :return: the checked ``file_name`` and ``metadata``.
    """
    try:
        checked = check_metadata(metadata)
        return check_file_name(file_name, checked, metadata_per_task=metadata_per_task), checked
    except ReveValidationError as error:
        failure = AirflowException if paid else AirflowFailException
        raise failure(f"Invalid file_name or metadata ({before}): {error}") from error


def task_instance_owner(context: Context) -> dict[str, Any] | None:
    """The Airflow task instance a store works for (its earlier files get superseded), or None.

    :return: ``dag_id``, ``run_id``, ``task_id``, ``map_index``, or ``None`` without a task instance.
    """
    ti = context.get("ti") if hasattr(context, "get") else None
    if ti is None:
        return None
    owner = {name: getattr(ti, name, None) for name in ("dag_id", "run_id", "task_id", "map_index")}
    if not all(isinstance(owner[name], str) for name in ("dag_id", "run_id", "task_id")):
        return None
    return owner


def succeeded(
    operator: FinishingHost,
    context: Context,
    task: ReveTask,
    *,
    hook: ReveHook,
    download_to: Any,
    max_bytes: int,
    allow_private_addresses: bool | None,
    output_format: str | None = None,
    name_template: str | None = None,
    if_storing_fails: str,
) -> dict[str, Any]:
    """The generate operator's and the sensor's last step: log, count, store, return the XCom.

    :param if_storing_fails: what the user should know when the files could not be stored
        (the task is paid for either way).
    :param operator: the operator.
    :param task: the finished Reve task.
    :param hook: downloads the files.
    :param download_to: the rendered destination; ``None``: nothing is stored.
    :param max_bytes: the largest file accepted.
    :param allow_private_addresses: also fetch from non-public addresses.
    :param output_format: the file extension asked for, if any.
    :param name_template: the checked ``file_name`` template, if any.
    :return: the XCom value: the task's ``to_dict()``, with ``files`` when stored.
    """
    operator.log.info(
        "Reve task %s SUCCESS: %d result URL(s), %s credits",
        task.task_id,
        len(task.result_urls),
        task.consumed_credits if task.consumed_credits is not None else "unknown",
    )
    if task.consumed_credits is not None:
        tags = {"model": task.model or "unknown"}
        Stats.incr("reve.credits_consumed", count=task.consumed_credits, tags=tags)
    try:
        stored = finish(
            operator,
            context,
            [task],
            hook=hook,
            download_to=download_to,
            max_bytes=max_bytes,
            allow_private_addresses=allow_private_addresses,
            output_format=output_format,
            name_template=name_template,
        )
    except Exception as error:
        # Paid: whatever went wrong between the answer and the stored files (the destination
        # read-only for a moment, an object store's own exception) must leave a retry to store.
        operator.log.error(
            "Reve task %s succeeded (and is paid for) but its files could not be stored. %s",
            task.task_id,
            if_storing_fails,
        )
        raise_for_storing_error(error, operator.log)
    data = task.to_dict()
    if stored is not None:
        data["files"] = stored.files
    return data


def finish(
    operator: FinishingHost,
    context: Context,
    tasks: Sequence[ReveTask],
    *,
    hook: ReveHook,
    download_to: Any = None,
    max_bytes: int | None = None,
    allow_private_addresses: bool | None = None,
    output_format: str | None = None,
    name_template: str | None = None,
) -> StoredResults | None:
    """Store (optionally), then emit Asset events, the link value and the lineage summary.

    :param operator: the operator (its ``outlets``, its lineage summary).
    :param tasks: the finished Reve tasks.
    :param hook: downloads the files.
    :param download_to: the rendered destination; ``None``: nothing is stored.
    :param max_bytes: the largest file accepted.
    :param allow_private_addresses: also fetch from non-public addresses.
    :param output_format: the file extension asked for, if any.
    :param name_template: the checked ``file_name`` template, if any.
    :return: what was stored, or ``None``.
    """
    stored = None
    if download_to is not None and any(task.result_urls for task in tasks):
        kwargs: dict[str, Any] = {}
        if max_bytes is not None:
            kwargs["max_bytes"] = max_bytes
        stored = hook.store_results(
            list(tasks),
            download_to,
            allow_private_addresses=allow_private_addresses,
            output_format=output_format,
            logger=operator.log,
            name_template=name_template,
            owner=task_instance_owner(context),
            **kwargs,
        )
    emit_asset_events(operator, context, tasks, stored)
    _remember_link(context, tasks, stored)
    operator._reve_finished = {
        "tasks": [task.to_dict() for task in tasks],
        "files": list(stored.files) if stored else [],
    }
    return stored


def asset_extra(tasks: Sequence[ReveTask], stored: StoredResults | None) -> dict[str, Any]:
    """The ``extra`` of an Asset event for these tasks: their ids, model, credits, metadata, files.

    :param tasks: the finished Reve tasks.
    :param stored: what was stored of them, or ``None``.
    :return: the ``extra`` dict.
    """
    credits = [task.consumed_credits for task in tasks]
    models = sorted({task.model for task in tasks if task.model})
    metadata = [task.metadata for task in tasks]
    return {
        "reve_task_ids": [task.task_id for task in tasks],
        "model": models[0] if len(models) == 1 else (models or None),
        # One unknown cost makes the sum unknown: an understated total would mislead more.
        "consumed_credits": None if None in credits or not credits else sum(c for c in credits if c),
        "file_count": len(stored.files) if stored else sum(len(task.result_urls) for task in tasks),
        "destination": stored.destination if stored else None,
        "manifest_path": stored.manifest_path if stored else None,
        # One task's metadata as it is; several tasks' as a list in the order of reve_task_ids.
        "metadata": metadata[0] if len(metadata) == 1 else (metadata if any(metadata) else None),
    }


def emit_asset_events(
    operator: FinishingHost, context: Context, tasks: Sequence[ReveTask], stored: StoredResults | None
) -> None:
    """One Asset event per ``Asset`` outlet, and one per stored file per ``AssetAlias`` outlet.

    :param operator: the operator, whose ``outlets`` are read.
    :param context: the task's context (``outlet_events``).
    :param tasks: the finished Reve tasks.
    :param stored: what was stored of them, or ``None``.
    """
    outlets = list(getattr(operator, "outlets", None) or [])
    if not outlets:
        return
    from airflow.sdk import Asset, AssetAlias

    events = context["outlet_events"]
    extra = asset_extra(tasks, stored)
    for outlet in outlets:
        if isinstance(outlet, AssetAlias):
            # One event per stored file, named by where it is stored -- never by the result
            # URL: a signed URL changes every run, and each would become a new asset.
            for entry in stored.files if stored else []:
                events[outlet].add(
                    Asset(uri=asset_uri(entry["path"])),
                    extra={
                        "reve_task_id": entry["reve_task_id"],
                        "index": entry["index"],
                        "bytes": entry["bytes"],
                        "sha256": entry["sha256"],
                        "content_type": entry["content_type"],
                        "model": entry["model"],
                        "metadata": entry.get("metadata"),
                    },
                )
        elif isinstance(outlet, Asset):
            events[outlet].extra = dict(extra)


def _remember_link(context: Context, tasks: Sequence[ReveTask], stored: StoredResults | None) -> None:
    from airflow_provider_reve.links import push_result_link

    if context.get("ti") is None:  # a hand-built context (unit tests of execute) has no XCom
        return
    from airflow_provider_reve.links import stored_result_route

    route = stored_result_route(context, stored.files[0]) if stored and stored.files else None
    urls = [entry["url"] for entry in stored.files] if stored else []
    urls += [url for task in tasks for url in task.result_urls]
    try:
        push_result_link(context, route or (urls[0] if urls else None))
    except Exception as error:
        # A UI link is not worth failing a paid, stored generation for (an API-server hiccup).
        log.warning("Could not store the 'Reve result' link (%s); the task's result is unaffected.", error)

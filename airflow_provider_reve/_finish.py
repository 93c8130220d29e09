"""What every Reve operator does at the moment its task finishes, in one place.

The generate operator, the sensor and the download operator all end the same way:

1. store the result files when asked (``download_to`` / ``destination``);
2. attach Asset event ``extra`` to the task's ``outlets`` -- here, in the method that
   *finishes* the task (``execute_complete`` after a deferral), because the outlet-event
   accessor lives in the process that reports success;
3. remember the first result URL for the "Reve result" extra link;
4. keep a summary on the operator for OpenLineage's ``get_openlineage_facets_on_complete``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import AirflowFailException, Stats

from airflow_provider_reve._outcomes import raise_for_storing_error
from airflow_provider_reve._storage import (
    StoredResults,
    asset_uri,
    prepare_destination,
    resolve_destination,
)
from airflow_provider_reve.exceptions import ReveStorageError, ReveValidationError
from airflow_provider_reve.models import ReveTask

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_reve.hooks.reve import ReveHook

log = logging.getLogger(__name__)

#: Keys of the Asset event ``extra`` (documented in the README).
ASSET_EXTRA_KEYS = (
    "reve_task_ids",
    "model",
    "consumed_credits",
    "file_count",
    "destination",
    "manifest_path",
)


def check_max_bytes(value: Any, name: str) -> int:
    """For ``__init__``: a positive ``int`` (a file larger than this is refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer (bytes), got {value!r}")
    return value


def check_download_to(download_to: Any, *, before: str) -> None:
    """Fail now, clearly, when ``download_to`` (rendered) cannot take files.

    Called before anything is paid for (the generate operator) or waited for (the sensor), so
    that a typo does not surface an hour later, after a paid generation, with expiring URLs.
    Only then is an unusable destination permanent: once a task is paid, storing it is retried.
    """
    if download_to is None:
        return
    try:
        prepare_destination(resolve_destination(download_to))
    except (ReveValidationError, ReveStorageError) as error:
        raise AirflowFailException(f"Invalid download_to ({before}): {error}") from error


def succeeded(
    operator: Any,
    context: Context,
    task: ReveTask,
    *,
    hook: ReveHook,
    download_to: Any,
    max_bytes: int,
    allow_private_addresses: bool | None,
    output_format: str | None = None,
    if_storing_fails: str,
) -> dict[str, Any]:
    """The generate operator's and the sensor's last step: log, count, store, return the XCom.

    :param if_storing_fails: what the user should know when the files could not be stored
        (the task is paid for either way).
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
    operator: Any,
    context: Context,
    tasks: Sequence[ReveTask],
    *,
    hook: ReveHook,
    download_to: Any = None,
    max_bytes: int | None = None,
    allow_private_addresses: bool | None = None,
    output_format: str | None = None,
) -> StoredResults | None:
    """Store (optionally), then emit Asset events, the link value and the lineage summary."""
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
    credits = [task.consumed_credits for task in tasks]
    models = sorted({task.model for task in tasks if task.model})
    return {
        "reve_task_ids": [task.task_id for task in tasks],
        "model": models[0] if len(models) == 1 else (models or None),
        # One unknown cost makes the sum unknown: an understated total would mislead more.
        "consumed_credits": None if None in credits or not credits else sum(c for c in credits if c),
        "file_count": len(stored.files) if stored else sum(len(task.result_urls) for task in tasks),
        "destination": stored.destination if stored else None,
        "manifest_path": stored.manifest_path if stored else None,
    }


def emit_asset_events(
    operator: Any, context: Context, tasks: Sequence[ReveTask], stored: StoredResults | None
) -> None:
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
                    },
                )
        elif isinstance(outlet, Asset):
            events[outlet].extra = dict(extra)


def _remember_link(context: Context, tasks: Sequence[ReveTask], stored: StoredResults | None) -> None:
    from airflow_provider_reve.links import push_result_link

    if context.get("ti") is None:  # a hand-built context (unit tests of execute) has no XCom
        return
    urls = [entry["url"] for entry in stored.files] if stored else []
    urls += [url for task in tasks for url in task.result_urls]
    try:
        push_result_link(context, urls[0] if urls else None)
    except Exception as error:
        # A UI link is not worth failing a paid, stored generation for (an API-server hiccup).
        log.warning("Could not store the 'Reve result' link (%s); the task's result is unaffected.", error)

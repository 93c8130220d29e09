"""Reve task dicts as a store receives them: one XCom value, a list, or a mapped task's output.

Invariants: every item becomes a :class:`~airflow_provider_reve.models.ReveTask` or the call is
refused with :class:`~airflow_provider_reve.exceptions.ReveValidationError` before anything is
fetched; ``None`` items (a mapped instance that was skipped) are left out; the ``files`` key that
``download_to`` adds to an XCom value is ignored (it is not part of the task).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from airflow_provider_reve.exceptions import ReveValidationError
from airflow_provider_reve.models import ReveTask

__all__ = ["tasks_from_results"]


def tasks_from_results(results: Any, *, parse: Callable[[Any], Any] | None = None) -> list[ReveTask]:
    """``results`` as ``ReveTask`` objects: one task dict, a list of them, or nested lists
    (a mapped task's output). A ``files`` manifest added by ``download_to`` is ignored.

    :param results: the upstream task's XCom value.
    :param parse: applied to ``results`` first (e.g. JSON text to Python).
    :return: the tasks, in order.
    """
    if parse is not None:
        results = parse(results)
    if isinstance(results, dict):
        results = [results]
    if isinstance(results, ReveTask):
        results = [results]
    if not isinstance(results, (list, tuple)) and not _is_lazy_sequence(results):
        raise ReveValidationError(
            "results must be a Reve task dict (what ReveGenerateOperator returns) or a list of them, "
            f"got {type(results).__name__}"
        )
    tasks: list[ReveTask] = []
    for item in results:
        if item is None:
            continue  # a mapped generation that was skipped (content policy) has no result
        if isinstance(item, (list, tuple)) or _is_lazy_sequence(item):
            tasks.extend(tasks_from_results(list(item)))
            continue
        if isinstance(item, ReveTask):
            tasks.append(item)
            continue
        if isinstance(item, dict):
            item = {key: value for key, value in item.items() if key != "files"}
        try:
            tasks.append(ReveTask.from_dict(item))
        except (ValueError, TypeError) as error:
            raise ReveValidationError(f"not a Reve task dict: {error}") from None
    return tasks


def _is_lazy_sequence(value: Any) -> bool:
    # A mapped task's pulled XCom (LazyXComSequence) is iterable but neither list nor tuple.
    return (
        hasattr(value, "__iter__") and hasattr(value, "__len__") and not isinstance(value, (str, bytes, dict))
    )

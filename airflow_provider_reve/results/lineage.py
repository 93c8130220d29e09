"""OpenLineage for the Reve operators: the stored files are the outputs, the generation a run facet.

OpenLineage is optional (``pip install airflow-provider-reve[openlineage]``): nothing here imports
it until Airflow's OpenLineage listener asks a finished task for its lineage, and without the
provider the answer is ``None`` -- exactly as if this mixin were not there.

An operator opts in by setting, when it finishes (in ``execute_complete`` after a deferral: the
listener asks the same process):

.. code-block:: python
    :class: fragment

    self._reve_finished = {"tasks": [ReveTask dicts], "files": [manifest entries]}

Dataset names follow OpenLineage's naming conventions: a local file is namespace ``file`` and
its absolute path; an object is ``<scheme>://<bucket>`` and its key. The result URLs are never
dataset names: they are signed, short-lived CDN links that change with every run.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote

__all__ = [
    "RUN_FACET_NAME",
    "ReveLineageMixin",
    "dataset_location",
    "generation_summary",
    "output_locations",
]

#: Key of the custom run facet (see :class:`~airflow_provider_reve.results.lineage_facets.ReveRunFacet`).
RUN_FACET_NAME = "reve"


class ReveLineageMixin:
    """Adds ``get_openlineage_facets_on_complete`` to an operator that sets ``_reve_finished``.

    .. seealso::
        The how-to guide: :ref:`howto/assets`.
    """

    _reve_finished: dict[str, Any] | None = None

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """The task's outputs and its Reve run facet, or ``None`` (nothing finished / no OpenLineage).

        :param task_instance: the finished task instance (unused: what the task stored is on the operator).
        :return: an ``OperatorLineage``, or ``None``.
        """
        finished = self._reve_finished
        if not isinstance(finished, Mapping):
            return None
        try:
            from airflow.providers.openlineage.extractors import OperatorLineage
            from openlineage.client.event_v2 import OutputDataset
            from openlineage.client.facet_v2 import output_statistics_output_dataset

            from airflow_provider_reve.results.lineage_facets import ReveRunFacet
        except ImportError:
            return None

        outputs = []
        for namespace, name, size in output_locations(_dicts(finished.get("files"))):
            statistics = output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(
                size=size, fileCount=1
            )
            outputs.append(OutputDataset(namespace, name, outputFacets={"outputStatistics": statistics}))
        facet = ReveRunFacet(**generation_summary(finished))
        return OperatorLineage(outputs=outputs, run_facets={RUN_FACET_NAME: facet})


def dataset_location(path: str) -> tuple[str, str] | None:
    """OpenLineage ``(namespace, name)`` for a manifest ``path``; ``None`` if it is not a location.

    ``/data/a.png`` and ``file:///data/a.png`` -> ``("file", "/data/a.png")``;
    ``s3://bucket/dir/a.png`` -> ``("s3://bucket", "dir/a.png")``. A ``user[:password]@`` in
    front of the bucket (an Airflow connection id, or worse) is dropped: it names no data.

    :param path: a manifest ``path``.
    :return: ``(namespace, name)``, or ``None``.
    """
    if path.startswith("/"):
        return "file", path
    scheme, sep, rest = path.partition("://")
    if not sep or not scheme.isascii() or not scheme.replace("+", "").replace("-", "").isalnum():
        return None
    if scheme == "file":
        local = unquote(rest)
        return ("file", local) if local.startswith("/") else None
    # Split by hand, not urlsplit: "#" and "?" in an object key are part of its name.
    netloc, _, key = rest.partition("/")
    bucket = netloc.rpartition("@")[2]
    if not bucket or not key:
        return None
    return f"{scheme}://{bucket}", key


def output_locations(files: Iterable[Mapping[str, Any]]) -> list[tuple[str, str, int | None]]:
    """``(namespace, name, bytes)`` per stored file, each location once, in manifest order.

    :param files: the manifest's ``files`` entries.
    :return: one ``(namespace, name, bytes)`` per location.
    """
    seen: set[tuple[str, str]] = set()
    out: list[tuple[str, str, int | None]] = []
    for entry in files:
        path = entry.get("path")
        location = dataset_location(path) if isinstance(path, str) else None
        if location is None or location in seen:
            continue
        seen.add(location)
        size = entry.get("bytes")
        out.append((*location, size if _is_int(size) else None))
    return out


def generation_summary(finished: Mapping[str, Any]) -> dict[str, Any]:
    """The run facet's fields: Reve task ids, models, credits (see ``ReveRunFacet``).

    :param finished: the finished task's XCom value (``tasks`` and ``files``).
    :return: the facet's fields, by name.
    """
    tasks: dict[str, dict[str, Any]] = {}
    for task in _dicts(finished.get("tasks")):
        task_id = task.get("task_id")
        if isinstance(task_id, str) and task_id not in tasks:
            tasks[task_id] = {
                "taskId": task_id,
                "status": task.get("status"),
                "model": task.get("model"),
                "consumedCredits": task.get("consumed_credits"),
            }
    # The download operator may know a task only through its files' manifest entries.
    for entry in _dicts(finished.get("files")):
        task_id = entry.get("reve_task_id")
        if isinstance(task_id, str) and task_id not in tasks:
            tasks[task_id] = {
                "taskId": task_id,
                "status": None,
                "model": entry.get("model"),
                "consumedCredits": entry.get("consumed_credits"),
            }
    credits = [task["consumedCredits"] for task in tasks.values()]
    models = [task["model"] for task in tasks.values() if isinstance(task["model"], str)]
    return {
        "reveTaskIds": list(tasks),
        "models": list(dict.fromkeys(models)),
        # A sum with an unknown part would understate the cost: then say "unknown".
        "consumedCredits": sum(credits) if credits and all(_is_int(c) for c in credits) else None,
        "tasks": list(tasks.values()),
    }


def _dicts(value: Any) -> list[Mapping[str, Any]]:
    if not isinstance(value, (list, tuple)):
        return []
    return [item for item in value if isinstance(item, Mapping)]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)

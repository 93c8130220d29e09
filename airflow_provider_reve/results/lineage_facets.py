"""The custom OpenLineage run facet for a Reve generation.

Imported only by :mod:`airflow_provider_reve.results.lineage` when the OpenLineage provider is
installed: this module needs ``openlineage-python`` at import time, the provider does not. The
class lives at module level (not built on the fly) so a facet pickles like any other.
"""

from __future__ import annotations

from typing import Any

import attr
from openlineage.client.facet_v2 import RunFacet

__all__ = [
    "ReveRunFacet",
]


@attr.define
class ReveRunFacet(RunFacet):
    """What the Reve API did for this Airflow task: which tasks, which models, what it cost.

    Field names are camelCase, as OpenLineage facets' are.

    :param reveTaskIds: the Reve task ids, in the order the task handled them.
    :param models: the distinct model ids used.
    :param consumedCredits: the credits all of them consumed, or ``None`` when any task's cost is
        unknown (a ``wait_for_completion=False`` submission: its cost shows on the sensor).
    :param tasks: one ``{"taskId", "status", "model", "consumedCredits"}`` per Reve task.
    :param producer: the URI of the code that made the facet (OpenLineage sets it).
    """

    reveTaskIds: list[str] = attr.field(factory=list)
    models: list[str] = attr.field(factory=list)
    consumedCredits: int | None = attr.field(default=None)
    tasks: list[dict[str, Any]] = attr.field(factory=list)

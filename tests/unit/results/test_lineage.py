"""OpenLineage: a finished Reve task reports its stored files as outputs and its cost as a run facet.

What OpenLineage's listener does with an operator: it calls
``get_openlineage_facets_on_complete(task_instance)`` through its ``DefaultExtractor`` when the
task succeeds. These tests go through that extractor, and through the client's own serializer,
so what is asserted is what a lineage backend (Marquez, DataHub...) would receive.
"""

from __future__ import annotations

import builtins
import json
from typing import Any

import pytest
from airflow.providers.openlineage.extractors.base import DefaultExtractor
from openlineage.client.serde import Serde

from airflow_provider_reve.models import ReveTask
from airflow_provider_reve.results.lineage import RUN_FACET_NAME, ReveLineageMixin, dataset_location

IMAGE = ReveTask(
    task_id="task-img-1",
    status="SUCCESS",
    result_urls=(
        "https://cdn.reve.test/r/task-img-1_0.png?sig=s1",
        "https://cdn.reve.test/r/task-img-1_1.png",
    ),
    consumed_credits=12,
    model="seedream-5",
)
VIDEO = ReveTask(
    task_id="task-vid-2",
    status="SUCCESS",
    result_urls=("https://cdn.reve.test/r/task-vid-2_0.mp4?sig=s2",),
    consumed_credits=90,
    model="kling-video",
)


def entry(task: ReveTask, index: int, path: str, size: int) -> dict[str, Any]:
    """A manifest entry, as ``store_results`` writes one."""
    return {
        "reve_task_id": task.task_id,
        "index": index,
        "url": task.result_urls[index],
        "path": path,
        "bytes": size,
        "sha256": "0" * 64,
        "content_type": "image/png",
        "model": task.model,
        "consumed_credits": task.consumed_credits,
    }


class FinishedTask(ReveLineageMixin):
    """Stands in for an operator: the mixin needs only ``_reve_finished``."""

    task_type = "ReveGenerateOperator"

    def __init__(self, finished: dict[str, Any] | None = None) -> None:
        if finished is not None:
            self._reve_finished = finished


def lineage_of(operator: Any) -> Any:
    """What OpenLineage's listener gets from the operator when its task succeeds."""
    return DefaultExtractor(operator).extract_on_complete(task_instance=object())


def sent(facet_or_dataset: Any) -> dict[str, Any]:
    """The JSON a lineage backend receives for a facet or dataset."""
    return json.loads(Serde.to_json(facet_or_dataset))


def test_local_files_are_output_datasets_named_by_their_absolute_path(tmp_path):
    first, second = tmp_path / "task-img-1_0.png", tmp_path / "task-img-1_1.png"
    finished = {
        "tasks": [IMAGE.to_dict()],
        "files": [entry(IMAGE, 0, str(first), 1000), entry(IMAGE, 1, str(second), 2000)],
    }

    lineage = lineage_of(FinishedTask(finished))

    assert [(d.namespace, d.name) for d in lineage.outputs] == [("file", str(first)), ("file", str(second))]
    assert lineage.inputs == []
    stats = sent(lineage.outputs[1])["outputFacets"]["outputStatistics"]
    assert stats["size"] == 2000 and stats["fileCount"] == 1


def test_object_store_files_are_named_by_bucket_and_key_without_any_connection_or_credentials():
    finished = {
        "tasks": [IMAGE.to_dict()],
        "files": [
            entry(IMAGE, 0, "s3://media-bucket/reve/2025-01-01/task-img-1_0.png", 10),
            entry(IMAGE, 1, "gs://aws_default@media/reve/task-img-1_1.png", 20),
        ],
    }

    lineage = lineage_of(FinishedTask(finished))

    assert [(d.namespace, d.name) for d in lineage.outputs] == [
        ("s3://media-bucket", "reve/2025-01-01/task-img-1_0.png"),
        ("gs://media", "reve/task-img-1_1.png"),
    ]
    assert "aws_default" not in json.dumps([sent(d) for d in lineage.outputs])


def test_the_result_urls_never_become_dataset_names(tmp_path):
    finished = {"tasks": [IMAGE.to_dict()], "files": [entry(IMAGE, 0, str(tmp_path / "a.png"), 1)]}

    everything = json.dumps([sent(d) for d in lineage_of(FinishedTask(finished)).outputs])

    assert "cdn.reve.test" not in everything and "sig=" not in everything


def test_the_model_and_the_credits_are_a_reve_run_facet(tmp_path):
    finished = {
        "tasks": [IMAGE.to_dict(), VIDEO.to_dict()],
        "files": [entry(IMAGE, 0, str(tmp_path / "i.png"), 1), entry(VIDEO, 0, str(tmp_path / "v.mp4"), 2)],
    }

    facet = sent(lineage_of(FinishedTask(finished)).run_facets[RUN_FACET_NAME])

    assert facet["reveTaskIds"] == ["task-img-1", "task-vid-2"]
    assert facet["models"] == ["seedream-5", "kling-video"]
    assert facet["consumedCredits"] == 102
    assert facet["tasks"][1] == {
        "taskId": "task-vid-2",
        "status": "SUCCESS",
        "model": "kling-video",
        "consumedCredits": 90,
    }
    assert facet["_producer"] and facet["_schemaURL"]


def test_a_task_whose_cost_is_unknown_makes_the_total_unknown_not_an_understated_sum():
    # A wait_for_completion=False submission: its XCom says consumed_credits null.
    submitted = ReveTask(task_id="task-sub-3", status="IN_PROGRESS", model="seedream-5")
    finished = {"tasks": [IMAGE.to_dict(), submitted.to_dict()], "files": []}

    lineage = lineage_of(FinishedTask(finished))

    facet = sent(lineage.run_facets[RUN_FACET_NAME])
    assert facet.get("consumedCredits") is None  # the serializer drops nulls
    assert [t.get("consumedCredits") for t in facet["tasks"]] == [12, None]
    assert lineage.outputs == []  # nothing stored: no output dataset


def test_the_download_operator_knows_its_tasks_from_the_manifest_alone(tmp_path):
    finished = {"tasks": [], "files": [entry(VIDEO, 0, str(tmp_path / "v.mp4"), 5)]}

    facet = sent(lineage_of(FinishedTask(finished)).run_facets[RUN_FACET_NAME])

    assert facet["reveTaskIds"] == ["task-vid-2"]
    assert facet["models"] == ["kling-video"]
    assert facet["consumedCredits"] == 90


def test_a_task_that_has_not_finished_reports_no_lineage():
    assert FinishedTask().get_openlineage_facets_on_complete(object()) is None
    assert lineage_of(FinishedTask()) is None


def test_without_the_openlineage_provider_nothing_is_reported_and_nothing_breaks(monkeypatch, tmp_path):
    real_import = builtins.__import__

    def no_openlineage(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith(("openlineage", "airflow.providers.openlineage")):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_openlineage)
    finished = {"tasks": [IMAGE.to_dict()], "files": [entry(IMAGE, 0, str(tmp_path / "a.png"), 1)]}

    assert FinishedTask(finished).get_openlineage_facets_on_complete(object()) is None


@pytest.mark.parametrize(
    ("path", "location"),
    [
        ("/data/out/a.png", ("file", "/data/out/a.png")),
        ("file:///data/out/my%20a.png", ("file", "/data/out/my a.png")),
        ("s3://bucket/a.png", ("s3://bucket", "a.png")),
        ("s3://user:secret@bucket/k/a.png", ("s3://bucket", "k/a.png")),
        ("abfs://container/dir/a.png", ("abfs://container", "dir/a.png")),
        ("relative/a.png", None),
        ("s3://bucket/", None),
        ("file://host-without-path", None),
    ],
)
def test_a_manifest_path_maps_to_an_openlineage_dataset_location(path, location):
    assert dataset_location(path) == location


def test_odd_manifest_values_are_skipped_not_fatal():
    finished = {
        "tasks": ["not-a-dict", {"task_id": 7}, IMAGE.to_dict()],
        "files": [None, {"path": 42}, {"path": "relative.png"}, entry(IMAGE, 0, "/x/a.png", True)],
    }

    lineage = lineage_of(FinishedTask(finished))

    assert [(d.namespace, d.name) for d in lineage.outputs] == [("file", "/x/a.png")]
    assert sent(lineage.outputs[0])["outputFacets"]["outputStatistics"].get("size") is None
    assert sent(lineage.run_facets[RUN_FACET_NAME])["reveTaskIds"] == ["task-img-1"]

"""The "Reve result" extra link: what the Airflow UI's button opens for a task instance.

The DAG runs through ``dag.test()`` (a real worker code path: the task SDK stores the link as
XCom in ``finalize()``), and the link is then read the way the api-server serves it: from the
serialized DAG, through the same route function the UI calls.
"""

from __future__ import annotations

import textwrap
from typing import Any

import pytest

from airflow_provider_reve.links import (
    RESULT_URL_XCOM_KEY,
    ReveResultLink,
    first_result_url,
    push_result_link,
    safe_link,
)
from airflow_provider_reve.models import ReveTask

RESULT = "https://cdn.reve.test/results/task-1_0.png?sig=abc%2F&expires=1700000000"
OTHER = "http://127.0.0.1:8080/results/task-2_0.webp"
HOSTILE = [
    "javascript:alert(1)",
    "JavaScript:alert(document.cookie)",
    "file:///etc/passwd",
    "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
    "vbscript:msgbox(1)",
    "//evil.example/x.png",
    "/results/x.png",
    "https://reve2img.com@evil.example/x.png",
    "https://user:pass@cdn.reve.test/x.png",
    "java\tscript:alert(1)",
    " https://cdn.reve.test/x.png",
    "https://cdn.reve.test/x.png\nSet-Cookie: a=b",
    "https:\\\\evil.example\\x.png",
    "https:///no-host",
    "https://[::1/x",
    "https://cdn.reve.test/" + "a" * 9000,
    "",
]

DAG_FILE = textwrap.dedent(
    f"""
    from datetime import datetime, timedelta

    from airflow.providers.standard.triggers.temporal import TimeDeltaTrigger
    from airflow.sdk import DAG, BaseOperator

    from airflow_provider_reve.links import RESULT_URL_XCOM_KEY, ReveResultLink, push_result_link


    class LinkingOperator(BaseOperator):
        # What the Reve operators do: push the result's URL when the task has it.
        operator_extra_links = (ReveResultLink(),)

        def __init__(self, *, url, wait=False, **kwargs):
            super().__init__(**kwargs)
            self.url = url
            self.wait = wait

        def execute(self, context):
            if self.wait:
                push_result_link(context, None)
                self.defer(trigger=TimeDeltaTrigger(timedelta(0)), method_name="finish")
            return self.finish(context)

        def finish(self, context, event=None):
            push_result_link(context, self.url)


    class ForgingOperator(BaseOperator):
        # Something else writing our XCom key directly, bypassing push_result_link's check.
        operator_extra_links = (ReveResultLink(),)

        def execute(self, context):
            context["ti"].xcom_push(key=RESULT_URL_XCOM_KEY, value="javascript:alert(1)")


    with DAG("reve_test_result_link", schedule=None, start_date=datetime(2025, 1, 1)):
        LinkingOperator(task_id="finished", url={RESULT!r})
        LinkingOperator(task_id="deferred", url={OTHER!r}, wait=True)
        LinkingOperator(task_id="no_result", url=None)
        LinkingOperator(task_id="javascript", url="javascript:alert(1)")
        LinkingOperator(task_id="local_file", url="file:///etc/passwd")
        LinkingOperator(task_id="not_a_string", url={{"href": {RESULT!r}}})
        LinkingOperator.partial(task_id="mapped").expand(url=[{RESULT!r}, {OTHER!r}])
        ForgingOperator(task_id="forged")
    """
)


@pytest.fixture(scope="module")
def dag_run(airflow_db: None, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One run of the DAG above, shared by the tests that read its links (it costs seconds)."""
    from airflow import settings
    from airflow.dag_processing.dagbag import DagBag

    folder = tmp_path_factory.mktemp("link_dags")
    (folder / "link_dag.py").write_text(DAG_FILE)
    # dag.test() registers the DAG by parsing the DAGs folder: make it this one, for this module.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIRFLOW__CORE__DAGS_FOLDER", str(folder))
        patch.setattr(settings, "DAGS_FOLDER", str(folder))
        bag = DagBag(dag_folder=str(folder))
        assert bag.import_errors == {}
        return bag.dags["reve_test_result_link"].test()


def ui_links(dag_run: Any, task_id: str, map_index: int = -1) -> dict[str, str | None]:
    """What the api-server answers for the task instance's extra links (the UI's buttons)."""
    from airflow.api_fastapi.common.dagbag import DBDagBag
    from airflow.api_fastapi.core_api.routes.public.extra_links import get_extra_links
    from airflow.utils.session import create_session

    with create_session() as session:
        answer = get_extra_links(
            dag_id=dag_run.dag_id,
            dag_run_id=dag_run.run_id,
            task_id=task_id,
            session=session,
            dag_bag=DBDagBag(),
            map_index=map_index,
        )
    return answer.extra_links


def test_the_provider_registers_the_reve_result_link_with_airflow():
    from airflow.providers_manager import ProvidersManager

    assert "airflow_provider_reve.links.ReveResultLink" in ProvidersManager().extra_links_class_names


def test_a_task_that_pushed_its_result_url_shows_it_as_the_reve_result_link(dag_run):
    states = {ti.task_id: ti.state for ti in dag_run.get_task_instances()}
    assert set(states.values()) == {"success"}, states

    assert ui_links(dag_run, "finished") == {"Reve result": RESULT}


def test_a_deferred_task_shows_the_link_pushed_after_it_resumed_in_a_new_run(dag_run):
    # Pushed as None before deferring, then the URL in the resumed method: the link is the URL.
    assert ui_links(dag_run, "deferred") == {"Reve result": OTHER}


def test_each_mapped_task_instance_links_its_own_result(dag_run):
    assert ui_links(dag_run, "mapped", map_index=0) == {"Reve result": RESULT}
    assert ui_links(dag_run, "mapped", map_index=1) == {"Reve result": OTHER}


@pytest.mark.parametrize("task_id", ["no_result", "javascript", "local_file", "not_a_string", "forged"])
def test_no_result_or_a_hostile_value_gives_no_link_at_all(dag_run, task_id):
    # The UI shows a disabled button for None: never a javascript:/file: href a click would follow.
    assert ui_links(dag_run, task_id) == {"Reve result": None}


def test_a_refused_url_is_not_even_stored_in_the_tasks_xcom(dag_run):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.scalars(
            XComModel.get_many(
                run_id=dag_run.run_id,
                dag_ids=dag_run.dag_id,
                task_ids=["javascript", "local_file", "not_a_string"],
                key=RESULT_URL_XCOM_KEY,
            )
        ).all()
        stored = {row.task_id: XComModel.deserialize_value(row) for row in rows}
    assert stored == {"javascript": None, "local_file": None, "not_a_string": None}


# ---------------------------------------------------------------------------- the URL check alone


@pytest.mark.parametrize("url", HOSTILE)
def test_anything_but_a_plain_http_url_with_a_host_is_refused(url):
    assert safe_link(url) == ""


@pytest.mark.parametrize("value", [None, 12345, b"https://cdn.reve.test/x.png", ["https://x.test/a"], {}])
def test_a_value_that_is_not_a_string_is_refused(value):
    assert safe_link(value) == ""


@pytest.mark.parametrize("url", [RESULT, OTHER, "HTTPS://CDN.REVE.TEST/A.PNG", "https://[::1]:8443/a.mp4"])
def test_a_plain_http_or_https_url_is_linked_unchanged(url):
    assert safe_link(url) == url


@pytest.mark.parametrize("context", [{}, {"ti": None}, {"ti": object()}])
def test_an_operator_run_by_hand_without_a_task_instance_is_not_broken_by_the_link(context):
    # e.g. ``operator.execute({})`` in a user's own unit test.
    push_result_link(context, RESULT)


def test_the_link_reads_its_xcom_under_the_tasks_own_key():
    # The api-server reads Airflow's copy under this key; the class name is part of the contract.
    assert ReveResultLink().xcom_key == "_link_ReveResultLink"
    assert ReveResultLink.name == "Reve result"


# ------------------------------------------------------------------------- which URL is the target


def test_the_target_is_the_first_result_url_of_a_task_its_dict_or_a_list_of_them():
    task = ReveTask(task_id="t1", status="SUCCESS", result_urls=(RESULT, OTHER))
    empty = ReveTask(task_id="t0", status="FAILED")

    assert first_result_url(task) == RESULT
    assert first_result_url(task.to_dict()) == RESULT
    assert first_result_url([empty.to_dict(), task.to_dict()]) == RESULT
    assert first_result_url(empty) is None
    assert first_result_url(None) is None


def test_for_stored_results_the_target_is_the_first_manifest_entrys_url():
    manifest = [
        {"reve_task_id": "t2", "index": 0, "url": OTHER, "path": "/data/t2_0.webp"},
        {"reve_task_id": "t1", "index": 0, "url": RESULT, "path": "/data/t1_0.png"},
    ]

    assert first_result_url(manifest) == OTHER
    # The generate operator with download_to: the task dict plus its files.
    assert first_result_url({"task_id": "t2", "result_urls": [RESULT], "files": manifest}) == OTHER

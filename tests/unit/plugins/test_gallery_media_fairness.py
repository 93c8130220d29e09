"""One DAG whose stored files never answer cannot take the other DAGs' media down with it.

Every read a media request makes runs in the gallery's own small pool of reader threads, with a
time limit for the request. A read that is truly stuck (an object store that stops answering, a
hung mount) keeps its thread after its request has failed. Found by the adversarial review of the
issue-20 gallery fixes: a DAG author who names such files in a manifest, viewed a few times,
held every reader, and from then on every DAG's media failed with 504 for every user. Runs
Airflow's real app in a real HTTP server, as the fault is the pool running dry.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from airflow_provider_reve.plugins.app import reading
from airflow_provider_reve.results.storage import safe_stem
from tests.support.gallery_data import add_ti, remove_dag
from tests.support.gallery_support import bearer, db_session, manifest_entry, task_value, token
from tests.unit.plugins.test_gallery_media_faults import PNG, stored_file

# The fixtures real_server, manifest (a task of the DAG reve_gallery_media_faults), store and
# stalled_store.
pytest_plugins = ("tests.support.gallery_support", "tests.unit.plugins.test_gallery_media_faults")

OTHER_DAG = "reve_gallery_media_other_team"


def test_a_dag_whose_store_never_answers_leaves_other_dags_media_loading(
    real_server, manifest, store, stalled_store, monkeypatch
):
    monkeypatch.setattr(reading, "VERIFY_TIMEOUT", 3.0)
    stuck = manifest(
        "stuck",
        manifest_entry("stuck", f"memory://{stalled_store[0]}@bucket/{safe_stem('stuck')}_0.png", PNG),
    )
    fine = stored_file(store, "fine")
    with db_session() as session:
        add_ti(
            session,
            OTHER_DAG,
            "r",
            "fine",
            value=task_value("fine", files=[manifest_entry("fine", fine, PNG)]),
        )
    other = {
        "dag_id": OTHER_DAG,
        "run_id": "r",
        "task_id": "fine",
        "map_index": -1,
        "reve_task_id": "fine",
        "index": 0,
    }
    headers = bearer(token())

    def media(params: dict[str, Any]) -> httpx.Response:
        return httpx.get(f"{real_server.url}/reve/media", params=params, headers=headers, timeout=120)

    try:
        requests = 2 * reading.READER_THREADS  # more than there are readers
        with ThreadPoolExecutor(requests) as pool:
            stuck_answers = [answer.status_code for answer in pool.map(media, [stuck] * requests)]
        other_answer = media(other)
    finally:
        stalled_store[1].set()
        with db_session() as session:
            remove_dag(session, OTHER_DAG)

    assert set(stuck_answers) == {504}
    assert other_answer.status_code == 200 and other_answer.content == PNG

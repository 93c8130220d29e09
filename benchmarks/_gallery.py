"""How fast the Reve gallery answers with thousands of generations in the metadata DB.

Fills a fresh SQLite metadata DB (the benchmark's own ``AIRFLOW_HOME``) with 10,000 generations
(``tests/gallery_data.seed_generations``: task instances, XComs, rendered prompts, as real runs
write them), optionally next to 100,000 task instances of other operators, and times each page
through Airflow's own API app (``create_app()``, the plugin mounted by its entry point, a real JWT)
-- what the API server does per request, without the network. Medians of repeated requests.
"""

from __future__ import annotations

import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.support.gallery_data

GENERATIONS = 10_000
OTHER_TASK_INSTANCES = 100_000
REPEATS = 7


def _other_task_instances(session: Any, count: int) -> None:
    """Task instances of other operators (what a real deployment mostly holds)."""
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from sqlalchemy import insert

    from tests.support.gallery_data import seed_generations

    seed_generations(session, "bench_other_dag", 1)  # the DAG row
    now = datetime.now(timezone.utc)
    session.execute(
        insert(DagRun.__table__),
        [
            {
                "dag_id": "bench_other_dag",
                "run_id": f"other__{n:06d}",
                "run_type": "manual",
                "state": "success",
                "run_after": now,
            }
            for n in range(count // 100)
        ],
    )
    rows = [
        {
            "dag_id": "bench_other_dag",
            "run_id": f"other__{i // 100:06d}",
            "task_id": f"task_{i % 100}",
            "map_index": -1,
            "state": "success",
            "try_number": 1,
            "pool": "default_pool",
            "operator": "PythonOperator",
            "start_date": now - timedelta(minutes=i),
            "end_date": now - timedelta(minutes=i),
        }
        for i in range(count)
    ]
    for start in range(0, len(rows), 10_000):
        session.execute(insert(TaskInstance.__table__), rows[start : start + 10_000])


def _timed(request: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    request()  # warm: imports, first-use caches
    times, response = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        response = request()
        times.append(time.perf_counter() - started)
        assert response.status_code == 200, response.status_code
    return statistics.median(times) * 1000, response


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows])


def _measure(smoke: bool) -> list[dict[str, Any]]:
    """Seed a fresh metadata DB and time every page (in this process: see :func:`gallery_bench`)."""
    from airflow.api_fastapi.app import create_app, get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from airflow.utils.db import initdb
    from airflow.utils.session import create_session
    from fastapi.testclient import TestClient

    from tests.support.gallery_data import seed_generations

    generations, others, repeats = (200, 1_000, 1) if smoke else (GENERATIONS, OTHER_TASK_INSTANCES, REPEATS)
    initdb()
    with create_session() as session:
        seed_generations(session, "bench_gallery", generations, failed_every=20, skipped_every=50)
    client = TestClient(create_app())
    token = get_auth_manager().generate_jwt(SimpleAuthManagerUser(username="bench", role="viewer", teams=[]))
    headers = {"Authorization": f"Bearer {token}"}
    pages = [
        ("gallery, first page (48 cards)", "/reve/gallery", {}),
        ("gallery, last page", "/reve/gallery", {"page": -(-generations // 48)}),
        ("gallery, model filter", "/reve/gallery", {"model": "seedream-5"}),
        ("gallery, 200 cards per page", "/reve/gallery", {"per_page": 200}),
        ("credits panel, 30 days", "/reve/credits", {}),
    ]
    rows: list[dict[str, Any]] = []
    for extra in (0, others):
        if extra:
            with create_session() as session:
                _other_task_instances(session, extra)
        for label, path, params in pages:
            millis, response = _timed(
                lambda p=path, q=params: client.get(p, params=q, headers=headers), repeats
            )
            rows.append(
                {
                    "generations": generations,
                    "other_task_instances": extra,
                    "page": label,
                    "ms": round(millis, 1),
                    "kib": len(response.content) // 1024,
                }
            )
    return rows


def gallery_bench(smoke: bool = False) -> tuple[list[dict[str, Any]], str]:
    """Raw rows and a Markdown table, measured in a fresh interpreter with its own AIRFLOW_HOME.

    A process of its own keeps Airflow's logs, its metadata DB and its auth manager out of the
    caller (``run.py`` measures other things in its own process).
    """
    with tempfile.TemporaryDirectory(prefix="reve-bench-gallery-") as home:
        env = {
            **os.environ,
            "AIRFLOW_HOME": home,
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),
        }
        out = subprocess.run(
            [sys.executable, __file__, *(["--smoke"] if smoke else [])],
            capture_output=True,
            text=True,
            env=env,
            timeout=1800,
            check=False,
        )
    if out.returncode != 0:
        raise RuntimeError(f"the gallery benchmark failed:\n{out.stderr[-4000:]}")
    rows: list[dict[str, Any]] = json.loads(out.stdout.strip().splitlines()[-1])
    repeats = 1 if smoke else REPEATS
    table = _table(
        ["generations", "other task instances", "page", "ms (median)", "KiB"],
        [
            [f"{r['generations']:,}", f"{r['other_task_instances']:,}", r["page"], f"{r['ms']:.0f}", r["kib"]]
            for r in rows
        ],
    )
    intro = (
        "Reve gallery: one request through Airflow's own API app (plugin mounted by its entry "
        f"point, JWT auth, SQLite metadata DB), median of {repeats} after one warm-up:"
    )
    return rows, f"{intro}\n\n{table}"


if __name__ == "__main__":
    print(json.dumps(_measure(smoke="--smoke" in sys.argv)))

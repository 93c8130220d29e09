"""System tests: real Airflow, real users, a real browser (``make test-system``).

Everything collected under ``tests/system`` is marked ``system``. ``make test`` never collects this
folder (it needs Debian's ``chromium``, which ``make test-system`` installs through
``.ci/system-deps``); run it with ``make test-system`` or ``.venv/bin/pytest tests/system``.

The browser is the system Chromium driven by Playwright's Python package
(``pip install -e '.[system]'``): ``executable_path`` points Playwright at ``/usr/bin/chromium``, so
``playwright install`` (which downloads a browser build) is never needed.

Screenshots go to ``tests/system/artifacts/`` (git-ignored), one per step, and one of every open
page when a test fails, with the tails of the Airflow component logs in the failure report.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_reve.testing.demo import wait_for_first_run
from airflow_provider_reve.testing.fake_server import DEFAULT_API_KEY, FakeReveServer

from .airflow_with_logins import AirflowWithLogins, Login

SYSTEM_DIR = Path(__file__).resolve().parent
REPO = SYSTEM_DIR.parent.parent
EXAMPLE_DAGS = REPO / "airflow_provider_reve" / "example_dags"
OTHER_TEAM_DAGS = SYSTEM_DIR / "dags_other_team"
ARTIFACTS = SYSTEM_DIR / "artifacts"

CONTENT_DAG_ID = "example_reve_content_pipeline"
OTHER_DAG_ID = "other_team_report"
TEAM = "content"
OTHER_TEAM = "other"
GALLERY_BUDGET = "content-daily"

# The one command that makes the browser available; also what .ci/system-deps runs as root.
INSTALL_HINT = "sudo apt-get install -y --no-install-recommends chromium fonts-liberation"

_CLUSTER_KEY = pytest.StashKey[AirflowWithLogins]()
_PAGES_KEY = pytest.StashKey[list[Any]]()
# test_production_topology.py's deployment (a ProductionAirflow), while it runs.
PRODUCTION_CLUSTER_KEY = pytest.StashKey[Any]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if SYSTEM_DIR in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.system)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, object, object]:
    """On failure: a screenshot of every open page, and the Airflow component log tails."""
    report = yield
    if not (isinstance(report, pytest.TestReport) and report.failed):
        return report
    for number, page in enumerate(item.config.stash.get(_PAGES_KEY, [])):
        if page.is_closed():
            continue
        path = ARTIFACTS / f"FAILED-{item.name}-{number}.png"
        try:
            page.screenshot(path=str(path), full_page=True)
            report.sections.append(("screenshot", f"{path} (at {page.url})"))
        except Exception as err:  # the browser may be what failed
            report.sections.append(("screenshot", f"none: {err!r}"))
    cluster = item.config.stash.get(_CLUSTER_KEY, None)
    if cluster is not None:
        report.sections.append(("local airflow logs", cluster.dump_logs(tail=120)))
    production = item.config.stash.get(PRODUCTION_CLUSTER_KEY, None)
    if production is not None:
        report.sections.append(("production airflow logs", production.dump_logs(tail=120)))
    return report


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def chromium_executable() -> str:
    found = shutil.which("chromium")
    if found is None:
        pytest.fail(
            f"Debian's chromium is not installed (make test-system installs it as root). Run:\n"
            f"    {INSTALL_HINT}"
        )
    return found


@pytest.fixture(scope="session")
def browser(chromium_executable: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # Playwright adds --no-sandbox itself (chromium_sandbox defaults to False), which
        # Chromium needs when run as root, as in CI.
        chromium = playwright.chromium.launch(executable_path=chromium_executable, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def new_page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """``new_page()``: a page in a fresh browser context (its own cookies: one per user)."""
    contexts = []
    pages = request.config.stash.setdefault(_PAGES_KEY, [])

    def make() -> Any:
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        context.set_default_timeout(30_000)
        contexts.append(context)
        page = context.new_page()
        pages.append(page)
        return page

    yield make
    # After the report hook has taken its failure screenshots.
    pages.clear()
    for context in contexts:
        context.close()


@pytest.fixture(scope="session")
def logins() -> dict[str, Login]:
    """Who logs in: an admin (for the REST helpers), a viewer of the Reve DAGs' team, and a
    viewer of another team, who may read that team's DAG but not the Reve ones."""
    return {
        "admin": Login("reve_admin", "admin"),
        "member": Login("alice", "viewer", TEAM),
        "outsider": Login("mallory", "viewer", OTHER_TEAM),
    }


@pytest.fixture(scope="session")
def system_fake_reve() -> Iterator[FakeReveServer]:
    with FakeReveServer(async_seconds=2.0) as server:
        yield server


@pytest.fixture(scope="module")
def gallery_ledger(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The browser tests' SQLite ledger with one daily budget over ``reve_default`` (room for all)."""
    from airflow_provider_reve.budgets import Budget, Ledger
    from airflow_provider_reve.budgets.schema import engine_for_url

    path = tmp_path_factory.mktemp("ledger") / "reve-ledger.db"
    ledger = Ledger(engine_for_url(f"sqlite:///{path}"))
    ledger.set_budget(Budget(GALLERY_BUDGET, 100_000, "reve_default", window="day", time_zone="Europe/Paris"))
    return ledger


@pytest.fixture(scope="module")  # stopped before the next module starts its own cluster
def gallery_airflow(
    system_fake_reve: FakeReveServer,
    logins: dict[str, Login],
    gallery_ledger: Any,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[AirflowWithLogins]:
    """One Airflow for the browser tests: the example DAGs owned by team ``content``, another team's
    DAG, three users, the Reve connection pointing at the fake API, budgets in ``gallery_ledger``."""
    base = tmp_path_factory.mktemp("system")
    conn = {"conn_type": "reve", "host": system_fake_reve.url, "password": DEFAULT_API_KEY}
    cluster = AirflowWithLogins(
        bundles={"reve-examples": (EXAMPLE_DAGS, TEAM), "other-team": (OTHER_TEAM_DAGS, OTHER_TEAM)},
        logins=list(logins.values()),
        triggerer_team=TEAM,
        home=base / "airflow-home",
        env={
            "AIRFLOW_CONN_REVE_DEFAULT": json.dumps(conn),
            "REVE_EXAMPLE_OUTPUT_DIR": str(base / "generated"),
            "AIRFLOW_CONN_REVE_LEDGER": gallery_ledger.engine.url.render_as_string(),
            "AIRFLOW__REVE__LEDGER_CONN_ID": "reve_ledger",
        },
    )
    try:
        cluster.start(timeout=240)
        request.config.stash[_CLUSTER_KEY] = cluster
        yield cluster
    finally:
        if _CLUSTER_KEY in request.config.stash:
            del request.config.stash[_CLUSTER_KEY]
        cluster.stop()


@dataclass(frozen=True)
class Generation:
    """One mapped ``generate`` instance of the finished run, as the metadata DB records it."""

    map_index: int
    prompt: str
    xcom: dict[str, Any]


@dataclass(frozen=True)
class ContentRun:
    run_id: str
    generations: list[Generation]


@pytest.fixture(scope="module")
def content_run(gallery_airflow: AirflowWithLogins) -> ContentRun:
    """The example content pipeline's first (@daily) run, finished, as ``make demo`` runs it."""
    gallery_airflow.wait_for_dag(CONTENT_DAG_ID, timeout=120)
    gallery_airflow.wait_for_dag(OTHER_DAG_ID, timeout=60)
    gallery_airflow.unpause(CONTENT_DAG_ID)
    run_id = wait_for_first_run(gallery_airflow, CONTENT_DAG_ID, timeout=60)
    state = gallery_airflow.wait_for_run(CONTENT_DAG_ID, run_id, timeout=300)
    assert state == "success", gallery_airflow.dump_logs(tail=80)
    rows = gallery_airflow.query(
        "SELECT map_index, rendered_fields FROM rendered_task_instance_fields"
        " WHERE dag_id = ? AND run_id = ? AND task_id = 'generate' ORDER BY map_index",
        (CONTENT_DAG_ID, run_id),
    )
    generations = [
        Generation(
            map_index=row["map_index"],
            prompt=json.loads(row["rendered_fields"])["prompt"],
            xcom=gallery_airflow.xcom(CONTENT_DAG_ID, run_id, "generate", map_index=row["map_index"]),
        )
        for row in rows
    ]
    assert generations, "the run rendered no generate instance"
    return ContentRun(run_id=run_id, generations=generations)

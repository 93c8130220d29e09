"""End-to-end tests against one real local Airflow shared by the whole e2e session.

Every test collected under ``tests/e2e`` is marked ``e2e`` (``pytest -m "not e2e"`` skips
them). Starting Airflow costs ~12 s, so the deployment is session-scoped: tests must not
depend on each other's runs and should trigger their own DAG runs.

Environment for the Airflow processes (connections, variables, config) is fixed at start
and comes from the ``e2e_env`` fixture. To point the DAGs at a server started by the test
session (e.g. the fake Reve API), replace ``e2e_env`` below with a session fixture that
depends on that server::

    @pytest.fixture(scope="session")
    def e2e_env(session_fake_reve_server) -> dict[str, str]:
        conn = {"conn_type": "reve", "host": session_fake_reve_server.url, "password": KEY}
        return {"AIRFLOW_CONN_REVE_DEFAULT": json.dumps(conn)}

(That is what ``e2e_env`` below does for the fake Reve API.)

When an e2e test fails, the tails of all component logs are attached to its report.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from hostile_stub import HostileStub

from airflow_provider_reve.testing.cluster import LocalAirflow
from airflow_provider_reve.testing.fake_server import DEFAULT_API_KEY, FakeReveServer

E2E_DIR = Path(__file__).resolve().parent
DAGS_FOLDER = E2E_DIR / "dags"

_CLUSTER_KEY = pytest.StashKey[LocalAirflow]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark everything in this directory ``e2e``; one place instead of a marker per module."""
    for item in items:
        if E2E_DIR in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, object, object]:
    """Attach the component log tails to a failed e2e test's report.

    The cause of an e2e failure is usually in the scheduler, triggerer or api-server log,
    not in the test's own output, and the temporary home is gone by the time anyone looks.
    """
    report = yield
    cluster = item.config.stash.get(_CLUSTER_KEY, None)
    if (
        cluster is not None
        and isinstance(report, pytest.TestReport)
        and report.failed
        and "local_airflow" in getattr(item, "fixturenames", ())
    ):
        report.sections.append(("local airflow logs", cluster.dump_logs(tail=200)))
    return report


@pytest.fixture(scope="session")
def hostile_api_key() -> str:
    """The key of the ``reve_hostile`` connection: distinctive and random, so that no
    16-character piece of it can turn up anywhere by chance."""
    return "sk-E2E-LEAK-CANARY-" + secrets.token_hex(12)


@pytest.fixture(scope="session")
def hostile_reve_stub() -> Iterator[HostileStub]:
    """A stub Reve API that echoes the key back (``tests/support/hostile_stub.py``), for the session.

    Tests that use it call ``hostile_reve_stub.reset(script)`` first.
    """
    with HostileStub() as stub:
        yield stub


@pytest.fixture(scope="session")
def e2e_env(
    session_fake_reve_server: FakeReveServer, hostile_reve_stub: HostileStub, hostile_api_key: str
) -> dict[str, str]:
    """Environment for every process of the session's one Airflow: the Reve connections.

    ``reve_default`` is the fake Reve API; ``reve_hostile`` is the stub that echoes its key.
    Session-scoped and defined here, not per module: the first e2e test to run starts Airflow
    with whatever this returns, for every test after it.
    """
    conn = {"conn_type": "reve", "host": session_fake_reve_server.url, "password": DEFAULT_API_KEY}
    hostile = {"conn_type": "reve", "host": hostile_reve_stub.url, "password": hostile_api_key}
    return {"AIRFLOW_CONN_REVE_DEFAULT": json.dumps(conn), "AIRFLOW_CONN_REVE_HOSTILE": json.dumps(hostile)}


@pytest.fixture(scope="session")
def local_airflow(
    e2e_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[LocalAirflow]:
    """A started :class:`LocalAirflow` running ``tests/e2e/dags``, stopped after the session.

    Its home lives under pytest's basetemp, which pytest keeps for the last few sessions,
    so the database and every log can be inspected after a failure.
    """
    home = tmp_path_factory.mktemp("airflow-home")
    cluster = LocalAirflow(DAGS_FOLDER, home=home, env=e2e_env)
    try:
        cluster.start(timeout=180)
        request.config.stash[_CLUSTER_KEY] = cluster
        yield cluster
    finally:
        if _CLUSTER_KEY in request.config.stash:
            del request.config.stash[_CLUSTER_KEY]
        cluster.stop()

"""pytest fixtures for testing Reve DAGs and tasks offline; loaded automatically once the provider is
installed (entry point ``pytest11`` ``reve_fake_server``).

* ``fake_reve_server`` -- a started :class:`~airflow_provider_reve.testing.FakeReveServer` for one
  test (stopped afterwards). Tune it from the test: ``fake_reve_server.set_async_seconds(0.1)``,
  ``fake_reve_server.add_fault(kind="error", code="RATE_LIMITED", retry_after=1)``...
* ``session_fake_reve_server`` -- one server for the whole test session, e.g. for Airflow processes
  that are started once per session and must know the URL up front. Tests share it: call
  ``session_fake_reve_server.reset()`` where a test needs a clean state.
* ``reve_connection_env`` -- points the ``reve_default`` Airflow connection at that server (via the
  ``AIRFLOW_CONN_REVE_DEFAULT`` environment variable, with the key ``DEFAULT_API_KEY``) and returns
  the connection id::

      def test_my_dag_generates_one_image(reve_connection_env, fake_reve_server):
          dag.test()
          assert fake_reve_server.submissions == 1

The fake server is imported only when a fixture is used, so this plugin costs nothing in test
runs that do not use it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from airflow_provider_reve.testing.fake_server import FakeReveServer

REVE_CONN_ID = "reve_default"


@pytest.fixture
def fake_reve_server() -> Iterator[FakeReveServer]:
    """A running fake Reve API (default key ``DEFAULT_API_KEY`` with 1,000,000 credits)."""
    from airflow_provider_reve.testing.fake_server import FakeReveServer

    with FakeReveServer() as server:
        yield server


@pytest.fixture(scope="session")
def session_fake_reve_server() -> Iterator[FakeReveServer]:
    """A running fake Reve API shared by every test of the session (see the module docstring)."""
    from airflow_provider_reve.testing.fake_server import FakeReveServer

    with FakeReveServer() as server:
        yield server


@pytest.fixture
def reve_connection_env(fake_reve_server: FakeReveServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Set ``AIRFLOW_CONN_REVE_DEFAULT`` to the fake server; yields the connection id ``reve_default``."""
    from airflow_provider_reve.testing.fake_server import DEFAULT_API_KEY

    connection = {"conn_type": "reve", "host": fake_reve_server.url, "password": DEFAULT_API_KEY}
    monkeypatch.setenv(f"AIRFLOW_CONN_{REVE_CONN_ID.upper()}", json.dumps(connection))
    yield REVE_CONN_ID

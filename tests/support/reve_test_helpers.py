"""Small helpers shared by the test modules: define a connection, run a trigger, read XComs."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from airflow_provider_reve.testing import DEFAULT_API_KEY
from airflow_provider_reve.triggers.reve import settle_time

#: The real one: conftest replaces it for every test (so in-process triggers need not wait).
REAL_SETTLE_TIME = settle_time


def return_values(dag_run: Any, task_id: str) -> dict[int, Any]:
    """The ``return_value`` XComs a task pushed in a ``dag.test()`` run, by map index."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.scalars(
            XComModel.get_many(
                run_id=dag_run.run_id, dag_ids=dag_run.dag_id, task_ids=task_id, key="return_value"
            )
        ).all()
        return {row.map_index: XComModel.deserialize_value(row) for row in rows}


def fire(trigger: Any) -> dict[str, Any]:
    """Run a trigger the way the triggerer does and return its one event's payload."""

    async def run() -> list[dict[str, Any]]:
        return [event.payload async for event in trigger.run()]

    events = asyncio.run(run())
    assert len(events) == 1
    return events[0]


def use_connection(
    monkeypatch: pytest.MonkeyPatch,
    host: str | None,
    password: str | None = DEFAULT_API_KEY,
    conn_id: str = "reve_default",
    port: int | None = None,
    **extra: Any,
) -> str:
    """Define the Airflow connection ``conn_id`` through its environment variable."""
    connection: dict[str, Any] = {"conn_type": "reve", "host": host, "password": password}
    if port is not None:
        connection["port"] = port
    if extra:
        connection["extra"] = extra
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(connection))
    return conn_id


def wait_for(condition: Callable[[], object], what: str, timeout: float = 60.0) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:g}s waiting for {what}")
        time.sleep(0.02)

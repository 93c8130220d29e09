"""Fixtures and helpers shared by the never-pay-twice test modules.

The fake Reve API counts what it received (``submissions``, ``requests_to``) and keeps a credits
ledger; :class:`Run` reads a finished ``dag.test()`` back from the metadata DB; the in-memory
state store stands in for ``context["task_state_store"]`` in direct ``execute()`` calls.
"""

from __future__ import annotations

import asyncio
import copy
import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
import requests
from airflow.sdk.exceptions import TaskDeferred

from airflow_provider_reve.client.retry import RetryPolicy
from airflow_provider_reve.operators.reve import ReveGenerateOperator
from airflow_provider_reve.testing import DEFAULT_API_KEY, FakeReveServer

DAGS_DIR = Path(__file__).resolve().parents[1] / "dags" / "never_pay_twice"
DAG_FILE = DAGS_DIR / "never_pay_twice_dags.py"
DAG_MODULE = "never_pay_twice_dags"

# The hook's own retries, kept short so that a test per code stays fast.
FAST_RETRIES = RetryPolicy(max_attempts=2, initial_backoff=0.01, max_backoff=0.01)
START_BALANCE = 1_000_000  # the fake server's default balance for DEFAULT_API_KEY
SYNC_MODEL, ASYNC_MODEL = "reve-2.0", "seedream-5"  # 12 and 25 credits


# -------------------------------------------------------------------------------------- fixtures


@pytest.fixture
def server(fake_reve_server: FakeReveServer, reve_connection_env: str) -> FakeReveServer:
    """The fake Reve API, with the ``reve_default`` connection pointing at it."""
    fake_reve_server.set_async_seconds(0.3)
    return fake_reve_server


@pytest.fixture(scope="module")
def dags() -> Iterator[ModuleType]:
    """The test DAG file, in a DAGs folder of its own, with the metadata DB migrated."""
    from airflow import settings
    from airflow.utils.db import initdb

    with pytest.MonkeyPatch.context() as patch:
        # dag.test() syncs the DAGs-folder bundle to the DB and runs the DAG from there.
        patch.setenv("AIRFLOW__CORE__DAGS_FOLDER", str(DAGS_DIR))
        patch.setattr(settings, "DAGS_FOLDER", str(DAGS_DIR))
        initdb()
        spec = importlib.util.spec_from_file_location(DAG_MODULE, DAG_FILE)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[DAG_MODULE] = module
        spec.loader.exec_module(module)
        try:
            yield module
        finally:
            sys.modules.pop(DAG_MODULE, None)


# -------------------------------------------------------------------------------------- helpers


class InMemoryTaskStateStore:
    """The part of ``context["task_state_store"]`` the operator uses: JSON values by key."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return copy.deepcopy(self.data.get(key, default))

    def set(self, key: str, value: Any, *, retention: Any = None) -> None:
        if value is None:
            raise ValueError("Cannot set value as None")
        self.data[key] = json.loads(json.dumps(value))

    def delete(self, key: str) -> None:
        self.data.pop(key, None)


def make_context(
    store: InMemoryTaskStateStore | None, try_number: int = 1, **ti_fields: Any
) -> dict[str, Any]:
    context: dict[str, Any] = {"ti": SimpleNamespace(try_number=try_number, map_index=-1, **ti_fields)}
    if store is not None:
        context["task_state_store"] = store
    return context


def make_operator(**kwargs: Any) -> ReveGenerateOperator:
    kwargs.setdefault("model", SYNC_MODEL)
    kwargs.setdefault("prompt", "a red fox")
    kwargs.setdefault("poll_interval", 0.05)
    operator = ReveGenerateOperator(task_id="generate", **kwargs)
    operator.hook.retry_policy = FAST_RETRIES
    return operator


def run_trigger(trigger: Any) -> Any:
    """Run a trigger to its first event, as the triggerer would; returns the event payload."""

    async def first_event() -> Any:
        events = trigger.run()
        try:
            event = await anext(events)
        finally:
            await events.aclose()
        return event.payload

    return asyncio.run(first_event())


def resume(operator: ReveGenerateOperator, context: dict[str, Any], deferred: TaskDeferred) -> Any:
    """What the triggerer + a worker do with a deferral: fire the trigger, call the next method."""
    payload = run_trigger(deferred.trigger)
    return getattr(operator, deferred.method_name)(context, event=payload, **(deferred.kwargs or {}))


def execute_to_the_end(operator: ReveGenerateOperator, context: dict[str, Any]) -> Any:
    """``execute`` and, for a deferrable operator, every resumption, until a result or an error."""
    try:
        return operator.execute(context)
    except TaskDeferred as deferred:
        step = deferred
    while True:
        try:
            return resume(operator, context, step)
        except TaskDeferred as deferred:
            step = deferred


def occupy_slots(server: FakeReveServer, count: int) -> list[str]:
    """Submit ``count`` slow tasks for the same account, as another DAG would."""
    ids = []
    for _ in range(count):
        response = requests.post(
            f"{server.url}/api/v1/generate",
            json={"model": ASYNC_MODEL, "prompt": "another DAG's task"},
            headers={"Authorization": f"Bearer {DEFAULT_API_KEY}"},
            timeout=5,
        )
        assert response.status_code == 200, response.text
        ids.append(response.json()["data"]["task_id"])
    return ids


def api_result(server: FakeReveServer, task_id: str) -> dict[str, Any]:
    """The XCom dict a successful Reve task must produce, built from the server's own record."""
    info = server.tasks[task_id]
    assert info["status"] == "SUCCESS", info
    return {
        "reve_task_id": task_id,
        "task_id": task_id,
        "status": "SUCCESS",
        "result_urls": info["result_urls"],
        "consumed_credits": info["consumed_credits"],
        "error_code": None,
        "error_message": None,
        "model": info["model"],
        # What was asked for, as the server received it (the XCom carries the request sent).
        "prompt": info["params"].get("prompt"),
        "request": info["params"],
        "metadata": None,
    }


def net_charged(server: FakeReveServer) -> int:
    return -sum(entry["delta"] for entry in server.ledger)


# -- dag.test() runs


class Run:
    """One finished ``dag.test()`` run, read back from the metadata DB."""

    def __init__(self, dag: Any) -> None:
        dag_run = dag.test()
        self.dag_id: str = dag_run.dag_id
        self.run_id: str = dag_run.run_id
        self.state: str = str(dag_run.state)

    def task_instances(self) -> dict[int, Any]:
        from airflow.models.taskinstance import TaskInstance
        from airflow.utils.session import create_session
        from sqlalchemy import select

        with create_session() as session:
            rows = session.scalars(
                select(TaskInstance).where(
                    TaskInstance.dag_id == self.dag_id, TaskInstance.run_id == self.run_id
                )
            ).all()
            return {
                ti.map_index: SimpleNamespace(state=str(ti.state), try_number=ti.try_number) for ti in rows
            }

    def earlier_tries(self) -> dict[int, list[tuple[int, str]]]:
        """map index -> [(try_number, state)] of the tries that came before the final one."""
        from airflow.models.taskinstancehistory import TaskInstanceHistory
        from airflow.utils.session import create_session
        from sqlalchemy import select

        with create_session() as session:
            rows = session.scalars(
                select(TaskInstanceHistory).where(
                    TaskInstanceHistory.dag_id == self.dag_id, TaskInstanceHistory.run_id == self.run_id
                )
            ).all()
            tries: dict[int, list[tuple[int, str]]] = {}
            for row in rows:
                tries.setdefault(row.map_index, []).append((row.try_number, str(row.state)))
            return {index: sorted(found) for index, found in tries.items()}

    def xcom(self) -> dict[int, Any]:
        """map index -> XCom ``return_value``."""
        from airflow.models.xcom import XComModel
        from airflow.utils.session import create_session

        with create_session() as session:
            rows = session.scalars(
                XComModel.get_many(run_id=self.run_id, dag_ids=self.dag_id, key="return_value")
            ).all()
            return {row.map_index: XComModel.deserialize_value(row) for row in rows}

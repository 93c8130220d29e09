"""``AsyncReveClient`` used on its own, without Airflow: no connection, no hook, only settings.

Real loopback HTTP (``aiohttp``) against the fake Reve API; what the server saw is read from its
counters. The async hook's own behaviour, which it takes from this client, is ``tests/unit/hooks``.
"""

from __future__ import annotations

import asyncio

import pytest

from airflow_provider_reve.client import (
    AsyncReveClient,
    RetryPolicy,
    ReveClient,
    settings_from_connection,
)
from airflow_provider_reve.client.async_client import _SESSIONS
from airflow_provider_reve.exceptions import ReveAuthenticationError, ReveNotFoundError
from airflow_provider_reve.models import ReveTask
from airflow_provider_reve.testing import DEFAULT_API_KEY, FakeReveServer

FAST = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.05)
WRONG_KEY = "sk-not-a-key-of-this-account-3f9a"
MODEL = "reve-2.0"


def client_for(server: FakeReveServer, key: str = DEFAULT_API_KEY) -> AsyncReveClient:
    return AsyncReveClient(settings_from_connection("mine", server.url, None, key, {}), retry_policy=FAST)


@pytest.fixture
def finished_task(fake_reve_server: FakeReveServer) -> ReveTask:
    settings = settings_from_connection("mine", fake_reve_server.url, None, DEFAULT_API_KEY, {})
    with ReveClient(settings) as client:
        return client.generate(MODEL, "a paper boat on a pond")


async def test_the_client_reads_a_task_with_settings_alone_and_leaves_no_session_open(
    fake_reve_server, finished_task
):
    client = client_for(fake_reve_server)

    async with client.keep_session():
        task = await client.get_status(finished_task.task_id, model=MODEL)
        again = await client.get_status(finished_task.task_id, model=MODEL)

    assert task == again == finished_task
    assert fake_reve_server.requests_to("status") == 2
    assert asyncio.get_running_loop() not in _SESSIONS


async def test_an_unknown_task_raises_the_typed_error_without_reading_again(fake_reve_server):
    with pytest.raises(ReveNotFoundError) as raised:
        await client_for(fake_reve_server).get_status("no-such-task")

    assert raised.value.code == "TASK_NOT_FOUND"
    assert fake_reve_server.requests_to("status") == 1


async def test_a_refused_key_raises_the_typed_error_without_the_key_or_any_airflow_advice(
    fake_reve_server, finished_task
):
    with pytest.raises(ReveAuthenticationError) as raised:
        await client_for(fake_reve_server, WRONG_KEY).get_status(finished_task.task_id)

    assert WRONG_KEY not in str(raised.value)
    assert "Airflow connection" not in str(raised.value)
    assert fake_reve_server.requests_to("status") == 1


async def test_a_status_read_answered_503_is_read_again(fake_reve_server, finished_task):
    fake_reve_server.add_fault(kind="error", endpoint="status", code="SERVICE_UNAVAILABLE")

    task = await client_for(fake_reve_server).get_status(finished_task.task_id)

    assert task.succeeded
    assert fake_reve_server.requests_to("status") == 2

"""``ReveAsyncHook`` over real loopback HTTP (``aiohttp``) against the fake Reve API.

The connection comes from ``AIRFLOW_CONN_*`` environment variables through
``airflow.providers.common.compat.connection.get_async_connection``, as in the triggerer.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from reve_test_helpers import use_connection
from trickle_stub import trickling_status_server

from airflow_provider_reve.client.async_client import _SESSIONS
from airflow_provider_reve.client.retry import NO_RETRIES, RetryPolicy
from airflow_provider_reve.exceptions import (
    STATUS_ENDPOINT,
    ReveAuthenticationError,
    ReveConfigurationError,
    ReveConnectionError,
    ReveMalformedResponseError,
    ReveNotFoundError,
    ReveRateLimitError,
    ReveServerError,
    ReveValidationError,
)
from airflow_provider_reve.hooks.reve import ReveAsyncHook, ReveHook, shared_client_session
from airflow_provider_reve.models import ReveTask
from airflow_provider_reve.testing import DEFAULT_API_KEY, FakeReveServer, Fault

CONN_ID = "reve_default"
FAST = RetryPolicy(max_attempts=4, initial_backoff=0.01, max_backoff=0.05)
PROMPT = "a lighthouse at dusk"


@pytest.fixture
def server(fake_reve_server: FakeReveServer, reve_connection_env: str) -> FakeReveServer:
    return fake_reve_server


@pytest.fixture
def finished_task(server: FakeReveServer) -> ReveTask:
    """A finished ``reve-2.0`` task, created with the sync hook (not counted as a status read)."""
    hook = ReveHook(retry_policy=FAST)
    task = hook.generate("reve-2.0", PROMPT)
    hook.close()
    return task


@pytest.fixture
async def loop_session_closed_afterwards() -> AsyncIterator[None]:
    """After the test, the loop's shared ``aiohttp`` session is gone: nothing leaks."""
    yield
    assert asyncio.get_running_loop() not in _SESSIONS


@pytest.fixture
def async_hook(server: FakeReveServer, loop_session_closed_afterwards: None) -> ReveAsyncHook:
    return ReveAsyncHook(CONN_ID, retry_policy=FAST)


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound by us, never listening."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


# -- reading a task -------------------------------------------------------------------------------


async def test_aget_status_reads_a_finished_task(async_hook, server, finished_task):
    task = await async_hook.aget_status(finished_task.task_id, model="reve-2.0")

    assert task.status == "SUCCESS"
    assert task.task_id == finished_task.task_id
    assert task.model == "reve-2.0"
    assert task.consumed_credits == 12
    assert task.result_urls == finished_task.result_urls
    assert server.requests_to("status") == 1


async def test_aget_status_sees_an_asynchronous_task_go_from_in_progress_to_success(async_hook, server):
    server.set_async_seconds(3600)
    submitted = ReveHook(retry_policy=FAST).generate("seedream-5", PROMPT)

    assert (await async_hook.aget_status(submitted.task_id)).status == "IN_PROGRESS"
    server.finish_task(submitted.task_id)
    done = await async_hook.aget_status(submitted.task_id, model="seedream-5")

    assert done.status == "SUCCESS"
    assert done.consumed_credits == 25
    assert len(done.result_urls) == 1


async def test_aget_status_of_an_unknown_task_raises_not_found_without_retrying(async_hook, server):
    with pytest.raises(ReveNotFoundError) as raised:
        await async_hook.aget_status("no-such-task")

    assert raised.value.code == "TASK_NOT_FOUND"
    assert raised.value.endpoint == STATUS_ENDPOINT
    assert not raised.value.retryable
    assert server.requests_to("status") == 1


async def test_aget_status_with_a_rejected_key_raises_authentication_error_without_the_key(
    server, monkeypatch, loop_session_closed_afterwards
):
    wrong_key = "sk-async-wrong-key-5e2b"
    use_connection(monkeypatch, server.url, password=wrong_key)

    with pytest.raises(ReveAuthenticationError) as raised:
        await ReveAsyncHook(retry_policy=FAST).aget_status("some-task")

    assert wrong_key not in str(raised.value)
    assert wrong_key not in repr(raised.value)
    assert server.requests_to("status") == 1


async def test_a_blank_task_id_is_refused_before_any_http_call(async_hook, server):
    with pytest.raises(ReveValidationError):
        await async_hook.aget_status("  ")

    assert server.requests_to("total") == 0


# -- retries --------------------------------------------------------------------------------------

TRANSIENT = {
    "503 SERVICE_UNAVAILABLE": Fault(kind="error", endpoint="status", code="SERVICE_UNAVAILABLE"),
    "429 RATE_LIMITED": Fault(kind="error", endpoint="status", code="RATE_LIMITED"),
    "502 HTML": Fault(kind="html", endpoint="status", status=502),
    "connection dropped": Fault(kind="drop_before", endpoint="status"),
    "garbled": Fault(kind="garbled", endpoint="status"),
}


@pytest.mark.parametrize("fault", TRANSIENT.values(), ids=TRANSIENT.keys())
async def test_aget_status_is_retried_after_a_transient_failure_and_then_succeeds(
    async_hook, server, finished_task, fault
):
    server.add_fault(fault)

    task = await async_hook.aget_status(finished_task.task_id)

    assert task.status == "SUCCESS"
    assert server.requests_to("status") == 2


async def test_aget_status_waits_as_long_as_retry_after_asks(async_hook, server, finished_task):
    server.add_fault(kind="error", endpoint="status", code="RATE_LIMITED", retry_after=1)
    started = time.monotonic()

    task = await async_hook.aget_status(finished_task.task_id)

    assert time.monotonic() - started >= 1.0  # the policy's own backoff is at most 0.05 s
    assert task.status == "SUCCESS"
    assert server.requests_to("status") == 2


async def test_aget_status_retries_stop_after_max_attempts_and_raise_the_last_error(
    async_hook, server, finished_task
):
    async_hook.retry_policy = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.05)
    server.add_fault(kind="error", endpoint="status", code="RATE_LIMITED", times=2)
    server.add_fault(kind="error", endpoint="status", code="SERVICE_UNAVAILABLE", times=None)

    with pytest.raises(ReveServerError) as raised:
        await async_hook.aget_status(finished_task.task_id)

    assert raised.value.code == "SERVICE_UNAVAILABLE"
    assert server.requests_to("status") == 3


async def test_aget_status_raises_a_rate_limit_error_when_retries_run_out(async_hook, server, finished_task):
    async_hook.retry_policy = NO_RETRIES
    server.add_fault(kind="error", endpoint="status", code="RATE_LIMITED", retry_after=0)

    with pytest.raises(ReveRateLimitError) as raised:
        await async_hook.aget_status(finished_task.task_id)

    assert raised.value.retry_after == 0.0
    assert server.requests_to("status") == 1


MALFORMED = {
    "html": Fault(kind="html", endpoint="status"),
    "garbled": Fault(kind="garbled", endpoint="status"),
    "missing_data": Fault(kind="missing_data", endpoint="status"),
    "unknown_status": Fault(kind="unknown_status", endpoint="status"),
}


@pytest.mark.parametrize("fault", MALFORMED.values(), ids=MALFORMED.keys())
async def test_a_malformed_answer_raises_a_malformed_response_error(async_hook, server, finished_task, fault):
    async_hook.retry_policy = NO_RETRIES
    server.add_fault(fault)

    with pytest.raises(ReveMalformedResponseError) as raised:
        await async_hook.aget_status(finished_task.task_id)

    assert STATUS_ENDPOINT in str(raised.value)


async def test_a_refused_connection_raises_connection_error_after_retrying(
    monkeypatch, closed_port, caplog, loop_session_closed_afterwards
):
    use_connection(monkeypatch, f"http://127.0.0.1:{closed_port}")
    hook = ReveAsyncHook(retry_policy=RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.05))

    with (
        caplog.at_level(logging.WARNING, logger="airflow_provider_reve"),
        pytest.raises(ReveConnectionError) as raised,
    ):
        await hook.aget_status("some-task")

    assert raised.value.request_sent is False
    assert raised.value.endpoint == STATUS_ENDPOINT
    retries = [r for r in caplog.records if r.name == "airflow_provider_reve.client.retry"]
    assert len(retries) == 2


async def test_a_read_timeout_raises_connection_error_saying_the_request_was_sent(
    server, monkeypatch, finished_task, loop_session_closed_afterwards
):
    use_connection(monkeypatch, server.url, read_timeout=0.3)
    hook = ReveAsyncHook(retry_policy=NO_RETRIES)
    server.add_fault(kind="slow", endpoint="status", delay=1.0)

    with pytest.raises(ReveConnectionError) as raised:
        await hook.aget_status(finished_task.task_id)

    assert raised.value.request_sent is True
    assert (await hook.async_settings()).read_timeout == 0.3
    assert server.requests_to("status") == 1


async def test_the_hooks_own_timeout_overrides_the_connections_read_timeout(
    server, finished_task, loop_session_closed_afterwards
):
    hook = ReveAsyncHook(CONN_ID, timeout=(1, 1), retry_policy=NO_RETRIES)
    server.add_fault(kind="slow", endpoint="status", delay=4.0)  # the connection allows 60 s

    with pytest.raises(ReveConnectionError) as raised:
        await hook.aget_status(finished_task.task_id)

    assert raised.value.request_sent is True
    assert server.requests_to("status") == 1


async def test_an_answer_trickling_in_is_cut_at_connect_plus_read_timeout(
    monkeypatch, loop_session_closed_afterwards
):
    # A byte every 0.1 s for two minutes: a per-read timeout alone would wait it all out.
    async with trickling_status_server(byte_every=0.1, for_seconds=120) as stub:
        use_connection(monkeypatch, stub.url, connect_timeout=0.5, read_timeout=0.5)
        hook = ReveAsyncHook(CONN_ID, retry_policy=NO_RETRIES)

        with pytest.raises(ReveConnectionError) as raised:
            await asyncio.wait_for(hook.aget_status("trickled-task"), timeout=20)

    assert raised.value.request_sent is True
    assert stub.requests == 1


async def test_within_bounds_the_whole_call_retries_included(
    server, finished_task, loop_session_closed_afterwards
):
    hook = ReveAsyncHook(CONN_ID, retry_policy=RetryPolicy(max_attempts=10, initial_backoff=0.01))
    server.add_fault(kind="slow", endpoint="status", delay=3.0, times=None)

    with pytest.raises(ReveConnectionError):
        await hook.aget_status(finished_task.task_id, within=0.5)

    assert server.requests_to("status") == 1  # no retry fits in what was left


# -- the connection, resolved without blocking the loop ----------------------------------------


async def test_the_async_hook_reads_the_connection_and_its_extras_from_the_environment(
    server, monkeypatch, loop_session_closed_afterwards
):
    use_connection(monkeypatch, server.url + "/", connect_timeout=3, read_timeout="4.5")

    settings = await ReveAsyncHook().async_settings()

    assert settings.base_url == server.url
    assert settings.api_key == DEFAULT_API_KEY
    assert (settings.connect_timeout, settings.read_timeout) == (3.0, 4.5)
    assert DEFAULT_API_KEY not in repr(settings)


async def test_the_async_hook_refuses_plain_http_before_any_network_call(monkeypatch):
    use_connection(monkeypatch, "http://example.com")

    with pytest.raises(ReveConfigurationError, match="allow_insecure_http"):
        await ReveAsyncHook().aget_status("some-task")


# -- one aiohttp session per event loop -----------------------------------------------------------


async def test_hooks_on_one_loop_share_one_session_and_one_tcp_connection(async_hook, server, finished_task):
    other_hook = ReveAsyncHook(CONN_ID, retry_policy=FAST)
    connections_before = server.connections  # the sync hook's, which created the task

    # A trigger holds the loop's session for its whole wait; other triggers borrow the same one.
    async with async_hook.keep_session():
        await async_hook.aget_status(finished_task.task_id)
        await other_hook.aget_status(finished_task.task_id)
        await async_hook.aget_status(finished_task.task_id)

    assert server.requests_to("status") == 3
    assert server.connections - connections_before == 1


async def test_the_shared_session_is_closed_when_its_last_user_leaves(server, finished_task):
    hook = ReveAsyncHook(CONN_ID, retry_policy=FAST)
    async with shared_client_session() as outer:
        async with shared_client_session() as inner:
            assert inner is outer
        assert not outer.closed  # still borrowed by the outer user
        await hook.aget_status(finished_task.task_id)
    assert outer.closed
    assert asyncio.get_running_loop() not in _SESSIONS


def test_a_new_event_loop_gets_its_own_session(server, finished_task):
    sessions: list[aiohttp.ClientSession] = []
    connections_before = server.connections

    async def read_once() -> None:
        async with shared_client_session() as session:
            sessions.append(session)
            await ReveAsyncHook(CONN_ID, retry_policy=FAST).aget_status(finished_task.task_id)

    for _ in range(2):
        asyncio.run(read_once())

    assert len(sessions) == 2
    assert sessions[0] is not sessions[1]
    assert all(session.closed for session in sessions)
    assert not _SESSIONS  # loops that ended left nothing behind
    assert server.requests_to("status") == 2
    assert server.connections - connections_before == 2


def test_a_closed_session_is_replaced_on_the_same_loop(server, finished_task):
    async def scenario() -> tuple[aiohttp.ClientSession, aiohttp.ClientSession]:
        hook = ReveAsyncHook(CONN_ID, retry_policy=FAST)
        async with shared_client_session() as first:
            await first.close()  # e.g. closed by someone else
            async with shared_client_session() as second:
                await hook.aget_status(finished_task.task_id)
        return first, second

    first, second = asyncio.run(scenario())

    assert first is not second
    assert server.requests_to("status") == 1

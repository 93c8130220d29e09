"""``ReveClient`` used on its own, without Airflow: no connection, no hook, only settings.

Real loopback HTTP (``requests``) against the fake Reve API; what the server saw is read from its
counters. The hook's own behaviour, which it takes from this client, is ``tests/unit/hooks``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from airflow_provider_reve.client import ConnectionSettings, RetryPolicy, ReveClient, settings_from_connection
from airflow_provider_reve.exceptions import (
    GENERATE_ENDPOINT,
    ReveAmbiguousSubmissionError,
    ReveAuthenticationError,
    ReveConfigurationError,
)
from airflow_provider_reve.testing import DEFAULT_API_KEY, FakeReveServer

FAST = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.05)
WRONG_KEY = "sk-not-a-key-of-this-account-3f9a"
SYNC_MODEL, SYNC_PRICE = "reve-2.0", 12
PROMPT = "a paper boat on a pond"


def client_for(server: FakeReveServer, key: str = DEFAULT_API_KEY) -> ReveClient:
    settings = settings_from_connection("mine", server.url, None, key, {})
    return ReveClient(settings, retry_policy=FAST)


@pytest.fixture
def client(fake_reve_server: FakeReveServer) -> Iterator[ReveClient]:
    with client_for(fake_reve_server) as reve:
        yield reve


def test_the_client_creates_and_reads_a_task_with_settings_alone(client, fake_reve_server, monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_REVE_DEFAULT", raising=False)  # no Airflow connection at all

    task = client.generate(SYNC_MODEL, PROMPT, aspect_ratio=None)
    read = client.get_status(task.task_id, model=SYNC_MODEL)

    assert task.status == "SUCCESS"
    assert task.model == SYNC_MODEL
    assert task.consumed_credits == SYNC_PRICE
    assert read == task
    assert fake_reve_server.tasks[task.task_id]["params"] == {"prompt": PROMPT}
    assert fake_reve_server.submissions == 1


def test_a_refused_key_raises_the_typed_error_at_once_without_the_key_or_any_airflow_advice(
    fake_reve_server,
):
    with client_for(fake_reve_server, WRONG_KEY) as client, pytest.raises(ReveAuthenticationError) as raised:
        client.generate(SYNC_MODEL, PROMPT)

    assert raised.value.http_status == 401
    assert raised.value.code == "INVALID_API_KEY"
    assert WRONG_KEY not in str(raised.value)
    assert "Airflow connection" not in str(raised.value)  # the hook adds that; the client has none
    assert fake_reve_server.requests_to("generate") == 1
    assert fake_reve_server.submissions == 0


def test_a_status_read_answered_503_is_read_again(client, fake_reve_server):
    task_id = client.generate(SYNC_MODEL, PROMPT).task_id
    fake_reve_server.add_fault(kind="error", endpoint="status", code="SERVICE_UNAVAILABLE")

    assert client.get_status(task_id).succeeded
    assert fake_reve_server.requests_to("status") == 2


def test_a_submission_refused_with_503_service_unavailable_is_sent_again_and_paid_once(
    client, fake_reve_server
):
    fake_reve_server.add_fault(kind="error", endpoint="generate", code="SERVICE_UNAVAILABLE")

    task = client.generate(SYNC_MODEL, PROMPT)

    assert task.succeeded
    assert fake_reve_server.requests_to("generate") == 2
    assert fake_reve_server.submissions == 1
    assert fake_reve_server.balance() == 1_000_000 - SYNC_PRICE


def test_a_submission_whose_answer_never_came_is_not_sent_again(client, fake_reve_server):
    fake_reve_server.add_fault(kind="drop_after", endpoint="generate")

    with pytest.raises(ReveAmbiguousSubmissionError) as raised:
        client.generate(SYNC_MODEL, PROMPT)

    assert raised.value.endpoint == GENERATE_ENDPOINT
    assert fake_reve_server.requests_to("generate") == 1


def test_check_key_tells_an_accepted_key_from_a_refused_one_without_spending(fake_reve_server):
    with client_for(fake_reve_server) as good, client_for(fake_reve_server, WRONG_KEY) as bad:
        assert good.check_key()[0] is True
        assert bad.check_key() == (False, "API key rejected by the Reve API (401 INVALID_API_KEY).")

    assert fake_reve_server.submissions == 0


def test_the_client_repr_names_its_base_url_and_never_its_key(client, fake_reve_server):
    client.generate(SYNC_MODEL, PROMPT)

    assert fake_reve_server.url in repr(client)
    assert DEFAULT_API_KEY not in repr(client)


NOT_SECONDS = {
    "NaN read": (5.0, float("nan")),
    "NaN connect": (float("nan"), 5.0),
    "infinite read": (5.0, float("inf")),
    "zero read": (5.0, 0.0),
    "negative connect": (-1.0, 5.0),
    "a string": (5.0, "30"),
    "a bool": (True, 5.0),
}


@pytest.mark.parametrize("timeout", NOT_SECONDS.values(), ids=NOT_SECONDS.keys())
def test_a_timeout_that_is_not_a_positive_number_of_seconds_is_refused_before_the_submission_is_sent(
    fake_reve_server, timeout
):
    # A NaN read timeout used to fail only once the request was written: paid, then a bare ValueError.
    settings = settings_from_connection("mine", fake_reve_server.url, None, DEFAULT_API_KEY, {})
    with (
        ReveClient(settings, timeout=timeout) as client,
        pytest.raises(ReveConfigurationError, match="timeout"),
    ):
        client.generate(SYNC_MODEL, PROMPT)

    assert fake_reve_server.requests_to("total") == 0
    assert fake_reve_server.submissions == 0


def test_settings_built_by_hand_with_a_nan_read_timeout_are_refused_before_anything_is_sent(fake_reve_server):
    with pytest.raises(ReveConfigurationError, match="read_timeout"):
        ConnectionSettings(base_url=fake_reve_server.url, api_key=DEFAULT_API_KEY, read_timeout=float("nan"))

    assert fake_reve_server.requests_to("total") == 0

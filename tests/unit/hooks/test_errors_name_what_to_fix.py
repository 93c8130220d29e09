"""Errors that name what to fix (issue 22, item 6).

A refused key names the Airflow connection whose key it was; a missing connection says its id,
that its type is ``reve`` and the environment variable that defines it, never a key; a misspelt
model id is refused before anything is paid for, offering the closest known ids, while an id
that may be a model the catalog does not know yet is still sent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from reve_test_helpers import use_connection

from airflow_provider_reve.exceptions import ReveAuthenticationError
from airflow_provider_reve.hooks.reve import ReveAsyncHook, ReveHook, shared_client_session
from airflow_provider_reve.testing import FakeReveServer

WRONG_KEY = "sk-wrong-4Hq8Zt2Lm7Vx9Rk3"
PROMPT = "a lighthouse at golden hour"


@pytest.fixture
async def loop_session() -> AsyncIterator[None]:
    async with shared_client_session():
        yield


def test_a_refused_key_names_the_connection_whose_key_to_fix(
    fake_reve_server: FakeReveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_connection(monkeypatch, fake_reve_server.url, password=WRONG_KEY, conn_id="reve_prod")

    with pytest.raises(ReveAuthenticationError) as raised:
        ReveHook("reve_prod").get_status("task-1")

    assert "INVALID_API_KEY" in str(raised.value)
    assert "'reve_prod'" in str(raised.value)
    assert "API key" in str(raised.value)
    assert WRONG_KEY not in str(raised.value)


async def test_a_refused_key_in_the_triggerer_names_the_connection_too(
    fake_reve_server: FakeReveServer, monkeypatch: pytest.MonkeyPatch, loop_session: None
) -> None:
    use_connection(monkeypatch, fake_reve_server.url, password=WRONG_KEY, conn_id="reve_prod")

    with pytest.raises(ReveAuthenticationError) as raised:
        await ReveAsyncHook("reve_prod").aget_status("task-1")

    assert "'reve_prod'" in str(raised.value)
    assert WRONG_KEY not in str(raised.value)


def test_a_missing_connection_says_its_id_its_type_and_the_environment_variable_that_defines_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from airflow.providers.common.compat.sdk import AirflowNotFoundException

    monkeypatch.delenv("AIRFLOW_CONN_REVE_PROD", raising=False)

    with pytest.raises(AirflowNotFoundException) as raised:
        ReveHook("reve_prod").get_status("task-1")

    message = str(raised.value)
    assert "'reve_prod'" in message
    assert "type 'reve'" in message
    assert 'AIRFLOW_CONN_REVE_PROD=\'{"conn_type": "reve", "password": ' in message
    assert "sk-" not in message


async def test_a_missing_connection_in_the_triggerer_gives_the_same_hint(
    monkeypatch: pytest.MonkeyPatch, loop_session: None
) -> None:
    from airflow.providers.common.compat.sdk import AirflowNotFoundException

    monkeypatch.delenv("AIRFLOW_CONN_REVE_PROD", raising=False)

    with pytest.raises(AirflowNotFoundException, match="AIRFLOW_CONN_REVE_PROD="):
        await ReveAsyncHook("reve_prod").aget_status("task-1")


@pytest.mark.parametrize(
    ("typed", "meant"),
    [
        ("seedream5", "seedream-5"),
        ("Seedream-5", "seedream-5"),
        ("nano-bananna", "nano-banana"),
        ("reve2.0", "reve-2.0"),
        ("kling3_pro_text_to_video", "kling3-pro-text-to-video"),
    ],
)
def test_a_misspelt_model_id_is_refused_before_paying_naming_the_closest_known_id(
    fake_reve_server: FakeReveServer, reve_connection_env: str, typed: str, meant: str
) -> None:
    from airflow.providers.common.compat.sdk import AirflowFailException

    from airflow_provider_reve.operators.reve import ReveGenerateOperator

    operator = ReveGenerateOperator(task_id="hero", model=typed, prompt=PROMPT)
    with pytest.raises(AirflowFailException) as raised:
        operator.execute({})

    assert f"did you mean {meant!r}" in str(raised.value)
    assert "nothing was submitted" in str(raised.value)
    assert fake_reve_server.requests_to("generate") == 0


@pytest.mark.parametrize("model", ["seedream-6", "nano-banana-2", "reve-2.1", "gpt-image-1"])
def test_a_model_id_that_is_not_a_near_miss_of_a_known_one_is_still_sent(
    fake_reve_server: FakeReveServer, reve_connection_env: str, model: str
) -> None:
    hook = ReveHook(reve_connection_env)
    try:
        hook.generate(model, PROMPT)
    except Exception as error:  # the fake does not know it either: what matters is it was asked
        assert "did you mean" not in str(error)
    assert fake_reve_server.requests_to("generate") == 1

"""``repr()`` and ``str()`` of everything a user or Airflow may print never show the API key.

Debuggers, ``print(hook)``, Airflow's own "Task ... deferred with trigger <repr>" lines and error
reports call ``repr()`` on hooks, triggers, operators and settings -- after they have made real
requests, when the key has been read and sits in the session's headers.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from reve_test_helpers import use_connection

from airflow_provider_reve.client.settings import settings_from_connection
from airflow_provider_reve.hooks.reve import ReveAsyncHook, ReveHook
from airflow_provider_reve.operators.reve import ReveGenerateOperator
from airflow_provider_reve.sensors.reve import ReveTaskSensor
from airflow_provider_reve.testing import FakeReveServer
from airflow_provider_reve.triggers.reve import ReveTaskTrigger

KEY = "sk-repr-Hq3Vt8Lw2Zp6Rn9Xc"


def shows_the_key(text: str) -> bool:
    folded = text.lower()
    return any(KEY[i : i + 8].lower() in folded for i in range(len(KEY) - 7))


@pytest.fixture
def server(fake_reve_server: FakeReveServer, monkeypatch: pytest.MonkeyPatch) -> FakeReveServer:
    fake_reve_server.add_key(KEY, 10_000)
    fake_reve_server.set_async_seconds(0.05)
    use_connection(monkeypatch, fake_reve_server.url, password=KEY)
    return fake_reve_server


def test_a_hook_that_has_sent_requests_shows_no_key_in_its_repr_or_its_settings(server):
    hook = ReveHook()
    task = hook.generate("reve-2.0", "a lighthouse")
    hook.get_status(task.task_id)
    assert hook.get_conn().headers["Authorization"] == f"Bearer {KEY}"  # the key is in there

    for text in (repr(hook), str(hook), repr(hook.settings), str(hook.settings), repr(task)):
        assert not shows_the_key(text), text


def test_an_async_hook_that_has_read_a_task_shows_no_key_in_its_repr(server):
    task_id = ReveHook().generate("reve-2.0", "a lighthouse").task_id
    hook = ReveAsyncHook()

    asyncio.run(hook.aget_status(task_id))

    for text in (repr(hook), str(hook), repr(hook._settings)):
        assert not shows_the_key(text), text


def test_connection_settings_built_from_a_connection_never_show_the_key():
    settings = settings_from_connection("reve_default", "https://reve2img.com", None, KEY, {})

    assert settings.api_key == KEY
    assert not shows_the_key(repr(settings) + str(settings))


def test_operators_sensors_and_triggers_show_no_key_before_or_after_they_ran(server):
    operator = ReveGenerateOperator(task_id="generate", model="reve-2.0", prompt="a lighthouse")
    result = operator.execute({})
    sensor = ReveTaskSensor(task_id="wait", reve_task_id=result["task_id"], timeout=10)
    sensor.execute({})
    trigger = ReveTaskTrigger(reve_task_id=result["task_id"], poll_interval=0.02, deadline=time.time() + 10)

    async def first_event() -> None:
        async for _ in trigger.run():
            return

    asyncio.run(first_event())

    for thing in (operator, operator.hook, sensor, sensor.hook, trigger):
        assert not shows_the_key(repr(thing) + str(thing)), repr(thing)
    assert not shows_the_key(repr(trigger.serialize()))

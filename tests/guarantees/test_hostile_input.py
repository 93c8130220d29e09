"""Bad and hostile input is refused with a clear message before any paid call -- or, for a task id,
sent URL-encoded and never injected.

Each request below goes through ``ReveGenerateOperator.execute`` (and the hook) against the shipped
fake: the task fails for good (``AirflowFailException``: no retry can fix the input) with a
message that names the field, stays one short line however large the value, and the fake has
received nothing at all. Task ids full of ``../``, ``&``, ``#``, spaces and control characters
go to a server that records what it received, and come back as the task the sensor pushes.

A Base URL holding ``user:password@`` is refused by the connection itself (``client/settings.py``),
so no message -- not even a connection error, which names the Base URL -- can carry a password.
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from airflow.providers.common.compat.sdk import AirflowFailException
from fault_matrix_support import ScriptedApi, closed_port, no_defer_settle_delay  # noqa: F401
from never_pay_twice_support import run_trigger
from reve_test_helpers import use_connection

from airflow_provider_reve.client.catalog import MAX_REQUEST_BYTES
from airflow_provider_reve.client.retry import NO_RETRIES
from airflow_provider_reve.exceptions import ReveConnectionError, ReveValidationError
from airflow_provider_reve.hooks.reve import ReveHook
from airflow_provider_reve.operators.reve import ReveGenerateOperator
from airflow_provider_reve.sensors.reve import ReveTaskSensor
from airflow_provider_reve.testing import FakeReveServer
from airflow_provider_reve.triggers.reve import ReveTaskTrigger

IMAGE, VIDEO, UNKNOWN = "seedream-5", "kling26-text-to-video", "reve-3.0-preview"
PROMPT = "a lighthouse at dusk"
#: However large the hostile value, the message the user reads stays one short line.
MAX_MESSAGE_CHARS = 400


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeReveServer]:
    with FakeReveServer() as server:
        yield server


@pytest.fixture
def server(fake: FakeReveServer, monkeypatch: pytest.MonkeyPatch) -> FakeReveServer:
    fake.reset()
    use_connection(monkeypatch, fake.url)
    return fake


def _nested(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = [value]
    return value


def _refused(server: FakeReveServer, **kwargs: Any) -> str:
    kwargs.setdefault("model", IMAGE)
    kwargs.setdefault("prompt", PROMPT)
    operator = ReveGenerateOperator(task_id="generate", **kwargs)
    with pytest.raises(AirflowFailException) as raised:
        operator.execute({})
    message = str(raised.value)
    assert server.requests_to("total") == 0, "nothing may reach the API"
    assert message.startswith("Invalid Reve request (nothing was submitted): "), message
    assert len(message) < MAX_MESSAGE_CHARS and "\n" not in message, message
    return message


# fmt: off
REFUSED = {
    # -- the prompt
    "an empty prompt": ({"prompt": ""}, "needs a prompt, and the prompt is empty"),
    "a whitespace prompt": ({"prompt": " \n\t\u00a0 "}, "needs a prompt, and the prompt is empty"),
    "no prompt": ({"prompt": None}, "needs a prompt"),
    "a whitespace prompt to a model the catalog does not know":
        ({"model": UNKNOWN, "prompt": "   "}, "the prompt is empty or only whitespace"),
    "a prompt that is a number": ({"prompt": 42}, "prompt must be a string, got int"),
    "a prompt that is a list": ({"prompt": ["a", "b"]}, "prompt must be a string, got list"),
    "a 1 MB prompt": ({"prompt": "x" * 1_000_000},
                      f"more than the {MAX_REQUEST_BYTES // 1024} KiB the provider sends; the largest "
                      "field is 'prompt'"),
    # -- the model
    "a model id with a trailing newline": ({"model": "reve-2.0\n"}, "surrounding spaces or control"),
    "a model id with a leading space": ({"model": " reve-2.0"}, "surrounding spaces or control"),
    # -- wrongly typed or non-serialisable parameters
    "a set": ({"extra_params": {"seed": {1, 2}}}, "'seed' is not JSON-serialisable"),
    "a datetime": ({"extra_params": {"when": datetime.datetime(2026, 1, 1)}}, "'when' is not JSON"),
    "NaN": ({"extra_params": {"weight": float("nan")}}, "'weight' is not JSON-serialisable"),
    "a parameter name that is not a string": ({"extra_params": {1: "x"}}, "names must be non-empty strings"),
    "extra_params that is a list": ({"extra_params": ["seed", 1]}, "extra_params must be a dict"),
    "extra_params that renders to no dict": ({"extra_params": "{'seed': "}, "extra_params must be a dict"),
    "num_images as words": ({"num_images": "two"}, "num_images must be a whole number"),
    "num_images as a fraction": ({"num_images": 2.5}, "num_images must be a whole number >= 1"),
    "num_images as a boolean": ({"num_images": True}, "num_images must be a whole number >= 1"),
    "duration as words": ({"model": VIDEO, "duration": "ten"}, "duration must be a number"),
    "duration infinite": ({"model": VIDEO, "duration": float("inf")}, "not JSON-serialisable"),
    "generate_audio as words": ({"model": VIDEO, "generate_audio": "maybe"}, "generate_audio must be"),
    "an image aspect ratio that is a number": ({"aspect_ratio": 16}, "aspect_ratio 16 is not valid"),
    "a video aspect ratio that is a number": ({"model": VIDEO, "aspect_ratio": 169},
                                              "aspect_ratio must be a string"),
    # -- values outside the catalog
    "aspect ratio 21:9": ({"aspect_ratio": "21:9"}, "aspect_ratio '21:9' is not valid for model"),
    "aspect ratio auto (Reve only)": ({"aspect_ratio": "auto"}, "aspect_ratio 'auto' is not valid"),
    "a huge aspect ratio string": ({"aspect_ratio": "9" * 100_000}, "is not valid for model"),
    "resolution 8K": ({"model": "nano-banana", "resolution": "8K"}, "resolution '8K' is not valid"),
    "a video resolution on an image model": ({"resolution": "1080p"}, "resolution '1080p' is not valid"),
    "4K on a 720p/1080p video model": ({"model": "happyhorse-1.0-text-to-video", "resolution": "4K"},
                                       "resolution '4K' is not valid"),
    "output format gif": ({"output_format": "gif"}, "output_format 'gif' is not valid"),
    "num_images 0": ({"num_images": 0}, "num_images must be a whole number >= 1"),
    "num_images -3": ({"num_images": -3}, "num_images must be a whole number >= 1"),
    "duration 11 s on a 5-10 s model": ({"model": VIDEO, "duration": 11}, "takes duration 5-10 s"),
    "duration 0": ({"model": VIDEO, "duration": 0}, "takes duration 5-10 s"),
    "duration 7 s on a 6-or-10 s model": ({"model": "grok-imagine-text-to-video", "duration": 7},
                                          "takes duration 6 or 10 s"),
    "audio on a model without sound": ({"model": "grok-imagine-text-to-video", "generate_audio": True},
                                       "cannot generate audio"),
    "test_time_scaling 16": ({"model": "reve-2.0", "extra_params": {"test_time_scaling": 16}},
                             "test_time_scaling must be a whole number from 1 to 15"),
    # -- source media that is not an http(s) URL the API can fetch
    "file:///etc/passwd": ({"image_urls": ["file:///etc/passwd"]},
                           "image_urls[0] must be an absolute http:// or https:// URL"),
    "a data: URL": ({"image_urls": ["data:image/png;base64," + "A" * 50_000]},
                    "a data: URL is not a documented input"),
    "an absolute path": ({"image_urls": ["/home/me/cat.png"]}, "upload a local file somewhere"),
    "a relative path": ({"image_urls": ["https://cdn.example/ok.png", "images/cat.png"]},
                        "image_urls[1] must be an absolute"),
    "a scheme-relative URL": ({"image_urls": ["//cdn.example/cat.png"]}, "must be an absolute"),
    "an ftp URL": ({"image_urls": ["ftp://cdn.example/cat.png"]}, "must be an absolute"),
    "a URL without a host": ({"image_urls": ["https:///cat.png"]}, "must be an absolute"),
    "a javascript: URL": ({"image_urls": ["javascript:alert(1)"]}, "must be an absolute"),
    "a URL with a space": ({"image_urls": ["https://cdn.example/my cat.png"]}, "spaces or control"),
    "a URL with CR LF": ({"image_urls": ["https://cdn.example/a.png\r\nX-Evil: 1"]}, "spaces or control"),
    "a URL whose port is not a number": ({"image_urls": ["https://cdn.example:http/a.png"]},
                                         "is not a valid URL"),
    "an empty URL": ({"image_urls": [""]}, "image_urls[0] must be a non-empty URL string"),
    "a URL that is a number": ({"image_urls": [42]}, "image_urls[0] must be a non-empty URL string"),
    "a motion-control video from a local file": (
        {"model": "kling26-motion-control-720p", "prompt": None,
         "extra_params": {"video_urls": ["file:///tmp/dance.mp4"]}},
        "video_urls[0] must be an absolute http:// or https:// URL"),
    # -- oversized extra_params
    "an oversized extra field": ({"extra_params": {"notes": "x" * 300_000}}, "the largest field is 'notes'"),
    "50,000 small extra fields": ({"extra_params": {f"f{i}": i for i in range(50_000)}}, "KiB of JSON"),
}
# fmt: on


@pytest.mark.parametrize(("kwargs", "why"), REFUSED.values(), ids=REFUSED.keys())
def test_bad_input_is_refused_with_a_short_clear_message_before_anything_is_sent(server, kwargs, why):
    message = _refused(server, **kwargs)

    assert why in message


def _as_hook_fields(kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """The operator's arguments as the hook's request fields; None when only the operator takes them."""
    extra = kwargs.get("extra_params", {})
    if not isinstance(extra, dict) or not all(isinstance(name, str) for name in extra):
        return None
    fields = {"model": IMAGE, "prompt": PROMPT, **extra, **kwargs}
    fields.pop("extra_params", None)
    return fields


HOOK_REFUSED = {
    name: (fields, why)
    for name, (kwargs, why) in REFUSED.items()
    if (fields := _as_hook_fields(kwargs)) is not None
}


@pytest.mark.parametrize(("fields", "why"), HOOK_REFUSED.values(), ids=HOOK_REFUSED.keys())
def test_the_hook_refuses_the_same_input_before_anything_is_sent(server, fields, why):
    fields = dict(fields)
    model = fields.pop("model")

    with pytest.raises(ReveValidationError) as raised:
        ReveHook().generate(model, **fields)

    assert why in str(raised.value)
    assert len(str(raised.value)) < MAX_MESSAGE_CHARS
    assert server.requests_to("total") == 0


def test_a_parameter_nested_too_deep_for_json_is_refused_not_a_recursion_error(server):
    # (An operator cannot even be built with it: Airflow's own constructor recurses into it.)
    with pytest.raises(ReveValidationError, match="'deep' is not JSON-serialisable: it is nested too deeply"):
        ReveHook().generate(IMAGE, PROMPT, deep=_nested(100_000))

    assert server.requests_to("total") == 0


def test_a_password_in_an_image_url_is_refused_and_never_quoted(server):
    message = _refused(server, image_urls=["https://me:s3cret-Pa55word@cdn.example/cat.png"])

    assert "user name or password" in message
    assert "s3cret" not in message and "me:" not in message


def test_a_prompt_just_under_the_size_limit_is_sent_once_and_succeeds(server):
    prompt = "a lighthouse " * ((MAX_REQUEST_BYTES - 1024) // 13)

    result = ReveGenerateOperator(task_id="generate", model="reve-2.0", prompt=prompt).execute({})

    assert result["status"] == "SUCCESS"
    assert server.submissions == 1
    (task,) = server.tasks.values()
    assert task["params"]["prompt"] == prompt


# -- a Reve task id is data, never part of the URL's structure ----------------------------------

HOSTILE_TASK_IDS = {
    "a path climb": "../../api/v1/generate",
    "a second query parameter": "abc&task_id=someone-else",
    "a fragment": "abc#fragment",
    "spaces": "abc def",
    "CR LF and a header": "abc\r\nX-Injected: 1",
    "a tab and a NUL": "abc\tdef\x00ghi",
    "percent signs": "%2e%2e%2fadmin%00",
    "a query of its own": "?task_id=x&y=z",
    "non-ASCII": "t\u00e2che-\u4efb\u52a1",
}


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Iterator[ScriptedApi]:
    api = ScriptedApi(finished=True)
    use_connection(monkeypatch, api.url)
    yield api
    api.close()


def _received_task_ids(api: ScriptedApi) -> list[str]:
    ids = []
    for target in api.targets:
        parts = urlsplit(target)
        assert parts.path == "/api/v1/status", target
        assert not parts.fragment, target
        assert not any(c.isspace() or not c.isprintable() for c in target), (
            f"raw in the request line: {target!r}"
        )
        query = parse_qs(parts.query, keep_blank_values=True)
        assert list(query) == ["task_id"] and len(query["task_id"]) == 1, target
        ids.append(query["task_id"][0])
    return ids


PRINTABLE_HOSTILE_IDS = {name: value for name, value in HOSTILE_TASK_IDS.items() if value.isprintable()}
CONTROL_CHARACTER_IDS = {name: value for name, value in HOSTILE_TASK_IDS.items() if not value.isprintable()}


@pytest.mark.parametrize("task_id", CONTROL_CHARACTER_IDS.values(), ids=CONTROL_CHARACTER_IDS.keys())
def test_a_task_id_with_control_characters_is_refused_by_the_sensor_before_any_request(recorder, task_id):
    # CR/LF in an id would forge lines in every task log that names it.
    sensor = ReveTaskSensor(task_id="wait", reve_task_id=task_id, poke_interval=0.02, timeout=10)

    with pytest.raises(AirflowFailException, match="printable characters"):
        sensor.execute({})
    assert _received_task_ids(recorder) == []


@pytest.mark.parametrize("task_id", PRINTABLE_HOSTILE_IDS.values(), ids=PRINTABLE_HOSTILE_IDS.keys())
def test_a_hostile_task_id_is_sent_url_encoded_and_comes_back_as_the_same_task(recorder, task_id):
    result = ReveTaskSensor(task_id="wait", reve_task_id=task_id, poke_interval=0.02, timeout=10).execute({})

    assert _received_task_ids(recorder) == [task_id]
    assert result["task_id"] == task_id
    assert recorder.submissions == 0


@pytest.mark.parametrize("task_id", HOSTILE_TASK_IDS.values(), ids=HOSTILE_TASK_IDS.keys())
def test_the_trigger_sends_a_hostile_task_id_url_encoded_too(recorder, task_id):
    event = run_trigger(ReveTaskTrigger(reve_task_id=task_id, poll_interval=0.02, deadline=time.time() + 10))

    assert _received_task_ids(recorder) == [task_id]
    assert event["outcome"] == "success"
    assert event["task"]["task_id"] == task_id


def test_a_hostile_task_id_reaches_the_fakes_status_endpoint_and_nothing_else(server):
    sensor = ReveTaskSensor(task_id="wait", reve_task_id="../../api/v1/generate?x=1#y", timeout=5)

    with pytest.raises(AirflowFailException, match="TASK_NOT_FOUND"):
        sensor.execute({})

    assert server.requests_to("status") == 1
    assert server.requests_to("total") == 1
    assert server.submissions == 0


# -- a Base URL with credentials -----------------------------------------------------------------

PASSWORD = "pw-Zq8Lm3Xv"


@pytest.mark.parametrize(
    "host",
    [
        f"https://user:{PASSWORD}@reve.example.com",
        f"http://user:{PASSWORD}@127.0.0.1:{{port}}",
        f"user:{PASSWORD}@127.0.0.1:{{port}}",
        f"http://{PASSWORD}@localhost:{{port}}/",
    ],
)
def test_a_base_url_with_a_password_fails_every_place_before_any_request_without_quoting_it(
    server, monkeypatch, capfd, host
):
    use_connection(monkeypatch, host.format(port=server.port), allow_insecure_http=True)
    seen = []

    for run in (
        lambda: ReveGenerateOperator(task_id="generate", model=IMAGE, prompt=PROMPT).execute({}),
        lambda: ReveGenerateOperator(task_id="generate", model=IMAGE, prompt=PROMPT, deferrable=True).execute(
            {}
        ),
        lambda: ReveTaskSensor(task_id="wait", reve_task_id="task-1", timeout=5).execute({}),
        lambda: ReveTaskSensor(task_id="wait", reve_task_id="task-1", timeout=5, deferrable=True).execute({}),
    ):
        with pytest.raises(AirflowFailException, match="user name or password") as raised:
            run()
        seen.append(str(raised.value))
    event = run_trigger(ReveTaskTrigger(reve_task_id="task-1", poll_interval=0.02, deadline=time.time() + 5))

    assert event["outcome"] == "error" and event["retryable"] is False
    seen += [json.dumps(event), *capfd.readouterr()]
    assert "user name or password" in event["message"]
    assert PASSWORD not in "\n".join(seen)
    assert server.requests_to("total") == 0


def test_a_connection_error_names_only_the_scheme_host_and_port_of_the_base_url(monkeypatch, capfd):
    port = closed_port()
    connection = {
        "conn_type": "reve",
        "host": f"http://127.0.0.1:{port}/",
        "login": "someone",
        "password": "sk-x",
    }
    monkeypatch.setenv("AIRFLOW_CONN_REVE_DEFAULT", json.dumps(connection))
    hook = ReveHook(retry_policy=NO_RETRIES)

    with pytest.raises(ReveConnectionError) as raised:
        hook.get_status("task-1")
    event = run_trigger(
        ReveTaskTrigger(reve_task_id="task-1", poll_interval=0.02, deadline=time.time() + 0.3)
    )

    assert (
        str(raised.value)
        == f"Reve API GET /api/v1/status: ConnectionError talking to http://127.0.0.1:{port}"
    )
    assert f"cannot connect to http://127.0.0.1:{port} (" in event["message"]
    assert "someone" not in str(raised.value) + json.dumps(event) + "".join(capfd.readouterr())

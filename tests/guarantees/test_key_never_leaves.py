"""The API key never leaves, even through a server that echoes it back in any field and form.

A hostile stub (``tests/support/hostile_stub.py``) puts the ``Authorization`` header it received into
every field of its answers: the machine code, the detail, a FAILED task's error, an error on a
SUCCESS answer, result URLs, a task id, an HTML page -- whole, upper-cased, case-swapped, cut
at any offset. Through the sync hook, the async hook, the trigger and a deferred operator's
resume path (``dag.test()``), no piece of the key of 8 or more characters, in any letter case,
appears in an exception (str, repr, args, attributes, chain), a task, an event, XCom, a row of
the metadata DB or a captured log line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hostile_stub import HostileStub, Reply, envelope, html_reply, task_reply
from key_leaks import leaks
from reve_test_helpers import fire, return_values, use_connection

from airflow_provider_reve.client.redact import Redactor
from airflow_provider_reve.client.retry import NO_RETRIES, RetryPolicy, is_permanent
from airflow_provider_reve.exceptions import ReveAuthenticationError, ReveError
from airflow_provider_reve.hooks.reve import ReveAsyncHook, ReveHook
from airflow_provider_reve.triggers.reve import ReveTaskTrigger

CONN_ID = "reve_hostile"
TASK_ID = "hostile-task-1"
MODEL = "seedream-5"
FAST = RetryPolicy(max_attempts=2, initial_backoff=0.01, max_backoff=0.01)
HOSTILE_DAGS = Path(__file__).resolve().parents[1] / "dags" / "hostile"


def shown(outcome: Any) -> str:
    """All an outcome can show: a task's repr and dict, an event, an exception and its chain."""
    parts: list[str] = []
    if isinstance(outcome, BaseException):
        error: BaseException | None = outcome
        seen: set[int] = set()
        while error is not None and id(error) not in seen:
            seen.add(id(error))
            parts += [str(error), repr(error), repr(error.args), repr(vars(error))]
            error = error.__cause__ or error.__context__
    elif hasattr(outcome, "to_dict"):
        parts += [repr(outcome), json.dumps(outcome.to_dict())]
    else:
        parts.append(json.dumps(outcome, default=repr))
    return "\n".join(parts)


@pytest.fixture
def key() -> str:
    # Random, so that no 8-character piece of it can occur anywhere by chance.
    return "sk-" + secrets.token_urlsafe(24)


@pytest.fixture
def stub(key: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[HostileStub]:
    with HostileStub() as hostile:
        use_connection(monkeypatch, hostile.url, password=key, conn_id=CONN_ID)
        yield hostile


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> Callable[[], str]:
    """Everything logged or printed during the test, at DEBUG, as one text."""
    for name in (None, "airflow", "airflow.task", "urllib3", "aiohttp", "airflow_provider_reve"):
        caplog.set_level(logging.DEBUG, logger=name)

    def text() -> str:
        out, err = capfd.readouterr()
        records = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
        return "\n".join([caplog.text, records, out, err])

    return text


def the_key_sent(stub: HostileStub, key: str) -> None:
    """The stub really received the key, so its answers really carried it."""
    assert stub.requests, "the client never reached the hostile stub"
    assert all(request.authorization == f"Bearer {key}" for request in stub.requests)


# -- what the stub echoes, and where ------------------------------------------------------------

ECHOES: dict[str, Callable[[str], str]] = {
    "the whole header": lambda auth: auth,
    "the bare key": lambda auth: auth.partition(" ")[2],
    "the key upper-cased": lambda auth: auth.partition(" ")[2].upper(),
    "the key case-swapped in a sentence": lambda auth: f"token={auth.partition(' ')[2].swapcase()};",
}

FIELDS: dict[str, Callable[[str], Reply]] = {
    "the machine code": lambda echo: envelope(401, f"INVALID_API_KEY {echo}", detail="Invalid API key."),
    "the detail": lambda echo: envelope(400, "INVALID_PARAMETER", detail=f"bad header: {echo}"),
    "a FAILED task's error": lambda echo: task_reply(
        TASK_ID, "FAILED", error={"code": f"DENIED_{echo}", "message": f"upstream rejected {echo}"}
    ),
    "an error on a SUCCESS answer and its result URLs": lambda echo: task_reply(
        TASK_ID,
        "SUCCESS",
        consumed_credits=12,
        response={"resultUrls": [f"https://cdn.example/{echo}/1.png", "https://cdn.example/2.png"]},
        error={"code": echo, "message": echo},
    ),
    "an HTML page": lambda echo: html_reply(502, f"<pre>Authorization: {echo}</pre>"),
    "the task id": lambda echo: task_reply(f"task-{echo}", "IN_PROGRESS"),
}


def sync_generate() -> Any:
    hook = ReveHook(CONN_ID, retry_policy=FAST)
    try:
        return hook.generate(MODEL, "a lighthouse in a storm")
    except ReveError as error:
        return error
    finally:
        hook.close()


def sync_status() -> Any:
    hook = ReveHook(CONN_ID, retry_policy=FAST)
    try:
        return hook.get_status(TASK_ID, model=MODEL)
    except ReveError as error:
        return error
    finally:
        hook.close()


def async_status() -> Any:
    async def read() -> Any:
        try:
            return await ReveAsyncHook(CONN_ID, retry_policy=FAST).aget_status(TASK_ID, model=MODEL)
        except ReveError as error:
            return error

    return asyncio.run(read())


def trigger_event() -> Any:
    # A short deadline: a malformed answer is read again until then.
    trigger = ReveTaskTrigger(TASK_ID, CONN_ID, poll_interval=0.01, deadline=time.time() + 1.0, model=MODEL)
    return fire(trigger)


PATHS: dict[str, Callable[[], Any]] = {
    "sync generate": sync_generate,
    "sync status": sync_status,
    "async status": async_status,
    "trigger event": trigger_event,
}


@pytest.mark.parametrize("path", PATHS.values(), ids=PATHS.keys())
@pytest.mark.parametrize("echo", ECHOES.values(), ids=ECHOES.keys())
@pytest.mark.parametrize("field", FIELDS.values(), ids=FIELDS.keys())
def test_a_key_echoed_by_the_server_appears_nowhere(stub, key, logs, field, echo, path):
    stub.script = lambda request: field(echo(request.authorization))

    outcome = path()

    the_key_sent(stub, key)
    assert leaks(shown(outcome) + logs(), key) == []


@pytest.mark.parametrize(
    "path", [sync_generate, sync_status, async_status], ids=["generate", "status", "async status"]
)
def test_a_key_echoed_in_the_error_code_is_a_permanent_authentication_error_not_a_retry(stub, key, path):
    stub.script = lambda request: envelope(401, f"INVALID_API_KEY {request.authorization}")

    error = path()

    assert isinstance(error, ReveAuthenticationError)
    assert error.code is None  # an undocumented code is free text, never trusted as a code
    assert error.http_status == 401
    assert not error.retryable
    assert is_permanent(error)
    assert len(stub.requests) == 1
    assert "Bearer ***" in str(error)


def test_a_key_cut_at_any_offset_leaks_no_piece_of_eight_characters(stub, key, logs):
    outcomes: list[Any] = []
    auth = f"Bearer {key}"
    for cut in range(1, len(auth)):
        for part in (auth[:cut], auth[cut:]):
            stub.script = lambda request, part=part: envelope(400, "INVALID_PARAMETER", detail=part)
            outcomes.append(sync_status())
            stub.script = lambda request, part=part: task_reply(
                TASK_ID, "FAILED", error={"code": "GENERATION_FAILED", "message": f"[{part}]"}
            )
            outcomes.append(sync_status())

    the_key_sent(stub, key)
    assert leaks("\n".join(map(shown, outcomes)) + logs(), key) == []


def test_a_key_cut_by_the_quoted_snippet_of_an_html_page_at_any_offset_is_redacted_whole(stub, key, logs):
    """The 160-character snippet once cut ``Bearer sk-TESTKEY0123456789abc``: 20 of 31 leaked."""
    outcomes: list[Any] = []
    auth = f"Bearer {key}"
    hook = ReveHook(CONN_ID, retry_policy=NO_RETRIES)
    for pad in range(160 - len(auth) - 1, 161):
        page = ("x" * pad + auth + " and more").encode()
        stub.script = lambda request, page=page: Reply(503, page, content_type="text/html")
        try:
            hook.get_status(TASK_ID)
        except ReveError as error:
            outcomes.append(error)
    hook.close()

    assert len(outcomes) == len(auth) + 2
    assert leaks("\n".join(map(shown, outcomes)) + logs(), key) == []


# -- the resume path of a deferred operator, through dag.test() ----------------------------------


@pytest.fixture
def unmasked(monkeypatch: pytest.MonkeyPatch) -> None:
    """No Airflow log masking: the worker that resumes a deferred task never fetched the connection.

    (Airflow masks a connection's password only in the process that read it; our own
    scrubbing must hold where it did not.)
    """
    from airflow._shared.secrets_masker.secrets_masker import SecretsMasker
    from airflow.sdk._shared.secrets_masker.secrets_masker import SecretsMasker as SdkSecretsMasker

    for masker in (SecretsMasker, SdkSecretsMasker):
        monkeypatch.setattr(masker, "add_mask", lambda self, secret, name=None: None)


def metadata_db_text() -> str:
    """Every cell of every table of the tests' metadata DB, as text."""
    from airflow import settings
    from sqlalchemy import inspect, text

    cells: list[str] = []
    with settings.engine.connect() as connection:
        for table in inspect(connection).get_table_names():
            for row in connection.execute(text(f'SELECT * FROM "{table}"')):
                cells += [v.decode("latin-1") if isinstance(v, bytes) else str(v) for v in row]
    return "\n".join(cells)


def airflow_log_files_text() -> str:
    logs_dir = Path(os.environ["AIRFLOW_HOME"]) / "logs"
    files = [p for p in logs_dir.rglob("*") if p.is_file()] if logs_dir.exists() else []
    return "\n".join(p.read_text(errors="replace") for p in files)


def echo_everywhere(auth: str) -> str:
    key = auth.partition(" ")[2]
    return f"{auth} | {key.upper()} | {key.swapcase()} | {key[4:24]}"


RESUMED_ANSWERS: dict[str, tuple[Callable[[str], Reply], str]] = {
    "a FAILED task with the key in its error": (
        lambda auth: task_reply(
            TASK_ID, "FAILED", error={"code": echo_everywhere(auth), "message": echo_everywhere(auth)}
        ),
        "failed",
    ),
    "a SUCCESS with the key in its result URLs and error": (
        lambda auth: task_reply(
            TASK_ID,
            "SUCCESS",
            consumed_credits=25,
            response={"resultUrls": [f"https://cdn.example/{echo_everywhere(auth)}.png"]},
            error={"code": auth, "message": echo_everywhere(auth)},
        ),
        "success",
    ),
    "a 401 with the key in the machine code and detail": (
        lambda auth: envelope(401, f"INVALID_API_KEY {auth}", detail=echo_everywhere(auth)),
        "failed",
    ),
}


@pytest.mark.parametrize(("answer", "state"), RESUMED_ANSWERS.values(), ids=RESUMED_ANSWERS.keys())
def test_a_key_echoed_to_the_trigger_never_reaches_the_resumed_task_its_log_xcom_or_the_db(
    stub, key, logs, unmasked, use_dags_folder, answer, state
):
    from airflow.dag_processing.dagbag import DagBag

    stub.script = lambda request: (
        task_reply(TASK_ID, "IN_PROGRESS") if request.method == "POST" else answer(request.authorization)
    )
    folder = use_dags_folder(HOSTILE_DAGS)
    bag = DagBag(dag_folder=str(folder))
    assert bag.import_errors == {}

    dag_run = bag.dags["reve_test_hostile_echo"].test()

    assert dag_run.state == state
    assert stub.requests_to("/generate") == 1
    assert stub.requests_to("/status") >= 1  # read by the trigger, handed to the resumed task
    the_key_sent(stub, key)
    xcom = return_values(dag_run, "generate")
    if state == "success":
        (result,) = xcom.values()
        assert result["task_id"] == TASK_ID
        assert "***" in result["result_urls"][0]
    everything = "\n".join([logs(), json.dumps(xcom), metadata_db_text(), airflow_log_files_text()])
    assert leaks(everything, key) == []


# -- the scrubber itself --------------------------------------------------------------------------


def test_the_scrubber_hides_any_run_of_eight_or_more_key_characters_in_any_case():
    key = "sk-TESTKEY0123456789abcdefghij"
    redact = Redactor([key])

    assert redact(f"x{key}y") == "x***y"
    assert redact(key.upper()) == "***"
    assert redact(f"cut: {key[:20]}") == "cut: ***"
    assert redact(f"tail {key[-9:]}!") == "tail ***!"
    assert redact(f"{key[3:11]}-{key[12:20]}") == "***-***"
    assert redact(f"short {key[:7]}") == f"short {key[:7]}"  # below the 8-character floor


def test_the_scrubber_hides_a_bearer_token_of_any_content_and_leaves_other_text_alone():
    redact = Redactor(["sk-the-real-key-0001"])

    assert redact("Authorization: bearer some-other-token, retry") == "Authorization: Bearer *** retry"
    plain = "INVALID_API_KEY: Missing or invalid API key."
    assert redact(plain) == plain
    assert Redactor([None, ""])("nothing to hide") == "nothing to hide"

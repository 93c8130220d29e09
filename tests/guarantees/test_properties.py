"""Properties over arbitrary input (hypothesis): whatever arrives, the answer is typed.

* Any bytes, any JSON envelope, any HTTP status, to either endpoint: the response parser returns
  a ``ReveTask`` (never SUCCESS without result URLs, never with the key in it) or raises a
  ``ReveAPIError`` (never with the key in it, never calling a garbled answer to a paid submission
  safe to send again) -- nothing else.
* Any trigger event, to the operator's and the sensor's ``execute_complete``: the finished task's
  dict, or one of the Airflow exceptions the task runner understands -- nothing else.

Derandomized with a fixed number of examples: every run tries the same inputs, quickly.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import (
    AirflowException,
    AirflowFailException,
    AirflowSensorTimeout,
    AirflowSkipException,
    AirflowTaskTimeout,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_provider_reve.client.envelope import parse_task_response
from airflow_provider_reve.client.redact import Redactor
from airflow_provider_reve.defaults import OUTCOMES
from airflow_provider_reve.exceptions import (
    DOCUMENTED_CODES,
    GENERATE_ENDPOINT,
    STATUS_ENDPOINT,
    ReveAmbiguousSubmissionError,
    ReveAPIError,
    ReveAuthenticationError,
    ReveBadRequestError,
    ReveContentPolicyError,
    ReveInsufficientCreditsError,
    ReveMalformedResponseError,
    ReveNotFoundError,
    ReveRateLimitError,
    ReveServerError,
)
from airflow_provider_reve.models import SUCCESS, TASK_STATUSES, ReveTask
from airflow_provider_reve.operators.reve import ReveGenerateOperator
from airflow_provider_reve.sensors.reve import ReveTaskSensor

KEY = "sk-prop-Q7w9Zx3Lk2Vb8Nm4"
TASK_ID = "task-7"
#: Codes after which a submission may be sent again: the API says nothing was created.
SAFE_TO_RESEND = {"RATE_LIMITED", "TOO_MANY_TASKS", "GENERATION_FAILED", "SERVICE_UNAVAILABLE"}

ENOUGH = settings(
    max_examples=300,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

# -- strategies ---------------------------------------------------------------------------------

#: Text, sometimes carrying the key (bare, in a header, upper-cased) the way an echoing server would.
texts = st.one_of(
    st.text(max_size=24),
    st.sampled_from([KEY, f"Bearer {KEY}", KEY.upper(), "https://cdn.example/a.png"]),
    st.builds(lambda a, b: f"{a}{KEY}{b}", st.text(max_size=6), st.text(max_size=6)),
)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.floats(), texts
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=12,
)


#: Many distinct well-formed values: hypothesis tries distinct inputs, so a well-formed branch
#: with few values would hardly be tried next to the endless ill-formed ones.
words = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=10)


def mostly(
    valid: st.SearchStrategy[Any], junk: st.SearchStrategy[Any] = json_values
) -> st.SearchStrategy[Any]:
    """A well-formed value (so that the deep paths are reached), or anything at all."""
    return st.one_of(valid, junk)


codes = mostly(st.sampled_from(sorted(DOCUMENTED_CODES)))
statuses = mostly(st.sampled_from(sorted(TASK_STATUSES)))
task_ids = st.builds(lambda word: f"task-{word}", words)
urls = st.builds(lambda word: f"https://cdn.example/{word}.png", words)
url_lists = mostly(st.lists(mostly(urls, texts), max_size=3))
good_data = st.fixed_dictionaries(
    {"task_id": task_ids, "status": st.sampled_from(sorted(TASK_STATUSES))},
    optional={
        "consumed_credits": st.integers(min_value=0, max_value=10**6),
        "response": st.fixed_dictionaries({"resultUrls": st.lists(urls, max_size=3)}),
        "error": st.fixed_dictionaries({"code": codes, "message": words}),
    },
)
any_data = st.fixed_dictionaries(
    {"task_id": mostly(task_ids, st.just("") | json_values), "status": statuses},
    optional={
        "consumed_credits": mostly(st.integers(min_value=-5, max_value=10**6), st.floats() | json_values),
        "response": mostly(st.fixed_dictionaries({"resultUrls": url_lists})),
        "error": mostly(st.fixed_dictionaries({"code": codes, "message": mostly(texts)})),
        "unexpected": json_values,
    },
)
success_envelopes = st.fixed_dictionaries(
    {"code": st.just(200), "message": st.just("success"), "data": good_data}
) | st.fixed_dictionaries({"code": mostly(st.just(200)), "message": mostly(words), "data": mostly(any_data)})
error_envelopes = st.fixed_dictionaries(
    {"code": mostly(st.sampled_from([400, 401, 402, 404, 429, 500, 503, 504])), "message": codes},
    optional={"detail": mostly(texts)},
)
envelopes = st.one_of(success_envelopes, error_envelopes, st.dictionaries(texts, json_values))


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """An envelope, whole or cut anywhere, or any bytes at all."""
    kind = draw(st.sampled_from(["envelope", "cut", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    text = json.dumps(draw(envelopes))
    if kind == "cut":
        text = text[: draw(st.integers(min_value=0, max_value=len(text)))]
    return text.encode()


http_statuses = st.one_of(
    st.just(200), st.sampled_from([201, 400, 401, 404, 429, 500, 502, 503, 504]), st.integers(100, 599)
)
#: (HTTP status, body): a documented success with any data the reference allows, or anything.
answers = st.one_of(
    st.tuples(
        st.sampled_from([200, 201]),
        st.builds(
            lambda data: json.dumps({"code": 200, "message": "success", "data": data}).encode(), good_data
        ),
    ),
    st.tuples(http_statuses, bodies()),
)
retry_after_headers = st.none() | st.sampled_from(["0", "5", "120", "soon", "Wed, 21 Oct 2015 07:28:00 GMT"])
truncations = mostly(st.just(False), st.just(True))


#: The documented errors of an answer: one class per kind of failure, and the base for the rest.
ANSWER_ERRORS = {
    ReveAPIError,
    ReveBadRequestError,
    ReveContentPolicyError,
    ReveAuthenticationError,
    ReveInsufficientCreditsError,
    ReveNotFoundError,
    ReveRateLimitError,
    ReveServerError,
    ReveMalformedResponseError,
    ReveAmbiguousSubmissionError,
}


def _shows_no_key(*texts_: str) -> bool:
    # The scrubber hides any run of 8 or more of the key's characters, in any letter case.
    return all(KEY[i : i + 8].lower() not in text.lower() for text in texts_ for i in range(len(KEY) - 7))


# -- the response parser -------------------------------------------------------------------------


@ENOUGH
@given(
    endpoint=st.sampled_from([GENERATE_ENDPOINT, STATUS_ENDPOINT]),
    answer=answers,
    retry_after=retry_after_headers | texts,
    truncated=truncations,
)
def test_any_answer_is_a_task_or_the_documented_error_and_never_shows_the_key(
    endpoint: str, answer: tuple[int, bytes], retry_after: str | None, truncated: bool
) -> None:
    http_status, body = answer
    try:
        task = parse_task_response(
            endpoint,
            http_status,
            body,
            retry_after_header=retry_after,
            redactor=Redactor([KEY]),
            truncated=truncated,
        )
    except ReveAPIError as error:
        assert error.endpoint == endpoint
        assert _shows_no_key(str(error), repr(error), repr(vars(error)))
        assert type(error) in ANSWER_ERRORS
        if endpoint == GENERATE_ENDPOINT:
            # A garbled answer to a submission that got through may hide a paid task...
            assert not (isinstance(error, ReveMalformedResponseError) and 200 <= http_status < 300)
            # ...and a submission is sent again only when the API said nothing was created.
            if error.retryable:
                assert error.code in SAFE_TO_RESEND or (error.code is None and error.http_status == 429)
        return
    assert isinstance(task, ReveTask)
    assert 200 <= http_status < 300 and not truncated
    assert isinstance(task.task_id, str) and task.task_id
    assert task.status in TASK_STATUSES
    assert all(isinstance(url, str) for url in task.result_urls)
    if task.status == SUCCESS:
        assert task.result_urls, "never SUCCESS without results"
    assert task.consumed_credits is None or type(task.consumed_credits) is int
    assert _shows_no_key(repr(task), json.dumps(task.to_dict()))


# -- execute_complete ------------------------------------------------------------------------------


good_tasks = st.fixed_dictionaries(
    {"task_id": st.just(TASK_ID), "status": st.sampled_from(sorted(TASK_STATUSES))},
    optional={
        "result_urls": st.lists(urls, max_size=3),
        "consumed_credits": st.integers(min_value=0, max_value=1000) | st.none(),
        "error_code": codes | st.none(),
        "error_message": words | st.none(),
        "model": st.just("seedream-5") | st.none(),
    },
)
any_tasks = st.fixed_dictionaries(
    {"task_id": mostly(st.just(TASK_ID) | task_ids), "status": statuses},
    optional={
        "result_urls": url_lists,
        "consumed_credits": mostly(st.integers(min_value=0, max_value=1000) | st.none()),
        "error_code": codes | st.none(),
        "error_message": mostly(texts | st.none()),
        "model": mostly(words | st.none()),
        "unexpected": json_values,
    },
)
good_events = st.fixed_dictionaries(
    {
        "outcome": st.sampled_from(sorted(OUTCOMES)),
        "reve_task_id": st.just(TASK_ID),
        "task": good_tasks | st.none(),
    },
    optional={"message": words, "error_code": codes | st.none(), "retryable": st.booleans() | st.none()},
)
#: What the trigger sends when the task is done: success with its files, or FAILED with its error.
finished_events = st.builds(
    lambda outcome, task, message: {
        "outcome": outcome,
        "reve_task_id": TASK_ID,
        "task": task,
        "message": message,
    },
    st.just("success"),
    st.builds(
        lambda urls, credits: {
            "task_id": TASK_ID,
            "status": "SUCCESS",
            "result_urls": urls,
            "consumed_credits": credits,
        },
        st.lists(urls, min_size=1, max_size=3),
        st.integers(min_value=0, max_value=1000) | st.none(),
    ),
    words,
) | st.builds(
    lambda code, message: {
        "outcome": "failed",
        "reve_task_id": TASK_ID,
        "task": {"task_id": TASK_ID, "status": "FAILED", "error_code": code, "error_message": message},
        "error_code": code,
    },
    codes | st.none(),
    words | st.none(),
)
any_events = st.fixed_dictionaries(
    {
        "outcome": mostly(st.sampled_from(sorted(OUTCOMES))),
        "reve_task_id": mostly(st.just(TASK_ID) | task_ids),
        "task": mostly(any_tasks | st.none()),
    },
    optional={
        "message": mostly(texts),
        "error_code": codes | st.none(),
        "retryable": mostly(st.booleans() | st.none()),
    },
)
events = st.one_of(finished_events, good_events, any_events, json_values)


#: What the Airflow task runner understands (the exact classes, not our subclasses of them).
AIRFLOW_OUTCOMES = {
    AirflowException,
    AirflowFailException,
    AirflowSkipException,
    AirflowSensorTimeout,
    AirflowTaskTimeout,
}


def _ends_as_airflow_expects(call: Any) -> None:
    try:
        result = call()
    except tuple(AIRFLOW_OUTCOMES) as error:
        assert type(error) in AIRFLOW_OUTCOMES, f"{type(error).__name__}: {error}"
        return
    assert isinstance(result, dict)
    task = ReveTask.from_dict(result)
    assert task.task_id == TASK_ID
    assert task.status == SUCCESS and task.result_urls, "never SUCCESS without results"


@pytest.fixture(scope="module")
def operator() -> ReveGenerateOperator:
    return ReveGenerateOperator(task_id="generate", model="seedream-5", prompt="a fox", deferrable=True)


@pytest.fixture(scope="module")
def sensor() -> ReveTaskSensor:
    return ReveTaskSensor(task_id="wait", reve_task_id=TASK_ID, deferrable=True)


@ENOUGH
@given(event=events)
def test_any_event_resumes_the_operator_with_its_task_or_an_airflow_exception(
    operator: ReveGenerateOperator, event: Any
) -> None:
    _ends_as_airflow_expects(lambda: operator.execute_complete({}, event=event, reve_task_id=TASK_ID))


@ENOUGH
@given(event=events, ends_at_execution_timeout=st.booleans())
def test_any_event_resumes_the_sensor_with_its_task_or_an_airflow_exception(
    sensor: ReveTaskSensor, event: Any, ends_at_execution_timeout: bool
) -> None:
    _ends_as_airflow_expects(
        lambda: sensor.execute_complete(
            {}, event=event, reve_task_id=TASK_ID, ends_at_execution_timeout=ends_at_execution_timeout
        )
    )

"""A clear of a *running* instance generates afresh where Airflow 3.3 lets it be told apart.

Airflow 3.3 sets a running instance cleared to ``restarting`` and keeps its ``max_tries``; when it
then fails the killed try (instead of raising ``max_tries`` as a clear does), ``restarting`` is
eligible for one more try even past ``max_tries``. A try numbered past ``max_tries + 1`` is one
no retry can be, so it starts a new run of tries: the operator generates afresh. A deferral that
resumes within that very try still finds what it submitted, and ordinary retries still re-attach.
"""

from __future__ import annotations

from typing import Any

import pytest
from airflow.sdk.exceptions import TaskDeferred
from never_pay_twice_support import (
    ASYNC_MODEL,
    InMemoryTaskStateStore,
    make_context,
    make_operator,
)
from reve_test_helpers import fire

from airflow_provider_reve.testing import FakeReveServer


@pytest.fixture
def server(fake_reve_server: FakeReveServer, reve_connection_env: str) -> FakeReveServer:
    return fake_reve_server


def tries(try_number: int, max_tries: int) -> dict[str, Any]:
    return {"try_number": try_number, "max_tries": max_tries}


@pytest.mark.parametrize(("retries", "cleared_on_try"), [(0, 1), (2, 3)], ids=["no retries", "last try"])
def test_a_clear_while_running_that_airflow_ends_as_a_failed_try_generates_afresh(
    server: FakeReveServer, retries: int, cleared_on_try: int
) -> None:
    store = InMemoryTaskStateStore()
    first = make_operator(retries=retries).execute(make_context(store, **tries(cleared_on_try, retries)))

    # Cleared while running: restarting, max_tries kept, one more try past max_tries.
    cleared = make_operator(retries=retries).execute(
        make_context(store, **tries(cleared_on_try + 1, retries))
    )

    assert cleared["task_id"] != first["task_id"]
    assert server.submissions == 2, "a clear re-attached to the old task instead of generating afresh"


def test_ordinary_retries_up_to_the_last_one_still_re_attach(server: FakeReveServer) -> None:
    store = InMemoryTaskStateStore()
    first = make_operator(retries=2).execute(make_context(store, **tries(1, 2)))

    for try_number in (2, 3):  # max_tries + 1 is the last retry, not a clear
        again = make_operator(retries=2).execute(make_context(store, **tries(try_number, 2)))
        assert again == first

    assert server.submissions == 1


def test_the_try_after_a_clear_while_running_resumes_its_own_deferral_without_paying_again(
    server: FakeReveServer,
) -> None:
    server.set_async_seconds(30)
    store = InMemoryTaskStateStore()
    with pytest.raises(TaskDeferred):
        make_operator(model=ASYNC_MODEL, deferrable=True).execute(make_context(store, **tries(1, 0)))

    # Try 2 (past max_tries: a clear while running) submits afresh and defers ...
    with pytest.raises(TaskDeferred) as deferred:
        make_operator(model=ASYNC_MODEL, deferrable=True).execute(make_context(store, **tries(2, 0)))
    paid = deferred.value.kwargs["reve_task_id"]
    server.finish_task(paid)

    # ... and resumes in a new process within the same try; defer()'s kwargs lost (dag.test()).
    operator = make_operator(model=ASYNC_MODEL, deferrable=True)
    result = operator.execute_complete(make_context(store, **tries(2, 0)), event=fire(deferred.value.trigger))

    assert result["task_id"] == paid
    assert server.submissions == 2

"""Once a Reve task is paid and finished, no storage error loses it.

A destination that cannot take files for a moment (remounted read-only, a folder replaced while
the task ran) fails the *try*, so Airflow's retries re-attach to the paid task (free) and store
its files once the destination is back. It is never a permanent failure, never a skip under
``soft_fail``, and never reported as "nothing was submitted". Before anything is paid for, the
same destination is refused at once (permanent, nothing submitted).

The destination is made unwritable the way root cannot get around either: its parent folder is
replaced by a regular file, so creating the folder fails with ``NotADirectoryError``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import (
    AirflowException,
    AirflowFailException,
    AirflowSkipException,
    TaskDeferred,
)
from never_pay_twice_support import (
    ASYNC_MODEL,
    FAST_RETRIES,
    InMemoryTaskStateStore,
    make_context,
    make_operator,
    resume,
)
from reve_test_helpers import fire

from airflow_provider_reve.hooks.reve import ReveHook
from airflow_provider_reve.sensors.reve import ReveTaskSensor
from airflow_provider_reve.testing import FakeReveServer


class Destination:
    """``<tmp>/mount/reve``: writable, until ``block()`` turns ``mount`` into a regular file."""

    def __init__(self, root: Path) -> None:
        self.mount = root / "mount"
        self.folder = self.mount / "reve"

    def block(self) -> None:
        shutil.rmtree(self.mount, ignore_errors=True)
        self.mount.write_text("not a folder")

    def unblock(self) -> None:
        self.mount.unlink()

    def stored(self) -> list[str]:
        return sorted(p.name for p in self.folder.iterdir() if not p.name.startswith("reve-manifest"))


@pytest.fixture
def server(fake_reve_server: FakeReveServer, reve_connection_env: str) -> FakeReveServer:
    return fake_reve_server


@pytest.fixture
def destination(tmp_path: Path) -> Destination:
    return Destination(tmp_path)


def not_permanent(error: BaseException) -> bool:
    return not isinstance(error, (AirflowFailException, AirflowSkipException))


# ----------------------------------------------------------------------------- the generate operator


def test_a_destination_unwritable_after_paying_fails_the_try_and_a_retry_stores_without_paying_again(
    server: FakeReveServer, destination: Destination
) -> None:
    server.set_async_seconds(30)
    store = InMemoryTaskStateStore()

    def operator() -> Any:
        return make_operator(model=ASYNC_MODEL, deferrable=True, download_to=str(destination.folder))

    first = operator()
    with pytest.raises(TaskDeferred) as deferred:
        first.execute(make_context(store))
    (task_id,) = server.tasks
    destination.block()  # the folder goes away while the paid task runs
    server.finish_task(task_id)

    with pytest.raises(AirflowException) as try_1:
        resume(first, make_context(store), deferred.value)
    assert not_permanent(try_1.value), "a paid result was failed for good over a storage error"

    # The retry comes while the folder is still unusable: still transient, and nothing is "unsubmitted".
    with pytest.raises(AirflowException) as try_2:
        operator().execute(make_context(store, try_number=2))
    assert not_permanent(try_2.value)
    assert "nothing was submitted" not in str(try_2.value)

    destination.unblock()
    stored = operator().execute(make_context(store, try_number=3))

    assert server.submissions == 1
    assert stored["task_id"] == task_id
    assert [Path(entry["path"]).name for entry in stored["files"]] == destination.stored()
    assert destination.stored()


def test_a_request_that_no_longer_validates_when_a_paid_task_resumes_still_stores_its_files(
    server: FakeReveServer, destination: Destination
) -> None:
    server.set_async_seconds(30)
    store = InMemoryTaskStateStore()
    first = make_operator(model=ASYNC_MODEL, deferrable=True, download_to=str(destination.folder))
    with pytest.raises(TaskDeferred) as deferred:
        first.execute(make_context(store))
    server.finish_task(deferred.value.kwargs["reve_task_id"])

    # The DAG file changed while the task ran: the resuming process renders an invalid request.
    edited = make_operator(
        model=ASYNC_MODEL, deferrable=True, download_to=str(destination.folder), resolution="9K"
    )
    result = resume(edited, make_context(store), deferred.value)

    assert destination.stored() and len(result["files"]) == len(destination.stored())
    assert server.submissions == 1


def test_a_destination_unwritable_before_paying_is_refused_at_once_and_nothing_is_submitted(
    server: FakeReveServer, destination: Destination
) -> None:
    destination.block()

    with pytest.raises(AirflowFailException, match=r"Invalid download_to \(nothing was submitted\)"):
        make_operator(download_to=str(destination.folder)).execute(make_context(InMemoryTaskStateStore()))

    assert server.submissions == 0


# ------------------------------------------------------------------------------------- the sensor


@pytest.fixture
def submitted(server: FakeReveServer) -> str:
    server.set_async_seconds(30)
    hook = ReveHook()
    try:
        return hook.generate(ASYNC_MODEL, prompt="A lighthouse at night").task_id
    finally:
        hook.close()


def sensor(task_id: str, destination: Destination, **kwargs: Any) -> ReveTaskSensor:
    return ReveTaskSensor(
        task_id="wait",
        reve_task_id=task_id,
        download_to=str(destination.folder),
        poke_interval=0.05,
        timeout=30,
        **kwargs,
    )


def test_a_deferred_sensor_with_soft_fail_fails_the_try_instead_of_skipping_when_storing_fails(
    server: FakeReveServer, submitted: str, destination: Destination
) -> None:
    waiter = sensor(submitted, destination, deferrable=True, soft_fail=True, retries=3)
    with pytest.raises(TaskDeferred) as deferred:
        waiter.execute({})
    destination.block()
    server.finish_task(submitted)
    event = {"event": fire(deferred.value.trigger), **(deferred.value.kwargs or {})}

    # What the worker calls when the trigger fires: BaseSensorOperator.resume_execution.
    with pytest.raises(AirflowException) as try_1:
        waiter.resume_execution(deferred.value.method_name, event, {})
    assert not_permanent(try_1.value), "soft_fail skipped (or failed for good) a paid, unstored result"

    # The retry finds the task finished and stores its files.
    destination.unblock()
    result = sensor(submitted, destination, deferrable=True, soft_fail=True).execute({})

    assert result["status"] == "SUCCESS"
    assert [Path(entry["path"]).name for entry in result["files"]] == destination.stored()
    assert destination.stored()


def test_a_deferred_sensor_with_soft_fail_fails_the_try_when_the_cdn_answers_503_and_a_retry_stores(
    server: FakeReveServer, submitted: str, destination: Destination
) -> None:
    waiter = sensor(submitted, destination, deferrable=True, soft_fail=True, retries=3)
    waiter.hook.retry_policy = FAST_RETRIES
    with pytest.raises(TaskDeferred) as deferred:
        waiter.execute({})
    server.finish_task(submitted)
    server.add_fault(kind="html", endpoint="files", status=503, times=None)
    event = {"event": fire(deferred.value.trigger), **(deferred.value.kwargs or {})}

    with pytest.raises(AirflowException) as try_1:
        waiter.resume_execution(deferred.value.method_name, event, {})
    assert not_permanent(try_1.value), "soft_fail skipped a paid result over a CDN's 503"
    assert "503" in str(try_1.value)

    server.clear_faults()
    result = sensor(submitted, destination, deferrable=True, soft_fail=True).execute({})
    assert [Path(entry["path"]).name for entry in result["files"]] == destination.stored()
    assert destination.stored()


@pytest.mark.parametrize("flag", ["soft_fail", "never_fail", "silent_fail"])
@pytest.mark.parametrize("mode", ["poke", "reschedule"])
def test_a_sensor_fails_the_try_when_the_folder_is_unwritable_after_its_task_succeeded(
    server: FakeReveServer, submitted: str, destination: Destination, flag: str, mode: str
) -> None:
    server.finish_task(submitted)
    destination.block()
    waiter = sensor(submitted, destination, mode=mode, **{flag: True})

    with pytest.raises(AirflowException) as raised:
        waiter.execute(_reschedule_context() if mode == "reschedule" else {})

    assert not_permanent(raised.value), f"{flag} skipped (or failed for good) a paid, unstored result"
    assert "Invalid download_to" not in str(raised.value)


def test_a_sensor_still_refuses_an_unwritable_folder_before_it_waits_for_an_unfinished_task(
    server: FakeReveServer, submitted: str, destination: Destination
) -> None:
    destination.block()

    with pytest.raises(AirflowFailException, match=r"Invalid download_to \(checked before waiting\)"):
        sensor(submitted, destination, deferrable=True).execute({})


def test_a_rescheduled_sensor_keeps_waiting_through_a_moment_the_folder_is_unwritable(
    server: FakeReveServer, submitted: str, destination: Destination
) -> None:
    from airflow.sdk.exceptions import AirflowRescheduleException

    waiter = sensor(submitted, destination, mode="reschedule")
    with pytest.raises(AirflowRescheduleException):
        waiter.execute(_reschedule_context())  # the try's first poke: the folder was fine
    destination.block()

    with pytest.raises(AirflowRescheduleException):
        sensor(submitted, destination, mode="reschedule").execute(_reschedule_context(rescheduled=1))

    destination.unblock()
    server.finish_task(submitted)
    result = sensor(submitted, destination, mode="reschedule").execute(_reschedule_context(rescheduled=2))
    assert [Path(entry["path"]).name for entry in result["files"]] == destination.stored()


def _reschedule_context(rescheduled: int = 0) -> dict[str, Any]:
    from datetime import datetime, timezone

    class TaskInstance:
        try_number = 1

        def get_first_reschedule_date(self, context: Any) -> datetime | None:
            return datetime.now(timezone.utc) if rescheduled else None

    return {"ti": TaskInstance(), "task_reschedule_count": rescheduled}

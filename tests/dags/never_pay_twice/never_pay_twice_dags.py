"""Test-only DAGs for ``tests/guarantees/test_never_pay_twice.py``: run with ``dag.test()``, never deployed.

Every DAG has ``retries=2`` and ``retry_delay=0``, so a test can count how many Airflow tries a
task spent. The fake Reve API the tasks talk to (and its faults) is set up by each test.

A worker killed right after submitting is simulated by :class:`CrashAfterSubmitOperator`: on
try 1 only, it lets the operator write the submitted Reve task id to ``task_state_store`` and then
raises :class:`SimulatedWorkerCrash`, an ordinary error, so Airflow retries the task.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, ClassVar

import pendulum
from airflow.sdk import DAG

from airflow_provider_reve.mixins.reattach import STATE_KEY
from airflow_provider_reve.operators.reve import ReveGenerateOperator

START = pendulum.datetime(2025, 1, 1, tz="UTC")
DEFAULT_ARGS = {"retries": 2, "retry_delay": timedelta(0)}
POLL = 0.1  # seconds between status polls: the fake server is local

MAPPED_PROMPTS = ["a red fox", "a blue whale", "a green parrot"]
BACKPRESSURE_PROMPTS = [f"back-pressure prompt {n}" for n in range(6)]
# Content-policy fan-out: map index 0 is refused at submit, 1 ends FAILED, 2 succeeds
# (the test's faults select them by model).
CONTENT_POLICY_FANOUT = [
    {"model": "nano-banana", "prompt": "a flagged prompt, refused at submit"},
    {"model": "seedream-5", "prompt": "a flagged prompt, rejected while generating"},
    {"model": "reve-2.0", "prompt": "an innocent prompt"},
]
# 12 + 25 + 140 credits by the published prices.
CREDITS_FANOUT = [
    {"model": "reve-2.0", "prompt": "a cheap image"},
    {"model": "seedream-5", "prompt": "a mid-priced image"},
    {"model": "nano-banana-pro", "prompt": "an expensive image", "resolution": "4K"},
]


class SimulatedWorkerCrash(RuntimeError):
    """Stands in for a worker that died: an ordinary error, so Airflow's retries apply."""


class CrashAfterSubmitOperator(ReveGenerateOperator):
    """On try 1, dies right after the submitted Reve task id was persisted."""

    #: (dag_id, run_id, map_index) -> the value the operator persisted before the crash
    persisted: ClassVar[dict[tuple[str, str, int], Any]] = {}

    def execute(self, context: Any) -> dict[str, Any]:
        self._context = context
        return super().execute(context)

    def _remember_paid_task(self, memory: Any, task: Any, fingerprint: str) -> None:
        super()._remember_paid_task(memory, task, fingerprint)
        ti = self._context["ti"]
        store = self._context.get("task_state_store")
        if ti.try_number == 1 and store is not None:
            value = store.get(STATE_KEY)
            CrashAfterSubmitOperator.persisted[(ti.dag_id, ti.run_id, ti.map_index)] = value
            raise SimulatedWorkerCrash(f"worker killed right after persisting {STATE_KEY}={value!r}")


class CrashOnResumeOperator(ReveGenerateOperator):
    """On try 1, dies when resumed by the trigger (the Reve task has finished, nothing handed on)."""

    def execute_complete(self, context: Any, event: Any = None, **kwargs: Any) -> dict[str, Any]:
        if context["ti"].try_number == 1:
            raise SimulatedWorkerCrash("worker killed while resuming from the trigger")
        return super().execute_complete(context, event, **kwargs)


class BackoffRecordingOperator(ReveGenerateOperator):
    """Records every resumption after a ``TOO_MANY_TASKS`` timer deferral."""

    #: (run_id, map_index, try_number) per resumption by the timer trigger
    resumed_after_backoff: ClassVar[list[tuple[str, int, int]]] = []

    def execute_after_backoff(self, context: Any, event: Any = None, **kwargs: Any) -> dict[str, Any]:
        ti = context["ti"]
        BackoffRecordingOperator.resumed_after_backoff.append((ti.run_id, ti.map_index, ti.try_number))
        return super().execute_after_backoff(context, event, **kwargs)


def _dag(dag_id: str) -> DAG:
    return DAG(dag_id, schedule=None, start_date=START, catchup=False, default_args=DEFAULT_ARGS)


with _dag("npt_generate_once") as generate_once:
    ReveGenerateOperator(task_id="generate", model="reve-2.0", prompt="a red fox")

with _dag("npt_ambiguous_retry") as ambiguous_retry:
    ReveGenerateOperator(
        task_id="generate", model="reve-2.0", prompt="a red fox", on_ambiguous_submit="retry"
    )

with _dag("npt_deferrable_once") as deferrable_once:
    ReveGenerateOperator(
        task_id="generate", model="seedream-5", prompt="a lighthouse", deferrable=True, poll_interval=POLL
    )

with _dag("npt_crash_after_submit_in_worker") as crash_after_submit_in_worker:
    CrashAfterSubmitOperator(
        task_id="generate", model="seedream-5", prompt="a lighthouse", deferrable=False, poll_interval=POLL
    )

with _dag("npt_crash_after_submit_deferrable") as crash_after_submit_deferrable:
    CrashAfterSubmitOperator(
        task_id="generate", model="seedream-5", prompt="a lighthouse", deferrable=True, poll_interval=POLL
    )

with _dag("npt_crash_after_submit_mapped_in_worker") as crash_after_submit_mapped_in_worker:
    CrashAfterSubmitOperator.partial(
        task_id="generate", model="seedream-5", deferrable=False, poll_interval=POLL
    ).expand(prompt=MAPPED_PROMPTS)

with _dag("npt_crash_after_submit_mapped_deferrable") as crash_after_submit_mapped_deferrable:
    CrashAfterSubmitOperator.partial(
        task_id="generate", model="seedream-5", deferrable=True, poll_interval=POLL
    ).expand(prompt=MAPPED_PROMPTS)

with _dag("npt_crash_after_submit_instant") as crash_after_submit_instant:
    CrashAfterSubmitOperator(task_id="generate", model="reve-2.0", prompt="a red fox")

with _dag("npt_crash_on_resume") as crash_on_resume:
    CrashOnResumeOperator(
        task_id="generate", model="seedream-5", prompt="a lighthouse", deferrable=True, poll_interval=POLL
    )

with _dag("npt_backpressure_fanout") as backpressure_fanout:
    BackoffRecordingOperator.partial(
        task_id="generate", model="seedream-5", deferrable=True, wait_for_completion=False
    ).expand(prompt=BACKPRESSURE_PROMPTS)

with DAG(
    "npt_backpressure_deadline", schedule=None, start_date=START, catchup=False, default_args={"retries": 0}
) as backpressure_deadline:
    ReveGenerateOperator(
        task_id="generate", model="reve-2.0", prompt="a red fox", deferrable=True, max_submit_wait=12
    )

with _dag("npt_content_policy_fanout") as content_policy_fanout:
    ReveGenerateOperator.partial(
        task_id="generate", on_content_policy_violation="skip", deferrable=False, poll_interval=POLL
    ).expand_kwargs(CONTENT_POLICY_FANOUT)

with _dag("npt_credits_fanout") as credits_fanout:
    ReveGenerateOperator.partial(
        task_id="generate", max_credits=140, deferrable=False, poll_interval=POLL
    ).expand_kwargs(CREDITS_FANOUT)


class FailsAfterExecuteOnceOperator(ReveGenerateOperator):
    """On try 1, Airflow fails the try *after* ``execute()`` returned (as a failing XCom backend,
    ``post_execute`` or success report would)."""

    def post_execute(self, context: Any, result: Any = None) -> None:
        if context["ti"].try_number == 1:
            raise SimulatedWorkerCrash("the try failed after execute() had returned its result")
        super().post_execute(context, result)


with _dag("npt_fails_after_execute_sync") as fails_after_execute_sync:
    FailsAfterExecuteOnceOperator(task_id="generate", model="reve-2.0", prompt="a red fox")

with _dag("npt_fails_after_execute_deferrable") as fails_after_execute_deferrable:
    FailsAfterExecuteOnceOperator(
        task_id="generate", model="seedream-5", prompt="a lighthouse", deferrable=True, poll_interval=POLL
    )

with _dag("npt_fails_after_execute_handed_on") as fails_after_execute_handed_on:
    FailsAfterExecuteOnceOperator(
        task_id="generate", model="seedream-5", prompt="a lighthouse", wait_for_completion=False
    )

# execution_timeout strikes while the paid POST is in flight (the test makes it slow).
with _dag("npt_timeout_mid_submit") as timeout_mid_submit:
    ReveGenerateOperator(
        task_id="generate", model="reve-2.0", prompt="a red fox", execution_timeout=timedelta(seconds=2)
    )

with _dag("npt_timeout_mid_submit_retry") as timeout_mid_submit_retry:
    ReveGenerateOperator(
        task_id="generate",
        model="reve-2.0",
        prompt="a red fox",
        execution_timeout=timedelta(seconds=2),
        on_ambiguous_submit="retry",
    )

# Templated request fields rendered without render_template_as_native_obj: all strings.
with DAG(
    "npt_templated_strings",
    schedule=None,
    start_date=START,
    catchup=False,
    default_args={"retries": 0},
    params={
        "n": 2,
        "urls": ["https://example.com/a.png"],
        "extra": {"test_time_scaling": 2},
        "audio": True,
        "seconds": 5,
    },
) as templated_strings:
    ReveGenerateOperator(
        task_id="image",
        model="reve-2.0",
        prompt="a red fox",
        num_images="{{ params.n }}",  # type: ignore[arg-type]
        image_urls="{{ params.urls }}",  # type: ignore[arg-type]
        extra_params="{{ params.extra }}",  # type: ignore[arg-type]
    )
    ReveGenerateOperator(
        task_id="video",
        model="kling26-text-to-video",
        prompt="a wave",
        duration="{{ params.seconds }}",  # type: ignore[arg-type]
        generate_audio="{{ params.audio }}",  # type: ignore[arg-type]
        poll_interval=POLL,
    )

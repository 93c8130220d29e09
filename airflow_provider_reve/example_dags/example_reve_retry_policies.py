"""### Retry policies: what each kind of failure does, spelled out

**Transient failures retry, with exponential backoff.** A rate limit, a 5xx, a timeout or a Reve
task that ended `FAILED` with a transient code (refunded by the API) fails the *try*, and
Airflow's retries take over: 30 s, 60 s, 120 s, 240 s (`retry_exponential_backoff=2.0`, capped by
`max_retry_delay`). A retry never pays twice: it re-attaches to the Reve task the earlier try
created. Permanent failures (a bad request, a bad key, no credits) fail at once without spending
retries.

**One flagged prompt does not sink the fan-out.** `variants` is mapped over several prompts with
`on_content_policy_violation="skip"`: a prompt the API rejects for its content *skips* that one
instance; the others carry on, and `summarize` (trigger rule `none_failed_min_one_success`) runs
on what was generated. With the default `"fail"` the rejected instance would fail the run.

**`max_credits`** refuses, before anything is submitted, a request whose estimated cost is higher
(or cannot be estimated): a typo in `num_images` cannot cost a fortune.

**A pool caps the generations in flight**, across every DAG that uses it. Deferred tasks hold no
worker slot, so the pool must count them, or it caps nothing: create it once with

    airflow pools set reve_generations 4 "Reve generations in flight" --include-deferred

(until it exists the scheduler leaves these tasks waiting). `max_submit_wait` covers the API's own
cap: on `TOO_MANY_TASKS` the operator waits in the triggerer and submits again, for up to 30 min.

**`on_ambiguous_submit`**: the submission was sent but no answer came back (connection cut,
gateway timeout). A paid task may exist that the operator cannot see. `"fail"` (the default, on
`variants`) fails without retrying: look in your Reve dashboard before re-running. `"retry"` (on
the cheap `icon`) lets Airflow's retries submit again, accepting a possible second charge.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG, TriggerRule, task

from airflow_provider_reve.operators.reve import ReveGenerateOperator

POOL = "reve_generations"
PROMPTS = [
    "A paper boat on a puddle, macro photo, {{ dag_run.run_after.strftime('%B') }}",
    "A paper boat in a storm drain, film noir",
    "A fleet of paper boats at sunrise, watercolour",
]

with DAG(
    dag_id="example_reve_retry_policies",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["reve", "example"],
    default_args={
        "retries": 4,
        "retry_delay": timedelta(seconds=30),
        "retry_exponential_backoff": 2.0,  # 30 s, 60 s, 120 s, 240 s
        "max_retry_delay": timedelta(minutes=10),
    },
    doc_md=__doc__,
):
    # [START howto_operator_reve_retry_fan_out]
    variants = ReveGenerateOperator.partial(
        task_id="variants",
        model="nano-banana",
        deferrable=True,
        poll_interval=2,
        timeout=timedelta(minutes=20),
        on_content_policy_violation="skip",  # a flagged prompt skips its instance only
        on_ambiguous_submit="fail",  # never resubmit blindly: a paid task may exist
        max_credits=20,  # one nano-banana image
        max_submit_wait=timedelta(minutes=30),
        pool=POOL,
    ).expand(prompt=PROMPTS)
    # [END howto_operator_reve_retry_fan_out]

    # [START howto_operator_reve_ambiguous_retry]
    icon = ReveGenerateOperator(
        task_id="icon",
        model="reve-2.0",  # synchronous: answers at once, never defers
        prompt="A paper boat icon, flat design",
        max_credits=12,
        # 12 credits: a second charge after a lost answer is cheaper than a failed run here.
        on_ambiguous_submit="retry",
        retries=2,
        pool=POOL,
    )
    # [END howto_operator_reve_ambiguous_retry]

    @task(trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
    def summarize(generated: list[dict[str, Any]], icon: dict[str, Any]) -> dict[str, Any]:
        """Runs on what was generated; a skipped instance has no result and is left out."""
        # A slice: one read of them all; iterating would end on a "not found" logged at ERROR.
        kept = [result for result in generated[:] if result]
        return {
            "generated": len(kept),
            "skipped": len(PROMPTS) - len(kept),
            "result_urls": [url for result in kept for url in result["result_urls"]],
            "credits": sum(r["consumed_credits"] or 0 for r in [*kept, icon]),
        }

    summarize(variants.output, icon.output)

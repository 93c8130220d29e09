"""Request shapes ``airflow reve estimate`` must render: params and --conf, a product of literal
``expand`` lists, an ``expand`` over XCom, a mapped ``@task.reve`` function, a priced field read
from XCom."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, Param, task

from airflow_provider_reve.operators.reve import ReveGenerateOperator

with DAG(
    dag_id="budget_estimate_shapes",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    params={"images": Param(1, type="integer")},
):
    ReveGenerateOperator(
        task_id="from_params", model="reve-2.0", prompt="a fox", num_images="{{ params.images }}"
    )
    ReveGenerateOperator.partial(task_id="product", model="nano-banana-pro").expand(
        prompt=["a fox", "a hare"], resolution=["2K", "4K"]
    )

    @task
    def prompts() -> list[str]:
        return ["a", "b"]

    ReveGenerateOperator.partial(task_id="over_xcom", model="seedream-5").expand(prompt=prompts())

    @task.reve(model="nano-banana")
    def mapped_function(subject: str) -> dict:
        return {"prompt": f"a poster of {subject}", "num_images": 2}

    mapped_function.expand(subject=["a fox", "a hare", "an owl"])

    ReveGenerateOperator(
        task_id="duration_from_xcom",
        model="kling26-text-to-video",
        prompt="waves",
        duration="{{ ti.xcom_pull(task_ids='prompts') | length }}",
    )

"""``@task.reve`` functions that write their request from another task's XCom, with the idioms the
docs show (``results[:]``, ``results[0]``, iteration, keys), and a fan-out over XCom."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, task

from airflow_provider_reve.operators.reve import ReveGenerateOperator

with DAG(dag_id="budget_estimate_from_xcom", schedule=None, start_date=datetime(2026, 1, 1)):

    @task
    def products() -> list[dict]:
        return [{"prompt": "a red mug", "metadata": {"sku": "MUG-42"}}]

    heroes = ReveGenerateOperator.partial(task_id="heroes", model="seedream-5").expand_kwargs(products())

    @task.reve(model="reve-2.0")
    def banner(results) -> str:  # docs/howto/download.md: read a mapped task's results with [:]
        skus = [result["metadata"]["sku"] for result in results[:]]
        return "A store banner showing " + ", ".join(skus)

    @task.reve(model="nano-banana")
    def like_the_first(results) -> dict:
        first = results[0]
        names = [f"{key}={value}" for key, value in first.get("metadata", {}).items()]
        return {"prompt": f"like {first['prompt']} ({' '.join(names)})", "num_images": 2}

    @task.reve(model="reve-2.0")
    def edit_each(results) -> dict:  # image URLs from XCom: only that there are some prices it
        return {"prompt": "brighter", "image_urls": [url for r in results for url in r["result_urls"]]}

    @task.reve(model="seedream-5")
    def one_per_result(results) -> dict:  # the price follows the XCom: not known before the run
        return {"prompt": "a variant", "num_images": len(results[:])}

    banner(heroes.output)
    like_the_first(heroes.output)
    edit_each(heroes.output)
    one_per_result(heroes.output)

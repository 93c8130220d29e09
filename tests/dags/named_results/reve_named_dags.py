"""DAGs for the named-results tests: a product's hero image named and tagged by the product.

Files go below ``$REVE_TEST_OUTPUT_DIR``, which the test sets before the folder is parsed.
"""

from __future__ import annotations

import os
from datetime import datetime

from airflow.sdk import DAG, Asset

from airflow_provider_reve.operators.reve import ReveGenerateOperator

OUT = os.environ.get("REVE_TEST_OUTPUT_DIR", "/nonexistent-reve-test-output")
PRODUCT_IMAGES = Asset("reve-test://named-products")

with DAG(
    dag_id="reve_named_product_hero",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    params={"sku": "MUG-42"},
):
    ReveGenerateOperator(
        task_id="hero_image",
        model="nano-banana",
        prompt="A red mug on a white table",
        num_images=2,
        deferrable=True,
        poll_interval=0.1,
        timeout=60,
        download_to=OUT + "/heroes",
        file_name="{{ params.sku }}_{index}",
        metadata={"sku": "{{ params.sku }}", "campaign": "spring"},
        outlets=[PRODUCT_IMAGES],
    )

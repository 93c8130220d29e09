"""What a DAG file using the provider costs the scheduler: importing the operator module, and parsing
a DAG file of 50 Reve operators vs. the same file of ``EmptyOperator`` s. Each number is the median
of fresh interpreters, as the DAG processor parses every file in a fresh process."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

_IMPORT_PROBE = """
import json, time
t0 = time.perf_counter()
import airflow.sdk
t1 = time.perf_counter()
import airflow_provider_reve.operators.reve
t2 = time.perf_counter()
print(json.dumps({"sdk_ms": (t1 - t0) * 1000, "operator_ms": (t2 - t1) * 1000}))
"""

# What the DAG processor has done before it parses a file: Airflow loaded and ``gc.freeze()``d
# (the manager freezes before it forks a parser per file, so a collection in the parser never
# walks Airflow's ~200,000 objects), then the file's own ``airflow.*`` imports pre-imported
# ([dag_processor] parsing_pre_import_modules, on by default). Ours are not airflow.* modules,
# so they are imported -- and counted -- while the file parses, unless ``preload`` says so (to
# split the fixed import from what each operator costs).
_PARSE_PROBE = """
import gc, importlib, json, sys, time
import structlog
from airflow.dag_processing.dagbag import DagBag
from airflow.dag_processing.processor import _pre_import_airflow_modules, _serialize_dags
path, preload = sys.argv[1], sys.argv[2:]
log = structlog.get_logger()
gc.freeze()
_pre_import_airflow_modules(path, log)
for module in preload:
    importlib.import_module(module)
t0 = time.perf_counter()
bag = DagBag(dag_folder=path, load_op_links=False)
serialized, errors = _serialize_dags(bag, log)
t1 = time.perf_counter()
assert len(serialized) == 1 and not bag.import_errors and not errors, (bag.import_errors, errors)
print(json.dumps({"ms": (t1 - t0) * 1000}))
"""

_REVE_DAG = """
from datetime import datetime

from airflow.sdk import DAG

from airflow_provider_reve.operators.reve import ReveGenerateOperator

with DAG("fifty_reve", schedule=None, start_date=datetime(2025, 1, 1)):
    for i in range(50):
        ReveGenerateOperator(task_id=f"generate_{i}", model="seedream-5", prompt=f"picture {i}")
"""

_EMPTY_DAG = """
from datetime import datetime

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG

with DAG("fifty_empty", schedule=None, start_date=datetime(2025, 1, 1)):
    for i in range(50):
        EmptyOperator(task_id=f"generate_{i}")
"""


_OPERATOR_MODULE = "airflow_provider_reve.operators.reve"


def _probe(code: str, *args: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
        env=os.environ.copy(),
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def import_cost(runs: int) -> dict[str, float]:
    """Median ms of ``import airflow.sdk`` and of the operator module on top of it."""
    samples = [_probe(_IMPORT_PROBE) for _ in range(runs)]
    return {key: statistics.median(sample[key] for sample in samples) for key in ("sdk_ms", "operator_ms")}


def parse_cost(runs: int) -> dict[str, float]:
    """Median ms to parse (and serialize) the 50-operator DAG file, Reve vs. EmptyOperator."""
    with tempfile.TemporaryDirectory(prefix="reve-bench-dags-") as folder:
        reve, empty = Path(folder, "fifty_reve.py"), Path(folder, "fifty_empty.py")
        reve.write_text(_REVE_DAG)
        empty.write_text(_EMPTY_DAG)
        samples: dict[str, list[float]] = {"reve_ms": [], "reve_preloaded_ms": [], "empty_ms": []}
        for _ in range(runs):  # interleaved, so that a busy moment hurts all alike
            samples["reve_ms"].append(_probe(_PARSE_PROBE, str(reve))["ms"])
            samples["reve_preloaded_ms"].append(_probe(_PARSE_PROBE, str(reve), _OPERATOR_MODULE)["ms"])
            samples["empty_ms"].append(_probe(_PARSE_PROBE, str(empty))["ms"])
    return {key: statistics.median(values) for key, values in samples.items()}

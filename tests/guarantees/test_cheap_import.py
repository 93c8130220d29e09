"""Importing the DAG-facing modules (what every scheduler parse of a DAG file does) loads neither
the HTTP clients, nor providers-http's hooks, nor the trigger, nor our test tooling, nor storage,
the finishing steps or the catalog: those load when a task runs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = (
    "aiohttp",
    "requests",
    "urllib3",
    "airflow.providers.http.hooks",
    "airflow_provider_reve.hooks.reve",
    "airflow_provider_reve.triggers.reve",
    "airflow_provider_reve.results.download",
    "airflow_provider_reve.testing",
    # What a task needs when it runs, not what a DAG file needs to parse: storage and the
    # manifest, the finishing steps, the catalog, OpenLineage's facets.
    "airflow_provider_reve.results.storage",
    "airflow_provider_reve.results.lineage_facets",
    "airflow_provider_reve.mixins.finish",
    "airflow_provider_reve.client.catalog",
)
# Nor, for a DAG file (the trigger needs the client), the whole client room -- the retry policy
# included -- or the budgets' model, windows and ledger: their mixins read them when a task runs.
NOT_FOR_A_DAG_FILE = (
    *HEAVY,
    "airflow_provider_reve.client",
    "airflow_provider_reve.budgets.model",
    "airflow_provider_reve.budgets.windows",
    "airflow_provider_reve.budgets.ledger",
)
# What the generate operator's module, the one nearly every DAG file imports, does without too:
# its mixins reach the exceptions, ReveTask and the rendered-value parsing where a task runs.
NOT_FOR_THE_GENERATE_OPERATOR = (
    "airflow_provider_reve.exceptions",
    "airflow_provider_reve.models",
    "airflow_provider_reve.mixins.rendered",
)


def loaded_after_import(module: str, watched: tuple[str, ...] = HEAVY) -> list[str]:
    probe = (
        "import sys, json, airflow.sdk\n"
        "before = set(sys.modules)\n"
        f"import {module}\n"
        f"new = set(sys.modules) - before - {{{module!r}}}\n"
        f"print(json.dumps(sorted(m for m in {watched!r} if m in new)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "module",
    [
        "airflow_provider_reve.operators.reve",
        "airflow_provider_reve.operators.download",
        "airflow_provider_reve.sensors.reve",
        "airflow_provider_reve.decorators.reve",
    ],
)
def test_a_dag_file_importing_our_operators_loads_no_http_client_hook_or_trigger(module):
    assert loaded_after_import(module, NOT_FOR_A_DAG_FILE) == []


def test_a_dag_file_importing_the_generate_operator_loads_not_even_the_exceptions_or_reve_task():
    assert loaded_after_import("airflow_provider_reve.operators.reve", NOT_FOR_THE_GENERATE_OPERATOR) == []


def test_the_heavy_modules_still_load_when_a_task_runs():
    # The counterpart: the probe can see these modules, so an empty list above means something.
    assert "aiohttp" in loaded_after_import("airflow_provider_reve.hooks.reve")
    assert "airflow_provider_reve.models" in loaded_after_import(
        "airflow_provider_reve.hooks.reve", NOT_FOR_THE_GENERATE_OPERATOR
    )


def test_the_triggerer_importing_our_trigger_on_its_event_loop_loads_no_http_client_or_hook():
    # The triggerer imports a trigger's module on its loop; aiohttp alone took ~0.2 s there and
    # was reported as "async thread was blocked". The first run() imports it in a thread instead.
    assert loaded_after_import("airflow_provider_reve.triggers.reve") == []


def test_triggers_starting_together_in_a_fresh_triggerer_all_get_the_fully_imported_hook():
    # The first run() imports the hook in a thread; the others must wait for that import to
    # finish, not pick up the half-initialised module from sys.modules (seen in E2E: the trigger
    # "exited with error ... partially initialized module" and its task failed).
    probe = (
        "import asyncio, airflow.sdk\n"
        "from airflow_provider_reve.triggers import reve\n"
        "async def complete_when_returned():\n"
        "    return hasattr(await reve._hooks(), 'ReveAsyncHook')  # judged at once, as run() uses it\n"
        "async def main():\n"
        "    started = []\n"
        "    for _ in range(300):  # triggers arriving one by one while the first imports\n"
        "        started.append(asyncio.ensure_future(complete_when_returned()))\n"
        "        await asyncio.sleep(0.001)\n"
        "    print(all(await asyncio.gather(*started)))\n"
        "asyncio.run(main())\n"
    )
    for _ in range(3):
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
        assert out.stdout.strip().splitlines()[-1:] == ["True"], out.stderr[-2000:]

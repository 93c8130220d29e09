"""What users import: the names the README documents, from the package root and ``client``, and
the 0.1 paths the README documented, which keep working for this release with a warning that
names the new one."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest

import airflow_provider_reve
import airflow_provider_reve.client


@pytest.mark.parametrize(
    ("old_module", "name", "new_home"),
    [
        ("airflow_provider_reve._retry", "RetryPolicy", "airflow_provider_reve.client"),
        ("airflow_provider_reve._catalog", "estimate_credits", "airflow_provider_reve.client"),
        ("airflow_provider_reve._catalog", "validate_request", "airflow_provider_reve.client"),
        ("airflow_provider_reve._deadline", "deferral_budget", "airflow_provider_reve.mixins.deadline"),
    ],
)
def test_an_import_path_the_0_1_readme_documented_still_works_and_its_warning_names_the_new_one(
    old_module, name, new_home
):
    sys.modules.pop(old_module, None)
    with pytest.warns(DeprecationWarning, match=new_home.replace(".", r"\.")):
        old = importlib.import_module(old_module)
    assert getattr(old, name) is getattr(importlib.import_module(new_home), name)


def test_every_moved_private_module_still_imports_from_its_old_path():
    for old in airflow_provider_reve.MOVED_MODULES:
        sys.modules.pop(f"airflow_provider_reve.{old}", None)
        with pytest.warns(DeprecationWarning, match="deprecated"):
            module = importlib.import_module(f"airflow_provider_reve.{old}")
        assert module.__all__ is not None


@pytest.mark.parametrize("package", [airflow_provider_reve, airflow_provider_reve.client])
def test_every_name_a_package_exports_resolves(package):
    missing = [name for name in package.__all__ if getattr(package, name, None) is None]
    assert missing == []


def test_the_readme_names_import_from_the_client_and_the_root():
    from airflow_provider_reve import ReveError, ReveGenerateOperator, ReveHook, ReveTask
    from airflow_provider_reve.client import RetryPolicy, estimate_credits, validate_request
    from airflow_provider_reve.exceptions import ReveError as ReveErrorFromItsModule

    assert ReveError is ReveErrorFromItsModule
    assert RetryPolicy().max_attempts >= 1
    assert estimate_credits("reve-2.0", num_images=1) is not None
    validate_request("reve-2.0", {"prompt": "a fox"})
    assert {ReveGenerateOperator.__name__, ReveHook.__name__, ReveTask.__name__} == {
        "ReveGenerateOperator",
        "ReveHook",
        "ReveTask",
    }


def test_importing_the_public_surface_at_dag_parse_time_loads_no_http_client():
    probe = (
        "import sys, json, airflow.sdk\n"
        "import airflow_provider_reve, airflow_provider_reve.client\n"
        "print(json.dumps(sorted(m for m in ('aiohttp', 'requests') if m in sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


@pytest.mark.parametrize("package", [airflow_provider_reve, airflow_provider_reve.client])
def test_a_package_exports_exactly_the_names_it_knows_how_to_load(package):
    assert set(package.__all__) - {"__version__"} == set(package._HOME)

"""The installed distribution registers with Airflow the way users see it in the UI and CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_provider_reve.get_provider_info import get_provider_info


def test_providers_manager_lists_the_provider_and_its_hook():
    from airflow.providers_manager import ProvidersManager
    from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

    assert "airflow-provider-reve" in ProvidersManager().providers
    hook_info = ProvidersManagerTaskRuntime().hooks["reve"]
    assert hook_info is not None
    assert hook_info.hook_class_name == "airflow_provider_reve.hooks.reve.ReveHook"
    assert hook_info.connection_id_attribute_name == "reve_conn_id"


def test_connection_form_shows_api_key_as_masked_password_and_only_our_options_as_extras():
    # This is what the UI's /ui/connections/hook_meta endpoint returns for the connection form.
    from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService

    metas = {meta.connection_type: meta for meta in HookMetaService.hook_meta_data()}
    reve = metas["reve"]
    assert reve.hook_name == "Reve"
    standard = reve.standard_fields
    assert standard.password.title == "API key"
    assert standard.host.title == "Base URL"
    assert standard.host.placeholder == "https://reve2img.com"
    assert standard.login.hidden and standard.port.hidden and standard.url_schema.hidden
    extras = reve.extra_fields or {}
    assert set(extras) == {
        "allow_insecure_http",
        "connect_timeout",
        "read_timeout",
        "max_requests_per_second",
    }
    # The key is never an extra field: it is the standard (masked) password.
    assert not any("key" in name for name in extras)


def test_airflow_cli_lists_the_provider():
    result = subprocess.run(
        [sys.executable, "-m", "airflow", "providers", "list", "--output", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    # The CLI may print log lines first; the JSON document is the last line.
    names = {entry["package_name"] for entry in json.loads(result.stdout.strip().splitlines()[-1])}
    assert "airflow-provider-reve" in names


def test_every_how_to_guide_of_the_provider_info_names_a_docs_page_and_every_how_to_page_is_listed():
    # Paths from the root of the source tree, as Airflow's own providers give theirs.
    root = Path(__file__).resolve().parents[2]
    (integration,) = get_provider_info()["integrations"]
    guides = integration["how-to-guide"]
    missing = [
        guide for guide in guides if not guide.startswith("/docs/") or not (root / guide[1:]).is_file()
    ]
    assert missing == []
    pages = {f"/{page.relative_to(root).as_posix()}" for page in (root / "docs" / "howto").glob("*.md")}
    assert set(guides) == pages


def test_provider_info_names_modules_that_import():
    import importlib

    info = get_provider_info()
    for section in ("hooks", "operators", "sensors", "triggers"):
        for entry in info[section]:
            for module in entry["python-modules"]:
                importlib.import_module(module)


@pytest.mark.parametrize("field", ["connect_timeout", "read_timeout"])
@pytest.mark.parametrize("seconds", [0, 0.0, 0.5, 30, -1, -0.5])
def test_the_connection_forms_timeout_fields_accept_exactly_what_the_hook_accepts(field, seconds):
    # A form that saves a value the hook then refuses lets a user break a working connection.
    import jsonschema

    from airflow_provider_reve.client.settings import settings_from_connection
    from airflow_provider_reve.exceptions import ReveConfigurationError

    schema = get_provider_info()["connection-types"][0]["conn-fields"][field]["schema"]
    try:
        jsonschema.validate(seconds, schema)
        form_accepts = True
    except jsonschema.ValidationError:
        form_accepts = False
    try:
        settings_from_connection("reve_default", "https://reve2img.com", None, "sk-test", {field: seconds})
        hook_accepts = True
    except ReveConfigurationError:
        hook_accepts = False

    assert form_accepts == hook_accepts == (seconds > 0)

"""Provider metadata read by Airflow's ProvidersManager (entry point ``apache_airflow_provider``)."""

from __future__ import annotations

from typing import Any

from airflow_provider_reve import __version__
from airflow_provider_reve.config import provider_config_section


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "airflow-provider-reve",
        "name": "Reve",
        "description": "Generate images and videos with the Reve API (https://reve2img.com).",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "Reve",
                "external-doc-url": "https://reve2img.com",
                "tags": ["service"],
                # As Airflow's own providers list theirs: the source of each how-to page, from the
                # root of the source tree (the sdist carries docs/).
                "how-to-guide": [
                    "/docs/howto/generate.md",
                    "/docs/howto/taskflow.md",
                    "/docs/howto/sensor.md",
                    "/docs/howto/download.md",
                    "/docs/howto/assets.md",
                    "/docs/howto/gallery.md",
                ],
            }
        ],
        "hooks": [{"integration-name": "Reve", "python-modules": ["airflow_provider_reve.hooks.reve"]}],
        "operators": [
            {"integration-name": "Reve", "python-modules": ["airflow_provider_reve.operators.reve"]}
        ],
        "sensors": [{"integration-name": "Reve", "python-modules": ["airflow_provider_reve.sensors.reve"]}],
        "triggers": [{"integration-name": "Reve", "python-modules": ["airflow_provider_reve.triggers.reve"]}],
        "task-decorators": [
            {"name": "reve", "class-name": "airflow_provider_reve.decorators.reve.reve_task"}
        ],
        "extra-links": ["airflow_provider_reve.links.ReveResultLink"],
        "cli": ["airflow_provider_reve.budgets.cli.get_reve_cli_commands"],
        "config": {
            "reve": {
                "description": "Options of the Reve provider: deployment-wide settings (per-connection "
                "ones live on the connection). See the docs' Configuration page.",
                "options": {
                    "ledger_conn_id": {
                        "description": "Airflow connection (type sqlite or postgres) of the ledger that "
                        "counts credit budgets across the deployment. Empty: budgets are off. See the "
                        "docs' Budgets page.",
                        "version_added": "0.2.0",
                        "type": "string",
                        "example": "reve_ledger",
                        "default": "",
                    },
                    "budget_recheck_seconds": {
                        "description": "How often a task waiting for budget room "
                        "(on_budget_exhausted='wait') looks again, at most, for credits released or a "
                        "raised limit before its window resets (never less than 15). "
                        "See the docs' Budgets page.",
                        "version_added": "0.2.0",
                        "type": "float",
                        "example": "60",
                        "default": "300",
                    },
                    # The deployment-wide knobs, declared once beside their readers.
                    **provider_config_section(),
                },
            }
        },
        "connection-types": [
            {
                "hook-class-name": "airflow_provider_reve.hooks.reve.ReveHook",
                "hook-name": "Reve",
                "connection-type": "reve",
                "ui-field-behaviour": {
                    "hidden-fields": ["login", "schema", "port"],
                    "relabeling": {"host": "Base URL", "password": "API key"},
                    "placeholders": {
                        "host": "https://reve2img.com",
                        "password": "sk-...",
                        "extra": '{"allow_insecure_http": false, "connect_timeout": 10, "read_timeout": 60}',
                    },
                },
                # Only our own options live here -- never the key, which is the masked password.
                "conn-fields": {
                    "allow_insecure_http": {
                        "label": "Allow plain http://",
                        "description": "Permit a non-loopback http:// base URL (the key would travel "
                        "unencrypted). Off by default.",
                        "schema": {"type": ["boolean", "null"]},
                    },
                    "connect_timeout": {
                        "label": "Connect timeout (s)",
                        "description": "Seconds (more than 0) to wait for a TCP/TLS connection. Default 10.",
                        # The hook refuses 0. Airflow's number widget reads only "minimum" (it
                        # clamps negatives); "exclusiveMinimum" is what rules 0 out for validators.
                        "schema": {"type": ["number", "null"], "minimum": 0, "exclusiveMinimum": 0},
                    },
                    "read_timeout": {
                        "label": "Read timeout (s)",
                        "description": "Seconds (more than 0) to wait for an answer. Default 60.",
                        "schema": {"type": ["number", "null"], "minimum": 0, "exclusiveMinimum": 0},
                    },
                    "max_requests_per_second": {
                        "label": "Max requests per second",
                        "description": "Client-side cap on requests to this Base URL with this key, "
                        "shared by every trigger in a triggerer and every hook in a worker process. "
                        "Empty: no cap (default).",
                        "schema": {"type": ["number", "null"], "minimum": 0, "exclusiveMinimum": 0},
                    },
                },
            }
        ],
    }

"""The Reve API client room: everything that speaks the Reve API and knows nothing of operators.

What it owns: connection settings (``settings``), the HTTP transport (``transport``), the response
envelope (``envelope``), the one retry policy (``retry``), the shared rate limit (``ratelimit``),
redaction of the key (``redact``), the model catalog and credit estimates (``catalog``), the
trigger's polling cadence (``polling``), and the clients made of them: ``base`` and its sync and
async siblings, ``ReveClient`` and ``AsyncReveClient``. It may import ``exceptions``, ``models``
and ``defaults``; never ``hooks``, ``operators``, ``results`` or ``mixins``.

The names below are the client's public surface. They load on first use (PEP 562), so importing
this package at DAG-parse time costs nothing and pulls in neither ``requests`` nor ``aiohttp``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow_provider_reve._lazy import lazy_exports

if TYPE_CHECKING:
    from airflow_provider_reve.client.async_client import AsyncReveClient
    from airflow_provider_reve.client.catalog import (
        DEFAULT_MODEL,
        MODELS,
        ModelSpec,
        estimate_credits,
        get_spec,
        is_synchronous,
        validate_request,
    )
    from airflow_provider_reve.client.envelope import parse_task_response
    from airflow_provider_reve.client.redact import Redactor
    from airflow_provider_reve.client.retry import (
        NO_RETRIES,
        RetryPolicy,
        backoff_seconds,
        is_permanent,
        is_retryable,
        parse_retry_after,
    )
    from airflow_provider_reve.client.settings import ConnectionSettings, settings_from_connection
    from airflow_provider_reve.client.sync_client import ReveClient

_HOME: dict[str, str] = {
    "AsyncReveClient": "async_client",
    "ReveClient": "sync_client",
    "DEFAULT_MODEL": "catalog",
    "MODELS": "catalog",
    "ModelSpec": "catalog",
    "estimate_credits": "catalog",
    "get_spec": "catalog",
    "is_synchronous": "catalog",
    "validate_request": "catalog",
    "parse_task_response": "envelope",
    "Redactor": "redact",
    "NO_RETRIES": "retry",
    "RetryPolicy": "retry",
    "backoff_seconds": "retry",
    "is_permanent": "retry",
    "is_retryable": "retry",
    "parse_retry_after": "retry",
    "ConnectionSettings": "settings",
    "settings_from_connection": "settings",
}

__all__ = [
    "DEFAULT_MODEL",
    "MODELS",
    "NO_RETRIES",
    "AsyncReveClient",
    "ConnectionSettings",
    "ModelSpec",
    "Redactor",
    "RetryPolicy",
    "ReveClient",
    "backoff_seconds",
    "estimate_credits",
    "get_spec",
    "is_permanent",
    "is_retryable",
    "is_synchronous",
    "parse_retry_after",
    "parse_task_response",
    "settings_from_connection",
    "validate_request",
]


__getattr__, __dir__ = lazy_exports(globals(), _HOME)

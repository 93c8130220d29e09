"""Turns a ``reve`` Airflow connection into the few settings a client needs.

Shared by the sync hook (worker) and the async hook (triggerer) so both read a connection
the same way: base URL from ``host``, API key from ``password``, our options from ``extra``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from airflow_provider_reve.exceptions import ReveConfigurationError

DEFAULT_BASE_URL = "https://reve2img.com"
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_READ_TIMEOUT = 60.0
# Extra keys we understand. Anything else in extra is ignored -- never sent as an HTTP header.
KNOWN_EXTRA_KEYS = frozenset({"allow_insecure_http", "connect_timeout", "read_timeout"})


@dataclass(frozen=True)
class ConnectionSettings:
    base_url: str
    api_key: str = field(repr=False)
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT

    @property
    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


def settings_from_connection(
    conn_id: str,
    host: str | None,
    port: int | None,
    password: str | None,
    extra: Mapping[str, Any],
) -> ConnectionSettings:
    """Validate a connection's fields; every error names the field to fix, never the key."""
    if not password or not password.strip():
        raise ReveConfigurationError(
            f"Connection {conn_id!r} has no API key: put the Reve key in the connection's "
            "'API key' (password) field."
        )
    base_url = _base_url(conn_id, host, port, _flag(extra.get("allow_insecure_http")))
    return ConnectionSettings(
        base_url=base_url,
        api_key=password.strip(),
        connect_timeout=_seconds(conn_id, extra, "connect_timeout", DEFAULT_CONNECT_TIMEOUT),
        read_timeout=_seconds(conn_id, extra, "read_timeout", DEFAULT_READ_TIMEOUT),
    )


def _base_url(conn_id: str, host: str | None, port: int | None, allow_insecure_http: bool) -> str:
    raw = (host or "").strip() or DEFAULT_BASE_URL
    if "://" not in raw:
        raw = f"https://{raw}"  # the API is https; a bare host name means https
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ReveConfigurationError(
            f"Connection {conn_id!r}: Base URL (host) {raw!r} is not an http(s) URL with a host name."
        )
    if parts.scheme == "http" and not _is_loopback(parts.hostname) and not allow_insecure_http:
        raise ReveConfigurationError(
            f"Connection {conn_id!r}: refusing plain http:// to {parts.hostname!r}, which would send "
            "the API key unencrypted. Use https://, or set the connection extra "
            '"allow_insecure_http": true if you really mean it.'
        )
    netloc = parts.netloc
    if port and not parts.port:
        netloc = f"{netloc}:{port}"
    return f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"


def _is_loopback(hostname: str) -> bool:
    if hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _seconds(conn_id: str, extra: Mapping[str, Any], name: str, default: float) -> float:
    value = extra.get(name)
    if value is None or value == "":
        return default
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = -1.0
    if not seconds > 0:
        raise ReveConfigurationError(
            f"Connection {conn_id!r}: extra {name!r} must be a positive number of seconds, got {value!r}."
        )
    return seconds

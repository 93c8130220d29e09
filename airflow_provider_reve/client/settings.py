"""Turns a ``reve`` Airflow connection into the few settings a client needs.

Shared by the sync hook (worker) and the async hook (triggerer) so both read a connection
the same way: base URL from ``host``, API key from ``password``, our options from ``extra``.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any
from urllib.parse import urlsplit

from airflow_provider_reve.client.redact import Redactor
from airflow_provider_reve.exceptions import ReveAPIError, ReveAuthenticationError, ReveConfigurationError

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_READ_TIMEOUT",
    "KNOWN_EXTRA_KEYS",
    "ConnectionSettings",
    "checked_seconds",
    "missing_connection_message",
    "name_the_connection",
    "settings_from_connection",
]

DEFAULT_BASE_URL = "https://reve2img.com"
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_READ_TIMEOUT = 60.0
# Extra keys we understand. Anything else in extra is ignored -- never sent as an HTTP header.
KNOWN_EXTRA_KEYS = frozenset(
    {"allow_insecure_http", "connect_timeout", "read_timeout", "max_requests_per_second"}
)


@dataclass(frozen=True)
class ConnectionSettings:
    """What a ``reve`` connection holds, validated (:func:`settings_from_connection`).

    Built by hand, the key is checked as the connection's is (one line of visible ASCII, not in
    the Base URL): a ``ReveConfigurationError`` names the field, never its value.

    :param base_url: the API's Base URL, without a trailing ``/``.
    :param api_key: the key, sent only as ``Authorization: Bearer``.
    :param connect_timeout: seconds to wait for a TCP/TLS connection.
    :param read_timeout: seconds to wait for an answer.
    :param max_requests_per_second: the client-side cap on requests; ``None``: no cap.
    """

    base_url: str
    api_key: str = field(repr=False)
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    #: A client-side cap shared by everything using this Base URL and key (``None``: no cap).
    max_requests_per_second: float | None = None

    def __post_init__(self) -> None:
        # The clients take settings built by hand too (docs/client.md), so the key is checked
        # here, where every client gets it: a key no header can carry would otherwise fail inside
        # requests/aiohttp, in an error that holds the whole Authorization header.
        field_name = "ConnectionSettings' api_key"
        if not isinstance(self.api_key, str) or not self.api_key:
            raise ReveConfigurationError(f"{field_name} is empty or not a string; put the Reve key there.")
        _check_api_key(self.api_key, field_name)
        if Redactor([self.api_key]).reveals_secret(self.base_url):
            raise ReveConfigurationError(
                "ConnectionSettings' Base URL contains the API key, or a part of it; the key goes in "
                "api_key only."
            )
        if not _is_plain_http_url(self.base_url):
            # It is shown in every connection error and in the clients' repr; requests would also
            # send a user:password@ as Basic auth, in place of the key.
            raise ReveConfigurationError(
                "ConnectionSettings' Base URL must be an http:// or https:// URL with a host name and "
                "no user:password@ (e.g. https://reve2img.com)."
            )
        checked_seconds("ConnectionSettings' connect_timeout", self.connect_timeout)
        checked_seconds("ConnectionSettings' read_timeout", self.read_timeout)

    @cached_property
    def redactor(self) -> Redactor:
        """Scrubs this key from what the server sends; built once per settings, not per answer."""
        return Redactor([self.api_key])

    @property
    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


def checked_seconds(name: str, value: Any) -> float:
    """``value`` as a timeout: a finite number of seconds above zero, checked before any request.

    A NaN read timeout passes ``requests``' own checks and fails only once the request was
    written -- for a submission, after it was paid for.

    :param name: what the value is, for the message (e.g. ``"timeout"``).
    :param value: the seconds to check.
    :return: the seconds, as a float.
    :raises ReveConfigurationError: not a finite number above zero; nothing was sent.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
        return float(value)
    raise ReveConfigurationError(f"{name} must be a finite number of seconds above zero, got {value!r}.")


def missing_connection_message(conn_id: str) -> str:
    """What to do when Airflow has no connection ``conn_id``: its type, and how to create it.

    Only a placeholder stands where the key goes: this text reaches task logs and the UI.

    :param conn_id: the connection id Airflow does not have.
    :return: the message.
    """
    env_name = f"AIRFLOW_CONN_{conn_id.upper()}"  # exactly the name Airflow looks up
    return (
        f"The Airflow connection {conn_id!r} isn't defined. Create it with type 'reve' (the UI's "
        "Admin -> Connections, type Reve, your key in the 'API key' field), or as an environment "
        f'variable of the workers and triggerers: {env_name}=\'{{"conn_type": "reve", '
        '"password": "<your Reve API key>"}\' (add "host" for another Base URL). See the docs\' '
        "Connection page (docs/connection.md)."
    )


def name_the_connection(error: ReveAPIError, conn_id: str) -> None:
    """Say which connection's key the API refused (401/403): the one place the user must fix.

    :param error: the refusal; its message gains the connection's id.
    :param conn_id: the connection whose key was refused.
    """
    if isinstance(error, ReveAuthenticationError):
        error.message = (
            f"{error.message} -- the key of Airflow connection {conn_id!r} was refused: put a "
            "valid Reve key in its 'API key' (password) field."
        )
        error.args = (error.message,)


def settings_from_connection(
    conn_id: str,
    host: str | None,
    port: int | None,
    password: str | None,
    extra: Mapping[str, Any],
) -> ConnectionSettings:
    """Validate a connection's fields; every error names the field to fix, never its value.

    Neither field is ever quoted back: a key pasted into the Base URL field, or a URL holding
    ``user:password@``, would otherwise end up in an error message, a task log or the UI.

    :param conn_id: the connection's id, for the messages.
    :param host: the Base URL field.
    :param port: the port field, used when the Base URL names none.
    :param password: the API key field.
    :param extra: the connection's extras.
    :return: the validated settings.
    :raises ReveConfigurationError: naming the field to fix.
    """
    api_key = _api_key(conn_id, password)
    base_url = _base_url(conn_id, host, port, _flag(extra.get("allow_insecure_http")))
    if Redactor([api_key]).reveals_secret(base_url):
        # The Base URL is printed in connection-error messages and logs; the key must not be.
        raise ReveConfigurationError(
            f"Connection {conn_id!r}: the Base URL (host) contains the API key, or a part of it. Put "
            'the key in the password field ("API key") only.'
        )
    return ConnectionSettings(
        base_url=base_url,
        api_key=api_key,
        connect_timeout=_seconds(conn_id, extra, "connect_timeout", DEFAULT_CONNECT_TIMEOUT),
        read_timeout=_seconds(conn_id, extra, "read_timeout", DEFAULT_READ_TIMEOUT),
        max_requests_per_second=_rate(conn_id, extra, "max_requests_per_second"),
    )


def _api_key(conn_id: str, password: str | None) -> str:
    key = (password or "").strip()  # a trailing newline from a pasted file is harmless: dropped
    if not key:
        raise ReveConfigurationError(
            f"Connection {conn_id!r} has no API key: put the Reve key in the connection's "
            "'API key' (password) field."
        )
    _check_api_key(key, f"Connection {conn_id!r}: the 'API key' (password) field")
    return key


def _is_plain_http_url(url: Any) -> bool:
    try:
        parts = urlsplit(url) if isinstance(url, str) else None
        return bool(
            parts and parts.scheme in ("http", "https") and parts.hostname and "@" not in parts.netloc
        )
    except ValueError:
        return False


def _check_api_key(key: str, field_name: str) -> None:
    """Refuse a key no HTTP header can carry, naming ``field_name``, never quoting the key."""
    # An HTTP header holds visible ASCII only. Anything else is a paste error (a line break, a
    # non-breaking space, a typographic dash) that requests/aiohttp would refuse -- or worse,
    # fail on half-way -- only when the request is being sent.
    if any(c in "\r\n" for c in key):
        raise ReveConfigurationError(f"{field_name} contains a line break; an API key is one line.")
    if any(c.isspace() for c in key):
        raise ReveConfigurationError(
            f"{field_name} contains a space or tab; put the key alone there (no 'Bearer ')."
        )
    if any(not " " < c < "\x7f" for c in key):
        raise ReveConfigurationError(
            f"{field_name} contains control or non-ASCII characters (e.g. a typographic quote or "
            "dash from a copy-paste); an API key is plain ASCII. Paste it again."
        )
    if "://" in key:
        raise ReveConfigurationError(
            f"{field_name} holds a URL. Are the 'API key' and 'Base URL' fields swapped?"
        )


def _base_url(conn_id: str, host: str | None, port: int | None, allow_insecure_http: bool) -> str:
    raw = (host or "").strip() or DEFAULT_BASE_URL
    if "://" not in raw:
        raw = f"https://{raw}"  # the API is https; a bare host name means https
    field_name = f"Connection {conn_id!r}: the 'Base URL' (host) field"
    try:
        parts = urlsplit(raw)
        hostname, url_port, has_userinfo = parts.hostname, parts.port, "@" in parts.netloc
    except ValueError:  # e.g. "https://[not-an-ip]" or a port that is not a number
        raise ReveConfigurationError(
            f"{field_name} is not a valid URL (expected e.g. https://reve2img.com)."
        ) from None
    if has_userinfo:
        raise ReveConfigurationError(
            f"{field_name} holds a user name or password (user:password@host); remove it: the "
            "Reve key goes in the 'API key' (password) field only."
        )
    if parts.scheme not in ("http", "https") or not hostname:
        raise ReveConfigurationError(
            f"{field_name} is not an http:// or https:// URL with a host name "
            "(expected e.g. https://reve2img.com)."
        )
    if not _plausible_host(hostname):
        # Typically the API key, pasted into the wrong field: never echo it, never resolve it.
        raise ReveConfigurationError(
            f"{field_name} does not hold a host name (expected e.g. https://reve2img.com, a name "
            "with a dot, localhost or an IP address). Are the 'API key' and 'Base URL' fields swapped?"
        )
    # From here on the host name is known to be one, so messages may name it.
    if parts.scheme == "http" and not _is_loopback(hostname) and not allow_insecure_http:
        raise ReveConfigurationError(
            f"Connection {conn_id!r}: refusing plain http:// to {hostname!r}, which would send "
            "the API key unencrypted. Use https://, or set the connection extra "
            '"allow_insecure_http": true if you really mean it.'
        )
    netloc = parts.netloc
    if port and not url_port:
        netloc = f"{netloc}:{port}"
    # Query and fragment are dropped: the endpoints' paths are appended to what is kept.
    return f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"


_LABEL = re.compile(r"(?!-)[\w-]{1,63}(?<!-)")


def _plausible_host(hostname: str) -> bool:
    """``localhost``, an IP address, or a dotted name of valid labels (IDN letters allowed)."""
    if hostname == "localhost" or _is_ip(hostname):
        return True
    labels = hostname.removesuffix(".").split(".")
    return len(hostname) <= 253 and len(labels) >= 2 and all(_LABEL.fullmatch(label) for label in labels)


def _is_ip(hostname: str) -> bool:
    try:
        ipaddress.ip_address(hostname)
    except ValueError:
        return False
    return True


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


def _rate(conn_id: str, extra: Mapping[str, Any], name: str) -> float | None:
    value = extra.get(name)
    if value is None or value == "":
        return None  # off: the default
    try:
        # true/false would pass float() as 1/0: a checkbox is not a rate.
        rate = float(value) if not isinstance(value, bool) else -1.0
    except (TypeError, ValueError):
        rate = -1.0
    if not (math.isfinite(rate) and rate > 0):
        raise ReveConfigurationError(
            f"Connection {conn_id!r}: extra {name!r} must be a positive number of requests per "
            f"second (e.g. 20), or empty for no limit; got {value!r}."
        )
    return rate

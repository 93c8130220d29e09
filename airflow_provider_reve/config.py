"""The provider's ``[reve]`` section of the Airflow configuration: the deployment-wide knobs.

Per-connection settings (Base URL, key, timeouts, ``max_requests_per_second``) live on the
connection; what is here is the same for every connection of a deployment. Each option is set in
``airflow.cfg`` (``[reve] max_in_flight = 32``) or by ``AIRFLOW__REVE__MAX_IN_FLIGHT=32``, and
``airflow config list --section reve`` shows them all with their defaults.

Invariants:

* :data:`OPTIONS` is the one declaration of each option (type, default, bounds, description):
  ``get_provider_info()`` builds the ``config`` section from it, and the readers below fall back
  to the same defaults, so a process that never loaded provider configuration reads what
  ``airflow config list`` shows.
* A value is read where it is used, when it is used (a trigger's start, a gallery request, a
  download's sweep) -- never at import time: the operators import this module at every DAG
  parse, so it imports nothing but the standard library until a value is read.
* A bad value (not a number, out of range) never stops a triggerer, a worker or the api-server:
  the default is used instead, and the value is named in one warning per process.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from typing import Any

__all__ = [
    "OPTIONS",
    "SECTION",
    "Option",
    "gallery_page_size",
    "max_in_flight",
    "media_tab_page_size",
    "progress_log_interval",
    "provider_config_section",
    "stale_spool_age",
]

SECTION = "reve"
VERSION_ADDED = "0.2.0"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Option:
    """One numeric option of ``[reve]``: its type, default and the range a value must be in.

    :param name: the option's name in ``[reve]``.
    :param type: ``int`` or ``float``.
    :param default: its value when unset (or set to a value out of range).
    :param minimum: the smallest value accepted.
    :param maximum: the largest value accepted; ``None``: no limit.
    :param description: what it does, for ``airflow config list``.
    """

    name: str
    type: type[int] | type[float]
    default: float
    minimum: float
    maximum: float | None
    description: str

    def bounds(self) -> str:
        """The values this option takes, in words: "an integer from 1 to 200".

        :return: the words.
        """
        kind = "an integer" if self.type is int else "a number"
        if self.maximum is None:
            return f"{kind} of at least {_text(self.minimum)}"
        return f"{kind} from {_text(self.minimum)} to {_text(self.maximum)}"

    def provider_info(self) -> dict[str, Any]:
        """This option as ``get_provider_info()["config"]`` declares it (Airflow's schema).

        :return: the option's declaration.
        """
        return {
            "description": f"{self.description} Takes {self.bounds()}; any other value is "
            "ignored with a warning (the default applies).",
            "version_added": VERSION_ADDED,
            "type": "integer" if self.type is int else "float",
            "example": _text(self.default),
            "default": _text(self.default),
        }


def _text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


MAX_IN_FLIGHT = Option(
    "max_in_flight",
    int,
    64,
    1,
    None,
    "Requests of one connection (Base URL and key) in flight at once on one event loop -- the "
    "triggerer runs all its triggers on one loop -- and the size of that loop's HTTP connection "
    "pool. Requests beyond it wait, cheaply, for an answer to free a place; one that cannot get a "
    "place before its trigger's deadline is not sent. Read when a loop first talks to a "
    "connection (restart the triggerer to apply a change).",
)
STALE_SPOOL_AGE = Option(
    "stale_spool_age",
    float,
    24 * 3600,
    3600,
    None,
    "Seconds after which a hidden download spool (.reve-*.part) that nothing writes to any more "
    "is deleted from a local destination folder by the next download into that folder: such a "
    "spool belongs to a try that was killed (SIGKILL, OOM, a lost host). Not below an hour, so "
    "a live download of a peer, written at least every read timeout, is never taken for one.",
)
GALLERY_PAGE_SIZE = Option(
    "gallery_page_size",
    int,
    48,
    1,
    200,
    "Cards per page of the Reve gallery when the link names no per_page.",
)
MEDIA_TAB_PAGE_SIZE = Option(
    "media_tab_page_size",
    int,
    48,
    1,
    200,
    "Cards per page of a task instance's 'Reve media' tab when the link names no per_page.",
)
PROGRESS_LOG_INTERVAL = Option(
    "progress_log_interval",
    float,
    30.0,
    0,
    None,
    "Seconds between the 'still IN_PROGRESS' lines a waiting task writes to its log (the "
    "trigger, the sensor and a non-deferrable operator); a change of status is logged at once. "
    "0: a line per status read.",
)

#: Every option of ``[reve]`` this module reads, declared once.
OPTIONS: tuple[Option, ...] = (
    MAX_IN_FLIGHT,
    STALE_SPOOL_AGE,
    GALLERY_PAGE_SIZE,
    MEDIA_TAB_PAGE_SIZE,
    PROGRESS_LOG_INTERVAL,
)

_warned: set[tuple[str, str]] = set()
_warned_lock = threading.Lock()


def _raw(option: Option) -> str | None:
    from airflow.providers.common.compat.sdk import conf

    value = conf.get(SECTION, option.name, fallback=None)
    return None if value is None else str(value)


def _parse(option: Option, raw: str) -> float | None:
    """``raw`` as the option's type when it is within bounds, else ``None``."""
    try:
        value: float = option.type(raw.strip())
    except ValueError:
        return None
    if not math.isfinite(value) or value < option.minimum:
        return None
    if option.maximum is not None and value > option.maximum:
        return None
    return value


def _read(option: Option) -> float:
    fallback = option.default
    try:
        raw = _raw(option)
    except Exception as error:  # a broken _cmd/_secret source: the deployment keeps running
        raw = f"<unreadable: {type(error).__name__}>"
    if raw is None or raw.strip() == "":
        return fallback
    value = _parse(option, raw)
    if value is not None:
        return value
    with _warned_lock:
        first = (option.name, raw) not in _warned
        _warned.add((option.name, raw))
    if first:
        log.warning(
            "[%s] %s = %r is not %s; using %s instead.",
            SECTION,
            option.name,
            raw,
            option.bounds(),
            _text(fallback),
        )
    return fallback


def max_in_flight() -> int:
    """``[reve] max_in_flight``: requests of one connection in flight at once on one loop.

    :return: the option's value, or its default when unset or out of range.
    """
    return int(_read(MAX_IN_FLIGHT))


def stale_spool_age() -> float:
    """``[reve] stale_spool_age``: seconds after which an untouched download spool is deleted.

    :return: the option's value, or its default when unset or out of range.
    """
    return _read(STALE_SPOOL_AGE)


def gallery_page_size() -> int:
    """``[reve] gallery_page_size``: cards per gallery page when the link names none.

    :return: the option's value, or its default when unset or out of range.
    """
    return int(_read(GALLERY_PAGE_SIZE))


def media_tab_page_size() -> int:
    """``[reve] media_tab_page_size``: cards per page of the "Reve media" tab.

    :return: the option's value, or its default when unset or out of range.
    """
    return int(_read(MEDIA_TAB_PAGE_SIZE))


def progress_log_interval() -> float:
    """``[reve] progress_log_interval``: seconds between "still IN_PROGRESS" log lines.

    :return: the option's value, or its default when unset or out of range.
    """
    return _read(PROGRESS_LOG_INTERVAL)


def provider_config_section() -> dict[str, Any]:
    """The ``[reve]`` options as ``get_provider_info()["config"]["reve"]["options"]`` lists them,
    except ``ledger_conn_id`` (a string, declared with the budgets).

    :return: the declarations, by option name.
    """
    return {option.name: option.provider_info() for option in OPTIONS}

"""When a budget's window starts and ends.

A window is ``day``, ``week`` (Monday to Monday) or ``month`` in a stated IANA time zone, or
``total`` (never resets). Boundaries are local midnights, so a day in a zone that changes its
clocks is 23 or 25 hours long, as people there count it. Each window is one ledger row keyed by
(budget, window start), so a reset is simply the first reservation landing in a new row.

Window starts are stored as ISO 8601 strings in UTC (``2026-12-07T05:00:00+00:00``), or the
literal ``"total"``: the same text on every host and database.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["TOTAL_WINDOW_START", "WINDOWS", "Window", "check_time_zone", "window_at"]

WINDOWS = ("day", "week", "month", "total")
TOTAL_WINDOW_START = "total"


@dataclass(frozen=True)
class Window:
    """One window of one budget: its key in the ledger and when it ends (``None``: never).

    :param start: the window's key in the ledger.
    :param resets_at: when it ends; ``None``: never.
    """

    start: str
    resets_at: datetime | None


def check_time_zone(name: str) -> ZoneInfo:
    """The zone named ``name``; ``ValueError`` naming it when it is not an IANA zone.

    :param name: an IANA zone name (``"Europe/Paris"``).
    :return: the zone.
    :raises ValueError: naming it, when it is not a zone.
    """
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise ValueError(
            f"unknown time zone {name!r}: use an IANA name such as 'Europe/Paris' or 'UTC'"
        ) from error


def window_at(window: str, time_zone: str, now: datetime) -> Window:
    """The window of kind ``window`` in ``time_zone`` that contains ``now`` (an aware datetime).

    :param window: ``"day"``, ``"week"``, ``"month"`` or ``"total"``.
    :param time_zone: the IANA zone the windows start in.
    :param now: an aware datetime.
    :return: the window.
    """
    if window == "total":
        return Window(TOTAL_WINDOW_START, None)
    if window not in WINDOWS:
        raise ValueError(f"window must be one of {WINDOWS}, got {window!r}")
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    zone = check_time_zone(time_zone)
    local = now.astimezone(zone)
    day = local.date()
    if window == "day":
        first, following = day, day + timedelta(days=1)
    elif window == "week":
        first = day - timedelta(days=day.weekday())
        following = first + timedelta(days=7)
    else:
        first = day.replace(day=1)
        following = (first + timedelta(days=32)).replace(day=1)
    start = datetime(first.year, first.month, first.day, tzinfo=zone).astimezone(timezone.utc)
    end = datetime(following.year, following.month, following.day, tzinfo=zone).astimezone(timezone.utc)
    return Window(start.isoformat(), end)

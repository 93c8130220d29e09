"""How long a deferred wait may last: the one rule the operator and the sensor share.

Airflow 3.3 does not apply ``execution_timeout`` while a task is deferred (the task runner
times only ``execute`` and each resumed method), so a deferred wait would otherwise run for the
whole ``timeout`` even when the user asked for a shorter ``execution_timeout``. We bound it
ourselves: the wait ends at whichever comes first,

* ``timeout`` seconds from now, or
* what is left of ``execution_timeout``, counted from the start of this try.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

__all__ = [
    "DEFER_TIMEOUT_GRACE",
    "deferral_budget",
    "positive_seconds",
]

#: Added to Airflow's own deferral timeout: the trigger ends the wait at its deadline, and
#: Airflow's timeout is only the safety net for a triggerer that is down, so it fires later.
DEFER_TIMEOUT_GRACE = timedelta(minutes=2)


def positive_seconds(value: float | timedelta, name: str) -> float:
    """``value`` (seconds or a timedelta) as seconds, refused unless positive (checked at parse).

    :param value: seconds, or a ``timedelta``.
    :param name: the argument's name, for the error.
    :return: the seconds.
    :raises ValueError: zero or negative.
    """
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if seconds <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return seconds


def deferral_budget(
    timeout_s: float,
    execution_timeout: timedelta | None,
    started_at: datetime | float | None,
    *,
    now: float | None = None,
) -> float:
    """Seconds, from ``now``, that a deferred wait may last; never negative.

    :param timeout_s: the wait's own limit (a sensor's or operator's ``timeout``), counted from now.
    :param execution_timeout: the task's ``execution_timeout``; ``None`` means no second limit.
    :param started_at: when this try started: ``context["ti"].start_date`` (Airflow keeps it
        across deferrals of one try), or a UNIX time; ``None`` means "just now".
    :param now: the current UNIX time (for tests); defaults to ``time.time()``.
    :return: seconds.
    """
    now = time.time() if now is None else now
    budget = max(0.0, float(timeout_s))
    if execution_timeout is None:
        return budget
    if started_at is None:
        start = now
    elif isinstance(started_at, datetime):
        # Airflow's dates are timezone-aware; a naive one can only mean UTC.
        aware = started_at if started_at.tzinfo else started_at.replace(tzinfo=timezone.utc)
        start = aware.timestamp()
    else:
        start = float(started_at)
    spent = max(0.0, now - start)
    return max(0.0, min(budget, execution_timeout.total_seconds() - spent))

"""When a ``ReveTaskTrigger`` reads its task: the one rule (the README's trigger section states it).

* **First read**: at a random moment within one ``poll_interval`` after whichever comes later --
  one ``poll_interval`` after the trigger started, or ``not_before``. Random, so that a triggerer
  that restarts with thousands of triggers (or a fan-out that deferred in the same second) spreads
  their reads over an interval instead of sending them all at once; never sooner than one
  interval after the trigger started, so the read that preceded the deferral is not followed
  by a faster one.
* **Then**: each read comes one *current interval* after the previous answer arrived, so the gap
  between two reads of a task is never shorter than the interval in force.
* **Current interval**: ``poll_interval`` for the first :data:`LONG_WAIT_AFTER` seconds of the
  wait; after that ``max(poll_interval, 5 s)`` -- the slow end of the API's "poll every 2-5 s".
  A task that is still running after a minute is a long one (a video); reading it every 5 s
  instead of every 3 s costs 68 reads over 5 minutes instead of 100, and its end is still seen
  within one current interval.
* The wait is counted from ``not_before`` when that is earlier than the trigger's start (a
  triggerer restart resumes a long wait thinned out), else from the start.

Transient errors back off from the current interval (see ``ReveTaskTrigger._error_backoff``);
a 429 also pauses every trigger of the connection (``client.ratelimit``). Deadlines cap every wait.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = [
    "LONG_WAIT_AFTER",
    "LONG_WAIT_INTERVAL",
    "current_interval",
    "first_read_at",
    "wait_origin",
]

#: Seconds of waiting after which a task is read less often.
LONG_WAIT_AFTER = 60.0
#: The slowest reading the API's guidance asks for ("poll every 2-5 seconds").
LONG_WAIT_INTERVAL = 5.0


def current_interval(
    poll_interval: float,
    waited: float,
    *,
    long_wait_after: float = LONG_WAIT_AFTER,
    long_wait_interval: float = LONG_WAIT_INTERVAL,
) -> float:
    """Seconds between reads after ``waited`` seconds of waiting; never below ``poll_interval``.

    :param poll_interval: the interval the task asked for, in seconds.
    :param waited: seconds since the wait began (:func:`wait_origin`).
    :param long_wait_after: seconds after which the wait counts as long.
    :param long_wait_interval: the interval of a long wait, if longer than ``poll_interval``.
    :return: the interval in force, in seconds.
    """
    if waited < long_wait_after:
        return poll_interval
    return max(poll_interval, long_wait_interval)


def first_read_at(
    now: float, poll_interval: float, not_before: float | None, rng: Callable[[], float]
) -> float:
    """The (UNIX) time of a trigger's first read, for a trigger starting at ``now``.

    :param now: the (UNIX) time the trigger started.
    :param poll_interval: the interval the task asked for, in seconds.
    :param not_before: the (UNIX) time before which the task is not read, if any.
    :param rng: returns a random number in [0, 1): where in the interval the read falls.
    :return: the (UNIX) time of the first read.
    """
    earliest = now + poll_interval
    if not_before is not None:
        earliest = max(earliest, not_before)
    return earliest + rng() * poll_interval


def wait_origin(now: float, not_before: float | None) -> float:
    """The (UNIX) time the wait is counted from, for a trigger starting at ``now``.

    :param now: the (UNIX) time the trigger started.
    :param not_before: the (UNIX) time before which the task is not read, if any.
    :return: the earlier of the two.
    """
    return now if not_before is None else min(now, not_before)

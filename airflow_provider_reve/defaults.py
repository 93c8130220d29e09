"""Constants the DAG-facing modules need at import time, in a module that imports nothing.

Operators, the sensor and ``@task.reve`` are imported by every scheduler parse of every DAG
file that uses them; the hook (aiohttp, requests) and the trigger load only when a task runs.
Their defaults live here so that a signature such as ``poll_interval=DEFAULT_POLL_INTERVAL``
costs nothing.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_CONN_ID",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MODEL",
    "DEFAULT_POLL_INTERVAL",
    "ON_CONTENT_POLICY_CHOICES",
    "OUTCOMES",
    "OUTCOME_ERROR",
    "OUTCOME_FAILED",
    "OUTCOME_SUCCESS",
    "OUTCOME_TIMEOUT",
    "PROGRESS_LOG_INTERVAL",
    "check_max_bytes",
]

DEFAULT_CONN_ID = "reve_default"
#: The model ``ReveGenerateOperator`` uses when none is given (``client.catalog`` re-exports it).
DEFAULT_MODEL = "reve-2.0"
#: What ``on_content_policy_violation`` accepts (``mixins.outcomes`` acts on it).
ON_CONTENT_POLICY_CHOICES = ("fail", "skip")
#: Seconds between status polls: the API asks for one poll every 2-5 s.
DEFAULT_POLL_INTERVAL = 3.0
#: While a task waits, at most one "still IN_PROGRESS" line per this many seconds; a change of
#: status is logged at once. A video takes minutes: a line per poll would bury the task log.
PROGRESS_LOG_INTERVAL = 30.0
#: 1 GiB: far above any image or short video the API returns, far below a full disk.
DEFAULT_MAX_BYTES = 1024**3

# What a ReveTaskTrigger event says happened (its ``outcome``).
OUTCOME_SUCCESS = "success"
OUTCOME_FAILED = "failed"
OUTCOME_TIMEOUT = "timeout"
OUTCOME_ERROR = "error"
OUTCOMES = frozenset({OUTCOME_SUCCESS, OUTCOME_FAILED, OUTCOME_TIMEOUT, OUTCOME_ERROR})


def check_max_bytes(value: object, name: str) -> int:
    """For ``__init__`` (which runs at every DAG parse): a positive ``int``; a larger file is refused.

    :param value: the ``max_bytes`` argument.
    :param name: the argument's name, for the message.
    :return: the value.
    :raises ValueError: for anything but a positive ``int``.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer (bytes), got {value!r}")
    return value

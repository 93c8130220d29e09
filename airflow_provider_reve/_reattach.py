"""Remembers which Reve task a task instance submitted, so a retry re-attaches instead of paying again.

XCom is cleared before a retry, so the id lives in ``context["task_state_store"]`` (Airflow
3.3+), which is scoped to (dag, run, task, map index) and survives retries. The entry is
removed once the operator has handed its result on: a task the user *clears* to run again
then generates afresh, while a task that *crashed* finds its paid task again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from typing import Any

STATE_KEY = "reve_submitted_task"
BACKOFF_KEY = "reve_submit_backoff"

_warned_unavailable = False


def request_fingerprint(model: str, params: Mapping[str, Any]) -> str:
    """A short hash of the request, so a retry re-attaches only to the request it would send."""
    canonical = json.dumps({"model": model, **params}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


class SubmittedTaskMemory:
    """Reads and writes the submitted Reve task id in the task instance's state store."""

    def __init__(self, context: Mapping[str, Any], log: logging.Logger | Any) -> None:
        self._store = context.get("task_state_store")
        self._log = log
        if self._store is None:
            global _warned_unavailable
            if not _warned_unavailable:
                _warned_unavailable = True
                log.warning(
                    "task_state_store is not available (it needs Airflow 3.3+): if this worker "
                    "crashes after submitting, a retry cannot re-attach and will submit again."
                )

    @property
    def available(self) -> bool:
        return self._store is not None

    def recall(self, fingerprint: str) -> str | None:
        """The Reve task id submitted by an earlier try of this task instance, if any."""
        if self._store is None:
            return None
        entry = self._store.get(STATE_KEY)
        if not isinstance(entry, dict) or not isinstance(entry.get("task_id"), str):
            return None
        if entry.get("fingerprint") != fingerprint:
            self._log.warning(
                "An earlier try submitted Reve task %s for a different request; not re-attaching.",
                entry["task_id"],
            )
            return None
        return entry["task_id"]

    def remember(self, task_id: str, fingerprint: str) -> None:
        if self._store is not None:
            self._store.set(STATE_KEY, {"task_id": task_id, "fingerprint": fingerprint})

    def forget(self) -> None:
        if self._store is not None:
            self._store.delete(STATE_KEY)

    # While the account answers TOO_MANY_TASKS the operator defers on a timer. Where defer()'s
    # kwargs do not come back on resume (Airflow 3.3's dag.test()), the back-off state -- which
    # attempt, since when -- is read from here instead, so max_submit_wait still holds.
    def remember_backoff(self, attempt: int, first_refusal: float) -> None:
        if self._store is not None:
            self._store.set(BACKOFF_KEY, {"attempt": attempt, "first_refusal": first_refusal})

    def recall_backoff(self) -> tuple[int, float] | None:
        entry = self._store.get(BACKOFF_KEY) if self._store is not None else None
        if not isinstance(entry, dict):
            return None
        attempt, first_refusal = entry.get("attempt"), entry.get("first_refusal")
        if not isinstance(attempt, int) or not isinstance(first_refusal, (int, float)):
            return None
        return attempt, float(first_refusal)

    def forget_backoff(self) -> None:
        if self._store is not None:
            self._store.delete(BACKOFF_KEY)

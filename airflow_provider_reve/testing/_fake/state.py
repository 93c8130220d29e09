"""Everything the fake remembers -- keys, balances, tasks, the ledger, fault rules, counters,
settings -- and the Python methods that read and steer it. Thread-safe: the event loop's thread
serves requests while the test's thread calls these methods."""

from __future__ import annotations

import copy
import logging
import math
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_reve.testing._fake import models
from airflow_provider_reve.testing._fake.contract import (
    DEFAULT_DETAIL,
    FAILED,
    IN_PROGRESS,
    SUCCESS,
    ApiError,
)
from airflow_provider_reve.testing._fake.faults import FILES, GENERATE, STATUS, Fault, retry_after_header
from airflow_provider_reve.testing._media import IMAGE_FORMATS

log = logging.getLogger("airflow_provider_reve.testing.fake_server")

DEFAULT_API_KEY = "sk-fake-reve-test-key"
DEFAULT_CREDITS = 1_000_000
#: How many API requests :meth:`FakeState.request_log` remembers (the oldest are forgotten).
REQUEST_LOG_SIZE = 100_000

#: Every setting, with its default: off unless a test turns it on.
SETTING_DEFAULTS: Mapping[str, Any] = {
    "async_seconds": 2.0,
    "max_in_flight": None,
    "rate_limit": None,
    "rate_window": 1.0,
    "rate_limit_retry_after": None,
    "result_url_ttl": None,
    "header_faults": False,
}


def check_setting(name: str, value: Any) -> Any:
    """The value to store for setting ``name``, or ``ValueError``."""
    if name not in SETTING_DEFAULTS:
        raise ValueError(f"unknown setting {name!r}; use one of {sorted(SETTING_DEFAULTS)}")
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    is_whole = isinstance(value, int) and not isinstance(value, bool)
    if name == "async_seconds" and not (is_number and value >= 0):
        raise ValueError(f"async_seconds must be a number >= 0, got {value!r}")
    if name in ("max_in_flight", "rate_limit") and value is not None and not (is_whole and value >= 1):
        raise ValueError(f"{name} must be a whole number >= 1 or None, got {value!r}")
    if name == "rate_window" and not (is_number and value > 0):
        raise ValueError(f"rate_window must be a number of seconds > 0, got {value!r}")
    if name == "result_url_ttl" and value is not None and not (is_number and value >= 0):
        raise ValueError(f"result_url_ttl must be a number of seconds >= 0 or None, got {value!r}")
    if name == "rate_limit_retry_after" and not (value is None or is_number or isinstance(value, str)):
        raise ValueError(f"rate_limit_retry_after must be seconds, a string or None, got {value!r}")
    if name == "header_faults" and not isinstance(value, bool):
        raise ValueError(f"header_faults must be true or false, got {value!r}")
    return float(value) if name in ("async_seconds", "rate_window") else value


@dataclass
class Task:
    task_id: str
    key: str
    model: str
    params: dict[str, Any]
    cost: int
    synchronous: bool
    is_video: bool
    file_names: list[str]
    base_url: str
    created: float = field(default_factory=time.monotonic)
    created_at: float = field(default_factory=time.time)
    status: str = IN_PROGRESS
    finished: float | None = None
    fail_with: tuple[str, str] | None = None
    error: dict[str, str] | None = None

    @property
    def result_urls(self) -> list[str]:
        if self.status != SUCCESS:
            return []
        return [f"{self.base_url}/files/{self.task_id}/{name}" for name in self.file_names]

    def data(self) -> dict[str, Any]:
        """The ``data`` object of the generate/status answer."""
        data: dict[str, Any] = {"task_id": self.task_id, "status": self.status}
        if self.status == SUCCESS:
            data["consumed_credits"] = self.cost
            data["response"] = {"resultUrls": self.result_urls}
        elif self.status == FAILED:
            data["error"] = dict(self.error or {})
        return data

    def info(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "key": self.key,
            "model": self.model,
            "params": copy.deepcopy(self.params),
            "status": self.status,
            "cost": self.cost,
            "consumed_credits": self.cost if self.status == SUCCESS else None,
            "result_urls": self.result_urls,
            "error": dict(self.error) if self.error else None,
            "created_at": self.created_at,
        }


def _check_key(key: Any, credits: Any) -> None:
    if not isinstance(key, str) or not key:
        raise ValueError("an API key must be a non-empty string")
    if isinstance(credits, bool) or not isinstance(credits, int) or credits < 0:
        raise ValueError(f"credits must be a whole number >= 0, got {credits!r}")


class FakeState:
    """The fake's memory and its Python control methods (inherited by ``FakeReveServer``)."""

    def __init__(self, api_keys: Mapping[str, int] | None, settings: Mapping[str, Any]) -> None:
        self._lock = threading.Lock()
        self._starting_balances: dict[str, int] = dict(
            api_keys if api_keys is not None else {DEFAULT_API_KEY: DEFAULT_CREDITS}
        )
        for key, credits in self._starting_balances.items():
            _check_key(key, credits)
        initial = dict(SETTING_DEFAULTS)
        initial.update({name: check_setting(name, value) for name, value in settings.items()})
        self._initial_settings = initial
        self._settings: dict[str, Any] = {}
        self._balances: dict[str, int] = {}
        self._tasks: dict[str, Task] = {}
        self._ledger: list[dict[str, Any]] = []
        self._faults: list[Fault] = []
        self._requests: dict[str, int] = {}
        self._connections: set[tuple[str, int]] = set()
        self._hits: dict[str, deque[float]] = {}
        self._log: deque[tuple[float, str, str | None]] = deque(maxlen=REQUEST_LOG_SIZE)
        self._submissions = 0
        self._reset_state()

    def _result_base_url(self) -> str:
        """Where result URLs point: the address the server listens on (never a request's Host)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ faults

    def add_fault(self, fault: Fault | None = None, /, **fields_: Any) -> Fault:
        """Add a fault rule: ``add_fault(Fault(...))`` or ``add_fault(kind=..., endpoint=..., ...)``.

        Returns the stored rule (a copy; its ``times`` counts down as it matches).
        """
        if fault is None:
            fault = Fault(**fields_)
        elif fields_:
            raise TypeError("pass either a Fault or its fields, not both")
        rule = copy.copy(fault)
        with self._lock:
            self._faults.append(rule)
        return rule

    def clear_faults(self) -> int:
        """Remove every fault rule; returns how many were pending."""
        with self._lock:
            count = len(self._faults)
            self._faults.clear()
        return count

    @property
    def faults(self) -> list[Fault]:
        """The pending fault rules (copies), in matching order."""
        with self._lock:
            return [copy.copy(rule) for rule in self._faults]

    def match_fault(self, endpoint: str, model: str | None, header: str | None) -> Fault | None:
        """The fault for one request: its ``X-Fake-Fault`` header when header faults are on
        (``ValueError`` if malformed), else the first matching rule, used up by one."""
        if header and self._settings["header_faults"]:
            return Fault.from_header(header, endpoint)
        with self._lock:
            for index, rule in enumerate(self._faults):
                if not rule.applies_to(endpoint) or (rule.model is not None and rule.model != model):
                    continue
                if rule.probability < 1 and random.random() >= rule.probability:
                    continue  # spared: a probabilistic rule only uses up ``times`` when it hits
                if rule.times is not None:
                    rule.times -= 1
                    if rule.times <= 0:
                        del self._faults[index]
                log.debug("fault %s applies to a %s request", rule.kind, endpoint)
                return copy.copy(rule)
        return None

    # ------------------------------------------------------------------ tasks by hand

    def finish_task(self, task_id: str) -> dict[str, Any]:
        """Make an ``IN_PROGRESS`` task ``SUCCESS`` now. ``KeyError`` if unknown, ``ValueError`` if FAILED."""
        with self._lock:
            task = self._task(task_id)
            self._advance(task, time.monotonic())
            if task.status == FAILED:
                raise ValueError(f"task {task_id} already FAILED")
            if task.status == IN_PROGRESS:
                task.status, task.finished = SUCCESS, time.monotonic()
            return task.info()

    def fail_task(
        self, task_id: str, code: str = "GENERATION_FAILED", message: str | None = None
    ) -> dict[str, Any]:
        """Make an ``IN_PROGRESS`` task ``FAILED`` now and refund it. ``ValueError`` if it succeeded."""
        with self._lock:
            task = self._task(task_id)
            self._advance(task, time.monotonic())
            if task.status == SUCCESS:
                raise ValueError(f"task {task_id} already SUCCEEDED")
            if task.status == IN_PROGRESS:
                self._fail(task, code, message or DEFAULT_DETAIL.get(code, code))
            return task.info()

    # ------------------------------------------------------------------ settings

    def configure(self, **settings: Any) -> dict[str, Any]:
        """Change settings (see ``SETTING_DEFAULTS``); returns them all. Applies at once, also to
        tasks already running. ``ValueError`` (and nothing changed) for a bad name or value."""
        checked = {name: check_setting(name, value) for name, value in settings.items()}
        with self._lock:
            self._settings.update(checked)
            return dict(self._settings)

    @property
    def settings(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._settings)

    def set_async_seconds(self, seconds: float) -> None:
        """Change how long asynchronous tasks take; applies to tasks already in progress too."""
        self.configure(async_seconds=seconds)

    @property
    def async_seconds(self) -> float:
        return float(self._settings["async_seconds"])

    def set_max_in_flight(self, limit: int | None) -> None:
        """Change the per-key limit of tasks ``IN_PROGRESS`` (``None``: no limit)."""
        self.configure(max_in_flight=limit)

    @property
    def max_in_flight(self) -> int | None:
        return self._settings["max_in_flight"]

    # ------------------------------------------------------------------ keys

    def add_key(self, key: str, credits: int) -> None:
        """Add an API key (or set an existing key's balance); :meth:`reset` restores this balance."""
        _check_key(key, credits)
        with self._lock:
            self._starting_balances[key] = credits
            self._balances[key] = credits

    def balance(self, key: str = DEFAULT_API_KEY) -> int:
        """The key's credit balance now. ``KeyError`` for an unknown key."""
        with self._lock:
            return self._balances[key]

    def reset(self) -> None:
        """Forget tasks, counters, ledger and faults; restore every key's starting balance and the
        constructor's settings. Keys added with :meth:`add_key` stay."""
        with self._lock:
            self._reset_state()

    def _reset_state(self) -> None:
        self._balances = dict(self._starting_balances)
        self._tasks.clear()
        self._ledger.clear()
        self._faults.clear()
        self._requests = {"total": 0, GENERATE: 0, STATUS: 0, FILES: 0}
        self._connections.clear()
        self._hits.clear()
        self._log.clear()
        self._submissions = 0
        self._settings = dict(self._initial_settings)

    # ------------------------------------------------------------------ counters

    def stats(self) -> dict[str, Any]:
        """A JSON-ready snapshot.

        ``requests``: ``{"total", "generate", "status", "files"}`` counts (the control API is not
        counted); ``submissions``: tasks created; ``connections``: distinct TCP connections that
        carried at least one generate/status request; ``tasks_by_status``; ``ledger``: one entry per
        charge (negative ``delta``) and refund (positive), ``{"key", "task_id", "delta", "reason"}``;
        ``balances``; ``faults`` (pending rules); ``settings``.
        """
        with self._lock:
            self._advance_all()
            by_status = {IN_PROGRESS: 0, SUCCESS: 0, FAILED: 0}
            for task in self._tasks.values():
                by_status[task.status] += 1
            return {
                "requests": dict(self._requests),
                "submissions": self._submissions,
                "connections": len(self._connections),
                "tasks_by_status": by_status,
                "ledger": [dict(entry) for entry in self._ledger],
                "balances": dict(self._balances),
                "faults": [rule.to_dict() for rule in self._faults],
                "settings": dict(self._settings),
            }

    @property
    def submissions(self) -> int:
        """How many tasks were created (charged), whatever the client saw."""
        with self._lock:
            return self._submissions

    def requests_to(self, endpoint: str) -> int:
        """Requests received by ``"generate"``, ``"status"``, ``"files"`` or ``"total"``."""
        with self._lock:
            if endpoint not in self._requests:
                raise ValueError(f"unknown endpoint {endpoint!r}; use one of {sorted(self._requests)}")
            return self._requests[endpoint]

    def request_log(self, endpoint: str | None = None) -> list[dict[str, Any]]:
        """The API requests received, oldest first (at most ``REQUEST_LOG_SIZE``), as
        ``{"at", "endpoint", "task_id"}``: ``at`` is this process's ``time.monotonic()`` when the
        request arrived (comparable with a test's own clock when the fake runs in-process),
        ``task_id`` the polled task (status requests only). ``endpoint`` filters."""
        with self._lock:
            entries = list(self._log)
        return [
            {"at": at, "endpoint": name, "task_id": task_id}
            for at, name, task_id in entries
            if endpoint is None or name == endpoint
        ]

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._connections)

    @property
    def ledger(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(entry) for entry in self._ledger]

    @property
    def tasks(self) -> dict[str, dict[str, Any]]:
        """task_id -> ``{"task_id", "key", "model", "params", "status", "cost", "consumed_credits",
        "result_urls", "error", "created_at"}``, in creation order."""
        with self._lock:
            self._advance_all()
            return {task_id: task.info() for task_id, task in self._tasks.items()}

    # ------------------------------------------------------------------ used by the request handlers

    def count(self, endpoint: str, connection: tuple[str, int] | None, task_id: str | None = None) -> None:
        with self._lock:
            if endpoint != FILES:
                self._log.append((time.monotonic(), endpoint, task_id))
            self._requests["total"] += 1
            self._requests[endpoint] += 1
            if connection is not None:
                self._connections.add(connection)

    def task_model(self, task_id: str) -> str | None:
        with self._lock:
            task = self._tasks.get(task_id)
            return task.model if task is not None else None

    def admit(self, authorization: str) -> str:
        """The API key of a request's ``Authorization`` header, after the rate limit; or ApiError."""
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        with self._lock:
            if scheme.lower() != "bearer" or not token or token not in self._balances:
                raise ApiError("INVALID_API_KEY")
            limit, window = self._settings["rate_limit"], self._settings["rate_window"]
            if limit is not None:
                now = time.monotonic()
                hits = self._hits.setdefault(token, deque())
                while hits and hits[0] <= now - window:
                    hits.popleft()
                if len(hits) >= limit:
                    wait = self._settings["rate_limit_retry_after"]
                    if wait is None:
                        wait = max(1, math.ceil(hits[0] + window - now))
                    raise ApiError("RATE_LIMITED", headers=retry_after_header(wait))
                hits.append(now)
        return token

    def create_task(self, key: str, body: Any, fault: Fault | None) -> tuple[dict[str, Any], int]:
        """Validate, charge and create one task; returns its ``data`` and price, or raises ApiError."""
        model, params = models.validate(body)
        cost = models.price(model.model_id, params)
        fail_with = None
        if fault is not None and fault.kind == "fail_task" and fault.code:
            fail_with = (fault.code, fault.detail or DEFAULT_DETAIL.get(fault.code, fault.code))
        if model.kind == "video":
            names = ["0.mp4"]
        else:
            extension = IMAGE_FORMATS[params.get("output_format") or "png"][1]
            names = [f"{index}.{extension}" for index in range(params.get("num_images") or 1)]
        base_url = self._result_base_url()
        with self._lock:
            now = time.monotonic()
            limit = self._settings["max_in_flight"]
            if limit is not None:
                mine = [task for task in self._tasks.values() if task.key == key]
                for task in mine:
                    self._advance(task, now)
                if sum(task.status == IN_PROGRESS for task in mine) >= limit:
                    raise ApiError("TOO_MANY_TASKS")
            if self._balances[key] < cost:
                raise ApiError(
                    "INSUFFICIENT_CREDITS",
                    f"This request costs {cost} credits; the balance is {self._balances[key]}.",
                )
            task = Task(
                task_id=uuid.uuid4().hex,
                key=key,
                model=model.model_id,
                params=copy.deepcopy(params),
                cost=cost,
                synchronous=model.synchronous and not (fault is not None and fault.kind == "in_progress"),
                is_video=model.kind == "video",
                file_names=names,
                base_url=base_url,
                fail_with=fail_with,
            )
            self._tasks[task.task_id] = task
            self._submissions += 1
            self._balances[key] -= cost
            self._ledger.append({"key": key, "task_id": task.task_id, "delta": -cost, "reason": "charge"})
            self._advance(task, now)
            log.debug("created task %s (%s, %d credits, %s)", task.task_id, task.model, cost, task.status)
            return task.data(), cost

    def task_status(self, key: str, task_id: str) -> tuple[dict[str, Any], int]:
        """The ``data`` of a status answer and the task's price, or ApiError."""
        if not task_id:
            raise ApiError("INVALID_PARAMETER", "task_id is required.")
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None or task.key != key:
                raise ApiError("TASK_NOT_FOUND")
            self._advance(task, time.monotonic())
            return task.data(), task.cost

    def result_file(self, task_id: str, name: str) -> tuple[str, dict[str, Any]] | None:
        """``("ok" | "expired", {prompt, params, index, is_video})`` for a result file, or None."""
        with self._lock:
            task = self._tasks.get(task_id)
            if task is not None:
                self._advance(task, time.monotonic())
            if task is None or task.status != SUCCESS or name not in task.file_names:
                return None
            ttl = self._settings["result_url_ttl"]
            expired = ttl is not None and time.monotonic() - (task.finished or task.created) > ttl
            facts = {
                "prompt": str(task.params.get("prompt") or ""),
                "params": copy.deepcopy(task.params),
                "index": task.file_names.index(name),
                "is_video": task.is_video,
            }
            return ("expired" if expired else "ok"), facts

    # ------------------------------------------------------------------ internals (call with the lock)

    def _task(self, task_id: str) -> Task:
        try:
            return self._tasks[task_id]
        except KeyError:
            raise KeyError(f"no task {task_id!r}") from None

    def _advance(self, task: Task, now: float) -> None:
        if task.status != IN_PROGRESS:
            return
        if task.synchronous or now - task.created >= self._settings["async_seconds"]:
            if task.fail_with is not None:
                self._fail(task, *task.fail_with)
            else:
                task.status, task.finished = SUCCESS, now

    def _advance_all(self) -> None:
        now = time.monotonic()
        for task in self._tasks.values():
            self._advance(task, now)

    def _fail(self, task: Task, code: str, message: str) -> None:
        task.status = FAILED
        task.error = {"code": code, "message": message}
        self._balances[task.key] = self._balances.get(task.key, 0) + task.cost
        self._ledger.append(
            {"key": task.key, "task_id": task.task_id, "delta": task.cost, "reason": "refund"}
        )

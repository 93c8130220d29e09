"""An offline fake of the Reve API, for testing your DAGs without network, keys or credits.

It answers like the real API (see the provider's API reference):

* ``POST /api/v1/generate`` and ``GET /api/v1/status?task_id=...`` with ``Authorization: Bearer <key>``;
  the ``{"code": 200, "message": "success", "data": {...}}`` envelope; errors as
  ``{"code": <http>, "message": "<MACHINE_CODE>", "detail": "..."}`` with the same HTTP status.
* Credits priced from the provider's model catalog (a flat ``FALLBACK_CREDITS`` when the price is
  unknown), deducted when a task is created and refunded when it ends ``FAILED``.
* ``reve-2.0`` is synchronous (``SUCCESS`` at once); every other model is ``IN_PROGRESS`` until
  ``async_seconds`` have passed since its creation.
* Result URLs point back at the server (``/files/<task_id>/<n>.png`` or ``.mp4``, no auth) and
  serve real bytes: a PNG any viewer opens, and a structurally valid (not playable) MP4. Images are
  always PNG, named ``.png`` and served as ``image/png``, even when ``output_format`` asks for
  ``jpeg`` or ``webp``. ``num_images`` gives that many URLs; a video gives one.

Use it in-process::

    from airflow_provider_reve.testing import DEFAULT_API_KEY, FakeReveServer

    with FakeReveServer(async_seconds=0.2) as server:
        monkeypatch.setenv(
            "AIRFLOW_CONN_REVE_DEFAULT",
            json.dumps({"conn_type": "reve", "host": server.url, "password": DEFAULT_API_KEY}),
        )
        dag.test()
        assert server.submissions == 1
        assert server.stats()["tasks_by_status"]["SUCCESS"] == 1

(the ``fake_reve_server`` / ``reve_connection_env`` pytest fixtures do exactly that), or as a
process that real Airflow workers reach::

    python -m airflow_provider_reve.testing.fake_server --port 8765 --api-key sk-test --credits 500

It prints one line, ``Fake Reve API listening on http://127.0.0.1:8765``, and serves until SIGTERM or
SIGINT. Options: ``--host`` (default 127.0.0.1), ``--port`` (default 0: any free port),
``--api-key`` (repeatable; default ``DEFAULT_API_KEY``), ``--credits`` (each key's balance),
``--async-seconds``, ``--max-in-flight`` and ``--url-file PATH`` (the URL is written there once
the server listens).

Failures on demand
------------------
``server.add_fault(kind=..., endpoint=..., ...)`` (or ``server.add_fault(Fault(...))``) adds a
rule; rules match in order, each match uses up one of its ``times`` (``None``: forever), and
``server.clear_faults()`` removes them. A rule with ``model`` matches only requests for that model.
Kinds (see :class:`Fault`): ``error``, ``drop_before``, ``drop_after``, ``slow``, ``html``,
``garbled``, ``missing_data``, ``unknown_status``, ``fail_task``. A matched rule is used up even
when the request then fails validation (a bad key, say).

As a test convenience, a request may carry ``X-Fake-Fault: <kind>[:<arg>]`` to apply one fault to
itself only: ``<arg>`` is the machine code for ``error`` and ``fail_task``
(``X-Fake-Fault: error:RATE_LIMITED``), the delay in seconds for ``slow``, the HTTP status for
``html`` and the status string for ``unknown_status``. Never send it to the real API.

Control API (for tests in another process)
------------------------------------------
No authentication: the server binds loopback by default. Answers are plain JSON (not the Reve
envelope); a bad request answers 400 ``{"error": "..."}``.

==========================================  ===========================================================
``GET /_fake/stats``                        :meth:`FakeReveServer.stats`
``GET /_fake/tasks``                        :attr:`FakeReveServer.tasks`
``GET /_fake/faults``                       the pending fault rules
``POST /_fake/faults``                      add a rule; body: :class:`Fault` fields as JSON
``DELETE /_fake/faults``                    remove every rule
``POST /_fake/reset``                       :meth:`FakeReveServer.reset`
``POST /_fake/keys``                        ``{"key": ..., "credits": ...}``: :meth:`FakeReveServer.add_key`
``POST /_fake/settings``                    ``{"async_seconds": ..., "max_in_flight": ...}`` (either)
``POST /_fake/tasks/{task_id}/finish``      :meth:`FakeReveServer.finish_task` (404 unknown, 409 failed)
``POST /_fake/tasks/{task_id}/fail``        body ``{"code": ..., "message": ...}`` (optional):
                                            :meth:`FakeReveServer.fail_task`
==========================================  ===========================================================

The server never logs API keys or ``Authorization`` headers. Stats, the ledger and ``tasks`` do
contain the (fake) keys, so that tests can tell accounts apart.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import json
import logging
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from http import HTTPStatus
from types import FrameType, TracebackType
from typing import Any, ClassVar, TextIO

from aiohttp import web

from airflow_provider_reve.models import FAILED, IN_PROGRESS, SUCCESS
from airflow_provider_reve.testing import _media

# The model catalog is imported where it is used: it imports Airflow, which is slow and may log to
# stdout, and the command line keeps stdout for its one "listening" line.

log = logging.getLogger(__name__)

DEFAULT_API_KEY = "sk-fake-reve-test-key"
DEFAULT_CREDITS = 1_000_000
#: Credits charged when the catalog does not know the price (unknown video duration, post-processing).
FALLBACK_CREDITS = 10
#: ``data.status`` answered by an ``unknown_status`` fault without a ``code``.
WEIRD_STATUS = "WEIRD_STATE"
FAULT_HEADER = "X-Fake-Fault"

#: The API reference's machine codes and their HTTP statuses.
ERROR_STATUS: Mapping[str, int] = {
    "INVALID_PROMPT": 400,
    "INVALID_MODEL": 400,
    "INVALID_PARAMETER": 400,
    "CONTENT_POLICY_VIOLATION": 400,
    "INVALID_API_KEY": 401,
    "INSUFFICIENT_CREDITS": 402,
    "TASK_NOT_FOUND": 404,
    "RATE_LIMITED": 429,
    "TOO_MANY_TASKS": 429,
    "GENERATION_FAILED": 500,
    "SERVICE_UNAVAILABLE": 503,
    "TIMEOUT": 504,
}
_DEFAULT_DETAIL = {
    "INVALID_PROMPT": "prompt is missing or empty.",
    "INVALID_MODEL": "Unknown or missing model.",
    "INVALID_PARAMETER": "A parameter is invalid or missing.",
    "CONTENT_POLICY_VIOLATION": "Prompt or output rejected by content moderation.",
    "INVALID_API_KEY": "Missing or invalid API key.",
    "INSUFFICIENT_CREDITS": "Not enough credits for this request.",
    "TASK_NOT_FOUND": "No task with that task_id belongs to your account.",
    "RATE_LIMITED": "Too many requests, slow down.",
    "TOO_MANY_TASKS": "Too many tasks in flight, wait for them to finish.",
    "GENERATION_FAILED": "Internal error. Safe to retry.",
    "SERVICE_UNAVAILABLE": "Upstream model temporarily unavailable.",
    "TIMEOUT": "The task timed out.",
}

GENERATE, STATUS, FILES = "generate", "status", "files"

FAULT_KINDS = frozenset(
    {
        "error",
        "drop_before",
        "drop_after",
        "slow",
        "html",
        "garbled",
        "missing_data",
        "unknown_status",
        "fail_task",
    }
)
FAULT_ENDPOINTS = frozenset({GENERATE, STATUS, "any"})
_ONLY_FOR = {"drop_after": GENERATE, "fail_task": GENERATE, "unknown_status": STATUS}


@dataclass(kw_only=True)
class Fault:
    """One injected failure. All fields are keyword-only; only ``kind`` is required.

    :param kind: what goes wrong --

        * ``"error"``: answer the error envelope for ``code`` (HTTP status from the API reference's
          table unless ``status`` is given), with ``Retry-After: <retry_after>`` if set. Nothing is
          created.
        * ``"drop_before"``: close the TCP connection without answering; nothing is created.
        * ``"drop_after"`` (generate only): create the task (and charge it), then close the
          connection without answering -- the ambiguous submission.
        * ``"slow"``: wait ``delay`` seconds. ``generate`` creates the task *first*, then waits, then
          answers (so a client read timeout is ambiguous); ``status`` waits, then answers.
        * ``"html"``: answer HTTP ``status`` (default 502) with an HTML page, as a proxy would;
          ``Retry-After`` if ``retry_after`` is set. Nothing is created.
        * ``"garbled"``: answer HTTP 200 with truncated JSON. ``generate`` creates the task first.
        * ``"missing_data"``: answer HTTP 200 ``{"code": 200, "message": "success"}`` without
          ``data``. ``generate`` creates the task first.
        * ``"unknown_status"`` (status only): answer ``data.status`` = ``code`` or ``"WEIRD_STATE"``.
        * ``"fail_task"`` (generate only): create the task; it ends ``FAILED`` with
          ``error = {"code": code, "message": detail}`` when it would have completed (synchronous
          models: at once) and its credits are refunded. ``code`` defaults to ``GENERATION_FAILED``.
    :param endpoint: ``"generate"``, ``"status"`` or ``"any"`` (default).
    :param code: the machine code, for ``error`` (required) and ``fail_task``.
    :param status: HTTP status override (``error``, ``html``).
    :param retry_after: value of a ``Retry-After`` header (seconds, or an HTTP date string).
    :param delay: seconds, for ``slow``.
    :param times: how many requests the rule applies to; ``None`` forever.
    :param model: only match requests for this model (``status``: the polled task's model).
    :param detail: the error's ``detail`` (``error``) or the failed task's message (``fail_task``).
    """

    kind: str
    endpoint: str = "any"
    code: str | None = None
    status: int | None = None
    retry_after: float | str | None = None
    delay: float = 1.0
    times: int | None = 1
    model: str | None = None
    detail: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; use one of {sorted(FAULT_KINDS)}")
        if self.endpoint not in FAULT_ENDPOINTS:
            raise ValueError(
                f"unknown fault endpoint {self.endpoint!r}; use one of {sorted(FAULT_ENDPOINTS)}"
            )
        only = _ONLY_FOR.get(self.kind)
        if only and self.endpoint not in (only, "any"):
            raise ValueError(f"fault kind {self.kind!r} applies to the {only!r} endpoint only")
        if self.kind == "error" and not self.code:
            raise ValueError("fault kind 'error' needs a code, e.g. code='SERVICE_UNAVAILABLE'")
        if self.kind == "fail_task" and not self.code:
            self.code = "GENERATION_FAILED"
        for name in ("code", "model", "detail"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{name} must be a string, got {value!r}")
        if isinstance(self.retry_after, bool) or not isinstance(
            self.retry_after, (int, float, str, type(None))
        ):
            raise ValueError(f"retry_after must be seconds or an HTTP date, got {self.retry_after!r}")
        if self.status is not None and (
            isinstance(self.status, bool) or not isinstance(self.status, int) or not 100 <= self.status <= 599
        ):
            raise ValueError(f"status must be an HTTP status code, got {self.status!r}")
        if isinstance(self.delay, bool) or not isinstance(self.delay, (int, float)) or self.delay < 0:
            raise ValueError(f"delay must be a number of seconds >= 0, got {self.delay!r}")
        if self.times is not None and (
            isinstance(self.times, bool) or not isinstance(self.times, int) or self.times < 1
        ):
            raise ValueError(f"times must be a whole number >= 1 or None, got {self.times!r}")

    def applies_to(self, endpoint: str) -> bool:
        """Whether this rule may match a request to ``endpoint`` (``"generate"`` or ``"status"``)."""
        if self.endpoint not in (endpoint, "any"):
            return False
        only = _ONLY_FOR.get(self.kind)
        return only is None or only == endpoint

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> Fault:
        """Build a rule from JSON fields; raises ``ValueError`` for anything else."""
        if not isinstance(data, dict):
            raise ValueError("a fault must be a JSON object")
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown fault fields: {sorted(unknown)}")
        if "kind" not in data:
            raise ValueError("a fault needs a 'kind'")
        return cls(**data)

    @classmethod
    def from_header(cls, value: str, endpoint: str) -> Fault:
        """Parse ``X-Fake-Fault: <kind>[:<arg>]`` for one request to ``endpoint``."""
        kind, _, arg = value.strip().partition(":")
        kind, arg = kind.strip(), arg.strip()
        kwargs: dict[str, Any] = {"kind": kind, "endpoint": endpoint}
        if arg:
            if kind in ("error", "fail_task", "unknown_status"):
                kwargs["code"] = arg
            elif kind == "slow":
                kwargs["delay"] = float(arg)
            elif kind == "html":
                kwargs["status"] = int(arg)
            else:
                raise ValueError(f"fault kind {kind!r} takes no argument")
        return cls(**kwargs)


@dataclass
class _Task:
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


class _ApiError(Exception):
    def __init__(self, code: str, detail: str | None = None) -> None:
        super().__init__(code)
        self.code = code
        self.detail = detail or _DEFAULT_DETAIL.get(code, code)


def _error_envelope(code: str, detail: str | None = None, status: int | None = None) -> tuple[int, dict]:
    http = status or ERROR_STATUS.get(code, 500)
    return http, {"code": http, "message": code, "detail": detail or _DEFAULT_DETAIL.get(code, code)}


def _success_envelope(data: dict[str, Any]) -> tuple[int, dict]:
    return 200, {"code": 200, "message": "success", "data": data}


def _retry_after_header(value: float | str | None) -> dict[str, str]:
    if value is None:
        return {}
    return {"Retry-After": value if isinstance(value, str) else format(value, "g")}


def _json(status: int, body: Any, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response(body, status=status, headers=headers)


def _drop(request: web.Request) -> web.Response:
    """Close the connection without answering; aiohttp silently discards the (never sent) response."""
    if request.transport is not None:
        request.transport.close()
    return web.Response(status=500)


_HTML_PAGE = (
    "<html><head><title>{status} {phrase}</title></head><body>"
    "<center><h1>{status} {phrase}</h1></center><hr><center>fake-reve-proxy</center>"
    "</body></html>\n"
)


def _html_page(status: int) -> str:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    return _HTML_PAGE.format(status=status, phrase=phrase)


class FakeReveServer:
    """The fake Reve API, served from a background thread with its own event loop.

    :param host: interface to bind; loopback by default (the control API has no auth).
    :param port: TCP port; 0 picks a free one (read it back from :attr:`url` / :attr:`port`).
    :param api_keys: API key -> starting credit balance; default ``{DEFAULT_API_KEY: 1_000_000}``.
    :param async_seconds: how long asynchronous tasks stay ``IN_PROGRESS``.
    :param max_in_flight: ``TOO_MANY_TASKS`` once a key has this many tasks ``IN_PROGRESS``.

    ``start()`` returns once the server listens, ``stop()`` shuts it down; ``with
    FakeReveServer() as server:`` does both. Every method is thread-safe.
    """

    _CONTROL_PREFIX: ClassVar[str] = "/_fake"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        api_keys: Mapping[str, int] | None = None,
        async_seconds: float = 2.0,
        max_in_flight: int | None = None,
    ) -> None:
        self.host = host
        self._requested_port = port
        self._lock = threading.Lock()
        self._starting_balances: dict[str, int] = dict(
            api_keys if api_keys is not None else {DEFAULT_API_KEY: DEFAULT_CREDITS}
        )
        for key, credits in self._starting_balances.items():
            self._check_key(key, credits)
        self._initial_settings = (self._check_async_seconds(async_seconds), self._check_max(max_in_flight))
        self._async_seconds, self._max_in_flight = self._initial_settings
        self._balances: dict[str, int] = {}
        self._tasks: dict[str, _Task] = {}
        self._ledger: list[dict[str, Any]] = []
        self._faults: list[Fault] = []
        self._requests: dict[str, int] = {}
        self._connections: set[tuple[str, int]] = set()
        self._submissions = 0
        self._reset_state()

        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._port: int | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeReveServer:
        """Start serving in a daemon thread; returns once the port listens."""
        if self._thread is not None:
            raise RuntimeError("FakeReveServer is already running")
        ready = threading.Event()
        failure: list[BaseException] = []
        thread = threading.Thread(
            target=self._serve, args=(ready, failure), name="fake-reve-server", daemon=True
        )
        thread.start()
        ready.wait()
        if failure:
            thread.join()
            raise failure[0]
        self._thread = thread
        log.debug("Fake Reve API listening on %s", self.url)
        return self

    def stop(self) -> None:
        """Stop serving and close every connection. Safe to call twice."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        self._thread = self._loop = None
        self._port = None

    def __enter__(self) -> FakeReveServer:
        if self._thread is None:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FakeReveServer is not running; call start() first")
        return self._port

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``: the base URL to put in the Airflow connection."""
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else "::1" if self.host == "::" else self.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def __repr__(self) -> str:
        where = self.url if self._port is not None else "not running"
        return f"<FakeReveServer {where}>"

    def _serve(self, ready: threading.Event, failure: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        runner = web.AppRunner(self._make_app(), access_log=None, shutdown_timeout=1.0)
        try:
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, self.host, self._requested_port)
            loop.run_until_complete(site.start())
            self._port = int(runner.addresses[0][1])
            self._loop = loop
        except BaseException as error:
            failure.append(error)
            _close_loop(loop, runner)
            ready.set()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            _close_loop(loop, runner)

    def _make_app(self) -> web.Application:
        app = web.Application()
        control = self._CONTROL_PREFIX
        app.add_routes(
            [
                web.post("/api/v1/generate", self._handle_generate),
                web.get("/api/v1/status", self._handle_status),
                web.get("/files/{task_id}/{name}", self._handle_file),
                web.get(f"{control}/stats", self._control_stats),
                web.get(f"{control}/tasks", self._control_tasks),
                web.get(f"{control}/faults", self._control_list_faults),
                web.post(f"{control}/faults", self._control_add_fault),
                web.delete(f"{control}/faults", self._control_clear_faults),
                web.post(f"{control}/reset", self._control_reset),
                web.post(f"{control}/keys", self._control_add_key),
                web.post(f"{control}/settings", self._control_settings),
                web.post(f"{control}/tasks/{{task_id}}/finish", self._control_finish),
                web.post(f"{control}/tasks/{{task_id}}/fail", self._control_fail),
            ]
        )
        return app

    # ------------------------------------------------------------------ control (Python)

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

    def finish_task(self, task_id: str) -> dict[str, Any]:
        """Make an ``IN_PROGRESS`` task ``SUCCESS`` now. ``KeyError`` if unknown, ``ValueError`` if FAILED."""
        with self._lock:
            task = self._task(task_id)
            self._advance(task, time.monotonic())
            if task.status == FAILED:
                raise ValueError(f"task {task_id} already FAILED")
            task.status = SUCCESS
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
                self._fail(task, code, message or _DEFAULT_DETAIL.get(code, code))
            return task.info()

    def set_async_seconds(self, seconds: float) -> None:
        """Change how long asynchronous tasks take; applies to tasks already in progress too."""
        seconds = self._check_async_seconds(seconds)
        with self._lock:
            self._async_seconds = seconds

    @property
    def async_seconds(self) -> float:
        return self._async_seconds

    def set_max_in_flight(self, limit: int | None) -> None:
        """Change the per-key limit of tasks ``IN_PROGRESS`` (``None``: no limit)."""
        limit = self._check_max(limit)
        with self._lock:
            self._max_in_flight = limit

    @property
    def max_in_flight(self) -> int | None:
        return self._max_in_flight

    def add_key(self, key: str, credits: int) -> None:
        """Add an API key (or set an existing key's balance); :meth:`reset` restores this balance."""
        self._check_key(key, credits)
        with self._lock:
            self._starting_balances[key] = credits
            self._balances[key] = credits

    def balance(self, key: str = DEFAULT_API_KEY) -> int:
        """The key's credit balance now. ``KeyError`` for an unknown key."""
        with self._lock:
            return self._balances[key]

    def reset(self) -> None:
        """Forget tasks, counters, ledger and faults; restore every key's starting balance and the
        constructor's ``async_seconds`` / ``max_in_flight``. Keys added with :meth:`add_key` stay."""
        with self._lock:
            self._reset_state()

    def _reset_state(self) -> None:
        self._balances = dict(self._starting_balances)
        self._tasks.clear()
        self._ledger.clear()
        self._faults.clear()
        self._requests = {"total": 0, GENERATE: 0, STATUS: 0, FILES: 0}
        self._connections.clear()
        self._submissions = 0
        self._async_seconds, self._max_in_flight = self._initial_settings

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
                by_status[task.status] = by_status.get(task.status, 0) + 1
            return {
                "requests": dict(self._requests),
                "submissions": self._submissions,
                "connections": len(self._connections),
                "tasks_by_status": by_status,
                "ledger": [dict(entry) for entry in self._ledger],
                "balances": dict(self._balances),
                "faults": [rule.to_dict() for rule in self._faults],
                "settings": {"async_seconds": self._async_seconds, "max_in_flight": self._max_in_flight},
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

    # ------------------------------------------------------------------ state (call with the lock)

    @staticmethod
    def _check_key(key: Any, credits: Any) -> None:
        if not isinstance(key, str) or not key:
            raise ValueError("an API key must be a non-empty string")
        if isinstance(credits, bool) or not isinstance(credits, int) or credits < 0:
            raise ValueError(f"credits must be a whole number >= 0, got {credits!r}")

    @staticmethod
    def _check_async_seconds(seconds: Any) -> float:
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds >= 0:
            raise ValueError(f"async_seconds must be a number >= 0, got {seconds!r}")
        return float(seconds)

    @staticmethod
    def _check_max(limit: Any) -> int | None:
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ValueError(f"max_in_flight must be a whole number >= 1 or None, got {limit!r}")
        return limit

    def _task(self, task_id: str) -> _Task:
        try:
            return self._tasks[task_id]
        except KeyError:
            raise KeyError(f"no task {task_id!r}") from None

    def _advance(self, task: _Task, now: float) -> None:
        if task.status != IN_PROGRESS:
            return
        if task.synchronous or now - task.created >= self._async_seconds:
            if task.fail_with is not None:
                self._fail(task, *task.fail_with)
            else:
                task.status = SUCCESS

    def _advance_all(self) -> None:
        now = time.monotonic()
        for task in self._tasks.values():
            self._advance(task, now)

    def _fail(self, task: _Task, code: str, message: str) -> None:
        task.status = FAILED
        task.error = {"code": code, "message": message}
        self._balances[task.key] = self._balances.get(task.key, 0) + task.cost
        self._ledger.append(
            {"key": task.key, "task_id": task.task_id, "delta": task.cost, "reason": "refund"}
        )

    def _authenticate(self, request: web.Request) -> str:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or token not in self._balances:
            raise _ApiError("INVALID_API_KEY")
        return token

    def _create_task(
        self, request: web.Request, body: Any, fail_with: tuple[str, str] | None
    ) -> tuple[int, dict]:
        """Validate, charge and create one task; returns the HTTP status and envelope."""
        from airflow_provider_reve import _catalog
        from airflow_provider_reve.exceptions import ReveValidationError

        try:
            with self._lock:
                key = self._authenticate(request)
                if not isinstance(body, dict):
                    raise _ApiError("INVALID_PARAMETER", "The body must be a JSON object.")
                model = body.get("model")
                spec = _catalog.get_spec(model) if isinstance(model, str) else None
                if spec is None or not isinstance(model, str):
                    raise _ApiError("INVALID_MODEL", f"Unknown or missing model: {model!r}.")
                params = {name: value for name, value in body.items() if name != "model"}
                prompt = params.get("prompt")
                if prompt is not None and not isinstance(prompt, str):
                    raise _ApiError("INVALID_PROMPT", "prompt must be a string.")
                if spec.needs_prompt and not (prompt or "").strip():
                    raise _ApiError("INVALID_PROMPT")
                try:
                    _catalog.validate_request(model, params)
                except ReveValidationError as error:
                    raise _ApiError("INVALID_PARAMETER", str(error)) from None
                cost = _catalog.estimate_credits(model, **params)
                if cost is None:
                    cost = FALLBACK_CREDITS

                now = time.monotonic()
                if self._max_in_flight is not None:
                    mine = [task for task in self._tasks.values() if task.key == key]
                    for task in mine:
                        self._advance(task, now)
                    if sum(task.status == IN_PROGRESS for task in mine) >= self._max_in_flight:
                        raise _ApiError("TOO_MANY_TASKS")
                if self._balances[key] < cost:
                    raise _ApiError(
                        "INSUFFICIENT_CREDITS",
                        f"This request costs {cost} credits; the balance is {self._balances[key]}.",
                    )

                if spec.kind == "video":
                    names = ["0.mp4"]
                else:
                    names = [f"{index}.png" for index in range(params.get("num_images") or 1)]
                task = _Task(
                    task_id=uuid.uuid4().hex,
                    key=key,
                    model=model,
                    params=copy.deepcopy(params),
                    cost=cost,
                    synchronous=_catalog.is_synchronous(model),
                    is_video=spec.kind == "video",
                    file_names=names,
                    base_url=f"{request.scheme}://{request.host}",
                    fail_with=fail_with,
                )
                self._tasks[task.task_id] = task
                self._submissions += 1
                self._balances[key] -= cost
                self._ledger.append({"key": key, "task_id": task.task_id, "delta": -cost, "reason": "charge"})
                self._advance(task, now)
                log.debug("created task %s (%s, %d credits, %s)", task.task_id, model, cost, task.status)
                return _success_envelope(task.data())
        except _ApiError as error:
            return _error_envelope(error.code, error.detail)

    def _task_status(self, request: web.Request) -> tuple[int, dict]:
        try:
            with self._lock:
                key = self._authenticate(request)
                task_id = request.query.get("task_id", "").strip()
                if not task_id:
                    raise _ApiError("INVALID_PARAMETER", "task_id is required.")
                task = self._tasks.get(task_id)
                if task is None or task.key != key:
                    raise _ApiError("TASK_NOT_FOUND")
                self._advance(task, time.monotonic())
                return _success_envelope(task.data())
        except _ApiError as error:
            return _error_envelope(error.code, error.detail)

    def _count(self, request: web.Request, endpoint: str) -> None:
        with self._lock:
            self._requests["total"] += 1
            self._requests[endpoint] += 1
            if endpoint != FILES and request.transport is not None:
                peer = request.transport.get_extra_info("peername")
                self._connections.add((str(peer), id(request.transport)))

    def _match_fault(self, request: web.Request, endpoint: str, model: str | None) -> Fault | None:
        header = request.headers.get(FAULT_HEADER)
        if header:
            return Fault.from_header(header, endpoint)  # ValueError -> 400 in the caller
        with self._lock:
            for index, rule in enumerate(self._faults):
                if not rule.applies_to(endpoint) or (rule.model is not None and rule.model != model):
                    continue
                if rule.times is not None:
                    rule.times -= 1
                    if rule.times <= 0:
                        del self._faults[index]
                log.debug("fault %s applies to a %s request", rule.kind, endpoint)
                return copy.copy(rule)
        return None

    # ------------------------------------------------------------------ API handlers

    async def _handle_generate(self, request: web.Request) -> web.StreamResponse:
        self._count(request, GENERATE)
        raw = await request.read()
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = _INVALID_JSON
        model = body.get("model") if isinstance(body, dict) else None
        try:
            fault = self._match_fault(request, GENERATE, model if isinstance(model, str) else None)
        except ValueError as error:
            return _json(*_error_envelope("INVALID_PARAMETER", f"Bad {FAULT_HEADER} header: {error}"))
        early = self._early_fault(request, fault)
        if early is not None:
            return early
        if body is _INVALID_JSON:
            status, envelope = _error_envelope("INVALID_PARAMETER", "The body is not valid JSON.")
        else:
            fail_with = None
            if fault is not None and fault.kind == "fail_task":
                code = fault.code or "GENERATION_FAILED"
                fail_with = (code, fault.detail or _DEFAULT_DETAIL.get(code, code))
            status, envelope = self._create_task(request, body, fail_with)
        return await self._late_fault(request, GENERATE, fault, status, envelope)

    async def _handle_status(self, request: web.Request) -> web.StreamResponse:
        self._count(request, STATUS)
        with self._lock:
            polled = self._tasks.get(request.query.get("task_id", ""))
            model = polled.model if polled is not None else None
        try:
            fault = self._match_fault(request, STATUS, model)
        except ValueError as error:
            return _json(*_error_envelope("INVALID_PARAMETER", f"Bad {FAULT_HEADER} header: {error}"))
        early = self._early_fault(request, fault)
        if early is not None:
            return early
        if fault is not None and fault.kind == "slow":
            await asyncio.sleep(fault.delay)
        status, envelope = self._task_status(request)
        if fault is not None and fault.kind == "unknown_status" and status == 200:
            envelope["data"]["status"] = fault.code or WEIRD_STATUS
        return await self._late_fault(request, STATUS, fault, status, envelope)

    def _early_fault(self, request: web.Request, fault: Fault | None) -> web.StreamResponse | None:
        """Faults answered before anything is processed (so nothing is created)."""
        if fault is None:
            return None
        if fault.kind == "drop_before":
            return _drop(request)
        if fault.kind == "error":
            code = fault.code or "GENERATION_FAILED"
            status, envelope = _error_envelope(code, fault.detail, fault.status)
            return _json(status, envelope, _retry_after_header(fault.retry_after))
        if fault.kind == "html":
            status = fault.status or 502
            return web.Response(
                status=status,
                text=_html_page(status),
                content_type="text/html",
                headers=_retry_after_header(fault.retry_after),
            )
        return None

    async def _late_fault(
        self, request: web.Request, endpoint: str, fault: Fault | None, status: int, envelope: dict
    ) -> web.StreamResponse:
        """Faults applied to the answer of a processed request."""
        if fault is None:
            return _json(status, envelope)
        kind = fault.kind
        if kind == "drop_after":
            return _drop(request)
        if kind == "slow" and endpoint == GENERATE:  # the status endpoint slept before processing
            await asyncio.sleep(fault.delay)
        if kind == "garbled":
            text = json.dumps(envelope)
            return web.Response(
                status=200, text=text[: max(1, len(text) // 2)], content_type="application/json"
            )
        if kind == "missing_data":
            return _json(200, {"code": 200, "message": "success"})
        return _json(status, envelope)

    async def _handle_file(self, request: web.Request) -> web.StreamResponse:
        self._count(request, FILES)
        task_id, name = request.match_info["task_id"], request.match_info["name"]
        with self._lock:
            task = self._tasks.get(task_id)
            if task is not None:
                self._advance(task, time.monotonic())
            if task is None or task.status != SUCCESS or name not in task.file_names:
                raise web.HTTPNotFound(text="No such file.")
            prompt = str(task.params.get("prompt") or "")
            is_video = task.is_video
            duration = task.params.get("duration")
            index = task.file_names.index(name)
        if is_video:
            seconds = float(duration) if isinstance(duration, (int, float)) else 5.0
            return web.Response(body=_media.mp4_bytes(prompt, seconds), content_type=_media.MP4_CONTENT_TYPE)
        return web.Response(body=_media.png_bytes(prompt, index), content_type=_media.PNG_CONTENT_TYPE)

    # ------------------------------------------------------------------ control API handlers

    async def _control_stats(self, request: web.Request) -> web.StreamResponse:
        return _json(200, self.stats())

    async def _control_tasks(self, request: web.Request) -> web.StreamResponse:
        return _json(200, self.tasks)

    async def _control_list_faults(self, request: web.Request) -> web.StreamResponse:
        return _json(200, {"faults": [rule.to_dict() for rule in self.faults]})

    async def _control_add_fault(self, request: web.Request) -> web.StreamResponse:
        try:
            rule = self.add_fault(Fault.from_dict(await _control_body(request)))
        except (ValueError, TypeError) as error:
            return _json(400, {"error": str(error)})
        return _json(200, {"added": rule.to_dict()})

    async def _control_clear_faults(self, request: web.Request) -> web.StreamResponse:
        return _json(200, {"cleared": self.clear_faults()})

    async def _control_reset(self, request: web.Request) -> web.StreamResponse:
        self.reset()
        return _json(200, {"reset": True})

    async def _control_add_key(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await _control_body(request)
            key: Any = body.get("key")
            credits: Any = body.get("credits")
            self.add_key(key, credits)
        except ValueError as error:
            return _json(400, {"error": str(error)})
        return _json(200, {"credits": credits})

    async def _control_settings(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await _control_body(request)
            unknown = set(body) - {"async_seconds", "max_in_flight"}
            if unknown:
                raise ValueError(f"unknown settings: {sorted(unknown)}")
            if "async_seconds" in body:
                self.set_async_seconds(body["async_seconds"])
            if "max_in_flight" in body:
                self.set_max_in_flight(body["max_in_flight"])
        except ValueError as error:
            return _json(400, {"error": str(error)})
        return _json(200, {"async_seconds": self.async_seconds, "max_in_flight": self.max_in_flight})

    async def _control_finish(self, request: web.Request) -> web.StreamResponse:
        try:
            return _json(200, self.finish_task(request.match_info["task_id"]))
        except KeyError as error:
            return _json(404, {"error": str(error.args[0])})
        except ValueError as error:
            return _json(409, {"error": str(error)})

    async def _control_fail(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await _control_body(request, allow_empty=True)
            code = body.get("code") or "GENERATION_FAILED"
            message = body.get("message")
            if not isinstance(code, str) or (message is not None and not isinstance(message, str)):
                raise ValueError("code and message must be strings")
            return _json(200, self.fail_task(request.match_info["task_id"], code, message))
        except KeyError as error:
            return _json(404, {"error": str(error.args[0])})
        except ValueError as error:
            return _json(409 if "already" in str(error) else 400, {"error": str(error)})


_INVALID_JSON: Any = object()


def _close_loop(loop: asyncio.AbstractEventLoop, runner: web.AppRunner) -> None:
    """Close the site and its connections, cancel what still runs (a ``slow`` fault), close the loop."""
    try:
        loop.run_until_complete(runner.cleanup())
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()


async def _control_body(request: web.Request, *, allow_empty: bool = False) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip() and allow_empty:
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise ValueError("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    return body


# ---------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m airflow_provider_reve.testing.fake_server",
        description="Serve a fake Reve API on loopback until SIGTERM/SIGINT.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="TCP port (default: 0, any free port)")
    parser.add_argument(
        "--api-key",
        action="append",
        dest="api_keys",
        metavar="KEY",
        help=f"an accepted API key; repeat for several (default: {DEFAULT_API_KEY})",
    )
    parser.add_argument(
        "--credits",
        type=int,
        default=DEFAULT_CREDITS,
        help=f"each key's balance (default: {DEFAULT_CREDITS})",
    )
    parser.add_argument(
        "--async-seconds", type=float, default=2.0, help="how long asynchronous tasks run (default: 2)"
    )
    parser.add_argument("--max-in-flight", type=int, default=None, help="per-key limit of running tasks")
    parser.add_argument("--url-file", metavar="PATH", help="write the URL to this file once listening")
    return parser


@contextlib.contextmanager
def _stdout_for_the_announcement_only() -> Iterator[TextIO]:
    """Send everything written to stdout (file descriptor 1) to stderr, except what is written to
    the yielded stream: Airflow, imported for the model catalog, may log to stdout."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no stdout at all: nothing to protect
        yield sys.stdout
        return
    announcement = os.fdopen(os.dup(saved), "w", encoding="utf-8")
    os.dup2(2, 1)
    try:
        yield announcement
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
        announcement.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the fake server until SIGTERM or SIGINT; returns the exit status (0)."""
    parser = _parser()
    args = parser.parse_args(argv)
    keys = {key: args.credits for key in (args.api_keys or [DEFAULT_API_KEY])}
    try:
        server = FakeReveServer(
            args.host,
            args.port,
            api_keys=keys,
            async_seconds=args.async_seconds,
            max_in_flight=args.max_in_flight,
        )
    except ValueError as error:
        parser.error(str(error))
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with _stdout_for_the_announcement_only() as announcement:
            import airflow_provider_reve._catalog  # noqa: F401  (load it now, not on the first request)

            server.start()
            try:
                if args.url_file:
                    partial = f"{args.url_file}.tmp{os.getpid()}"
                    with open(partial, "w", encoding="utf-8") as handle:
                        handle.write(server.url + "\n")
                    os.replace(partial, args.url_file)
                print(f"Fake Reve API listening on {server.url}", file=announcement, flush=True)
                while not stop.wait(0.5):
                    pass
            finally:
                server.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())

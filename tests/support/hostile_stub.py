"""A hostile stand-in for the Reve API, for tests: it answers whatever the test scripts.

Unlike the shipped fake (``airflow_provider_reve.testing``), which behaves like the API, this
stub behaves like the worst server or proxy we may meet: it echoes the ``Authorization`` header
it received into any field, bills a task and then answers a proxy's 503 page, or sends an
endless error page. It is a real HTTP/1.1 server on loopback (keep-alive, ``Content-Length``);
nothing is mocked on the client side.

A test sets ``stub.script`` to a function ``(Request) -> Reply``; the stub records every
request, and for a streamed reply how many bytes the client actually took. Where one stub serves
a whole DAG run (the E2E tests), :class:`Lifecycles` plays a scenario per submitted task:
IN_PROGRESS (or an error page) for a few status reads, then the end, with the key echoed in
every field throughout.
"""

from __future__ import annotations

import json
import re
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

_FILLER = (b"<p>Service Unavailable. Please try again later.</p>\n" * 1300)[: 64 * 1024]


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes = b""

    def json(self) -> dict[str, Any]:
        """The request body as a JSON object (``{}`` when it is not one)."""
        try:
            value = json.loads(self.body or b"{}")
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}

    @property
    def authorization(self) -> str:
        """The ``Authorization`` header as received: what a hostile server echoes back."""
        return self.headers.get("authorization", "")

    @property
    def key(self) -> str:
        """The bearer token the client sent."""
        return self.authorization.partition(" ")[2]


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    #: Send this many bytes of an HTML error page after ``body`` (streamed, 64 KiB at a time).
    stream_bytes: int = 0
    headers: dict[str, str] = field(default_factory=dict)


def envelope(status: int = 200, message: str = "success", **fields: Any) -> Reply:
    """A reply in the API's JSON envelope (``code`` = ``status``)."""
    return Reply(status, json.dumps({"code": status, "message": message, **fields}).encode())


def task_reply(task_id: str, status: str, **data: Any) -> Reply:
    return envelope(data={"task_id": task_id, "status": status, **data})


def html_reply(status: int, text: str) -> Reply:
    page = f"<html><head><title>{status}</title></head><body>{text}</body></html>"
    return Reply(status, page.encode(), content_type="text/html")


class HostileStub:
    """``with HostileStub() as stub: stub.script = lambda request: Reply(...)``."""

    def __init__(self) -> None:
        self.script: Callable[[Request], Reply] = lambda request: envelope(404, "TASK_NOT_FOUND")
        self.requests: list[Request] = []
        self.streamed_bytes = 0
        self.stream_ended = threading.Event()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def reset(self, script: Callable[[Request], Reply] | None = None) -> None:
        """Forget every request; answer with ``script`` from now on (a session-wide stub)."""
        with self._lock:
            self.requests.clear()
            self.streamed_bytes = 0
        self.stream_ended.clear()
        self.script = script or (lambda request: envelope(404, "TASK_NOT_FOUND"))

    def requests_to(self, path_end: str) -> int:
        with self._lock:
            return sum(1 for r in self.requests if r.path.endswith(path_end))

    def __enter__(self) -> HostileStub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                self._answer()

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self._answer(self.rfile.read(length))

            def _answer(self, body: bytes = b"") -> None:
                parts = urlsplit(self.path)
                request = Request(
                    method=self.command,
                    path=parts.path,
                    query={k: v[0] for k, v in parse_qs(parts.query).items()},
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                )
                with stub._lock:
                    stub.requests.append(request)
                reply = stub.script(request)
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(reply.body) + reply.stream_bytes))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(reply.body)
                if reply.stream_bytes:
                    self._stream(reply.stream_bytes)

            def _stream(self, total: int) -> None:
                sent = 0
                try:
                    while sent < total:
                        chunk = _FILLER[: total - sent]
                        self.wfile.write(chunk)
                        sent += len(chunk)
                except OSError:  # the client hung up: what we want to see
                    self.close_connection = True
                finally:
                    with stub._lock:
                        stub.streamed_bytes += sent
                    stub.stream_ended.set()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: the tests read what they need from the stub's records

        return Handler


# -- a whole task life per scenario, for a stub that serves a DAG run ---------------------------


def echo_everything(authorization: str) -> str:
    """The header as received, and its key bare, upper-cased, case-swapped and cut, in one text.

    Airflow's own log masker hides only the exact key; every other form here is left to our
    scrubber.
    """
    key = authorization.partition(" ")[2]
    return f"{authorization} | {key} | {key.upper()} | token={key.swapcase()}; | {key[4:24]} | {key[-17:]}"


def echoing_task(authorization: str, task_id: str, status: str, **data: Any) -> Reply:
    """A task answer with the key echoed into every field: message, detail, error and URLs."""
    echo = echo_everything(authorization)
    fields: dict[str, Any] = {
        "error": {"code": echo, "message": f"upstream said {echo}"},
        "response": {"resultUrls": [f"https://cdn.example/{echo}/1.png", "https://cdn.example/2.png"]},
        **data,
    }
    return envelope(message=echo, detail=echo, data={"task_id": task_id, "status": status, **fields})


#: One answer of a scenario, given the request and the id the stub gave the task.
Answer = Callable[[Request, str], Reply]

_SCENARIO_TAG = re.compile(r"\[([a-z0-9_-]+)\]")


def _not_found(request: Request, task_id: str) -> Reply:
    return envelope(404, "TASK_NOT_FOUND", detail="No task with that task_id belongs to your account.")


@dataclass(frozen=True)
class Scenario:
    """How the stub answers one submitted task: its submission, then each status read in turn."""

    submit: Answer
    #: Answers to the first status reads, in order.
    reads: Sequence[Answer] = ()
    #: Answer to every read after ``reads`` are used up.
    final: Answer = _not_found


class Lifecycles:
    """A script for many tasks at once, each playing the scenario named in its prompt.

    A submission picks its scenario by a ``[name]`` tag in its prompt and gets the task id
    ``<name>-<n>``; the status reads of that id then get the scenario's ``reads`` in turn,
    then its ``final`` answer. ``submissions`` and ``reads`` count requests per scenario.
    """

    def __init__(self, scenarios: Mapping[str, Scenario]) -> None:
        self.scenarios = dict(scenarios)
        self.submissions: Counter[str] = Counter()
        self.reads: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._scenario_of: dict[str, str] = {}  # task id -> scenario name
        self._reads_of: Counter[str] = Counter()  # task id -> status reads answered

    def __call__(self, request: Request) -> Reply:
        if request.method == "POST":
            return self._submit(request)
        task_id = request.query.get("task_id", "")
        with self._lock:
            name = self._scenario_of.get(task_id)
            if name is None:
                return _not_found(request, task_id)
            turn = self._reads_of[task_id]
            self._reads_of[task_id] += 1
            self.reads[name] += 1
        scenario = self.scenarios[name]
        answer = scenario.reads[turn] if turn < len(scenario.reads) else scenario.final
        return answer(request, task_id)

    def _submit(self, request: Request) -> Reply:
        prompt = request.json().get("prompt")
        match = _SCENARIO_TAG.search(prompt) if isinstance(prompt, str) else None
        if match is None or match.group(1) not in self.scenarios:
            return envelope(400, "INVALID_PARAMETER", detail=f"no known [scenario] tag in {prompt!r}")
        name = match.group(1)
        with self._lock:
            self.submissions[name] += 1
            task_id = f"{name}-{self.submissions[name]}"
            self._scenario_of[task_id] = name
        return self.scenarios[name].submit(request, task_id)

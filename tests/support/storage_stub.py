"""A loopback HTTP server playing the CDN behind result URLs, and helpers, for the storage tests.

Each path answers with a list of answers used in turn (the last one repeats), so a test can
make a URL fail once and then succeed, and every request's path and headers are recorded, so a
test can count retries and read what the client sent. The answers are deliberately rude: cut
connections, bodies without a length, bodies that stop halfway until the test lets them go on.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from airflow_provider_reve.client.retry import RetryPolicy
from airflow_provider_reve.models import ReveTask
from airflow_provider_reve.results.storage import StoredResults, store_results

PNG = b"\x89PNG\r\n\x1a\n" + bytes(i % 251 for i in range(64 * 1024))
"""A 64 KiB body: larger than one read, small enough for every test."""
FAST = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.01)
"""The real retry loop, with waits short enough for tests."""

Answer = Callable[[BaseHTTPRequestHandler], None]

GATE_TIMEOUT = 120.0
"""Longest a gated answer waits to be let go (the stub's ``close`` lets every gate go)."""


@dataclass
class Gate:
    """A body that stops halfway: ``sent`` is set once the first part is on the wire; the rest
    follows when ``go`` is set."""

    sent: threading.Event = field(default_factory=threading.Event)
    go: threading.Event = field(default_factory=threading.Event)


class CdnStub:
    """The server. ``route(path, *answers)`` returns the URL of ``path``."""

    def __init__(self) -> None:
        self._answers: dict[str, list[Answer]] = {}
        self._lock = threading.Lock()
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.gates: list[Gate] = []
        stub = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                with stub._lock:
                    stub.requests.append((path, dict(self.headers.items())))
                    answers = stub._answers.get(path)
                    answer = None
                    if answers:
                        answer = answers.pop(0) if len(answers) > 1 else answers[0]
                if answer is None:
                    self.send_error(404)
                    return
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    answer(self)  # the client went away: what several tests make it do

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        # A short poll interval: shutdown() waits for it, once per test.
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def route(self, path: str, *answers: Answer, query: str = "") -> str:
        with self._lock:
            self._answers[path] = list(answers)
        return f"{self.base}{path}{'?' + query if query else ''}"

    def hits(self, path: str) -> int:
        with self._lock:
            return sum(1 for seen, _ in self.requests if seen == path)

    def gate(self) -> Gate:
        gate = Gate()
        self.gates.append(gate)
        return gate

    def close(self) -> None:
        for gate in self.gates:
            gate.go.set()
        self.server.shutdown()
        self.server.server_close()


def file(data: bytes, content_type: str | None = "image/png") -> Answer:
    """``200`` with the body and its ``Content-Length``; no ``Content-Type`` when ``None``."""

    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        if content_type is not None:
            handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    return answer


def unframed(data: bytes, content_type: str = "image/png") -> Answer:
    """``200`` without a length: the body ends when the connection closes."""

    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.close_connection = True
        handler.wfile.write(data)

    return answer


def status(code: int, body: bytes = b"<Error><Code>AccessDenied</Code></Error>") -> Answer:
    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(code)
        handler.send_header("Content-Type", "application/xml")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return answer


def redirect(location: str) -> Answer:
    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(302)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return answer


def cut(data: bytes, after: int) -> Answer:
    """Announce the whole body, send ``after`` bytes of it, then close the connection."""

    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "image/png")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data[:after])
        handler.close_connection = True

    return answer


def gated(data: bytes, gate: Gate, after: int) -> Answer:
    """Send ``after`` bytes, set ``gate.sent``, and send the rest once ``gate.go`` is set."""

    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "image/png")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data[:after])
        handler.wfile.flush()
        gate.sent.set()
        gate.go.wait(GATE_TIMEOUT)
        handler.wfile.write(data[after:])

    return answer


def succeeded(task_id: str, *urls: str, model: str = "reve-2.0", credits: int | None = 12) -> ReveTask:
    return ReveTask(
        task_id=task_id, status="SUCCESS", result_urls=urls, consumed_credits=credits, model=model
    )


def store(tasks: list[ReveTask], destination: Any, **kwargs: Any) -> StoredResults:
    """``store_results`` as the hook calls it for a loopback server (the stub is on 127.0.0.1)."""
    kwargs.setdefault("retry_policy", FAST)
    return store_results(tasks, destination, allow_private_addresses=True, **kwargs)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()

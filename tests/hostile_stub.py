"""A hostile stand-in for the Reve API, for tests: it answers whatever the test scripts.

Unlike the shipped fake (``airflow_provider_reve.testing``), which behaves like the API, this
stub behaves like the worst server or proxy we may meet: it echoes the ``Authorization`` header
it received into any field, bills a task and then answers a proxy's 503 page, or sends an
endless error page. It is a real HTTP/1.1 server on loopback (keep-alive, ``Content-Length``);
nothing is mocked on the client side.

A test sets ``stub.script`` to a function ``(Request) -> Reply``; the stub records every
request, and for a streamed reply how many bytes the client actually took.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
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
                self.rfile.read(length)
                self._answer()

            def _answer(self) -> None:
                parts = urlsplit(self.path)
                request = Request(
                    method=self.command,
                    path=parts.path,
                    query={k: v[0] for k, v in parse_qs(parts.query).items()},
                    headers={k.lower(): v for k, v in self.headers.items()},
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

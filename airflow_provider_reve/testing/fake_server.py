"""An offline fake of the Reve API, for testing your DAGs without network, keys or credits.

It answers as the API reference describes:

* ``POST /api/v1/generate`` and ``GET /api/v1/status?task_id=...`` with ``Authorization: Bearer <key>``;
  the ``{"code": 200, "message": "success", "data": {...}}`` envelope; errors as
  ``{"code": <http>, "message": "<MACHINE_CODE>", "detail": "..."}`` with the same HTTP status.
  The key is checked first (a bad key with a bad body is a 401), then the rate limit, then the body.
  An unknown path or method answers the envelope too, its message naming the HTTP status
  (``NOT_FOUND``, ``METHOD_NOT_ALLOWED``): the reference has no code for these.
* Requests are validated and priced from the fake's **own** model table, written from the public
  model pages (:mod:`airflow_provider_reve.testing._fake.models`), not from the provider's catalog.
  Refused with ``INVALID_PARAMETER``: a documented field the model does not take, a value outside
  the documented ones, an image-to-video model without ``image_urls``, a motion-control model
  without ``video_urls``, URLs that are not absolute ``http(s)``. Undocumented fields are ignored.
  A price the pages leave open is charged at its documented minimum (shortest duration, cheapest
  resolution, ``postprocessing`` at the base price). Credits are deducted when a task is created
  and refunded when it ends ``FAILED``.
* ``reve-2.0`` is synchronous (``SUCCESS`` at once; the ``in_progress`` fault makes it run like the
  others); every other model is ``IN_PROGRESS`` until ``async_seconds`` have passed since its
  creation.
* Result URLs point at the address the server listens on (never at the request's ``Host``;
  ``public_url`` overrides it), need no key, and serve real bytes: a PNG, JPEG or WebP (as
  ``output_format`` asks, with the matching extension and Content-Type) any viewer opens, or a
  structurally valid (not playable) MP4. ``num_images`` gives that many URLs; a video gives one.

Off unless turned on (constructor arguments, :meth:`FakeReveServer.configure`, the control API or
the command line): ``max_in_flight`` (``TOO_MANY_TASKS``), ``rate_limit`` requests per
``rate_window`` seconds per key (``RATE_LIMITED`` with ``Retry-After``: the seconds until a slot
frees, or ``rate_limit_retry_after``), ``result_url_ttl`` (seconds after a task's success when its
result URLs start answering 403), ``header_faults`` (see below) and ``tls``.

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
SIGINT. ``--help`` lists the options.

HTTPS: ``FakeReveServer(tls=True)`` (``--tls``) serves with a certificate signed by a throw-away CA
it makes at start; ``server.ca_file`` is that CA's PEM (``--ca-file PATH`` writes it there). Trust it
with ``REQUESTS_CA_BUNDLE`` / ``SSL_CERT_FILE`` or ``ssl.create_default_context(cafile=...)``.

Failures on demand
------------------
``server.add_fault(kind=..., endpoint=..., ...)`` (or ``server.add_fault(Fault(...))``) adds a
rule; rules match in order, each match uses up one of its ``times`` (``None``: forever), and
``server.clear_faults()`` removes them. A rule with ``model`` matches only requests for that model.
Kinds (see :class:`Fault`): before processing ``error``, ``drop_before``, ``html``, ``bare_404``,
``huge``; after processing (a generate's task exists and is charged) ``drop_after``,
``tls_break_after_request``, ``slow``, ``html_after``, ``garbled``, ``missing_data``,
``unknown_status``, ``success_without_urls``, ``trickle``; on the created task ``fail_task``,
``in_progress``. A matched rule is used up even when the request then fails (a bad key, say).

Test-only, and off unless the server was started with ``header_faults=True``
(``--header-faults``): a request may carry ``X-Fake-Fault: <kind>[:<arg>]`` to apply one fault to
itself only. ``<arg>`` is the machine code for ``error`` and ``fail_task``
(``X-Fake-Fault: error:RATE_LIMITED``), the status string for ``unknown_status``, the delay for
``slow`` and ``trickle``, the HTTP status for ``html`` and ``html_after``, the MiB for ``huge`` and
the variant for ``success_without_urls``. When off, the header is ignored.

Control API (for tests in another process)
------------------------------------------
Loopback clients only (any other peer gets 403, whatever address the server binds): it has no
authentication. Answers are plain JSON (not the Reve envelope); a bad request answers 400
``{"error": "..."}``.

==========================================  ===========================================================
``GET /_fake/stats``                        :meth:`FakeReveServer.stats`
``GET /_fake/tasks``                        :attr:`FakeReveServer.tasks`
``GET /_fake/faults``                       the pending fault rules
``POST /_fake/faults``                      add a rule; body: :class:`Fault` fields as JSON
``DELETE /_fake/faults``                    remove every rule
``POST /_fake/reset``                       :meth:`FakeReveServer.reset`
``POST /_fake/keys``                        ``{"key": ..., "credits": ...}``: :meth:`FakeReveServer.add_key`
``GET|POST /_fake/settings``                read / :meth:`FakeReveServer.configure` (any settings)
``POST /_fake/tasks/{task_id}/finish``      :meth:`FakeReveServer.finish_task` (404 unknown, 409 failed)
``POST /_fake/tasks/{task_id}/fail``        body ``{"code": ..., "message": ...}`` (optional):
                                            :meth:`FakeReveServer.fail_task`
==========================================  ===========================================================

The server never logs API keys or ``Authorization`` headers. Stats, the ledger and ``tasks`` do
contain the (fake) keys, so that tests can tell accounts apart.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from airflow_provider_reve.testing._fake.cli import main
from airflow_provider_reve.testing._fake.contract import ERROR_STATUS
from airflow_provider_reve.testing._fake.faults import FAULT_HEADER, FAULT_KINDS, WEIRD_STATUS, Fault
from airflow_provider_reve.testing._fake.state import (
    DEFAULT_API_KEY,
    DEFAULT_CREDITS,
    SETTING_DEFAULTS,
    FakeState,
    log,
)

__all__ = [
    "DEFAULT_API_KEY",
    "DEFAULT_CREDITS",
    "ERROR_STATUS",
    "FAULT_HEADER",
    "FAULT_KINDS",
    "SETTING_DEFAULTS",
    "WEIRD_STATUS",
    "FakeReveServer",
    "Fault",
    "main",
]


class FakeReveServer(FakeState):
    """The fake Reve API, served from a background thread with its own event loop.

    :param host: interface to bind; loopback by default.
    :param port: TCP port; 0 picks a free one (read it back from :attr:`url` / :attr:`port`).
    :param api_keys: API key -> starting credit balance; default ``{DEFAULT_API_KEY: 1_000_000}``.
    :param tls: serve HTTPS with a certificate from a throw-away CA (:attr:`ca_file`).
    :param public_url: base of result URLs, for clients that reach the server by another address
        (default: :attr:`url`).
    :param settings: any of ``SETTING_DEFAULTS``: ``async_seconds`` (how long asynchronous tasks
        stay ``IN_PROGRESS``, default 2), ``max_in_flight``, ``rate_limit``, ``rate_window``,
        ``rate_limit_retry_after``, ``result_url_ttl``, ``header_faults``. :meth:`reset` restores them.

    ``start()`` returns once the server listens, ``stop()`` shuts it down; ``with
    FakeReveServer() as server:`` does both. Every method is thread-safe.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        api_keys: Mapping[str, int] | None = None,
        tls: bool = False,
        public_url: str | None = None,
        **settings: Any,
    ) -> None:
        super().__init__(api_keys, settings)
        if public_url is not None and urlsplit(public_url).scheme not in ("http", "https"):
            raise ValueError(f"public_url must be an http(s) URL, got {public_url!r}")
        self.host = host
        self.tls = tls
        self.public_url = public_url.rstrip("/") if public_url else None
        self._requested_port = port
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._port: int | None = None
        self._tls_dir: Path | None = None
        self._ca_file: Path | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeReveServer:
        """Start serving in a daemon thread; returns once the port listens.

        :return: this server, listening.
        """
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
            self._remove_certificates()
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
        self._remove_certificates()

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
        """The TCP port the server listens on (a free one when it was started with ``port=0``)."""
        if self._port is None:
            raise RuntimeError("FakeReveServer is not running; call start() first")
        return self._port

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>`` (``https://`` with ``tls``): the base URL for the connection."""
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else "::1" if self.host == "::" else self.host
        if ":" in host:
            host = f"[{host}]"
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    @property
    def ca_file(self) -> str:
        """Path of the PEM file of the CA that signed the server's certificate (``tls=True``)."""
        if not self.tls:
            raise RuntimeError("FakeReveServer serves plain HTTP; pass tls=True for a CA file")
        if self._ca_file is None:
            raise RuntimeError("FakeReveServer is not running; call start() first")
        return str(self._ca_file)

    def __repr__(self) -> str:
        where = self.url if self._port is not None else "not running"
        return f"<FakeReveServer {where}>"

    def _result_base_url(self) -> str:
        return self.public_url or self.url

    def _ssl_context(self) -> Any:
        if not self.tls:
            return None
        from airflow_provider_reve.testing._fake.tls import make_certificates

        self._tls_dir = Path(tempfile.mkdtemp(prefix="fake-reve-tls-"))
        hosts = ["localhost", "127.0.0.1", "::1"]
        if self.host not in ("", "0.0.0.0", "::"):
            hosts.append(self.host)
        if self.public_url:
            hosts.append(urlsplit(self.public_url).hostname or "localhost")
        certificates = make_certificates(self._tls_dir, hosts)
        self._ca_file = certificates.ca_file
        return certificates.server_context()

    def _remove_certificates(self) -> None:
        if self._tls_dir is not None:
            shutil.rmtree(self._tls_dir, ignore_errors=True)
        self._tls_dir = self._ca_file = None

    def _serve(self, ready: threading.Event, failure: list[BaseException]) -> None:
        from airflow_provider_reve.testing._fake.app import make_app

        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        runner = web.AppRunner(make_app(self), access_log=None, shutdown_timeout=1.0)
        try:
            ssl_context = self._ssl_context()
            loop.run_until_complete(runner.setup())
            # A real API's listen queue, not aiohttp's 128: thousands of clients connecting in
            # the same second (a benchmark's baseline) must not be dropped by the fake alone.
            site = web.TCPSite(runner, self.host, self._requested_port, ssl_context=ssl_context, backlog=1024)
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


if __name__ == "__main__":
    sys.exit(main())

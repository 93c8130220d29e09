"""``python -m airflow_provider_reve.testing.fake_server``: serve the fake until SIGTERM or SIGINT.

stdout carries exactly one line, ``Fake Reve API listening on <url>``, so that a parent process can
read the URL from it; everything else goes to stderr."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from types import FrameType
from typing import Any, TextIO

from airflow_provider_reve.testing._fake.state import DEFAULT_API_KEY, DEFAULT_CREDITS


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m airflow_provider_reve.testing.fake_server",
        description="Serve a fake Reve API until SIGTERM/SIGINT. Every limit is off unless set here.",
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1)")
    add("--port", type=int, default=0, help="TCP port (default: 0, any free port)")
    add(
        "--api-key",
        action="append",
        dest="api_keys",
        metavar="KEY",
        help=f"an accepted API key; repeat for several (default: {DEFAULT_API_KEY})",
    )
    add(
        "--credits",
        type=int,
        default=DEFAULT_CREDITS,
        help=f"each key's balance (default: {DEFAULT_CREDITS})",
    )
    add("--async-seconds", type=float, default=2.0, help="how long asynchronous tasks run (default: 2)")
    add("--max-in-flight", type=int, default=None, help="per-key limit of running tasks (TOO_MANY_TASKS)")
    add("--rate-limit", type=int, default=None, help="requests per --rate-window per key (RATE_LIMITED)")
    add("--rate-window", type=float, default=1.0, help="seconds of the rate-limit window (default: 1)")
    add(
        "--rate-limit-retry-after", default=None, help="Retry-After value of RATE_LIMITED (default: computed)"
    )
    add("--result-url-ttl", type=float, default=None, help="seconds a result URL works after success")
    add("--header-faults", action="store_true", help="obey X-Fake-Fault request headers (test-only)")
    add("--tls", action="store_true", help="serve HTTPS with a certificate from a throw-away CA")
    add("--ca-file", metavar="PATH", help="with --tls: write the CA's PEM here (trust it in clients)")
    add("--public-url", help="base of result URLs when clients reach the server by another address")
    add("--url-file", metavar="PATH", help="write the URL to this file once listening")
    return parser


@contextlib.contextmanager
def _stdout_for_the_announcement_only() -> Iterator[TextIO]:
    """Send everything written to stdout (file descriptor 1) to stderr, except what is written to
    the yielded stream: a library that prints must not corrupt the one line a parent reads."""
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


def _write_atomically(path: str, text: str) -> None:
    partial = f"{path}.tmp{os.getpid()}"
    with open(partial, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(partial, path)


def _retry_after(value: str | None) -> Any:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return value  # an HTTP date, or garbage on purpose


def main(argv: Sequence[str] | None = None) -> int:
    """Run the fake server until SIGTERM or SIGINT; returns the exit status (0)."""
    from airflow_provider_reve.testing.fake_server import FakeReveServer

    parser = _parser()
    args = parser.parse_args(argv)
    if args.ca_file and not args.tls:
        parser.error("--ca-file needs --tls")
    keys = {key: args.credits for key in (args.api_keys or [DEFAULT_API_KEY])}
    try:
        server = FakeReveServer(
            args.host,
            args.port,
            api_keys=keys,
            tls=args.tls,
            public_url=args.public_url,
            async_seconds=args.async_seconds,
            max_in_flight=args.max_in_flight,
            rate_limit=args.rate_limit,
            rate_window=args.rate_window,
            rate_limit_retry_after=_retry_after(args.rate_limit_retry_after),
            result_url_ttl=args.result_url_ttl,
            header_faults=args.header_faults,
        )
    except ValueError as error:
        parser.error(str(error))
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with _stdout_for_the_announcement_only() as announcement:
            server.start()
            try:
                if args.tls:
                    if args.ca_file:
                        shutil.copyfile(server.ca_file, args.ca_file)
                    print(f"CA certificate: {args.ca_file or server.ca_file}", file=sys.stderr, flush=True)
                if args.url_file:
                    _write_atomically(args.url_file, server.url + "\n")
                print(f"Fake Reve API listening on {server.url}", file=announcement, flush=True)
                while not stop.wait(0.5):
                    pass
            finally:
                server.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0

"""Injectable failures: the :class:`Fault` rule and the answers that only a fault produces (proxy
pages, dropped and reset connections, trickled and huge bodies)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from http import HTTPStatus
from typing import Any

from aiohttp import web

from airflow_provider_reve.testing._fake.contract import ERROR_STATUS

GENERATE, STATUS, FILES = "generate", "status", "files"
FAULT_HEADER = "X-Fake-Fault"
#: ``data.status`` answered by an ``unknown_status`` fault without a ``code``.
WEIRD_STATUS = "WEIRD_STATE"

#: Faults answered before the request is processed: nothing is created, nobody is charged.
BEFORE = frozenset({"error", "drop_before", "html", "bare_404", "huge"})
#: Faults applied to the answer of a processed request (``generate``: the task exists and is billed).
AFTER = frozenset(
    {
        "drop_after",
        "tls_break_after_request",
        "slow",
        "html_after",
        "garbled",
        "missing_data",
        "unknown_status",
        "success_without_urls",
        "trickle",
    }
)
#: Faults that change the task being created.
ON_CREATE = frozenset({"fail_task", "in_progress"})
FAULT_KINDS = BEFORE | AFTER | ON_CREATE
FAULT_ENDPOINTS = frozenset({GENERATE, STATUS, FILES, "any"})
#: What a CDN may do to a result-file download: answer a proxy page (``html``, e.g. ``status=503``)
#: or drop the connection. Only rules naming ``endpoint="files"`` apply to downloads, never ``"any"``.
FILE_FAULT_KINDS = frozenset({"html", "drop_before"})
_ONLY_FOR = {
    "drop_after": GENERATE,
    "html_after": GENERATE,
    "fail_task": GENERATE,
    "in_progress": GENERATE,
    "unknown_status": STATUS,
}
_VARIANTS = {"success_without_urls": ("empty", "missing"), "huge": ("sized", "chunked")}


@dataclass(kw_only=True)
class Fault:
    """One injected failure. All fields are keyword-only; only ``kind`` is required.

    :param kind: what goes wrong. Answered *before* processing (nothing is created or charged):

        * ``"error"``: the error envelope for ``code``, with the reference's HTTP status for it.
          A code outside the reference is refused unless ``status`` is given too (a gateway's own
          JSON, say). ``Retry-After: <retry_after>`` if set.
        * ``"drop_before"``: close the connection without answering.
        * ``"html"``: a proxy's HTML error page, HTTP ``status`` (default 502).
        * ``"bare_404"``: a gateway's ``{"message": "Not Found"}`` with HTTP 404 and no ``code``.
        * ``"huge"``: an HTML page of ``size_mib`` MiB, HTTP ``status`` (default 503), streamed;
          ``variant="chunked"`` sends it without ``Content-Length``.

        Applied to the answer *after* processing (``generate``: the task exists and is charged):

        * ``"drop_after"`` (generate only): close the connection without answering.
        * ``"tls_break_after_request"``: instead of an answer, a corrupted TLS record, then the
          connection is aborted: a client sees an SSL error (on plain HTTP: a cut connection).
        * ``"slow"``: wait ``delay`` seconds, then answer. ``status`` waits *before* reading the
          task, so the answer is as fresh as the delay allows.
        * ``"html_after"`` (generate only): a gateway's HTML page, HTTP ``status`` (default 503).
        * ``"garbled"``: HTTP 200 with truncated JSON.
        * ``"missing_data"``: HTTP 200 ``{"code": 200, "message": "success"}`` without ``data``.
        * ``"unknown_status"`` (status only): ``data.status`` = ``code`` or ``"WEIRD_STATE"``.
        * ``"success_without_urls"``: ``data.status`` = ``SUCCESS`` with ``response.resultUrls``
          empty (``variant="empty"``, default) or no ``response`` at all (``variant="missing"``).
        * ``"trickle"``: the answer's body in ``chunk_size``-byte pieces, ``delay`` seconds apart.

        Changing the task being created (generate only):

        * ``"fail_task"``: the task ends ``FAILED`` with ``error = {"code": code, "message":
          detail}`` when it would have completed (synchronous models: at once) and is refunded.
          ``code`` defaults to ``GENERATION_FAILED`` and may be any string (the reference does not
          list a FAILED task's codes).
        * ``"in_progress"``: a synchronous model (``reve-2.0``) answers ``IN_PROGRESS`` and runs
          like an asynchronous one, so its polling path can be tested.
    :param endpoint: ``"generate"``, ``"status"``, ``"any"`` (default: both of those) or
        ``"files"`` (result-file downloads, as a CDN fails them: ``html`` or ``drop_before`` only).
    :param code: the machine code (``error``, ``fail_task``) or status string (``unknown_status``).
    :param status: HTTP status override (``error``, ``html``, ``html_after``, ``huge``).
    :param retry_after: value of a ``Retry-After`` header (seconds, or an HTTP date string).
    :param delay: seconds, for ``slow`` and (between chunks) ``trickle``.
    :param times: how many requests the rule applies to; ``None`` forever.
    :param probability: the chance (0 < p <= 1) that a request the rule could match is hit; a
        request it spares does not use up ``times``. For load tests: ``times=None,
        probability=0.05`` fails about one request in twenty.
    :param model: only match requests for this model (``status``: the polled task's model).
    :param detail: the error's ``detail`` (``error``) or the failed task's message (``fail_task``).
    :param chunk_size: bytes per piece, for ``trickle``.
    :param size_mib: the body's size in MiB, for ``huge``.
    :param variant: ``success_without_urls``: ``"empty"`` or ``"missing"``; ``huge``: ``"sized"``
        or ``"chunked"``.
    """

    kind: str
    endpoint: str = "any"
    code: str | None = None
    status: int | None = None
    retry_after: float | str | None = None
    delay: float = 1.0
    times: int | None = 1
    probability: float = 1.0
    model: str | None = None
    detail: str | None = None
    chunk_size: int = 4
    size_mib: float = 16.0
    variant: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; use one of {sorted(FAULT_KINDS)}")
        if self.endpoint not in FAULT_ENDPOINTS:
            raise ValueError(
                f"unknown fault endpoint {self.endpoint!r}; use one of {sorted(FAULT_ENDPOINTS)}"
            )
        if self.endpoint == FILES and self.kind not in FILE_FAULT_KINDS:
            raise ValueError(
                f"fault kind {self.kind!r} does not apply to result files; "
                f"use one of {sorted(FILE_FAULT_KINDS)}"
            )
        only = _ONLY_FOR.get(self.kind)
        if only and self.endpoint not in (only, "any"):
            raise ValueError(f"fault kind {self.kind!r} applies to the {only!r} endpoint only")
        for name in ("code", "model", "detail", "variant"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{name} must be a string, got {value!r}")
        self._check_code()
        if isinstance(self.retry_after, bool) or not isinstance(
            self.retry_after, (int, float, str, type(None))
        ):
            raise ValueError(f"retry_after must be seconds or an HTTP date, got {self.retry_after!r}")
        if self.status is not None and (not _is_int(self.status) or not 100 <= self.status <= 599):
            raise ValueError(f"status must be an HTTP status code, got {self.status!r}")
        _check_number("delay", self.delay, minimum=0)
        _check_number("probability", self.probability, minimum=0)
        if not 0 < self.probability <= 1:
            raise ValueError(f"probability must be > 0 and <= 1, got {self.probability!r}")
        _check_number("size_mib", self.size_mib, minimum=0)
        if not _is_int(self.chunk_size) or self.chunk_size < 1:
            raise ValueError(f"chunk_size must be a whole number >= 1, got {self.chunk_size!r}")
        if self.times is not None and (not _is_int(self.times) or self.times < 1):
            raise ValueError(f"times must be a whole number >= 1 or None, got {self.times!r}")
        allowed = _VARIANTS.get(self.kind, ())
        if self.variant is not None and self.variant not in allowed:
            raise ValueError(f"fault kind {self.kind!r} takes variant {' or '.join(allowed) or 'none'}")

    def _check_code(self) -> None:
        if self.kind == "error":
            if not self.code:
                raise ValueError("fault kind 'error' needs a code, e.g. code='SERVICE_UNAVAILABLE'")
            if self.code not in ERROR_STATUS and self.status is None:
                raise ValueError(
                    f"code {self.code!r} is not in the API reference; give a status too if you mean "
                    f"an off-contract answer (a gateway's JSON, say). Reference codes: {sorted(ERROR_STATUS)}"
                )
        elif self.kind == "fail_task":
            # Any code: the reference says only that a FAILED task's error "contains a code and
            # message", so a client must cope with codes it has never seen.
            self.code = self.code or "GENERATION_FAILED"

    def applies_to(self, endpoint: str) -> bool:
        """Whether this rule may match a request to ``endpoint`` (generate, status or files)."""
        if endpoint == FILES or self.endpoint == FILES:
            return self.endpoint == endpoint  # "any" means the API's endpoints, not the CDN
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
        try:
            return cls(**data)
        except TypeError as error:
            raise ValueError(str(error)) from None

    @classmethod
    def from_header(cls, value: str, endpoint: str) -> Fault:
        """Parse ``X-Fake-Fault: <kind>[:<arg>]`` for one request to ``endpoint``."""
        kind, _, arg = value.strip().partition(":")
        kind, arg = kind.strip(), arg.strip()
        kwargs: dict[str, Any] = {"kind": kind, "endpoint": endpoint}
        if arg:
            if kind in ("error", "fail_task", "unknown_status"):
                kwargs["code"] = arg
            elif kind in ("slow", "trickle"):
                kwargs["delay"] = float(arg)
            elif kind in ("html", "html_after"):
                kwargs["status"] = int(arg)
            elif kind == "huge":
                kwargs["size_mib"] = float(arg)
            elif kind == "success_without_urls":
                kwargs["variant"] = arg
            else:
                raise ValueError(f"fault kind {kind!r} takes no argument")
        return cls(**kwargs)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_number(name: str, value: Any, *, minimum: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= minimum:
        raise ValueError(f"{name} must be a number >= {minimum:g}, got {value!r}")


# ---------------------------------------------------------------------------------- answers


def retry_after_header(value: float | str | None) -> dict[str, str]:
    if value is None:
        return {}
    return {"Retry-After": value if isinstance(value, str) else format(value, "g")}


def json_response(status: int, body: Any, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response(body, status=status, headers=headers)


def drop(request: web.Request) -> web.Response:
    """Close the connection without answering. aiohttp silently discards the response returned
    here: it is never sent."""
    if request.transport is not None:
        request.transport.close()
    return web.Response(status=500)


# An application-data record whose content no key decrypts: the client's TLS layer fails on it.
_CORRUPT_TLS_RECORD = b"\x17\x03\x03\x00\x20" + bytes(range(32))


def break_tls(request: web.Request) -> web.Response:
    """Write a corrupted TLS record straight onto the TCP socket, under the TLS layer, then abort
    the connection: the client's TLS layer fails (``ssl.SSLError``). On plain HTTP: a cut connection."""
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if transport.get_extra_info("sslcontext") is not None and sock is not None:
            with contextlib.suppress(OSError):
                os.write(sock.fileno(), _CORRUPT_TLS_RECORD)
        transport.abort()
    return web.Response(status=500)


_HTML_PAGE = (
    "<html><head><title>{status} {phrase}</title></head><body>"
    "<center><h1>{status} {phrase}</h1></center><hr><center>fake-reve-proxy</center>"
    "</body></html>\n"
)


def html_page(status: int) -> str:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    return _HTML_PAGE.format(status=status, phrase=phrase)


def html_response(status: int, retry_after: float | str | None) -> web.Response:
    return web.Response(
        status=status,
        text=html_page(status),
        content_type="text/html",
        headers=retry_after_header(retry_after),
    )


async def trickle(
    request: web.Request,
    status: int,
    body: bytes,
    chunk_size: int,
    delay: float,
    headers: Mapping[str, str] | None = None,
) -> web.StreamResponse:
    """Send ``body`` ``chunk_size`` bytes at a time, ``delay`` seconds apart."""
    response = web.StreamResponse(
        status=status, headers={**(headers or {}), "Content-Type": "application/json"}
    )
    response.content_length = len(body)
    await response.prepare(request)
    try:
        for start in range(0, len(body), chunk_size):
            if start:
                await asyncio.sleep(delay)
            await response.write(body[start : start + chunk_size])
        await response.write_eof()
    except ConnectionError:  # the client gave up: exactly what this fault is for
        pass
    return response


_MIB = 1024 * 1024
_FILLER = ("<!-- " + "fake-reve-padding " * 56 + "-->\n").encode()


async def huge(request: web.Request, fault: Fault) -> web.StreamResponse:
    """An HTML error page of ``fault.size_mib`` MiB, streamed 64 KiB at a time."""
    status = fault.status or 503
    head, tail = html_page(status).encode().split(b"</body>")
    total = max(int(fault.size_mib * _MIB), len(head) + len(tail) + 7)
    response = web.StreamResponse(status=status, headers={"Content-Type": "text/html; charset=utf-8"})
    if fault.variant != "chunked":
        response.content_length = total
    await response.prepare(request)
    try:
        await response.write(head)
        left = total - len(head) - len(tail) - len(b"</body>")
        block = _FILLER * (64 * 1024 // len(_FILLER))
        while left > 0:
            piece = block[:left]
            await response.write(piece)
            left -= len(piece)
        await response.write(b"</body>" + tail)
        await response.write_eof()
    except ConnectionError:  # the client stopped reading: a size cap did its job
        pass
    return response


def garbled(envelope: dict) -> web.Response:
    text = json.dumps(envelope)
    return web.Response(status=200, text=text[: max(1, len(text) // 2)], content_type="application/json")

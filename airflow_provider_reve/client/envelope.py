"""Reads the API's envelope. It returns a :class:`.ReveTask` or raises a :class:`.ReveAPIError`.

Whatever arrives -- HTML from a proxy, truncated JSON, a missing ``data``, a status string we
have never seen, an answer too long to read -- the caller gets one of those two, never a
KeyError or JSONDecodeError.

Every string taken from the answer goes through the one scrubber (``client.redact``) here, before
it becomes part of an exception, a ``ReveTask``, a trigger event or a log line: a server that
echoes the ``Authorization`` header back cannot put the key anywhere we keep or show.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from airflow_provider_reve.client.redact import Redactor
from airflow_provider_reve.client.retry import parse_retry_after
from airflow_provider_reve.exceptions import (
    DOCUMENTED_CODES,
    GENERATE_ENDPOINT,
    ReveAmbiguousSubmissionError,
    ReveAPIError,
    ReveMalformedResponseError,
    api_error_class,
)
from airflow_provider_reve.models import SUCCESS, TASK_STATUSES, ReveTask

__all__ = [
    "MAX_RESPONSE_BYTES",
    "parse_task_response",
]

#: The most we read of any answer. The envelope is a few hundred bytes; even a task with many
#: result URLs stays far below this. Anything longer is not the API talking.
MAX_RESPONSE_BYTES = 256 * 1024

_SNIPPET_CHARS = 160
# Free text kept from an answer (a detail, a task's error message). The API's are one sentence;
# a longer one is cut, so a hostile answer cannot make every later log line and event huge.
_FREE_TEXT_CHARS = 1000
# The snippet is redacted before it is cut, so that a key straddling the cut is still found
# whole; redacting only this much of a long body keeps that cheap.
_SNIPPET_LOOKAHEAD = 4096


def parse_task_response(
    endpoint: str,
    http_status: int,
    body: bytes | str,
    *,
    retry_after_header: str | None = None,
    redactor: Redactor | None = None,
    truncated: bool = False,
) -> ReveTask:
    """Turn one HTTP answer from ``endpoint`` into a :class:`.ReveTask`, or raise.

    :param redactor: scrubs the secrets (the API key) that must not survive in anything returned
        or raised; built once per connection (:attr:`.ConnectionSettings.redactor`), since building
        one indexes every piece of the key, a cost not worth paying per poll.
    :param truncated: ``body`` is only the first :data:`MAX_RESPONSE_BYTES` of a longer answer.
    :param endpoint: the API path that answered, for the error messages.
    :param http_status: the HTTP status of the answer.
    :param body: the answer's body.
    :param retry_after_header: the ``Retry-After`` header, if any.
    :return: the task the answer describes.
    :raises ReveAPIError: the subclass for the status and machine code of a refusal, or
        :class:`.ReveMalformedResponseError` for an answer that is not an envelope.
    """
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body
    answer = _Answer(endpoint, http_status, text, redactor or Redactor([]))
    try:
        if truncated:
            raise answer.malformed(f"the answer is longer than {MAX_RESPONSE_BYTES // 1024} KiB")
        return _parse(answer, retry_after_header)
    except ReveAPIError as error:
        _scrub(error, answer.redact)
        raise


@dataclass(frozen=True)
class _Answer:
    """One HTTP answer being read, and how to make its strings safe to keep."""

    endpoint: str
    http_status: int
    text: str
    redact: Redactor

    def snippet(self, text: str | None = None) -> str:
        """A short, single-line, redacted quote of ``text`` (default: the whole body)."""
        text = self.text if text is None else text
        head = self.redact(text[: _SNIPPET_CHARS + _SNIPPET_LOOKAHEAD])
        return " ".join(head[:_SNIPPET_CHARS].split())

    def free_text(self, text: str) -> str:
        """``text`` redacted, and cut to ``_FREE_TEXT_CHARS`` (only after redacting)."""
        head = self.redact(text[: _FREE_TEXT_CHARS + _SNIPPET_LOOKAHEAD])
        return head if len(head) <= _FREE_TEXT_CHARS else head[:_FREE_TEXT_CHARS] + "..."

    def malformed(self, why: str, *, task_id: str | None = None) -> ReveAPIError:
        message = (
            f"Reve API {self.endpoint} answered HTTP {self.http_status} with an unexpected body "
            f"({why}): {self.snippet()!r}"
        )
        status = self.http_status
        if self.endpoint == GENERATE_ENDPOINT and (200 <= status < 300 or status >= 500):
            # The request reached something that answered as if it had processed it.
            if task_id:
                message += f". Reve task {task_id} exists, likely paid for; it was not submitted again."
            else:
                message += ". A paid task may have been created; it was not submitted again."
            return ReveAmbiguousSubmissionError(
                message, endpoint=self.endpoint, http_status=status, task_id=task_id
            )
        return ReveMalformedResponseError(message, endpoint=self.endpoint, http_status=status)


def _parse(answer: _Answer, retry_after_header: str | None) -> ReveTask:
    try:
        envelope = json.loads(answer.text)
    except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested too deep
        envelope = None
    if not isinstance(envelope, dict):
        raise _no_envelope(answer, retry_after_header)

    body_code = envelope.get("code")
    # Any 2xx is an HTTP success (a gateway may turn 200 into 201/202); then the body's code decides.
    if not 200 <= answer.http_status < 300 or (isinstance(body_code, int) and body_code != 200):
        raise _api_error(answer, body_code, envelope, retry_after_header)

    data = envelope.get("data")
    if not isinstance(data, dict):
        raise answer.malformed("the envelope has no 'data' object")
    return _task_from_data(answer, data)


def _no_envelope(answer: _Answer, retry_after_header: str | None) -> ReveAPIError:
    """An answer that is not the API's JSON envelope: a proxy's or gateway's own page."""
    status = answer.http_status
    # A rate limiter refuses before forwarding: nothing was created, even on generate.
    # A 503 page is a refusal only for a read: proxies also answer 503 after forwarding (an
    # upstream reset or timeout), so on generate it may hide a created, paid task.
    if status == 429 or (status == 503 and answer.endpoint != GENERATE_ENDPOINT):
        return api_error_class(status, None)(
            f"Reve API {answer.endpoint} answered HTTP {status} without the API's envelope: "
            f"{answer.snippet()!r}",
            endpoint=answer.endpoint,
            http_status=status,
            retry_after=parse_retry_after(retry_after_header),
        )
    if status == 503:
        return answer.malformed(
            "a 503 without the API's envelope, which a proxy also sends after forwarding a request"
        )
    return answer.malformed("the body is not a JSON object")


def _api_error(
    answer: _Answer, body_code: Any, envelope: dict[str, Any], retry_after_header: str | None
) -> ReveAPIError:
    # The reference puts the HTTP status in both places; if they disagree, the error one wins.
    status = body_code if 200 <= answer.http_status < 300 else answer.http_status
    raw_code = envelope.get("message")
    # Only a documented code is trusted as one: anything else ("INVALID_API_KEY sk-...", a
    # proxy's "Bad Gateway") is free text, and the error class comes from the HTTP status.
    code = raw_code if isinstance(raw_code, str) and raw_code in DOCUMENTED_CODES else None
    raw_detail = envelope.get("detail")
    detail = answer.free_text(raw_detail) if isinstance(raw_detail, str) else None
    error_class = api_error_class(status, code)
    text = f"Reve API {answer.endpoint} answered HTTP {status} "
    if code:
        text += code
    elif isinstance(raw_code, str) and raw_code.strip():
        text += f"with an undocumented error code {answer.snippet(raw_code)!r}"
    else:
        text += "without an error code"
    if detail:
        text += f": {detail}"
    error = error_class(
        text,
        endpoint=answer.endpoint,
        http_status=status,
        code=code,
        detail=detail,
        retry_after=parse_retry_after(retry_after_header),
    )
    if answer.endpoint == GENERATE_ENDPOINT and status is not None and status >= 500 and not error.retryable:
        # A 502/504 from a gateway may hide a task that was created upstream.
        return ReveAmbiguousSubmissionError(
            f"{text}. The request reached the server, so a paid task may exist; it was not submitted again.",
            endpoint=answer.endpoint,
            http_status=status,
            code=code,
            detail=detail,
        )
    return error


def _task_from_data(answer: _Answer, data: dict[str, Any]) -> ReveTask:
    task_id = data.get("task_id")
    if not isinstance(task_id, str) or not task_id:
        raise answer.malformed("data.task_id is missing or not a string")
    if answer.redact.reveals_secret(task_id):
        # An id is used as it is (polled, stored, logged), so it cannot be redacted: refuse it.
        raise answer.malformed("data.task_id holds the API key or an Authorization header")
    status = data.get("status")
    if status not in TASK_STATUSES:
        raise answer.malformed(f"unknown task status {answer.snippet(repr(status))}")

    response = data.get("response") or {}
    urls = response.get("resultUrls", []) if isinstance(response, dict) else None
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise answer.malformed("response.resultUrls is not a list of strings")
    if status == SUCCESS and not urls:
        # "Done, with nothing to show" is not a result: never report it as one.
        raise answer.malformed(f"task {task_id} is SUCCESS without any result URL", task_id=task_id)

    credits = data.get("consumed_credits")
    if isinstance(credits, float) and credits.is_integer():
        credits = int(credits)
    if credits is not None and (isinstance(credits, bool) or not isinstance(credits, int)):
        raise answer.malformed("consumed_credits is not a number")

    error_code, error_message = _task_error(data.get("error"), answer.free_text)
    return ReveTask(
        task_id=task_id,
        status=status,
        result_urls=tuple(answer.redact(url) for url in urls),
        consumed_credits=credits,
        error_code=error_code,
        error_message=error_message,
    )


def _task_error(error: Any, free_text: Callable[[str], str]) -> tuple[str | None, str | None]:
    """A task's ``error`` as (documented code or ``None``, redacted free text or ``None``)."""
    # Documented only as "contains a code and message": accept a dict or a bare string.
    if isinstance(error, str):
        return None, free_text(error)
    if not isinstance(error, dict):
        return None, None
    code, message = error.get("code"), error.get("message")
    code_text = str(code) if code is not None else None
    message_text = str(message) if message is not None else None
    if code_text in DOCUMENTED_CODES:
        return code_text, free_text(message_text) if message_text is not None else None
    # An undocumented code is kept as words for a human, not as a code anything acts on.
    words = [part for part in (code_text, message_text) if part]
    return None, free_text(": ".join(words)) if words else None


def _scrub(error: ReveAPIError, redact: Redactor) -> None:
    """A last pass over everything the error shows (its parts were redacted as they were read)."""
    error.message = redact(error.message)
    error.detail = redact.optional(error.detail)
    error.code = redact.optional(error.code)
    if isinstance(error, ReveAmbiguousSubmissionError):
        error.task_id = redact.optional(error.task_id)
    error.args = (error.message,)

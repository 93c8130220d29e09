"""Reads the API's envelope. It returns a :class:`ReveTask` or raises a :class:`ReveAPIError`.

Whatever arrives -- HTML from a proxy, truncated JSON, a missing ``data``, a status string we
have never seen -- the caller gets one of those two, never a KeyError or JSONDecodeError.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from airflow_provider_reve._retry import parse_retry_after
from airflow_provider_reve.exceptions import (
    GENERATE_ENDPOINT,
    ReveAmbiguousSubmissionError,
    ReveAPIError,
    ReveMalformedResponseError,
    api_error_class,
)
from airflow_provider_reve.models import TASK_STATUSES, ReveTask

_SNIPPET_CHARS = 160
# A gateway's own "slow down" / "unavailable" page: the request was turned away, not processed.
_REFUSED_WITHOUT_ENVELOPE = frozenset({429, 503})


def parse_task_response(
    endpoint: str,
    http_status: int,
    body: bytes | str,
    *,
    retry_after_header: str | None = None,
    secrets: Iterable[str] = (),
) -> ReveTask:
    """Turn one HTTP answer from ``endpoint`` into a :class:`ReveTask`, or raise."""
    secrets = [s for s in secrets if s]
    try:
        return _parse(endpoint, http_status, body, retry_after_header)
    except ReveAPIError as error:
        _scrub(error, secrets)
        raise


def _parse(endpoint: str, http_status: int, body: bytes | str, retry_after_header: str | None) -> ReveTask:
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body
    try:
        envelope = json.loads(text)
    except ValueError:
        envelope = None
    if not isinstance(envelope, dict):
        if http_status in _REFUSED_WITHOUT_ENVELOPE:
            raise _refused(endpoint, http_status, text, retry_after_header)
        raise _malformed(endpoint, http_status, "the body is not a JSON object", text)

    body_code = envelope.get("code")
    # Any 2xx is an HTTP success (a gateway may turn 200 into 201/202); then the body's code decides.
    if not 200 <= http_status < 300 or (isinstance(body_code, int) and body_code != 200):
        raise _api_error(endpoint, http_status, body_code, envelope, retry_after_header)

    data = envelope.get("data")
    if not isinstance(data, dict):
        raise _malformed(endpoint, http_status, "the envelope has no 'data' object", text)
    return _task_from_data(endpoint, http_status, data, text)


def _api_error(
    endpoint: str, http_status: int, body_code: Any, envelope: dict[str, Any], retry_after_header: str | None
) -> ReveAPIError:
    # The reference puts the HTTP status in both places; if they disagree, the error one wins.
    status = body_code if 200 <= http_status < 300 else http_status
    machine_code = envelope.get("message") if isinstance(envelope.get("message"), str) else None
    detail = envelope.get("detail") if isinstance(envelope.get("detail"), str) else None
    error_class = api_error_class(status, machine_code)
    text = f"Reve API {endpoint} answered HTTP {status} {machine_code or 'without an error code'}"
    if detail:
        text += f": {detail}"
    error = error_class(
        text,
        endpoint=endpoint,
        http_status=status,
        code=machine_code,
        detail=detail,
        retry_after=parse_retry_after(retry_after_header),
    )
    if endpoint == GENERATE_ENDPOINT and status is not None and status >= 500 and not error.retryable:
        # A 502/504 from a gateway may hide a task that was created upstream.
        return ReveAmbiguousSubmissionError(
            f"{text}. The request reached the server, so a paid task may exist; it was not submitted again.",
            endpoint=endpoint,
            http_status=status,
            code=machine_code,
            detail=detail,
        )
    return error


def _task_from_data(endpoint: str, http_status: int, data: dict[str, Any], text: str) -> ReveTask:
    task_id = data.get("task_id")
    if not isinstance(task_id, str) or not task_id:
        raise _malformed(endpoint, http_status, "data.task_id is missing or not a string", text)
    status = data.get("status")
    if status not in TASK_STATUSES:
        raise _malformed(endpoint, http_status, f"unknown task status {status!r}", text)

    response = data.get("response") or {}
    urls = response.get("resultUrls", []) if isinstance(response, dict) else None
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise _malformed(endpoint, http_status, "response.resultUrls is not a list of strings", text)

    credits = data.get("consumed_credits")
    if isinstance(credits, float) and credits.is_integer():
        credits = int(credits)
    if credits is not None and (isinstance(credits, bool) or not isinstance(credits, int)):
        raise _malformed(endpoint, http_status, "consumed_credits is not a number", text)

    error_code, error_message = _task_error(data.get("error"))
    return ReveTask(
        task_id=task_id,
        status=status,
        result_urls=tuple(urls),
        consumed_credits=credits,
        error_code=error_code,
        error_message=error_message,
    )


def _task_error(error: Any) -> tuple[str | None, str | None]:
    # Documented only as "contains a code and message": accept a dict or a bare string.
    if isinstance(error, dict):
        code = error.get("code")
        message = error.get("message")
        return (str(code) if code is not None else None, str(message) if message is not None else None)
    if isinstance(error, str):
        return None, error
    return None, None


def _refused(endpoint: str, http_status: int, text: str, retry_after_header: str | None) -> ReveAPIError:
    snippet = " ".join(text[:_SNIPPET_CHARS].split())
    return api_error_class(http_status, None)(
        f"Reve API {endpoint} answered HTTP {http_status} without the API's envelope: {snippet!r}",
        endpoint=endpoint,
        http_status=http_status,
        retry_after=parse_retry_after(retry_after_header),
    )


def _malformed(endpoint: str, http_status: int, why: str, text: str) -> ReveAPIError:
    snippet = " ".join(text[:_SNIPPET_CHARS].split())
    message = f"Reve API {endpoint} answered HTTP {http_status} with an unexpected body ({why}): {snippet!r}"
    if endpoint == GENERATE_ENDPOINT and (200 <= http_status < 300 or http_status >= 500):
        return ReveAmbiguousSubmissionError(
            message + ". A paid task may have been created; it was not submitted again.",
            endpoint=endpoint,
            http_status=http_status,
        )
    return ReveMalformedResponseError(message, endpoint=endpoint, http_status=http_status)


def _scrub(error: ReveAPIError, secrets: list[str]) -> None:
    """Remove any secret a server might have echoed back from the error's text."""
    for secret in secrets:
        error.message = error.message.replace(secret, "***")
        if error.detail:
            error.detail = error.detail.replace(secret, "***")
    error.args = (error.message,)

"""What the Reve API reference fixes, written down once for the fake: task statuses, the machine
codes with their HTTP statuses, and the two envelopes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

IN_PROGRESS, SUCCESS, FAILED = "IN_PROGRESS", "SUCCESS", "FAILED"

#: The reference's machine codes and their HTTP statuses.
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
DEFAULT_DETAIL: Mapping[str, str] = {
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


class ApiError(Exception):
    """A refusal the API answers with the error envelope."""

    def __init__(self, code: str, detail: str | None = None, headers: Mapping[str, str] | None = None):
        super().__init__(code)
        self.code = code
        self.detail = detail or DEFAULT_DETAIL.get(code, code)
        self.headers = dict(headers or {})


def error_envelope(code: str, detail: str | None = None, status: int | None = None) -> tuple[int, dict]:
    """``(http_status, {"code", "message", "detail"})``; ``status`` overrides the table's status."""
    http = status or ERROR_STATUS[code]
    return http, {"code": http, "message": code, "detail": detail or DEFAULT_DETAIL.get(code, code)}


def success_envelope(data: dict[str, Any]) -> tuple[int, dict]:
    return 200, {"code": 200, "message": "success", "data": data}

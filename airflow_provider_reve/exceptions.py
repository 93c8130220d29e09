"""Every error the provider raises, in one family, and what each one means for a retry.

Users catch what they mean: ``ReveAuthenticationError`` for a bad key,
``ReveInsufficientCreditsError`` to top up, ``ReveRateLimitError`` to slow down, and so on.

Whether an error may be retried is a fact about the error, so it is stated here, once, beside
the classes: :func:`is_retryable` (may the same request be sent again?) and :func:`is_permanent`
(can trying the Airflow task again ever help?). ``ReveAPIError.retryable`` asks the first.
*How* to retry -- waits, ``Retry-After``, budgets, the loops -- is ``airflow_provider_reve.client.retry``,
which imports this module; this module imports nothing of the provider's but the ``ReveTask``
type, so the dependency runs one way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow.providers.common.compat.sdk import AirflowException

if TYPE_CHECKING:
    from airflow_provider_reve.models import ReveTask

GENERATE_ENDPOINT = "POST /api/v1/generate"
STATUS_ENDPOINT = "GET /api/v1/status"


class ReveError(AirflowException):
    """Base class of every error raised by the Reve provider."""


class ReveConfigurationError(ReveError, ValueError):
    """The connection or the hook is set up wrongly (no key, insecure URL, bad extra)."""


class ReveValidationError(ReveError, ValueError):
    """The request is invalid; raised before any HTTP call, so nothing was paid."""


class ReveAPIError(ReveError):
    """The Reve API answered with an error, or did not answer as documented.

    :param message: what happened, scrubbed of the key.
    :param endpoint: ``"POST /api/v1/generate"`` or ``"GET /api/v1/status"``.
    :param http_status: the HTTP status, ``None`` when no HTTP answer arrived.
    :param code: the API's machine code (``"INVALID_API_KEY"``, ...), ``None`` when unknown.
    :param detail: the API's human-readable detail, if any.
    :param retry_after: seconds the server asked us to wait (``Retry-After``), if sent.
    """

    def __init__(
        self,
        message: str,
        *,
        endpoint: str,
        http_status: int | None = None,
        code: str | None = None,
        detail: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.endpoint = endpoint
        self.http_status = http_status
        self.code = code
        self.detail = detail
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        """Whether sending the same request again is safe and may succeed (:func:`is_retryable`)."""
        return is_retryable(self)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(endpoint={self.endpoint!r}, http_status={self.http_status!r}, "
            f"code={self.code!r}, detail={self.detail!r})"
        )


class ReveBadRequestError(ReveAPIError):
    """400: ``INVALID_PROMPT``, ``INVALID_MODEL`` or ``INVALID_PARAMETER``."""


class ReveContentPolicyError(ReveBadRequestError):
    """400 ``CONTENT_POLICY_VIOLATION``: the prompt or output was rejected by moderation."""


class ReveAuthenticationError(ReveAPIError):
    """401 ``INVALID_API_KEY``: missing, malformed, unknown or revoked API key."""


class ReveInsufficientCreditsError(ReveAPIError):
    """402 ``INSUFFICIENT_CREDITS``: top up the account."""


class ReveNotFoundError(ReveAPIError):
    """404 ``TASK_NOT_FOUND``: no task with that id belongs to this account."""


class ReveRateLimitError(ReveAPIError):
    """429 ``RATE_LIMITED`` (slow down) or ``TOO_MANY_TASKS`` (too many in flight)."""

    @property
    def too_many_tasks(self) -> bool:
        return self.code == "TOO_MANY_TASKS"


class ReveServerError(ReveAPIError):
    """5xx: ``GENERATION_FAILED``, ``SERVICE_UNAVAILABLE``, ``TIMEOUT`` or a proxy error."""


class ReveMalformedResponseError(ReveAPIError):
    """The answer was not the documented envelope (HTML, truncated JSON, missing fields...)."""


class ReveConnectionError(ReveAPIError):
    """No HTTP answer: the connection failed or timed out.

    :param message: what happened.
    :param endpoint: ``"POST /api/v1/generate"`` or ``"GET /api/v1/status"``.
    :param request_sent: whether the request may have reached the server (a submission that
        may have arrived is never re-sent).
    """

    def __init__(self, message: str, *, endpoint: str, request_sent: bool) -> None:
        super().__init__(message, endpoint=endpoint)
        self.request_sent = request_sent


class ReveAmbiguousSubmissionError(ReveAPIError):
    """``generate`` was sent but no usable answer came back: a paid task may exist.

    The provider never re-sends such a request by itself, because that could pay twice.

    :param message: what happened, scrubbed of the key.
    :param endpoint: ``"POST /api/v1/generate"``.
    :param http_status: the HTTP status, ``None`` when no HTTP answer arrived.
    :param code: the API's machine code, ``None`` when unknown.
    :param detail: the API's human-readable detail, if any.
    :param task_id: the Reve task the answer named, when it named one (e.g. a ``SUCCESS``
        without result URLs): the task exists and was likely paid for; read it with
        ``ReveHook.get_status`` instead of submitting again. ``None`` when no id came back.
    """

    def __init__(
        self,
        message: str,
        *,
        endpoint: str,
        http_status: int | None = None,
        code: str | None = None,
        detail: str | None = None,
        task_id: str | None = None,
    ) -> None:
        super().__init__(message, endpoint=endpoint, http_status=http_status, code=code, detail=detail)
        self.task_id = task_id


class ReveDownloadError(ReveError):
    """A result file could not be downloaded.

    :param message: what happened.
    :param url: the URL concerned, redacted (see ``results.download.redact_url``): never its query string.
    :param http_status: the status of the final answer, when there was one.
    """

    def __init__(self, message: str, *, url: str, http_status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.http_status = http_status


class ReveUnsafeURLError(ReveDownloadError):
    """Refused before any body was read: a scheme, address, credentials or a redirect chain
    that the download policy does not follow."""


class ReveDownloadTooLargeError(ReveDownloadError):
    """The body is (or announces to be) larger than ``max_bytes``; nothing more is read."""


class ReveStorageError(ReveDownloadError):
    """Result files could not be written to their destination (read-only, full, unreachable).

    Always transient: the Reve task is paid and finished, so a later try re-attaches to it for
    free and stores its files once the destination is back. Before anything is paid for, an
    unusable destination is refused as invalid input instead (``download_to``). A
    ``ReveDownloadError``, as storage errors always were.

    :param message: what failed, with the destination (never a result URL).
    :param url: empty: no URL was at fault.
    :param http_status: ``None``: no HTTP answer was at fault.
    """

    def __init__(self, message: str, *, url: str = "", http_status: int | None = None) -> None:
        super().__init__(message, url=url, http_status=http_status)


class ReveTaskFailedError(ReveError):
    """The Reve task ended ``FAILED`` (the API refunds failed tasks).

    :param task: the failed task; its ``error_code`` is kept as ``code``.
    """

    def __init__(self, task: ReveTask) -> None:
        self.task = task
        self.code = task.error_code
        super().__init__(
            f"Reve task {task.task_id} FAILED: {task.error_code or 'UNKNOWN_ERROR'}: "
            f"{task.error_message or 'no message from the API'}"
        )


class ReveWaitTimeoutError(ReveError):
    """The Reve task was still ``IN_PROGRESS`` when the wait's deadline passed.

    :param message: what happened.
    :param task: the task's last state read, if any.
    """

    def __init__(self, message: str, task: ReveTask | None = None) -> None:
        super().__init__(message)
        self.task = task


_BY_CODE: dict[str, type[ReveAPIError]] = {
    "INVALID_PROMPT": ReveBadRequestError,
    "INVALID_MODEL": ReveBadRequestError,
    "INVALID_PARAMETER": ReveBadRequestError,
    "CONTENT_POLICY_VIOLATION": ReveContentPolicyError,
    "INVALID_API_KEY": ReveAuthenticationError,
    "INSUFFICIENT_CREDITS": ReveInsufficientCreditsError,
    "TASK_NOT_FOUND": ReveNotFoundError,
    "RATE_LIMITED": ReveRateLimitError,
    "TOO_MANY_TASKS": ReveRateLimitError,
    "GENERATION_FAILED": ReveServerError,
    "SERVICE_UNAVAILABLE": ReveServerError,
    "TIMEOUT": ReveServerError,
}
#: The machine codes the API reference documents. Any other ``message`` is not trusted as a
#: code: it is free text from the server (it may even echo the key), scrubbed like any other.
DOCUMENTED_CODES = frozenset(_BY_CODE)
_BY_STATUS: dict[int, type[ReveAPIError]] = {
    400: ReveBadRequestError,
    401: ReveAuthenticationError,
    403: ReveAuthenticationError,
    402: ReveInsufficientCreditsError,
    404: ReveNotFoundError,
    429: ReveRateLimitError,
}


def api_error_class(http_status: int | None, code: str | None) -> type[ReveAPIError]:
    """The exception class for an error answer: by machine code first, then by HTTP status.

    :param http_status: the answer's HTTP status, if any.
    :param code: the answer's machine code, if any.
    :return: a subclass of :class:`ReveAPIError` (the class itself when nothing matches).
    """
    if code in _BY_CODE:
        return _BY_CODE[code]
    if http_status is not None:
        if http_status in _BY_STATUS:
            return _BY_STATUS[http_status]
        if http_status >= 500:
            return ReveServerError
    return ReveAPIError


# -- what a retry can do ---------------------------------------------------------------------------

#: API error codes for which no retry, by us or by Airflow, can ever succeed.
PERMANENT_CODES = frozenset(
    {
        "INVALID_PROMPT",
        "INVALID_MODEL",
        "INVALID_PARAMETER",
        "CONTENT_POLICY_VIOLATION",
        "INVALID_API_KEY",
        "INSUFFICIENT_CREDITS",
        "TASK_NOT_FOUND",
    }
)
# A status poll is a read: any of these may go away on their own.
_RETRYABLE_STATUS_FOR_READS = frozenset({408, 409, 429, 500, 502, 503, 504})
# A submission is retried only when the API tells us nothing was created: "slow down",
# "internal error, safe to retry" (the reference's words) and "temporarily unavailable".
_SAFE_TO_RESUBMIT_CODES = frozenset({"RATE_LIMITED", "GENERATION_FAILED", "SERVICE_UNAVAILABLE"})
# Answers without a machine code whose status alone says "this request is wrong".
_PERMANENT_STATUS_WITHOUT_CODE = frozenset({400, 401, 402, 403, 404, 422})


def is_retryable(error: BaseException) -> bool:
    """Whether the request that raised ``error`` may be sent again as it is.

    Status polls are reads and may be re-sent on 408/409/429/5xx, garbled answers and connection
    errors. ``generate`` creates a paid task, so it may be re-sent only when the request provably
    created nothing. Result-file downloads are reads too; a refused URL, a file over
    ``max_bytes`` or a 403/404/410 (an expired signed URL) are not worth reading again.

    :param error: the error a request raised.
    :return: ``True`` when the same request may be sent again.
    """
    if isinstance(error, ReveAmbiguousSubmissionError):
        return False
    if isinstance(error, ReveDownloadError):
        if isinstance(error, (ReveUnsafeURLError, ReveDownloadTooLargeError)):
            return False
        return error.http_status is None or error.http_status in _RETRYABLE_STATUS_FOR_READS
    if not isinstance(error, ReveAPIError):
        return False
    if isinstance(error, ReveConnectionError):
        # A read may always be re-sent; a submission only if it never left this machine.
        return error.endpoint != GENERATE_ENDPOINT or not error.request_sent
    if error.endpoint == GENERATE_ENDPOINT:
        if error.code == "TOO_MANY_TASKS":
            # Nothing was created, so re-sending is safe -- but the wait is for other tasks to
            # finish (minutes), which the operator handles by deferring, not the hook by sleeping.
            return True
        # Without a documented machine code (a gateway's page), only a 429 proves nothing was
        # made: rate limiters refuse before forwarding, while proxies also answer 503 after
        # forwarding (an upstream reset or timeout), when the task may already exist.
        return error.code in _SAFE_TO_RESUBMIT_CODES or (error.code is None and error.http_status == 429)
    if isinstance(error, ReveMalformedResponseError):
        return True
    return error.http_status in _RETRYABLE_STATUS_FOR_READS


def is_permanent_code(code: object) -> bool:
    """Whether an API error code (at submit, or on a FAILED task) can never succeed on retry.

    Unknown codes are treated as transient: failed tasks are refunded, so one more try costs
    nothing, while wrongly calling an error permanent would drop work a retry could have done.
    Anything that is not a string (a task dict from a trigger event is data) is no code at all.

    :param code: a machine code such as ``"INVALID_API_KEY"``.
    :return: ``True`` for the codes in :data:`PERMANENT_CODES`.
    """
    return isinstance(code, str) and code in PERMANENT_CODES


def is_permanent(error: BaseException) -> bool:
    """Whether an error means the Airflow task can never succeed by being tried again.

    :param error: the error a task met.
    :return: ``True`` when no Airflow retry can help (the task fails without spending one).
    """
    if isinstance(error, (ReveValidationError, ReveConfigurationError)):
        return True
    if isinstance(error, ReveDownloadError):
        # A refused URL, an oversized file or an expired link stays so on every try.
        return not is_retryable(error)
    if isinstance(error, ReveAPIError):
        if error.code is not None:
            return is_permanent_code(error.code)
        if error.endpoint != GENERATE_ENDPOINT and error.http_status == 404:
            # A gateway's bare 404 on a status read says nothing about the task; only the API's
            # own TASK_NOT_FOUND may end a wait for a paid task.
            return False
        return error.http_status in _PERMANENT_STATUS_WITHOUT_CODE
    return False

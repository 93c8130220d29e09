"""What the sync and the async Reve client share; the siblings only move bytes.

The shape of openai-python's ``_base_client.py``: one :class:`BaseReveClient` decides everything
that does not depend on the HTTP library, and two siblings do the I/O --
:class:`~airflow_provider_reve.client.sync_client.ReveClient` with ``requests`` (workers) and
:class:`~airflow_provider_reve.client.async_client.AsyncReveClient` with ``aiohttp`` (the
triggerer). What the base owns:

* **building requests**: the URL (Base URL + endpoint path), the headers (``User-Agent`` and the
  Bearer key) and the JSON body of a submission (``None`` values left out, validated against the
  catalog before any HTTP call);
* **timeouts**: ``(connect, read)`` from the client's ``timeout`` or else the settings; a
  synchronous model's submission may take ``SYNC_GENERATE_READ_TIMEOUT`` (300 s) to answer;
* **error mapping**: an HTTP answer becomes a :class:`~airflow_provider_reve.models.ReveTask` or a
  typed :class:`~airflow_provider_reve.exceptions.ReveAPIError` (``client.envelope``); a failure
  before any answer becomes a ``ReveConnectionError`` -- or, for a submission that may have left,
  a ``ReveAmbiguousSubmissionError``, never re-sent;
* **retries**: the client's ``RetryPolicy``, applied by the one retry loop of ``client.retry``;
* **the rate limit**: every error answer is shown to the connection's gate (``client.ratelimit``),
  so a ``429`` holds the client's other requests too;
* **redaction**: every string from the server goes through the settings' scrubber, and neither a
  client's ``repr`` nor anything it logs shows the key.

The clients know nothing of Airflow: they take ``ConnectionSettings`` (``client.settings``:
``settings_from_connection`` builds and checks them from a connection's fields, or from your own
values), and ``hooks/reve.py`` adapts an Airflow connection to them.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any, Protocol

from airflow_provider_reve import __version__
from airflow_provider_reve.client.catalog import is_synchronous, validate_request
from airflow_provider_reve.client.envelope import parse_task_response
from airflow_provider_reve.client.ratelimit import AsyncRequestGate, SyncRequestGate
from airflow_provider_reve.client.retry import RetryPolicy
from airflow_provider_reve.client.settings import ConnectionSettings, checked_seconds
from airflow_provider_reve.exceptions import (
    GENERATE_ENDPOINT,
    STATUS_ENDPOINT,
    ReveAmbiguousSubmissionError,
    ReveAPIError,
    ReveAuthenticationError,
    ReveConfigurationError,
    ReveConnectionError,
    ReveError,
    ReveMalformedResponseError,
    ReveNotFoundError,
    ReveValidationError,
)
from airflow_provider_reve.models import ReveTask

__all__ = [
    "GENERATE_PATH",
    "MIN_REQUEST_SECONDS",
    "STATUS_PATH",
    "SYNC_GENERATE_READ_TIMEOUT",
    "USER_AGENT",
    "BaseReveClient",
    "SubmissionLog",
    "checked_task_id",
    "generate_body",
]

GENERATE_PATH = "/api/v1/generate"
STATUS_PATH = "/api/v1/status"
USER_AGENT = f"airflow-provider-reve/{__version__}"
#: How long a synchronous model's submission may take to answer (the image is made meanwhile).
SYNC_GENERATE_READ_TIMEOUT = 300.0
#: The shortest bound given to one status request, even when its caller's time is up.
MIN_REQUEST_SECONDS = 0.05

log = logging.getLogger(__name__)


class SubmissionLog(Protocol):
    """Where a client logs: a ``logging.Logger``, or any logger with the same ``info`` (Airflow's
    task logger)."""

    def info(self, msg: str, /, *args: Any) -> object:
        """Log ``msg % args`` at INFO.

        :param msg: the message, with ``%`` placeholders.
        :param args: the placeholders' values.
        :return: whatever the logger returns.
        """


def generate_body(model: str, prompt: str | None, params: dict[str, Any]) -> dict[str, Any]:
    """The JSON body of a submission: ``None`` values left out, checked against the catalog.

    :param model: the model id, e.g. ``"reve-2.0"``.
    :param prompt: the text description, or ``None``.
    :param params: the other request fields.
    :return: the body to send.
    :raises ReveValidationError: the request cannot be right; nothing was sent.
    """
    body = {"model": model, "prompt": prompt, **params}
    body = {name: value for name, value in body.items() if value is not None}
    validate_request(model, body)
    return body


def checked_task_id(task_id: Any) -> str:
    """A task id fit to be sent: a non-empty string, stripped.

    :param task_id: what the caller passed as a task id.
    :return: the id, without surrounding blanks.
    :raises ReveValidationError: not a non-empty string; nothing was sent.
    """
    if not isinstance(task_id, str) or not task_id.strip():
        raise ReveValidationError(f"a Reve task id must be a non-empty string, got {task_id!r}")
    return task_id.strip()


class BaseReveClient:
    """The requests, timeouts, error mapping, retries and rate limit of both Reve clients.

    Not used on its own: :class:`~airflow_provider_reve.client.sync_client.ReveClient` and
    :class:`~airflow_provider_reve.client.async_client.AsyncReveClient` add the I/O.
    ``timeout`` and ``retry_policy`` are plain attributes: a change applies to the next call.

    :param settings: Base URL, API key, timeouts and request rate, e.g. from
        ``settings_from_connection``.
    :param timeout: ``(connect, read)`` seconds for every request; ``None``: the settings' own.
    :param retry_policy: bounds for retrying transient errors; default ``RetryPolicy()``.
    :param logger: where the client logs a submission (an Airflow hook passes its task logger).
    """

    def __init__(
        self,
        settings: ConnectionSettings,
        *,
        timeout: tuple[float, float] | None = None,
        retry_policy: RetryPolicy | None = None,
        logger: SubmissionLog | None = None,
    ) -> None:
        self.settings = settings
        self.timeout = timeout
        self.retry_policy = retry_policy or RetryPolicy()
        self.log: SubmissionLog = logger or log

    def __repr__(self) -> str:
        # The settings hide the key from their own repr; the Base URL is safe to show (checked so).
        return f"{type(self).__name__}({self.settings.base_url!r})"

    # -- building requests ------------------------------------------------------------------------
    @property
    def timeouts(self) -> tuple[float, float]:
        """``(connect, read)`` seconds: the client's ``timeout``, or else the settings'.

        :return: the connect and the read timeout.
        :raises ReveConfigurationError: ``timeout`` is not two finite seconds above zero.
        """
        if self.timeout is None:
            return (self.settings.connect_timeout, self.settings.read_timeout)
        # A plain attribute (a hook sets it before every call), so it is checked where it is used.
        try:
            connect, read = self.timeout
        except (TypeError, ValueError):
            raise ReveConfigurationError(
                f"timeout must be (connect, read) seconds, got {self.timeout!r}."
            ) from None
        return checked_seconds("the connect timeout", connect), checked_seconds("the read timeout", read)

    def _generate_timeouts(self, model: str) -> tuple[float, float]:
        connect, read = self.timeouts
        if is_synchronous(model) and self.timeout is None:
            # A synchronous model answers only when the image is done (upscaling and high
            # test_time_scaling take minutes); a read timeout then would leave a paid task
            # ambiguous, so its submission waits longer than a status read.
            read = max(read, SYNC_GENERATE_READ_TIMEOUT)
        return connect, read

    def _url(self, path: str) -> str:
        return self.settings.base_url + path

    # -- error mapping ----------------------------------------------------------------------------
    def _task_from_answer(
        self,
        endpoint: str,
        http_status: int,
        body: bytes,
        *,
        retry_after: str | None,
        truncated: bool,
        gate: SyncRequestGate | AsyncRequestGate,
    ) -> ReveTask:
        """The envelope's task, or its typed error -- which the connection's gate sees first (a
        429 holds this client's other requests, and those of every client of the same key)."""
        try:
            return parse_task_response(
                endpoint,
                http_status,
                body,
                retry_after_header=retry_after,
                redactor=self.settings.redactor,
                truncated=truncated,
            )
        except ReveAPIError as error:
            gate.observe(error)
            raise

    def _transport_error(self, endpoint: str, *, sent: bool, what: str) -> ReveAPIError:
        """No answer arrived. A submission that may have left is never re-sent: it may be paid."""
        if endpoint == GENERATE_ENDPOINT and sent:
            return ReveAmbiguousSubmissionError(
                f"Reve API {endpoint}: the request was sent but no answer arrived ({what}). A paid "
                "task may have been created, so it was NOT submitted again.",
                endpoint=endpoint,
            )
        return ReveConnectionError(f"Reve API {endpoint}: {what}", endpoint=endpoint, request_sent=sent)

    @staticmethod
    def _about(task_id: str, task: ReveTask) -> ReveTask:
        """A status answer must be about the task we asked for (a cache that ignores the query
        string would otherwise hand us someone else's files)."""
        if task.task_id != task_id:
            raise ReveMalformedResponseError(
                f"Reve API {STATUS_ENDPOINT} answered for task {task.task_id!r} when asked about {task_id!r}",
                endpoint=STATUS_ENDPOINT,
                http_status=200,
            )
        return task

    # -- what both siblings report ----------------------------------------------------------------
    def _log_submitted(self, task: ReveTask, model: str) -> None:
        self.log.info(
            "Reve task %s submitted (model %s): %s%s",
            task.task_id,
            model,
            task.status,
            f", {task.consumed_credits} credits" if task.consumed_credits is not None else "",
        )

    @staticmethod
    def _key_probe_id() -> str:
        """A task id that cannot exist: asking for its status checks the key for free."""
        return f"airflow-connection-test-{uuid.uuid4().hex}"

    @staticmethod
    def _key_check_result(error: ReveError | None) -> tuple[bool, str]:
        """What a status read of ``_key_probe_id()`` says about the key (``None``: it answered)."""
        if error is None:
            return True, "Connection successful: the API answered (no credits spent)."
        if isinstance(error, ReveNotFoundError):
            if error.code != "TASK_NOT_FOUND":
                # A bare 404 comes from something else at that address (a wrong Base URL path).
                return False, str(error)
            return True, "Connection successful: the API key was accepted (no credits spent)."
        if isinstance(error, ReveAuthenticationError):
            return False, "API key rejected by the Reve API (401 INVALID_API_KEY)."
        return False, str(error)

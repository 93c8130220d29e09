"""``ReveClient``: the Reve API over ``requests``, for code that may block (a worker, a script).

Only the I/O lives here -- one keep-alive ``requests.Session``, a streamed and capped read of each
answer, and telling whether a failed request left this machine (``client.transport``). What is
sent, how long it may take, what an answer means and when to try again are
:class:`~airflow_provider_reve.client.base.BaseReveClient`'s.
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any

import requests
import requests.adapters

from airflow_provider_reve.client.base import (
    GENERATE_PATH,
    STATUS_PATH,
    USER_AGENT,
    BaseReveClient,
    SubmissionLog,
    checked_task_id,
    generate_body,
)
from airflow_provider_reve.client.envelope import MAX_RESPONSE_BYTES
from airflow_provider_reve.client.ratelimit import process_gate
from airflow_provider_reve.client.retry import RetryPolicy, call_with_retries
from airflow_provider_reve.client.settings import ConnectionSettings
from airflow_provider_reve.client.transport import request_may_have_been_sent
from airflow_provider_reve.exceptions import GENERATE_ENDPOINT, STATUS_ENDPOINT, ReveError
from airflow_provider_reve.models import ReveTask

__all__ = ["ReveClient"]


class ReveClient(BaseReveClient):
    """Create and read Reve tasks with ``requests``; no Airflow needed.

    ``generate()`` spends credits and is re-sent only when the request provably created nothing;
    ``get_status()`` is retried on transient errors within the retry policy. Requests of every
    client of the same Base URL and key in this process share one rate limit. Use it as a context
    manager, or call :meth:`close`, to close its connections.

    :param settings: Base URL, API key, timeouts and request rate, e.g.
        ``settings_from_connection("mine", "https://reve2img.com", None, key, {})``.
    :param timeout: ``(connect, read)`` seconds for every request; ``None``: the settings' own.
    :param retry_policy: bounds for retrying transient errors; default ``RetryPolicy()``.
    :param logger: where the client logs a submission; default this module's logger.
    :param adapter: a ``requests`` transport adapter mounted for ``http://`` and ``https://``
        (an Airflow hook passes its TCP keep-alive adapter); ``None``: ``requests``' default.
    """

    def __init__(
        self,
        settings: ConnectionSettings,
        *,
        timeout: tuple[float, float] | None = None,
        retry_policy: RetryPolicy | None = None,
        logger: SubmissionLog | None = None,
        adapter: requests.adapters.BaseAdapter | None = None,
    ) -> None:
        super().__init__(settings, timeout=timeout, retry_policy=retry_policy, logger=logger)
        self.adapter = adapter
        self._session: requests.Session | None = None

    @property
    def session(self) -> requests.Session:
        """The client's one ``requests.Session`` (kept alive across calls), authenticated by Bearer key.

        :return: the session, opened on first use and again after :meth:`close`.
        """
        if self._session is None:
            session = requests.Session()
            session.headers.update({"User-Agent": USER_AGENT, **self.settings.auth_headers})
            if self.adapter is not None:
                session.mount("https://", self.adapter)
                session.mount("http://", self.adapter)
            self._session = session
        return self._session

    def generate(self, model: str, prompt: str | None = None, **params: Any) -> ReveTask:
        """Create a generation task (this spends credits) and return it as the API answered.

        Parameters that are ``None`` are left out of the request. The input is validated before
        any HTTP call. The request is re-sent only when it provably created nothing; otherwise
        :class:`~airflow_provider_reve.exceptions.ReveAmbiguousSubmissionError` says a paid task
        may exist.

        :param model: the model id, e.g. ``"reve-2.0"`` or ``"seedream-5"``.
        :param prompt: the text description (most models need one).
        :param params: any other request field (``aspect_ratio``, ``num_images``, ``image_urls``...).
        :return: the task as the API answered: ``SUCCESS`` at once for a synchronous model,
            else ``IN_PROGRESS``.
        """
        body = generate_body(model, prompt, params)
        timeout = self._generate_timeouts(model)
        task = call_with_retries(
            lambda: self._request("POST", GENERATE_PATH, GENERATE_ENDPOINT, timeout, json=body),
            self.retry_policy,
            what=f"Reve {GENERATE_ENDPOINT}",
        )
        task = task.with_model(model)
        self._log_submitted(task, model)
        return task

    def get_status(self, task_id: str, *, model: str | None = None) -> ReveTask:
        """Read a task's current state; transient errors are retried within the retry policy.

        :param task_id: the Reve task id that :meth:`generate` returned.
        :param model: the model, remembered in the returned task (the status API does not say it).
        :return: the task's current state.
        """
        task_id = checked_task_id(task_id)
        task = call_with_retries(
            lambda: self._about(task_id, self._status_once(task_id)),
            self.retry_policy,
            what=f"Reve {STATUS_ENDPOINT}",
        )
        return task.with_model(model)

    def check_key(self) -> tuple[bool, str]:
        """Check the key without spending credits: ask for the status of a task that cannot exist.

        One request, never retried.

        :return: ``(True, message)`` when the API accepted the key, else ``(False, why)``.
        """
        try:
            self._status_once(self._key_probe_id())
        except ReveError as error:
            return self._key_check_result(error)
        return self._key_check_result(None)

    def close(self) -> None:
        """Close the client's HTTP session; the next call opens a new one."""
        if self._session is not None:
            self._session.close()
            self._session = None

    def __enter__(self) -> ReveClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- the I/O --------------------------------------------------------------------------------
    def _status_once(self, task_id: str) -> ReveTask:
        return self._request("GET", STATUS_PATH, STATUS_ENDPOINT, self.timeouts, params={"task_id": task_id})

    def _request(
        self, method: str, path: str, endpoint: str, timeout: tuple[float, float], **kwargs: Any
    ) -> ReveTask:
        session = self.session
        connect, read = timeout
        # The connection's shared budget (max_requests_per_second, 429 pauses) within this process.
        gate = process_gate(self.settings)
        gate.acquire(endpoint)
        deadline = time.monotonic() + connect + read
        try:
            # Streamed, so that no more than MAX_RESPONSE_BYTES of an answer is ever held.
            response = session.request(
                method, self._url(path), timeout=(connect, read), stream=True, **kwargs
            )
            with response:
                body, truncated = _read_capped(response, deadline)
        except requests.exceptions.RequestException as error:
            raise self._transport_error(
                endpoint,
                sent=request_may_have_been_sent(error),
                what=f"{type(error).__name__} talking to {self.settings.base_url}",
            ) from None
        return self._task_from_answer(
            endpoint,
            response.status_code,
            body,
            retry_after=response.headers.get("Retry-After"),
            truncated=truncated,
            gate=gate,
        )


def _read_capped(response: requests.Response, deadline: float) -> tuple[bytes, bool]:
    """At most ``MAX_RESPONSE_BYTES`` of the (decoded) body, and whether there was more.

    An API answer is tiny; a proxy's error page may be hundreds of MiB. Reading stops at the
    cap, and closing the response then drops the connection instead of draining the rest.
    ``requests``' read timeout restarts with every byte, so a trickling answer is also cut at
    ``deadline`` (a ``time.monotonic()`` value): connect + read timeout for the whole request.
    """
    body = bytearray()
    for chunk in response.iter_content(chunk_size=1024):
        body += chunk
        if len(body) > MAX_RESPONSE_BYTES:
            return bytes(body[:MAX_RESPONSE_BYTES]), True
        if time.monotonic() > deadline:
            raise requests.exceptions.ReadTimeout("the answer was still arriving when its time was up")
    return bytes(body), False

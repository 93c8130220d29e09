"""Hooks for the Reve generation API.

``ReveHook`` (sync, for workers) builds on providers-http's ``HttpHook`` for what it does well --
one ``requests`` session with TCP keep-alive per hook -- and replaces what would be wrong for
us: Bearer auth instead of Basic, https by default, and connection extras that stay options
instead of becoming HTTP headers.

``ReveAsyncHook`` (async, for the triggerer) resolves the connection without blocking the
event loop and shares one ``aiohttp`` session per running loop among all triggers.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import requests
from airflow.providers.common.compat.sdk import AirflowNotFoundException
from airflow.providers.http.hooks.http import HttpHook

from airflow_provider_reve import __version__, config
from airflow_provider_reve.client.catalog import is_synchronous, validate_request
from airflow_provider_reve.client.envelope import MAX_RESPONSE_BYTES, parse_task_response
from airflow_provider_reve.client.ratelimit import loop_gate, process_gate
from airflow_provider_reve.client.retry import RetryPolicy, acall_with_retries, call_with_retries
from airflow_provider_reve.client.settings import (
    ConnectionSettings,
    missing_connection_message,
    name_the_connection,
    settings_from_connection,
)
from airflow_provider_reve.client.transport import request_may_have_been_sent
from airflow_provider_reve.exceptions import (
    GENERATE_ENDPOINT,
    STATUS_ENDPOINT,
    ReveAmbiguousSubmissionError,
    ReveAPIError,
    ReveAuthenticationError,
    ReveConnectionError,
    ReveError,
    ReveMalformedResponseError,
    ReveNotFoundError,
    ReveValidationError,
)
from airflow_provider_reve.models import ReveTask
from airflow_provider_reve.results.download import is_public_address
from airflow_provider_reve.results.naming import check_file_name
from airflow_provider_reve.results.storage import DEFAULT_MAX_BYTES, StoredResults, store_results
from airflow_provider_reve.results.task_list import tasks_from_results

GENERATE_PATH = "/api/v1/generate"
STATUS_PATH = "/api/v1/status"
USER_AGENT = f"airflow-provider-reve/{__version__}"
# How long a synchronous model's submission may take to answer (the image is made meanwhile).
SYNC_GENERATE_READ_TIMEOUT = 300.0
# The shortest bound given to one status request, even when its caller's time is up.
_MIN_REQUEST_SECONDS = 0.05


def is_private_host(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.localdomain") or host.lower().endswith(".localhost"):
        return True
    try:
        # The download policy's own notion of "public", so the two can never disagree.
        return not is_public_address(host.strip("[]"))
    except ValueError:  # a name, not an address
        return False


def _for_task(task_id: str, task: ReveTask) -> ReveTask:
    """A status answer must be about the task we asked for (a cache that ignores the query
    string would otherwise hand us someone else's files)."""
    if task.task_id != task_id:
        raise ReveMalformedResponseError(
            f"Reve API {STATUS_ENDPOINT} answered for task {task.task_id!r} when asked about {task_id!r}",
            endpoint=STATUS_ENDPOINT,
            http_status=200,
        )
    return task


def _check_task_id(task_id: Any) -> str:
    if not isinstance(task_id, str) or not task_id.strip():
        raise ReveValidationError(f"a Reve task id must be a non-empty string, got {task_id!r}")
    return task_id.strip()


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


async def _aread_capped(response: aiohttp.ClientResponse) -> tuple[bytes, bool]:
    """Async twin of :func:`_read_capped`; leaving the response unread closes its connection."""
    body = bytearray()
    while len(body) <= MAX_RESPONSE_BYTES:
        chunk = await response.content.read(MAX_RESPONSE_BYTES + 1 - len(body))
        if not chunk:
            return bytes(body), False
        body += chunk
    return bytes(body[:MAX_RESPONSE_BYTES]), True


class ReveHook(HttpHook):
    """Call the Reve API: ``generate()`` creates a task, ``get_status()`` reads one.

    :param reve_conn_id: a connection of type ``reve``: API key in the password field,
        optional Base URL in host (default ``https://reve2img.com``).
    :param timeout: ``(connect, read)`` seconds; overrides the connection's extras.
    :param retry_policy: bounds for retrying transient errors (attempts, time, backoff); see the
        "Errors and retries" page of the documentation.
    """

    conn_name_attr = "reve_conn_id"
    default_conn_name = "reve_default"
    conn_type = "reve"
    hook_name = "Reve"
    # HttpHook builds a requests adapter per hook (a few KiB); only the sync session uses it.
    _tcp_keep_alive = True

    def __init__(
        self,
        reve_conn_id: str = default_conn_name,
        *,
        timeout: tuple[float, float] | None = None,
        retry_policy: RetryPolicy | None = None,
    ) -> None:
        super().__init__(method="POST", http_conn_id=reve_conn_id, tcp_keep_alive=self._tcp_keep_alive)
        self.reve_conn_id = reve_conn_id
        self.timeout = timeout
        self.retry_policy = retry_policy or RetryPolicy()
        self._session: requests.Session | None = None
        self._settings: ConnectionSettings | None = None

    # -- connection ------------------------------------------------------------------------
    @property
    def settings(self) -> ConnectionSettings:
        if self._settings is None:
            try:
                conn = self.get_connection(self.reve_conn_id)
            except AirflowNotFoundException as error:
                # Same exception type (retries and triggers treat it as before), a message that
                # says what to create.
                raise AirflowNotFoundException(missing_connection_message(self.reve_conn_id)) from error
            self._settings = settings_from_connection(
                self.reve_conn_id, conn.host, conn.port, conn.password, conn.extra_dejson
            )
        return self._settings

    def get_conn(
        self, headers: dict[Any, Any] | None = None, extra_options: dict[str, Any] | None = None
    ) -> requests.Session:
        """The hook's one ``requests.Session`` (kept alive across calls), authenticated by Bearer key."""
        if self._session is None:
            settings = self.settings
            self.base_url = settings.base_url
            session = requests.Session()
            session.headers.update({"User-Agent": USER_AGENT, **settings.auth_headers})
            # HttpHook's TCP keep-alive adapter (or the caller's own adapter) serves both schemes.
            adapter = self.adapter or self.keep_alive_adapter
            if adapter is not None:
                session.mount("https://", adapter)
                session.mount("http://", adapter)
            self._session = session
        if headers:
            # Extra headers are welcome; replacing the Bearer key through them is not.
            self._session.headers.update(
                {k: v for k, v in headers.items() if str(k).lower() != "authorization"}
            )
        return self._session

    @property
    def _timeouts(self) -> tuple[float, float]:
        if self.timeout is not None:
            return self.timeout
        return (self.settings.connect_timeout, self.settings.read_timeout)

    # -- API -------------------------------------------------------------------------------
    def generate(self, model: str, prompt: str | None = None, **params: Any) -> ReveTask:
        """Create a generation task (this spends credits) and return it as the API answered.

        Parameters that are ``None`` are left out of the request. The input is validated
        before any HTTP call. The request is re-sent only when it provably created nothing;
        otherwise
        :class:`~airflow_provider_reve.exceptions.ReveAmbiguousSubmissionError` says a paid task may exist.

        :param model: the model id, e.g. ``"reve-2.0"`` or ``"seedream-5"``.
        :param prompt: the text description (most models need one).
        :param params: any other request field (``aspect_ratio``, ``num_images``, ``image_urls``...).
        :return: the task as the API answered: ``SUCCESS`` at once for a synchronous model,
            else ``IN_PROGRESS``.
        """
        body = {"model": model, "prompt": prompt, **params}
        body = {name: value for name, value in body.items() if value is not None}
        validate_request(model, body)
        connect, read = self._timeouts
        if is_synchronous(model) and self.timeout is None:
            # A synchronous model answers only when the image is done (upscaling and high
            # test_time_scaling take minutes); a read timeout then would leave a paid task
            # ambiguous, so its submission waits longer than a status read.
            read = max(read, SYNC_GENERATE_READ_TIMEOUT)
        task = call_with_retries(
            lambda: self._request(
                "POST", GENERATE_PATH, GENERATE_ENDPOINT, json=body, timeout=(connect, read)
            ),
            self.retry_policy,
            what=f"Reve {GENERATE_ENDPOINT}",
        )
        task = task.with_model(model)
        self.log.info(
            "Reve task %s submitted (model %s): %s%s",
            task.task_id,
            model,
            task.status,
            f", {task.consumed_credits} credits" if task.consumed_credits is not None else "",
        )
        return task

    def get_status(self, task_id: str, *, model: str | None = None) -> ReveTask:
        """Read a task's current state; transient errors are retried within the retry policy.

        :param task_id: the Reve task id that ``generate()`` returned.
        :param model: the model, remembered in the returned task (the status API does not say it).
        :return: the task's current state.
        """
        task_id = _check_task_id(task_id)
        task = call_with_retries(
            lambda: _for_task(
                task_id, self._request("GET", STATUS_PATH, STATUS_ENDPOINT, params={"task_id": task_id})
            ),
            self.retry_policy,
            what=f"Reve {STATUS_ENDPOINT}",
        )
        return task.with_model(model)

    def test_connection(self) -> tuple[bool, str]:
        """Check the key without spending credits: ask for the status of a task that cannot exist.

        :return: ``(True, message)`` when the API accepted the key, else ``(False, why)``.
        """
        probe_id = f"airflow-connection-test-{uuid.uuid4().hex}"
        try:
            self._request("GET", STATUS_PATH, STATUS_ENDPOINT, params={"task_id": probe_id})
        except ReveNotFoundError as error:
            if error.code != "TASK_NOT_FOUND":
                # A bare 404 comes from something else at that address (a wrong Base URL path).
                return False, str(error)
            return True, "Connection successful: the API key was accepted (no credits spent)."
        except ReveAuthenticationError:
            return False, "API key rejected by the Reve API (401 INVALID_API_KEY)."
        except ReveError as error:
            return False, str(error)
        return True, "Connection successful: the API answered (no credits spent)."

    # -- result files ------------------------------------------------------------------------
    def download_results(
        self,
        results: Any,
        destination: Any,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        allow_private_addresses: bool | None = None,
        output_format: str | None = None,
        file_name: str | None = None,
    ) -> list[dict[str, Any]]:
        """Store every result file of ``results`` at ``destination``; return the manifest.

        :param results: a ``ReveTask``, its dict (what the operator returns), or a list of them.
        :param destination: a local folder, a ``file://`` / ``s3://`` / ``gs://``... URL, or an
            ``airflow.sdk.ObjectStoragePath``.
        :param max_bytes: the largest file accepted.
        :param allow_private_addresses: fetch from private/loopback addresses too. ``None``: only
            when this connection's Base URL is itself such an address (e.g. the offline fake).
        :param output_format: the extension to use when a server sends no known Content-Type.
        :param file_name: a name template, e.g. ``"{metadata[sku]}_{index}"`` (see README).
        :return: the manifest: one dict per stored file (``reve_task_id``, ``index``, ``url``,
            ``path``, ``bytes``, ``sha256``, ``content_type``, ``model``, ``consumed_credits``).

        Result URLs are fetched without the API key (they are not the API's). See
        ``airflow_provider_reve.results.storage`` for names, crash safety and idempotence.
        """
        return self.store_results(
            tasks_from_results(results),
            destination,
            max_bytes=max_bytes,
            allow_private_addresses=allow_private_addresses,
            output_format=output_format,
            name_template=check_file_name(file_name),
        ).files

    def store_results(
        self,
        tasks: list[ReveTask],
        destination: Any,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        allow_private_addresses: bool | None = None,
        output_format: str | None = None,
        logger: Any = None,
        name_template: str | None = None,
        owner: dict[str, Any] | None = None,
    ) -> StoredResults:
        """:meth:`download_results` for operators: also says where the manifest file went.

        ``name_template`` and ``owner``: see :func:`~airflow_provider_reve.results.storage.store_results`.
        """
        if allow_private_addresses is None:
            allow_private_addresses = self.base_url_is_private()
        return store_results(
            tasks,
            destination,
            allow_private_addresses=allow_private_addresses,
            max_bytes=max_bytes,
            output_format=output_format,
            retry_policy=self.retry_policy,
            logger=logger,
            hidden=[self.settings.api_key],
            name_template=name_template,
            owner=owner,
        )

    def base_url_is_private(self) -> bool:
        """Whether the connection's Base URL is loopback or a non-public IP address.

        A user who points the connection at such a server (the offline fake, an internal
        gateway) chose it; its result URLs are on the same network.

        :return: ``True`` for ``localhost``, a loopback or a non-public IP address.
        """
        return is_private_host(urlsplit(self.settings.base_url).hostname or "")

    def _request(
        self,
        method: str,
        path: str,
        endpoint: str,
        timeout: tuple[float, float] | None = None,
        **kwargs: Any,
    ) -> ReveTask:
        session = self.get_conn()
        url = self.settings.base_url + path
        connect, read = timeout or self._timeouts
        # The connection's shared budget (max_requests_per_second, 429 pauses) within this process.
        gate = process_gate(self.settings)
        gate.acquire(endpoint)
        deadline = time.monotonic() + connect + read
        try:
            # Streamed, so that no more than MAX_RESPONSE_BYTES of an answer is ever held.
            response = session.request(method, url, timeout=(connect, read), stream=True, **kwargs)
            with response:
                body, truncated = _read_capped(response, deadline)
        except requests.exceptions.RequestException as error:
            raise self._transport_error(endpoint, error) from None
        try:
            return parse_task_response(
                endpoint,
                response.status_code,
                body,
                retry_after_header=response.headers.get("Retry-After"),
                redactor=self.settings.redactor,
                truncated=truncated,
            )
        except ReveAPIError as error:
            gate.observe(error)  # a 429 holds this process's other requests too
            name_the_connection(error, self.reve_conn_id)
            raise

    def _transport_error(self, endpoint: str, error: requests.exceptions.RequestException) -> ReveAPIError:
        sent = request_may_have_been_sent(error)
        what = f"{type(error).__name__} talking to {self.settings.base_url}"
        if endpoint == GENERATE_ENDPOINT and sent:
            return ReveAmbiguousSubmissionError(
                f"Reve API {endpoint}: the request was sent but no answer arrived ({what}). A paid "
                "task may have been created, so it was NOT submitted again.",
                endpoint=endpoint,
            )
        return ReveConnectionError(f"Reve API {endpoint}: {what}", endpoint=endpoint, request_sent=sent)

    def close(self) -> None:
        """Close the hook's HTTP session; the next call opens a new one."""
        if self._session is not None:
            self._session.close()
            self._session = None


@dataclass
class _LoopSession:
    session: aiohttp.ClientSession
    users: int = 0


# One aiohttp session per running event loop, shared by every trigger on that loop: the
# triggerer runs all triggers on one loop, while dag.test() starts a new loop per trigger.
# Sessions are reference-counted and closed when their last user leaves, so a loop that ends
# (dag.test) leaves nothing behind, while the triggerer's busy loop keeps its connections alive.
_SESSIONS: dict[asyncio.AbstractEventLoop, _LoopSession] = {}


@asynccontextmanager
async def shared_client_session() -> AsyncIterator[aiohttp.ClientSession]:
    """Borrow the running loop's shared ``aiohttp.ClientSession`` (created on first use)."""
    loop = asyncio.get_running_loop()
    entry = _SESSIONS.get(loop)
    if entry is None or entry.session.closed:
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=config.max_in_flight(), keepalive_timeout=30),
            headers={"User-Agent": USER_AGENT},
        )
        entry = _SESSIONS[loop] = _LoopSession(session)
    entry.users += 1
    try:
        yield entry.session
    finally:
        entry.users -= 1
        if entry.users == 0 and _SESSIONS.get(loop) is entry:
            del _SESSIONS[loop]
            await entry.session.close()


class ReveAsyncHook(ReveHook):
    """Async status reads for triggers: never blocks the loop, shares the loop's HTTP session."""

    _tcp_keep_alive = False  # a trigger holds thousands of these and never uses requests

    @asynccontextmanager
    async def keep_session(self) -> AsyncIterator[None]:
        """Hold the loop's shared session open across many calls (a trigger's whole wait).

        :return: an async context manager; the session stays open while it is entered.
        """
        async with shared_client_session():
            yield

    async def async_settings(self) -> ConnectionSettings:
        if self._settings is None:
            from airflow.providers.common.compat.connection import (
                get_async_connection,
                get_async_extra_dejson,
            )

            try:
                conn = await get_async_connection(self.reve_conn_id, hook=self)
            except AirflowNotFoundException as error:
                raise AirflowNotFoundException(missing_connection_message(self.reve_conn_id)) from error
            extra = await get_async_extra_dejson(conn)
            self._settings = settings_from_connection(
                self.reve_conn_id, conn.host, conn.port, conn.password, extra
            )
        return self._settings

    async def aget_status(
        self, task_id: str, *, model: str | None = None, within: float | None = None
    ) -> ReveTask:
        """Read a task's current state; transient errors are retried within the retry policy.

        :param task_id: the Reve task id.
        :param model: the model, remembered in the returned task (the status API does not say it).
        :param within: seconds the whole call may take, retries included (a trigger passes the
            time left to its deadline). Each request is also bounded on its own, by the
            connect + read timeout in total, so a trickling answer cannot hold it.
        :return: the task's current state.
        """
        task_id = _check_task_id(task_id)
        settings = await self.async_settings()
        ends_at = None if within is None else time.monotonic() + max(0.0, within)
        policy = self.retry_policy
        if within is not None:
            policy = replace(policy, max_elapsed_seconds=min(policy.max_elapsed_seconds, within))
        task = await acall_with_retries(
            lambda: self._aget_status_for(settings, task_id, ends_at),
            policy,
            what=f"Reve {STATUS_ENDPOINT}",
        )
        return task.with_model(model)

    def _request_timeout(self, settings: ConnectionSettings, ends_at: float | None) -> aiohttp.ClientTimeout:
        """``(connect, read)`` from the hook's ``timeout`` or else the connection, plus a total bound.

        aiohttp's ``sock_read`` restarts with every chunk, so a server trickling its answer could
        hold one request -- and a trigger's deadline -- for ever. ``total`` caps the whole
        request at ``connect + read`` seconds, and at ``ends_at`` (monotonic) when given.
        """
        connect, read = self.timeout or (settings.connect_timeout, settings.read_timeout)
        total = connect + read
        if ends_at is not None:
            # Never zero: aiohttp reads a total of 0 as "no limit".
            total = min(total, max(ends_at - time.monotonic(), _MIN_REQUEST_SECONDS))
        return aiohttp.ClientTimeout(total=total, sock_connect=connect, sock_read=read)

    async def _aget_status_for(
        self, settings: ConnectionSettings, task_id: str, ends_at: float | None
    ) -> ReveTask:
        return _for_task(task_id, await self._aget_status_once(settings, task_id, ends_at))

    async def _aget_status_once(
        self, settings: ConnectionSettings, task_id: str, ends_at: float | None = None
    ) -> ReveTask:
        # The connection's shared budget on this loop: 429 pauses, max_requests_per_second, and
        # at most [reve] max_in_flight requests at once (the rest wait there, holding next to nothing).
        gate = loop_gate(settings)
        try:
            async with (
                gate.request(STATUS_ENDPOINT, ends_at),
                shared_client_session() as session,
                session.get(
                    settings.base_url + STATUS_PATH,
                    params={"task_id": task_id},
                    headers=settings.auth_headers,
                    timeout=self._request_timeout(settings, ends_at),
                ) as response,
            ):
                body, truncated = await _aread_capped(response)
                status, retry_after = response.status, response.headers.get("Retry-After")
        except aiohttp.ClientConnectorError as error:
            raise ReveConnectionError(
                f"Reve API {STATUS_ENDPOINT}: cannot connect to {settings.base_url} ({type(error).__name__})",
                endpoint=STATUS_ENDPOINT,
                request_sent=False,
            ) from None
        except (aiohttp.ClientError, asyncio.TimeoutError) as error:
            raise ReveConnectionError(
                f"Reve API {STATUS_ENDPOINT}: {type(error).__name__} talking to {settings.base_url}",
                endpoint=STATUS_ENDPOINT,
                request_sent=True,
            ) from None
        try:
            return parse_task_response(
                STATUS_ENDPOINT,
                status,
                body,
                retry_after_header=retry_after,
                redactor=settings.redactor,
                truncated=truncated,
            )
        except ReveAPIError as error:
            gate.observe(error)  # a 429 pauses every trigger of this connection on the loop
            name_the_connection(error, self.reve_conn_id)
            raise

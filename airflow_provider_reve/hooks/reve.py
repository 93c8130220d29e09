"""Hooks for the Reve generation API: thin adapters from an Airflow connection to the Reve clients.

The HTTP itself -- requests, timeouts, error mapping, retries, the rate limit -- is the
Airflow-free clients' (``airflow_provider_reve.client``:
:class:`~airflow_provider_reve.client.sync_client.ReveClient` and
:class:`~airflow_provider_reve.client.async_client.AsyncReveClient`). A hook reads its connection
into ``ConnectionSettings``, builds its client once, names the connection in the errors a user
fixes there, and stores result files (``results/``).

``ReveHook`` (sync, for workers) builds on providers-http's ``HttpHook`` for what it does well --
one ``requests`` session with TCP keep-alive per hook -- and replaces what would be wrong for
us: Bearer auth instead of Basic, https by default, and connection extras that stay options
instead of becoming HTTP headers.

``ReveAsyncHook`` (async, for the triggerer) resolves the connection without blocking the
event loop and shares one ``aiohttp`` session per running loop among all triggers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from airflow.providers.common.compat.sdk import AirflowNotFoundException
from airflow.providers.http.hooks.http import HttpHook

from airflow_provider_reve.client.async_client import AsyncReveClient, shared_client_session
from airflow_provider_reve.client.base import checked_task_id, generate_body
from airflow_provider_reve.client.retry import RetryPolicy
from airflow_provider_reve.client.settings import (
    ConnectionSettings,
    missing_connection_message,
    name_the_connection,
    settings_from_connection,
)
from airflow_provider_reve.client.sync_client import ReveClient
from airflow_provider_reve.exceptions import ReveAPIError, ReveError
from airflow_provider_reve.models import ReveTask
from airflow_provider_reve.results.download import is_public_address
from airflow_provider_reve.results.naming import check_file_name
from airflow_provider_reve.results.storage import DEFAULT_MAX_BYTES, StoredResults, store_results
from airflow_provider_reve.results.task_list import tasks_from_results

if TYPE_CHECKING:
    import requests

__all__ = ["ReveAsyncHook", "ReveHook", "is_private_host", "shared_client_session"]


def is_private_host(host: str) -> bool:
    """Whether ``host`` is ``localhost``, a loopback or a non-public IP address.

    :param host: a host name or IP address (IPv6 with or without brackets).
    :return: ``True`` for such a host; a name other than localhost is not private.
    """
    if host.lower() in ("localhost", "localhost.localdomain") or host.lower().endswith(".localhost"):
        return True
    try:
        # The download policy's own notion of "public", so the two can never disagree.
        return not is_public_address(host.strip("[]"))
    except ValueError:  # a name, not an address
        return False


@contextmanager
def _naming_the_connection(conn_id: str) -> Iterator[None]:
    """A refused key is fixed in the Airflow connection: its error says which one.

    Outside the client's retry loop, which never retries a refused key.
    """
    try:
        yield
    except ReveAPIError as error:
        name_the_connection(error, conn_id)
        raise


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
        # Plain attributes, as before the client existed: a change applies to the next call.
        self.timeout = timeout
        self.retry_policy = retry_policy or RetryPolicy()
        self._settings: ConnectionSettings | None = None
        self._client: ReveClient | None = None

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

    @property
    def client(self) -> ReveClient:
        """The hook's Airflow-free client, built from the connection on first use.

        It follows the hook's ``timeout`` and ``retry_policy`` as they are when it is used.

        :return: the :class:`~airflow_provider_reve.client.sync_client.ReveClient` of this hook.
        """
        if self._client is None:
            settings = self.settings
            self.base_url = settings.base_url
            # HttpHook's TCP keep-alive adapter (or the caller's own adapter) serves both schemes.
            self._client = ReveClient(
                settings, logger=self.log, adapter=self.adapter or self.keep_alive_adapter
            )
        self._client.timeout, self._client.retry_policy = self.timeout, self.retry_policy
        return self._client

    def get_conn(
        self, headers: dict[Any, Any] | None = None, extra_options: dict[str, Any] | None = None
    ) -> requests.Session:
        """The hook's one ``requests.Session`` (kept alive across calls), authenticated by Bearer key."""
        session = self.client.session
        if headers:
            # Extra headers are welcome; replacing the Bearer key through them is not.
            session.headers.update({k: v for k, v in headers.items() if str(k).lower() != "authorization"})
        return session

    @property
    def _timeouts(self) -> tuple[float, float]:
        return self.client.timeouts

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
        # Refused before the connection is read: a wrong request fails for good even when the
        # connection is missing too (the client checks it again, at no cost worth avoiding).
        generate_body(model, prompt, params)
        with _naming_the_connection(self.reve_conn_id):
            return self.client.generate(model, prompt, **params)

    def get_status(self, task_id: str, *, model: str | None = None) -> ReveTask:
        """Read a task's current state; transient errors are retried within the retry policy.

        :param task_id: the Reve task id that ``generate()`` returned.
        :param model: the model, remembered in the returned task (the status API does not say it).
        :return: the task's current state.
        """
        task_id = checked_task_id(task_id)  # before the connection is read, as in generate()
        with _naming_the_connection(self.reve_conn_id):
            return self.client.get_status(task_id, model=model)

    def test_connection(self) -> tuple[bool, str]:
        """Check the key without spending credits: ask for the status of a task that cannot exist.

        :return: ``(True, message)`` when the API accepted the key, else ``(False, why)``.
        """
        try:
            client = self.client
        except ReveError as error:  # a connection the client cannot use, named by its field
            return False, str(error)
        return client.check_key()

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

    def close(self) -> None:
        """Close the hook's HTTP session; the next call opens a new one."""
        if self._client is not None:
            self._client.close()


class ReveAsyncHook(ReveHook):
    """Async status reads for triggers: never blocks the loop, shares the loop's HTTP session."""

    _tcp_keep_alive = False  # a trigger holds thousands of these and never uses requests
    # Set on an instance by its first read (the class default stands for "not built yet").
    _async_client: AsyncReveClient | None = None

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

    async def async_client(self) -> AsyncReveClient:
        """The hook's Airflow-free async client, built from the connection on first use.

        It follows the hook's ``timeout`` and ``retry_policy`` as they are when it is used.

        :return: the :class:`~airflow_provider_reve.client.async_client.AsyncReveClient` of this hook.
        """
        if self._async_client is None:
            self._async_client = AsyncReveClient(await self.async_settings(), logger=self.log)
        self._async_client.timeout, self._async_client.retry_policy = self.timeout, self.retry_policy
        return self._async_client

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
        task_id = checked_task_id(task_id)  # before the connection is read
        client = await self.async_client()
        with _naming_the_connection(self.reve_conn_id):
            return await client.get_status(task_id, model=model, within=within)

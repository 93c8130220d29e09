"""``AsyncReveClient``: Reve status reads over ``aiohttp``, for code on an event loop (the triggerer).

Only the I/O lives here: one ``aiohttp.ClientSession`` per running loop, shared by every client
on it (:func:`shared_client_session`), each request bounded as a whole (``aiohttp``'s read timeout
restarts with every chunk), and a capped read of each answer. What is sent, what an answer means
and when to try again are :class:`~airflow_provider_reve.client.base.BaseReveClient`'s.

It reads tasks and never creates one: waiting is what a loop does for thousands of tasks at once,
while a submission, which spends credits, goes through the sync
:class:`~airflow_provider_reve.client.sync_client.ReveClient`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace

import aiohttp

from airflow_provider_reve import config
from airflow_provider_reve.client.base import (
    MIN_REQUEST_SECONDS,
    STATUS_PATH,
    USER_AGENT,
    BaseReveClient,
    checked_task_id,
)
from airflow_provider_reve.client.envelope import MAX_RESPONSE_BYTES
from airflow_provider_reve.client.ratelimit import loop_gate
from airflow_provider_reve.client.retry import acall_with_retries
from airflow_provider_reve.exceptions import STATUS_ENDPOINT
from airflow_provider_reve.models import ReveTask

__all__ = ["AsyncReveClient", "shared_client_session"]


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
    """Borrow the running loop's shared ``aiohttp.ClientSession`` (created on first use).

    :return: an async context manager giving the session; the last one to leave closes it.
    """
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


class AsyncReveClient(BaseReveClient):
    """Read Reve tasks without blocking the event loop; no Airflow needed.

    Every client on a loop shares that loop's HTTP session and, per Base URL and key, one rate
    limit with at most ``[reve] max_in_flight`` requests in flight. Wrap many reads in
    :meth:`keep_session` to keep the session's connections alive between them.

    :param settings: Base URL, API key, timeouts and request rate, e.g.
        ``settings_from_connection("mine", "https://reve2img.com", None, key, {})``.
    :param timeout: ``(connect, read)`` seconds for every request; ``None``: the settings' own.
    :param retry_policy: bounds for retrying transient errors; default ``RetryPolicy()``.
    :param logger: where the client logs; default this module's logger.
    """

    @asynccontextmanager
    async def keep_session(self) -> AsyncIterator[None]:
        """Hold the loop's shared session open across many calls (a trigger's whole wait).

        :return: an async context manager; the session stays open while it is entered.
        """
        async with shared_client_session():
            yield

    async def get_status(
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
        task_id = checked_task_id(task_id)
        ends_at = None if within is None else time.monotonic() + max(0.0, within)
        policy = self.retry_policy
        if within is not None:
            policy = replace(policy, max_elapsed_seconds=min(policy.max_elapsed_seconds, within))
        task = await acall_with_retries(
            lambda: self._status_of(task_id, ends_at), policy, what=f"Reve {STATUS_ENDPOINT}"
        )
        return task.with_model(model)

    # -- the I/O --------------------------------------------------------------------------------
    def _request_timeout(self, ends_at: float | None) -> aiohttp.ClientTimeout:
        """``(connect, read)`` from :attr:`timeouts`, plus a bound on the whole request.

        aiohttp's ``sock_read`` restarts with every chunk, so a server trickling its answer could
        hold one request -- and a trigger's deadline -- for ever. ``total`` caps the whole
        request at ``connect + read`` seconds, and at ``ends_at`` (monotonic) when given.
        """
        connect, read = self.timeouts
        total = connect + read
        if ends_at is not None:
            # Never zero: aiohttp reads a total of 0 as "no limit".
            total = min(total, max(ends_at - time.monotonic(), MIN_REQUEST_SECONDS))
        return aiohttp.ClientTimeout(total=total, sock_connect=connect, sock_read=read)

    async def _status_of(self, task_id: str, ends_at: float | None) -> ReveTask:
        return self._about(task_id, await self._status_once(task_id, ends_at))

    async def _status_once(self, task_id: str, ends_at: float | None = None) -> ReveTask:
        settings = self.settings
        # The connection's shared budget on this loop: 429 pauses, max_requests_per_second, and
        # at most [reve] max_in_flight requests at once (the rest wait there, holding next to nothing).
        gate = loop_gate(settings)
        try:
            async with (
                gate.request(STATUS_ENDPOINT, ends_at),
                shared_client_session() as session,
                session.get(
                    self._url(STATUS_PATH),
                    params={"task_id": task_id},
                    headers=settings.auth_headers,
                    timeout=self._request_timeout(ends_at),
                ) as response,
            ):
                body, truncated = await _read_capped(response)
                status, retry_after = response.status, response.headers.get("Retry-After")
        except aiohttp.ClientConnectorError as error:
            raise self._transport_error(
                STATUS_ENDPOINT,
                sent=False,
                what=f"cannot connect to {settings.base_url} ({type(error).__name__})",
            ) from None
        except (aiohttp.ClientError, asyncio.TimeoutError) as error:
            raise self._transport_error(
                STATUS_ENDPOINT, sent=True, what=f"{type(error).__name__} talking to {settings.base_url}"
            ) from None
        return self._task_from_answer(
            STATUS_ENDPOINT, status, body, retry_after=retry_after, truncated=truncated, gate=gate
        )


async def _read_capped(response: aiohttp.ClientResponse) -> tuple[bytes, bool]:
    """At most ``MAX_RESPONSE_BYTES`` of the body, and whether there was more; leaving the rest
    unread closes the connection instead of draining it."""
    body = bytearray()
    while len(body) <= MAX_RESPONSE_BYTES:
        chunk = await response.content.read(MAX_RESPONSE_BYTES + 1 - len(body))
        if not chunk:
            return bytes(body), False
        body += chunk
    return bytes(body[:MAX_RESPONSE_BYTES]), True

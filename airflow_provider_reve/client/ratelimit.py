"""One request budget per Reve account, shared by everything that calls it from one loop or process.

Two things hold a request back before it is sent:

* the connection extra ``max_requests_per_second``: requests are spaced at least ``1 / rate``
  seconds apart, in the order they asked (off by default);
* a ``429`` (``RATE_LIMITED``, or a gateway's 429 without a code) answered to any of them: every
  request sharing the gate is held until its ``Retry-After`` has passed (at most 60 s; 1 s when
  the answer names no time), then each one goes at its own random moment within the following
  ``max(1 s, Retry-After)`` -- so thousands of waiting triggers neither poll through the pause nor
  hit the API in the same instant when it ends. ``TOO_MANY_TASKS`` is not a rate limit (it is
  about tasks in flight) and pauses nothing;
* on an event loop, ``[reve] max_in_flight`` requests at once (default :data:`MAX_IN_FLIGHT`;
  the shared session's pool size): the others wait here, cheaply, rather than in aiohttp's pool
  queue. Read when a loop's gate for a connection is made.

Gates are shared by (Base URL, API key), looked up by a hash of the pair: no module-level
structure holds the key.

* :func:`loop_gate`: one gate per running event loop (the triggerer runs every trigger on one
  loop; ``dag.test()`` starts a loop per trigger). Kept in a ``WeakKeyDictionary`` on the loop,
  so a loop that ends takes its gates with it.
* :func:`process_gate`: one thread-safe gate per process, for the sync hook: a task's requests
  and those of any threads it starts. Separate task processes each have their own budget.

With a ledger configured, a 429 pause is also shared with every process of the deployment
(``budgets.shared_pauses``: written at once in the background, read at most once a second).

Nothing here imports an HTTP client: the hooks call ``acquire()`` before each request and
``observe()`` with each API error.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from airflow_provider_reve import config
from airflow_provider_reve.budgets.shared_pauses import publish_pause, shared_pause_until
from airflow_provider_reve.client.settings import ConnectionSettings
from airflow_provider_reve.exceptions import ReveAPIError, ReveRateLimitError

__all__ = [
    "DEFAULT_PAUSE_SECONDS",
    "MAX_IN_FLIGHT",
    "MAX_PAUSE_SECONDS",
    "MIN_RESUME_SPREAD_SECONDS",
    "AsyncRequestGate",
    "SyncRequestGate",
    "gate_key",
    "loop_gate",
    "process_gate",
]

#: Longest pause a Retry-After can impose on all of a connection's requests (as in ``client.retry``).
MAX_PAUSE_SECONDS = 60.0
#: The pause after a 429 that names no Retry-After.
DEFAULT_PAUSE_SECONDS = 1.0
#: Resumption after a pause is spread over at least this many seconds.
MIN_RESUME_SPREAD_SECONDS = 1.0
#: Requests of one connection in flight at once on a loop: the shared session's pool size. Those
#: beyond it wait in the gate holding a future, instead of each holding a half-made aiohttp
#: request and its timers in the pool's queue -- at 5,000 triggers, half the memory and CPU.
#: The default of ``[reve] max_in_flight``.
MAX_IN_FLIGHT = int(config.MAX_IN_FLIGHT.default)


def gate_key(settings: ConnectionSettings) -> str:
    """The shared-budget identity of a connection: a hash of its Base URL and API key.

    :param settings: the connection's settings.
    :return: a hex digest; the key itself never appears in it.
    """
    digest = hashlib.sha256(f"{settings.base_url}\n{settings.api_key}".encode())
    return digest.hexdigest()[:32]


class _Schedule:
    """When may the next request go? Pure bookkeeping on an injectable clock and random source.

    Times are ``clock()`` values. Each request reserves a start time; a pause that begins after
    a reservation invalidates it (the ``epoch`` changes) and the request reserves again.
    """

    def __init__(
        self,
        rate: float | None,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.rate = rate
        self.clock = clock
        self.rng = rng
        self.epoch = 0
        self.paused_until = float("-inf")
        self.spread = 0.0
        self._next_slot = float("-inf")
        # Set by loop_gate/process_gate: the key under which 429 pauses are shared with every
        # process of the deployment (with a ledger configured; see budgets.shared_pauses).
        self.shared_key: str | None = None
        self._shared_seen = float("-inf")

    def _follow_shared_pause(self, now: float) -> None:
        if self.shared_key is None:
            return
        until = shared_pause_until(self.shared_key)  # UNIX time; never waits for the database
        if until > self._shared_seen:
            self._shared_seen = until
            self.pause(until - time.time(), now)

    def reserve(self, now: float, latest: float | None) -> float:
        """The time at which a request asked for at ``now`` may start.

        Taken only if it is no later than ``latest``; a later time is returned untaken, for the
        caller to refuse.
        """
        self._follow_shared_pause(now)
        start = now
        if now < self.paused_until + self.spread:
            # Still paused, or within the spread after a pause: go at a random moment of the spread.
            start = max(now, self.paused_until + self.rng() * self.spread)
        if self.rate is not None:
            start = max(start, self._next_slot)
        if latest is not None and start > latest:
            return start
        if self.rate is not None:
            self._next_slot = start + 1.0 / self.rate
        return start

    def pause(self, seconds: float, now: float) -> None:
        seconds = min(max(0.0, seconds), MAX_PAUSE_SECONDS)
        until = now + seconds
        if until <= self.paused_until:
            return
        self.paused_until = until
        self.spread = max(MIN_RESUME_SPREAD_SECONDS, seconds)
        # Reservations made before the pause are void: their owners reserve again when they wake,
        # and the queue of rate slots restarts where the pause ends.
        self.epoch += 1
        self._next_slot = until

    def observe(self, error: BaseException) -> None:
        if _is_rate_limit(error):
            assert isinstance(error, ReveAPIError)
            retry_after = error.retry_after
            seconds = DEFAULT_PAUSE_SECONDS if retry_after is None else retry_after
            self.pause(seconds, self.clock())
            if self.shared_key is not None:
                until = time.time() + min(max(0.0, seconds), MAX_PAUSE_SECONDS)
                self._shared_seen = max(self._shared_seen, until)  # our own pause: not again
                publish_pause(self.shared_key, until)


def _is_rate_limit(error: BaseException) -> bool:
    # Only an answer from a server pauses others: a refusal made here (no http_status) does not.
    return isinstance(error, ReveAPIError) and error.http_status == 429 and error.code != "TOO_MANY_TASKS"


def _refusal(endpoint: str, wait: float | None, in_flight: int = MAX_IN_FLIGHT) -> ReveRateLimitError:
    if wait is None:
        why = f"{in_flight} of this connection's requests were still waiting for answers"
    else:
        why = (
            f"this connection's requests are held for another {wait:.1f}s (a 429 RATE_LIMITED "
            "pause or max_requests_per_second)"
        )
    return ReveRateLimitError(
        f"Reve API {endpoint}: not sent -- {why}, past the time this call may take.",
        endpoint=endpoint,
        code="RATE_LIMITED",
        retry_after=wait,
    )


class AsyncRequestGate(_Schedule):
    """The gate of one connection on one event loop (no lock: the loop runs one thing at a time).

    :param rate: requests per second allowed through; ``None``: no cap.
    :param clock: the monotonic clock the gate's times are read from.
    :param rng: returns a random number in [0, 1), to spread the requests a pause released.
    :param max_in_flight: requests that may wait for their answers at once.
    """

    def __init__(
        self,
        rate: float | None,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        super().__init__(rate, clock, rng)
        self.max_in_flight = max_in_flight
        self._slots = asyncio.Semaphore(max_in_flight)

    @asynccontextmanager
    async def request(self, endpoint: str, ends_at: float | None = None) -> AsyncIterator[None]:
        """Hold one request's place: after any 429 hold and the rate's spacing (:meth:`acquire`),
        one of ``max_in_flight`` slots, kept until the answer has been read.

        :param endpoint: the API path, for the refusal's message.
        :param ends_at: a ``clock()`` time by which the request must have started; ``None``: no bound.
        :return: an async context manager that holds the place while its block runs.
        :raises ReveRateLimitError: when the request could not start by ``ends_at``.
        """
        while True:
            epoch = await self.acquire(endpoint, ends_at)
            await self._take_slot(endpoint, ends_at)
            if self.epoch == epoch or self.clock() >= self.paused_until:
                break
            self._slots.release()  # a 429 came while this one queued: back to the hold
        try:
            yield
        finally:
            self._slots.release()

    async def _take_slot(self, endpoint: str, ends_at: float | None) -> None:
        if ends_at is None or not self._slots.locked():
            await self._slots.acquire()
            return
        try:
            await asyncio.wait_for(self._slots.acquire(), max(0.0, ends_at - self.clock()))
        except asyncio.TimeoutError:
            raise _refusal(endpoint, None, self.max_in_flight) from None

    async def acquire(self, endpoint: str, ends_at: float | None = None) -> int:
        """Wait until a request may go. ``ends_at`` (a ``clock()`` time) bounds the wait: a
        request that could not start by then is refused with :class:`.ReveRateLimitError`
        (``http_status`` ``None``: nothing was sent), so a trigger's deadline still holds.
        Returns the pause epoch it was let through in.

        :param endpoint: the API path, for the refusal's message.
        :param ends_at: a ``clock()`` time by which the request must have started; ``None``: no bound.
        :return: the pause epoch the request was let through in.
        :raises ReveRateLimitError: when the request could not start by ``ends_at``.
        """
        while True:
            now = self.clock()
            epoch = self.epoch
            start = self.reserve(now, ends_at)
            if ends_at is not None and start > ends_at:
                raise _refusal(endpoint, start - now)
            if start <= now:
                return epoch
            await asyncio.sleep(start - now)
            if self.epoch == epoch:
                return epoch


class SyncRequestGate(_Schedule):
    """The gate of one connection in one process, shared by threads.

    :param rate: requests per second allowed through; ``None``: no cap.
    """

    def __init__(self, rate: float | None, **kwargs: Callable[[], float]) -> None:
        super().__init__(rate, **kwargs)
        self.lock = threading.Lock()
        self.sleep: Callable[[float], None] = time.sleep

    def acquire(self, endpoint: str, ends_at: float | None = None) -> None:
        """Block until a request may go (see :meth:`AsyncRequestGate.acquire`).

        :param endpoint: the API path, for the refusal's message.
        :param ends_at: a ``clock()`` time by which the request must have started; ``None``: no bound.
        :raises ReveRateLimitError: when the request could not start by ``ends_at``.
        """
        while True:
            with self.lock:
                now = self.clock()
                epoch = self.epoch
                start = self.reserve(now, ends_at)
            if ends_at is not None and start > ends_at:
                raise _refusal(endpoint, start - now)
            if start <= now:
                return
            self.sleep(start - now)
            with self.lock:
                if self.epoch == epoch:
                    return

    def observe(self, error: BaseException) -> None:
        with self.lock:
            super().observe(error)


_LOOP_GATES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, AsyncRequestGate]] = (
    weakref.WeakKeyDictionary()
)
_PROCESS_GATES: dict[str, SyncRequestGate] = {}
_PROCESS_GATES_LOCK = threading.Lock()


def loop_gate(settings: ConnectionSettings) -> AsyncRequestGate:
    """The running loop's gate for this connection's Base URL and key (created on first use).

    Its rate follows the settings last read: a connection edited to a new rate applies to the
    triggers that start after the edit and to those already waiting alike.

    :param settings: the connection's settings.
    :return: the gate; the same one for every trigger of the connection on this loop.
    """
    gates = _LOOP_GATES.setdefault(asyncio.get_running_loop(), {})
    key = gate_key(settings)
    gate = gates.get(key)
    if gate is None:
        gate = gates[key] = AsyncRequestGate(
            settings.max_requests_per_second, max_in_flight=config.max_in_flight()
        )
        gate.shared_key = key
    else:
        gate.rate = settings.max_requests_per_second
    return gate


def process_gate(settings: ConnectionSettings) -> SyncRequestGate:
    """This process's gate for this connection's Base URL and key (created on first use).

    :param settings: the connection's settings.
    :return: the gate; the same one for every hook of the connection in this process.
    """
    key = gate_key(settings)
    with _PROCESS_GATES_LOCK:
        gate = _PROCESS_GATES.get(key)
        if gate is None:
            gate = _PROCESS_GATES[key] = SyncRequestGate(settings.max_requests_per_second)
            gate.shared_key = key
    with gate.lock:
        gate.rate = settings.max_requests_per_second
    return gate

"""Every read a gallery request makes runs here, with a time limit: one file cannot hold the server.

The api-server runs a plugin's synchronous routes in a pool of about forty threads shared with
Airflow's own routes (health, login, the UI's API). A read that never returns -- a FIFO, a hung
network mount, an object store that stops answering mid-body -- would hold one of those threads
for good, and forty such requests would stop the server for everyone. So:

* the media route is ``async`` and never reads a file itself: each read (open and verify, then
  each chunk sent) is handed to :data:`READERS`, a small pool of the gallery's own threads;
* the request waits for it at most :data:`READ_TIMEOUT` seconds (a whole verification at most
  :data:`VERIFY_TIMEOUT`); past that the request fails on its own (``504``) and the event loop
  and the server's thread pool are free at once;
* a read that is truly stuck keeps one of the gallery's threads, never one of the server's;
* one DAG's reads (its ``key``) hold at most :data:`READERS_PER_KEY` of them, running or queued;
  its further reads wait for one of its own to end, never for a thread another DAG needs. So a
  DAG whose files never answer makes its own media time out, while every other DAG's media,
  every page and Airflow itself still answer. A slot is given back when the *read* ends (not
  when its request gives up), so a stuck read keeps counting against its own DAG.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from functools import partial
from typing import Any, TypeVar

__all__ = [
    "READERS",
    "READERS_PER_KEY",
    "READER_THREADS",
    "READ_TIMEOUT",
    "VERIFY_TIMEOUT",
    "Deadline",
    "ReadTimedOut",
    "within",
]

T = TypeVar("T")

#: Seconds one read may take (an open, one chunk of a response body).
READ_TIMEOUT = 30.0
#: Seconds the whole check of one file may take (opening, reading and hashing up to 1 GiB).
VERIFY_TIMEOUT = 300.0
READER_THREADS = 8
#: Reads of one key (a DAG) running or queued at once: half the readers, so others always have some.
READERS_PER_KEY = READER_THREADS // 2
READERS = ThreadPoolExecutor(max_workers=READER_THREADS, thread_name_prefix="reve-gallery-read")


class ReadTimedOut(Exception):
    """A read did not finish in time: the request fails, the server goes on."""


class Deadline:
    """A point in time a long read checks between chunks, so it stops by itself once late."""

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds

    def check(self) -> None:
        if time.monotonic() > self.at:
            raise ReadTimedOut("too slow")


class _Slots:
    """One semaphore per (event loop, key), dropped once nobody holds or waits for it."""

    def __init__(self) -> None:
        # -> [semaphore, users, loop]: the loop is held so that its id is not reused while a
        # stuck read still counts against it.
        self._held: dict[tuple[int, str], list[Any]] = {}

    def take(self, key: str) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        entry = self._held.setdefault((id(loop), key), [asyncio.Semaphore(READERS_PER_KEY), 0, loop])
        entry[1] += 1
        return entry[0]

    def leave(self, loop: asyncio.AbstractEventLoop, key: str, *, release: bool) -> None:
        """On the loop's thread: one user is gone (and gives its slot back if it had one)."""
        entry = self._held[(id(loop), key)]
        if release:
            entry[0].release()
        entry[1] -= 1
        if entry[1] == 0:
            del self._held[(id(loop), key)]


_SLOTS = _Slots()


async def within(seconds: float, read: Callable[[], T], *, key: str | None = None) -> T:
    """``read()`` run on :data:`READERS`; :class:`ReadTimedOut` after ``seconds`` (waiting included)."""
    loop = asyncio.get_running_loop()
    ends = loop.time() + seconds
    if key is not None:
        slot = _SLOTS.take(key)
        try:
            # asyncio.timeout, not wait_for: a slot granted as the time runs out is handed on.
            async with asyncio.timeout(seconds):
                await slot.acquire()
        except TimeoutError:
            _SLOTS.leave(loop, key, release=False)
            raise ReadTimedOut(f"every reader {key!r} may use was busy for {seconds:g} s") from None
        except BaseException:  # the client went away while waiting
            _SLOTS.leave(loop, key, release=False)
            raise
        try:
            future = READERS.submit(read)
        except BaseException:
            _SLOTS.leave(loop, key, release=True)
            raise
        future.add_done_callback(lambda _: _give_back(loop, key))
    else:
        future = READERS.submit(read)
    try:
        return await asyncio.wait_for(asyncio.wrap_future(future), timeout=max(0.0, ends - loop.time()))
    except TimeoutError:
        future.cancel()  # still queued behind stuck reads: it never starts
        raise ReadTimedOut(f"no answer in {seconds:g} s") from None


def _give_back(loop: asyncio.AbstractEventLoop, key: str) -> None:
    """The read ended (or never started): its slot is free again, on the loop that lent it."""
    with suppress(RuntimeError):  # the loop is closed (the server stopped): nothing waits any more
        loop.call_soon_threadsafe(partial(_SLOTS.leave, loop, key, release=True))

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
* a read that is truly stuck keeps one of the gallery's threads, never one of the server's; when
  they are all stuck, media requests time out while every page and Airflow itself still answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

__all__ = ["READERS", "READ_TIMEOUT", "VERIFY_TIMEOUT", "Deadline", "ReadTimedOut", "within"]

T = TypeVar("T")

#: Seconds one read may take (an open, one chunk of a response body).
READ_TIMEOUT = 30.0
#: Seconds the whole check of one file may take (opening, reading and hashing up to 1 GiB).
VERIFY_TIMEOUT = 300.0
READERS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="reve-gallery-read")


class ReadTimedOut(Exception):
    """A read did not finish in time: the request fails, the server goes on."""


class Deadline:
    """A point in time a long read checks between chunks, so it stops by itself once late."""

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds

    def check(self) -> None:
        if time.monotonic() > self.at:
            raise ReadTimedOut("too slow")


async def within(seconds: float, read: Callable[[], T]) -> T:
    """``read()`` run on :data:`READERS`; :class:`ReadTimedOut` after ``seconds``."""
    future = READERS.submit(read)
    try:
        return await asyncio.wait_for(asyncio.wrap_future(future), timeout=seconds)
    except TimeoutError:
        future.cancel()  # still queued behind stuck reads: it never starts
        raise ReadTimedOut(f"no answer in {seconds:g} s") from None

"""A tiny loopback HTTP server whose status answer trickles in: headers at once, then one byte at
a time, fast enough that no per-read socket timeout ever fires. Real HTTP, real sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiohttp import web


@dataclass
class TricklingServer:
    url: str
    requests: int = 0


@asynccontextmanager
async def trickling_status_server(
    *, byte_every: float = 0.1, for_seconds: float = 120.0
) -> AsyncIterator[TricklingServer]:
    """Serve ``GET /api/v1/status`` as a body that takes ``for_seconds`` to arrive."""
    stop = asyncio.Event()
    served = TricklingServer(url="")

    async def status(request: web.Request) -> web.StreamResponse:
        served.requests += 1
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        response.content_length = 1_000_000  # promised, never delivered
        await response.prepare(request)
        ends = asyncio.get_running_loop().time() + for_seconds
        try:
            while asyncio.get_running_loop().time() < ends and not stop.is_set():
                await response.write(b" ")  # JSON may start with any amount of whitespace
                await asyncio.sleep(byte_every)
        except ConnectionError:  # the client gave up: what a bounded client must do
            pass
        return response

    app = web.Application()
    app.router.add_get("/api/v1/status", status)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    served.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield served
    finally:
        stop.set()
        await runner.cleanup()

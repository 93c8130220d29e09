"""``/reve/media``: one stored file, verified, whole or one byte range, never cached by the browser.

The route is ``async`` and reads nothing itself: the DB lookups run in the server's thread pool
(brief), and every read of the file runs in :mod:`reading`'s own pool with a time limit. A file
that never answers (a FIFO, a hung mount, a stalled object store) fails its own request with
``504``; it never holds a thread the api-server needs for anyone else.

Invariants a user relies on:

* nothing is sent before the whole file hashed to the manifest's ``sha256`` (a range is cut from
  a verified file, never read on its own);
* ``Cache-Control: no-store``: a private image is not kept by the browser past the session (after
  logout it is asked for again, and refused);
* ``Accept-Ranges: bytes``; a single range gives ``206`` (a video can seek), an unsatisfiable one
  ``416``, anything else the whole file with ``200``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from airflow_provider_reve.plugins.app import media, queries, reading
from airflow_provider_reve.plugins.app.params import MediaQuery, media_query
from airflow_provider_reve.plugins.app.ranges import ByteRange, Unsatisfiable, requested_range
from airflow_provider_reve.plugins.app.routes.pages import session
from airflow_provider_reve.plugins.app.security import User, require_dag

__all__ = ["CHUNK", "router"]

log = logging.getLogger(__name__)
router = APIRouter()
CHUNK = 1024 * 1024


def _not_found() -> Response:
    return Response("Not found\n", status_code=404, media_type="text/plain")


def _return_value(query: MediaQuery) -> Any:
    with session() as db:
        return queries.reve_return_value(db, query.dag_id, query.run_id, query.task_id, query.map_index)


async def _body(opened: media.Opened, start: int, length: int) -> AsyncIterator[bytes]:
    """The bytes ``start`` to ``start + length``, each chunk read in the pool with a time limit."""
    try:
        position, end = start, start + length
        while position < end:
            size = min(CHUNK, end - position)
            chunk = await reading.within(reading.READ_TIMEOUT, partial(opened.read_at, position, size))
            if not chunk:
                return
            position += len(chunk)
            yield chunk
    finally:
        opened.close()


@router.get("/media")
async def serve_media(
    request: Request, user: User, query: Annotated[MediaQuery | None, Depends(media_query)]
) -> Response:
    if query is None:
        return _not_found()
    await run_in_threadpool(require_dag, user, query.dag_id)
    entry = media.find_entry(await run_in_threadpool(_return_value, query), query.reve_task_id, query.index)
    if entry is None:
        return _not_found()
    where = f"result {query.reve_task_id}/{query.index} of {query.dag_id}.{query.task_id}[{query.map_index}]"
    try:
        checked = media.check_entry(entry)
        deadline = reading.Deadline(reading.VERIFY_TIMEOUT)
        opened = await reading.within(reading.VERIFY_TIMEOUT, partial(media.open_verified, checked, deadline))
    except media.MediaRefused as refused:
        # The reason stays in the server log: the client learns only that there is no file.
        log.warning("Reve gallery: not serving %s (%s)", where, refused)
        return _not_found()
    except reading.ReadTimedOut as late:
        log.warning("Reve gallery: %s could not be read in time (%s)", where, late)
        return Response("The stored file did not answer in time.\n", status_code=504, media_type="text/plain")
    return _response(request, opened)


def _response(request: Request, opened: media.Opened) -> Response:
    entry = opened.entry
    etag = f'"{entry.sha256}"'
    headers = {
        "Cache-Control": "no-store",
        "Accept-Ranges": "bytes",
        "ETag": etag,
        "Content-Disposition": f'inline; filename="{entry.file_name}"',
    }
    try:
        wanted = requested_range(
            request.headers.get("range"), entry.size, if_range=request.headers.get("if-range"), etag=etag
        )
    except Unsatisfiable:
        opened.close()
        headers["Content-Range"] = f"bytes */{entry.size}"
        return Response(status_code=416, headers=headers)
    part = wanted or ByteRange(0, entry.size - 1, entry.size)
    status = 200
    if wanted is not None:
        status = 206
        headers["Content-Range"] = wanted.content_range
    headers["Content-Length"] = str(part.length)
    if opened.data is not None:
        body = opened.data[part.start : part.start + part.length]
        return Response(body, status_code=status, media_type=entry.content_type, headers=headers)
    return StreamingResponse(
        _body(opened, part.start, part.length),
        status_code=status,
        media_type=entry.content_type,
        headers=headers,
    )

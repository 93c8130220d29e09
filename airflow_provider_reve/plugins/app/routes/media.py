"""``/reve/media``: one stored file, verified, whole or one byte range, never cached by the browser.

The route is ``async`` and reads nothing itself: the DB lookups run in the server's thread pool
(brief), and every read of the file runs in :mod:`reading`'s own pool with a time limit. A file
that never answers (a FIFO, a hung mount, a stalled object store) fails its own request with
``504``; it never holds a thread the api-server needs for anyone else, and its DAG's reads never
hold more than half of the gallery's readers (other DAGs' media still load).

Invariants a user relies on:

* nothing is sent before the whole file hashed to the manifest's ``sha256`` (a range is cut from
  a verified file, never read on its own), and nothing is sent that is not what hashed: a large
  file is read in its aligned chunks, each hashed again against the check's record; a chunk that
  changed since ends the response there (the connection is closed: the client sees a cut-short
  transfer, never other bytes);
* ``Cache-Control: no-store``: a private image is not kept by the browser past the session (after
  logout it is asked for again, and refused);
* ``Accept-Ranges: bytes``; a single range gives ``206`` (a video can seek), an unsatisfiable one
  ``416``, anything else the whole file with ``200``;
* ``HEAD`` answers as ``GET`` would (the same check, status and headers, ``Content-Length``
  included) without a body: players and link checkers ask it first.
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

__all__ = ["router"]

log = logging.getLogger(__name__)
router = APIRouter()


def _not_found() -> Response:
    return Response("Not found\n", status_code=404, media_type="text/plain")


def _return_value(query: MediaQuery) -> Any:
    with session() as db:
        return queries.reve_return_value(db, query.dag_id, query.run_id, query.task_id, query.map_index)


async def _body(opened: media.Opened, start: int, length: int, where: str, key: str) -> AsyncIterator[bytes]:
    """The bytes ``start`` to ``start + length``, each chunk read in the pool with a time limit.

    Each read stays inside one of the file's aligned chunks, the unit its digests were recorded in.
    """
    try:
        position, end = start, start + length
        while position < end:
            size = min(media.CHUNK - position % media.CHUNK, end - position)
            try:
                chunk = await reading.within(
                    reading.READ_TIMEOUT, partial(opened.read_at, position, size), key=key
                )
            except media.MediaRefused as refused:
                # Headers are gone: raising closes the connection, so the transfer ends short.
                log.warning("Reve gallery: stopped sending %s (%s)", where, refused)
                raise
            if not chunk:
                return
            position += len(chunk)
            yield chunk
    finally:
        opened.close()


@router.api_route("/media", methods=["GET", "HEAD"])
async def serve_media(
    request: Request, user: User, query: Annotated[MediaQuery | None, Depends(media_query)]
) -> Response:
    response = await _media(request, user, query)
    if request.method == "HEAD":
        return Response(status_code=response.status_code, headers=dict(response.headers))
    return response


async def _media(request: Request, user: User, query: MediaQuery | None) -> Response:
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
        opened = await reading.within(
            reading.VERIFY_TIMEOUT, partial(media.open_verified, checked, deadline), key=query.dag_id
        )
    except media.MediaRefused as refused:
        # The reason stays in the server log: the client learns only that there is no file.
        log.warning("Reve gallery: not serving %s (%s)", where, refused)
        return _not_found()
    except reading.ReadTimedOut as late:
        log.warning("Reve gallery: %s could not be read in time (%s)", where, late)
        return Response("The stored file did not answer in time.\n", status_code=504, media_type="text/plain")
    return _response(request, opened, where, query.dag_id)


def _response(request: Request, opened: media.Opened, where: str, key: str) -> Response:
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
    if request.method == "HEAD":
        opened.close()  # verified, as for GET; nothing more is read
        return Response(status_code=status, media_type=entry.content_type, headers=headers)
    if opened.data is not None:
        body = opened.data[part.start : part.start + part.length]
        return Response(body, status_code=status, media_type=entry.content_type, headers=headers)
    return StreamingResponse(
        _body(opened, part.start, part.length, where, key),
        status_code=status,
        media_type=entry.content_type,
        headers=headers,
    )

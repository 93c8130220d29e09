"""The gallery's pages: the grid, the "Reve media" tab, the credits panel and the stylesheet.

All GET, all read-only, all behind :func:`security.current_user`. They read the metadata DB only
(never a stored file: images are fetched by the browser from :mod:`routes.media`), so they are
plain synchronous routes. Every page is cut to one page of cards *before* the cards are completed
from their runs, so a manifest of 20,000 entries costs one page of work, not 20,000 cards.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from functools import cache
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from airflow_provider_reve.client.catalog import MODELS
from airflow_provider_reve.plugins.app import cards, credits, queries, rendering
from airflow_provider_reve.plugins.app.params import (
    CreditsQuery,
    GalleryQuery,
    TaskInstanceQuery,
    credits_query,
    gallery_query,
    task_instance_query,
)
from airflow_provider_reve.plugins.app.security import User, readable_dag_ids, require_dag

__all__ = ["html", "router", "session"]

router = APIRouter()


def session() -> Any:
    """A metadata DB session (Airflow's), closed when the block ends."""
    from airflow.utils.session import create_session

    return create_session()


def html(body: str, status_code: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status_code, headers={"Cache-Control": "no-store"})


@router.get("/", include_in_schema=False)
def index(request: Request, user: User) -> Response:
    return RedirectResponse(f"{request.scope.get('root_path', '')}/gallery", status_code=307)


@router.get("/gallery", response_class=HTMLResponse)
def gallery(user: User, query: Annotated[GalleryQuery, Depends(gallery_query)]) -> Response:
    readable = readable_dag_ids(user)
    paging = query.paging
    with session() as db:
        rows, total = queries.gallery_page(
            db, readable, query.filters, offset=paging.offset, limit=paging.per_page
        )
        shown = cards.build_cards(db, rows)
        dag_ids = queries.gallery_dag_ids(db, readable)
    page = rendering.gallery_page(
        shown,
        total=total,
        page=paging.page,
        per_page=paging.per_page,
        params=query.link_params(),
        dag_ids=dag_ids,
        models=sorted(MODELS),
        statuses=list(queries.STATUS_FILTERS),
        notes=query.notes,
    )
    return html(page)


@router.get("/task-instance", response_class=HTMLResponse)
def task_instance(user: User, query: Annotated[TaskInstanceQuery, Depends(task_instance_query)]) -> Response:
    dag_id, run_id, task_id = query.dag_id, query.run_id, query.task_id
    if not dag_id or not run_id or not task_id:
        message = rendering.message_page("Bad request", "dag_id, run_id and task_id are required.")
        return html(message, status_code=400)
    require_dag(user, dag_id)
    paging = query.paging
    with session() as db:
        rows = queries.task_rows(db, dag_id, run_id, task_id)
        # Only our operators' XComs are read as Reve results (any task may return a look-alike dict).
        drafts = cards.draft_cards([row for row in rows if row.operator in queries.REVE_OPERATORS])
        drafts = [d for d in drafts if d.card.reve_task_id or d.card.state in ("failed", "skipped")]
        # The instance the tab was opened on comes first, then every other map index in order.
        drafts.sort(key=lambda d: (d.card.map_index != query.map_index, d.card.map_index))
        shown = cards.complete_cards(db, drafts[paging.offset : paging.offset + paging.per_page])
    page = rendering.task_instance_page(
        dag_id,
        run_id,
        task_id,
        shown,
        query.map_index,
        total=len(drafts),
        page=paging.page,
        per_page=paging.per_page,
        params=query.link_params(),
    )
    return html(page)


@router.get("/credits", response_class=HTMLResponse)
def credit_panel(user: User, query: Annotated[CreditsQuery, Depends(credits_query)]) -> Response:
    readable = readable_dag_ids(user)
    today = datetime.now(timezone.utc).date()
    since = datetime.combine(today - timedelta(days=query.days - 1), datetime.min.time(), tzinfo=timezone.utc)
    with session() as db:
        rows = queries.credit_rows(db, readable, since, dag_id=query.dag_id)
        dag_ids = queries.gallery_dag_ids(db, readable)
    summary = credits.summarize(rows, today=today, days=query.days)
    return html(credits.credits_page(summary, days=query.days, dag_id=query.dag_id, dag_ids=dag_ids))


@cache
def stylesheet_bytes() -> bytes:
    return resources.files("airflow_provider_reve.plugins.app").joinpath("gallery.css").read_bytes()


@router.get("/static/gallery.css")
def stylesheet(user: User) -> Response:
    return Response(
        stylesheet_bytes(), media_type="text/css", headers={"Cache-Control": "private, max-age=300"}
    )

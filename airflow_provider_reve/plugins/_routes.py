"""The gallery's FastAPI app, mounted by Airflow's API server under ``/reve``.

Routes (all GET, all read-only, all behind :func:`_security.current_user`):

* ``/reve/gallery`` -- the grid, newest first, with filters and pages;
* ``/reve/task-instance?dag_id=&run_id=&task_id=&map_index=`` -- the "Reve media" tab;
* ``/reve/credits`` -- the credits panel;
* ``/reve/media?dag_id=&run_id=&task_id=&map_index=&reve_task_id=&index=`` -- one stored file;
* ``/reve/static/gallery.css``.

Anonymous requests, and expired or invalid tokens, get 401 with a link to Airflow's login
page (a page, not a redirect: inside the Airflow UI's frame a redirect would put the login form
in the frame, and API clients want the status). A DAG the user may not read is 403 on the
pages that name one; the gallery and credits simply never include it.
"""

from __future__ import annotations

import logging
from datetime import date, datetime, timedelta, timezone
from functools import cache
from importlib import resources
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse

from airflow_provider_reve.client.catalog import MODELS
from airflow_provider_reve.plugins import _cards, _credits, _media, _queries, _render
from airflow_provider_reve.plugins._security import (
    Forbidden,
    NotAuthenticated,
    current_user,
    login_url,
    readable_dag_ids,
    require_dag,
)

log = logging.getLogger(__name__)

PAGE_CSP = (
    "default-src 'none'; img-src 'self' http: https:; media-src 'self' http: https:; "
    "style-src 'self'; script-src 'none'; form-action 'self'; frame-ancestors 'self'; base-uri 'none'"
)
MEDIA_CSP = "default-src 'none'; sandbox"
DEFAULT_PER_PAGE = 48
MAX_PAGE = 100_000
CREDIT_DAYS = 30

User = Annotated[Any, Depends(current_user)]


def _session() -> Any:
    from airflow.utils.session import create_session

    return create_session()


def _text(request: Request, name: str, limit: int = 1000) -> str | None:
    value = request.query_params.get(name)
    if value is None:
        return None
    value = value.strip()
    if "\x00" in value:  # no id holds a NUL, and PostgreSQL refuses one in a query
        return None
    return value[:limit] or None


def _number(request: Request, name: str, default: int, low: int, high: int) -> int:
    try:
        value = int(request.query_params.get(name, default))
    except ValueError:
        return default
    return min(max(value, low), high)


def _day(request: Request, name: str, notes: list[str]) -> date | None:
    value = _text(request, name, 20)
    if value is None:
        return None
    try:
        day = date.fromisoformat(value)
    except ValueError:
        day = None
    if day is None or not date.min < day < date.max:  # the day after date.max overflows
        notes.append(f"Ignored {name}={value!r}: not a date (YYYY-MM-DD).")
        return None
    return day


def _html(body: str, status_code: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status_code, headers={"Cache-Control": "no-store"})


def _gallery(request: Request, user: Any) -> Response:
    notes: list[str] = []
    status = _text(request, "status", 40)
    if status is not None and status not in _queries.STATUS_FILTERS:
        notes.append(f"Ignored status={status!r}: use one of {', '.join(_queries.STATUS_FILTERS)}.")
        status = None
    filters = _queries.Filters(
        dag_id=_text(request, "dag_id", 250),
        run_id=_text(request, "run_id", 250),
        model=_text(request, "model", 250),
        status=status,
        since=_day(request, "from", notes),
        until=_day(request, "to", notes),
    )
    per_page = _number(request, "per_page", DEFAULT_PER_PAGE, 1, _queries.MAX_PER_PAGE)
    page = _number(request, "page", 1, 1, MAX_PAGE)
    readable = readable_dag_ids(user)
    with _session() as session:
        rows, total = _queries.gallery_page(
            session, readable, filters, offset=(page - 1) * per_page, limit=per_page
        )
        cards = _cards.build_cards(session, rows)
        dag_ids = _queries.gallery_dag_ids(session, readable)
    params: dict[str, str | None] = {
        "dag_id": filters.dag_id,
        "run_id": filters.run_id,
        "model": filters.model,
        "status": filters.status,
        "from": filters.since.isoformat() if filters.since else None,
        "to": filters.until.isoformat() if filters.until else None,
        "per_page": str(per_page) if per_page != DEFAULT_PER_PAGE else None,
    }
    return _html(
        _render.gallery_page(
            cards,
            total=total,
            page=page,
            per_page=per_page,
            params=params,
            dag_ids=dag_ids,
            models=sorted(MODELS),
            statuses=list(_queries.STATUS_FILTERS),
            notes=notes,
        )
    )


def _task_instance(request: Request, user: Any) -> Response:
    dag_id, run_id, task_id = (_text(request, name, 250) for name in ("dag_id", "run_id", "task_id"))
    if not dag_id or not run_id or not task_id:
        return _html(
            _render.message_page("Bad request", "dag_id, run_id and task_id are required."), status_code=400
        )
    require_dag(user, dag_id)
    try:
        # "{MAP_INDEX}" arrives verbatim from the UI's tab of a task that is not mapped.
        map_index: int | None = int(request.query_params.get("map_index", ""))
    except ValueError:
        map_index = None
    with _session() as session:
        rows = _queries.task_rows(session, dag_id, run_id, task_id)
        # Only our operators' XComs are read as Reve results (any task may return a look-alike dict).
        rows = [row for row in rows if row.operator in _queries.REVE_OPERATORS]
        cards = _cards.build_cards(session, rows)
    shown = [card for card in cards if card.reve_task_id or card.state in ("failed", "skipped")]
    return _html(_render.task_instance_page(dag_id, run_id, task_id, shown, map_index))


def _credit_panel(request: Request, user: Any) -> Response:
    days = _number(request, "days", CREDIT_DAYS, 1, 90)
    dag_id = _text(request, "dag_id", 250)
    readable = readable_dag_ids(user)
    today = datetime.now(timezone.utc).date()
    since = datetime.combine(today - timedelta(days=days - 1), datetime.min.time(), tzinfo=timezone.utc)
    with _session() as session:
        rows = _queries.credit_rows(session, readable, since, dag_id=dag_id)
        dag_ids = _queries.gallery_dag_ids(session, readable)
    summary = _credits.summarize(rows, today=today, days=days)
    return _html(_credits.credits_page(summary, days=days, dag_id=dag_id, dag_ids=dag_ids))


def _not_found() -> Response:
    return Response("Not found\n", status_code=404, media_type="text/plain")


def _serve_media(request: Request, user: Any) -> Response:
    dag_id, run_id, task_id, reve_task_id = (
        _text(request, name, 250) for name in ("dag_id", "run_id", "task_id", "reve_task_id")
    )
    try:
        map_index = int(request.query_params.get("map_index", "-1"))
        index = int(request.query_params.get("index", ""))
    except ValueError:
        return _not_found()
    if not (-1 <= map_index < 2**31 and 0 <= index < 2**31):  # beyond what a DB integer holds
        return _not_found()
    if not dag_id or not run_id or not task_id or not reve_task_id:
        return _not_found()
    require_dag(user, dag_id)
    with _session() as session:
        value = _queries.reve_return_value(session, dag_id, run_id, task_id, map_index)
    entry = _media.find_entry(value, reve_task_id, index)
    if entry is None:
        return _not_found()
    try:
        opened = _media.open_verified(_media.check_entry(entry))
    except _media.MediaRefused as refused:
        # The reason stays in the server log: the client learns only that there is no file.
        log.warning(
            "Reve gallery: not serving result %s/%d of %s.%s[%d] (%s)",
            reve_task_id,
            index,
            dag_id,
            task_id,
            map_index,
            refused,
        )
        return _not_found()
    headers = {
        "Cache-Control": "private, max-age=3600",
        "Content-Disposition": f'inline; filename="{opened.entry.file_name}"',
        "Content-Length": str(opened.entry.size),
    }
    if isinstance(opened.body, bytes):
        return Response(opened.body, media_type=opened.entry.content_type, headers=headers)
    return StreamingResponse(opened.body, media_type=opened.entry.content_type, headers=headers)


@cache
def _stylesheet() -> bytes:
    return resources.files("airflow_provider_reve.plugins").joinpath("gallery.css").read_bytes()


def create_app() -> FastAPI:
    app = FastAPI(
        title="Reve gallery",
        description="The Reve gallery plugin's pages (HTML).",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        is_media = request.url.path.endswith("/media") and response.status_code == 200
        response.headers["Content-Security-Policy"] = MEDIA_CSP if is_media else PAGE_CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.exception_handler(NotAuthenticated)
    async def unauthenticated(request: Request, error: NotAuthenticated) -> Response:
        page = _render.message_page(
            "Log in to Airflow",
            "The Reve gallery shows Airflow data: log in first.",
            link=(login_url(request), "Log in"),
        )
        return _html(page, status_code=401)

    @app.exception_handler(Forbidden)
    async def forbidden(request: Request, error: Forbidden) -> Response:
        page = _render.message_page("Forbidden", "You may not read this DAG's task instances.")
        return _html(page, status_code=403)

    @app.get("/", include_in_schema=False)
    def index(request: Request, user: User) -> Response:
        return RedirectResponse(f"{request.scope.get('root_path', '')}/gallery", status_code=307)

    @app.get("/gallery", response_class=HTMLResponse)
    def gallery(request: Request, user: User) -> Response:
        return _gallery(request, user)

    @app.get("/task-instance", response_class=HTMLResponse)
    def task_instance(request: Request, user: User) -> Response:
        return _task_instance(request, user)

    @app.get("/credits", response_class=HTMLResponse)
    def credits(request: Request, user: User) -> Response:
        return _credit_panel(request, user)

    @app.get("/media")
    def media(request: Request, user: User) -> Response:
        return _serve_media(request, user)

    @app.get("/static/gallery.css")
    def stylesheet(user: User) -> Response:
        return Response(
            _stylesheet(), media_type="text/css", headers={"Cache-Control": "private, max-age=300"}
        )

    return app

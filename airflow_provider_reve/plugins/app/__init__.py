"""The gallery's FastAPI app, mounted by Airflow's API server under ``/reve`` (the edge3 shape).

* :mod:`.routes.pages` -- ``/gallery``, ``/task-instance`` (the "Reve media" tab), ``/credits``,
  ``/static/gallery.css``; :mod:`.routes.media` -- ``/media``, one stored file;
  :mod:`.routes.budgets` -- ``/budgets``, the ledger's budgets (:mod:`.budget_reads`,
  :mod:`.budgets_panel`);
* :mod:`.security` -- who is asking (Airflow's JWT), as the dependency ``User``; which DAGs they
  may read (Airflow's auth manager);
* :mod:`.params` -- the typed, leniently parsed query parameters of each route;
* :mod:`.queries` -- the metadata DB reads; :mod:`.cards` -- rows into cards;
  :mod:`.rendering` and :mod:`.credits` -- HTML;
* :mod:`.locations`, :mod:`.media`, :mod:`.ranges`, :mod:`.reading` -- which files may be served,
  how they are verified, cut into ranges and read under a time limit.

Anonymous requests, and expired or invalid tokens, get 401 with a link to Airflow's login page (a
page, not a redirect: inside the Airflow UI's frame a redirect would put the login form in the
frame, and API clients want the status). A DAG the user may not read is 403 on the pages that
name one; the gallery and credits simply never include it. Imported only by the API server.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from airflow_provider_reve.plugins.app import rendering
from airflow_provider_reve.plugins.app.routes import budgets as budgets_route
from airflow_provider_reve.plugins.app.routes import media as media_route
from airflow_provider_reve.plugins.app.routes import pages
from airflow_provider_reve.plugins.app.security import Forbidden, NotAuthenticated, login_url

__all__ = ["MEDIA_CSP", "PAGE_CSP", "create_app"]

PAGE_CSP = (
    "default-src 'none'; img-src 'self' http: https:; media-src 'self' http: https:; "
    "style-src 'self'; script-src 'none'; form-action 'self'; frame-ancestors 'self'; base-uri 'none'"
)
MEDIA_CSP = "default-src 'none'; sandbox"


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
        is_media = request.url.path.endswith("/media") and response.status_code in (200, 206)
        response.headers["Content-Security-Policy"] = MEDIA_CSP if is_media else PAGE_CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.exception_handler(NotAuthenticated)
    async def unauthenticated(request: Request, error: NotAuthenticated) -> Response:
        page = rendering.message_page(
            "Log in to Airflow",
            "The Reve gallery shows Airflow data: log in first.",
            link=(login_url(request), "Log in"),
        )
        return pages.html(page, status_code=401)

    @app.exception_handler(Forbidden)
    async def forbidden(request: Request, error: Forbidden) -> Response:
        page = rendering.message_page("Forbidden", "You may not read this DAG's task instances.")
        return pages.html(page, status_code=403)

    app.include_router(pages.router)
    app.include_router(media_route.router)
    app.include_router(budgets_route.router)
    return app

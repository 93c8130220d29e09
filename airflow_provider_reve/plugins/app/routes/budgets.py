"""``/reve/budgets``: the Budgets panel, under the gallery's own auth.

Budget totals are deployment-wide (a budget counts every DAG it covers, so its spent and reserved
are the same for everyone who may open the gallery); the top-DAG rows list only the DAGs the user
may read (:func:`security.readable_dag_ids`, the gallery's rule). The route is ``async``: the
user's readable DAGs come from the server's thread pool like every other page's, and the ledger
is read by :mod:`..budget_reads` in its own threads under a time limit, so a ledger that is down
or slow fails this page (503/504 with a message) and nothing else.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from airflow_provider_reve.plugins.app.budget_reads import LedgerFailed, read_budgets
from airflow_provider_reve.plugins.app.budgets_panel import budgets_page
from airflow_provider_reve.plugins.app.routes.pages import html
from airflow_provider_reve.plugins.app.security import User, readable_dag_ids

__all__ = ["router"]

router = APIRouter()


@router.get("/budgets", response_class=HTMLResponse)
async def budgets(user: User) -> Response:
    readable = await run_in_threadpool(readable_dag_ids, user)
    outcome = await read_budgets(readable)
    status = 200
    if isinstance(outcome, LedgerFailed):
        status = 504 if outcome.timed_out else 503
    return html(budgets_page(outcome), status_code=status)

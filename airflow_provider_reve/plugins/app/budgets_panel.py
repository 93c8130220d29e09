"""The Budgets panel's HTML: each budget's limit, spent, reserved, remaining, window and reset,
and the DAGs that spent most of it in the current window.

Budget names, scopes and DAG ids come from whoever ran ``airflow reve budget set`` and from DAG
authors: every value goes through :func:`rendering.esc`, every link through :func:`rendering.url`
(only this app's ``gallery`` route), and the usage bar is SVG attributes, not inline CSS (the
pages' Content-Security-Policy allows no inline style and no script).

Stable hooks for tests: ``budgets-panel``, ``budget`` (a ``tr`` with ``data-budget``,
``data-limit``, ``data-spent``, ``data-reserved``, ``data-remaining``, ``data-window-start``,
``data-resets-at``), ``budget-dag`` (``data-budget``, ``data-dag-id``, ``data-spent``,
``data-reserved``), ``budgets-off``, ``budgets-error``, ``budgets-empty``.
"""

from __future__ import annotations

from datetime import datetime

from airflow_provider_reve.plugins.app.budget_reads import BudgetRow, BudgetsView, LedgerFailed, LedgerOff
from airflow_provider_reve.plugins.app.rendering import document, esc, route, url

__all__ = ["budgets_page"]

_BAR_WIDTH = 160
_BAR_HEIGHT = 10

TURN_ON = (
    "Budgets are off: no ledger is configured. To turn them on, point [reve] ledger_conn_id "
    "(AIRFLOW__REVE__LEDGER_CONN_ID) at an Airflow connection of type sqlite or postgres, then "
    "define a budget with: airflow reve budget set NAME --limit CREDITS --window day. "
    "See the docs' Budgets page (docs/budgets.md)."
)


def _reset(moment: datetime | None) -> str:
    if moment is None:
        return "never (a total budget)"
    return f'<time datetime="{esc(moment.isoformat())}">{esc(moment.strftime("%Y-%m-%d %H:%M UTC"))}</time>'


def _window(row: BudgetRow) -> str:
    budget = row.status.budget
    if budget.window == "total":
        return "total"
    return f"{budget.window} ({budget.time_zone})"


def _bar(row: BudgetRow) -> str:
    """Spent then reserved, as parts of the limit: SVG attributes, allowed by the CSP."""
    status = row.status
    limit = status.budget.limit_credits
    used = status.spent_credits + status.reserved_credits
    if limit <= 0:
        spent_w = reserved_w = 0.0
    else:
        spent_w = _BAR_WIDTH * min(1.0, status.spent_credits / limit)
        reserved_w = max(0.0, _BAR_WIDTH * min(1.0, used / limit) - spent_w)
    return (
        f'<svg class="chart" width="{_BAR_WIDTH}" height="{_BAR_HEIGHT}" viewBox="0 0 {_BAR_WIDTH} '
        f'{_BAR_HEIGHT}" role="img" aria-label="{used:,} of {limit:,} credits used or reserved">'
        f'<rect class="axis" x="0" y="0" width="{_BAR_WIDTH}" height="{_BAR_HEIGHT}" fill="none" '
        'stroke-width="1"/>'
        f'<rect class="bar" x="0" y="0" width="{spent_w:.1f}" height="{_BAR_HEIGHT}"/>'
        f'<rect class="bar" x="{spent_w:.1f}" y="0" width="{reserved_w:.1f}" height="{_BAR_HEIGHT}" '
        'fill-opacity="0.4"/></svg>'
    )


def _budget_row(row: BudgetRow) -> str:
    status = row.status
    budget = status.budget
    attributes = {
        "data-testid": "budget",
        "data-budget": budget.name,
        "data-limit": budget.limit_credits,
        "data-spent": status.spent_credits,
        "data-reserved": status.reserved_credits,
        "data-remaining": status.remaining_credits,
        "data-window": budget.window,
        "data-window-start": status.window_start,
        "data-resets-at": status.resets_at.isoformat() if status.resets_at else "",
    }
    attrs = " ".join(f'{name}="{esc(value)}"' for name, value in attributes.items())
    return (
        f"<tr {attrs}><td>{esc(budget.name)}</td>"
        f"<td>{esc(budget.describe_scope())}</td><td>{esc(_window(row))}</td>"
        f"<td>{budget.limit_credits:,}</td><td>{status.spent_credits:,}</td>"
        f"<td>{status.reserved_credits:,}</td><td>{status.remaining_credits:,}</td>"
        f"<td>{_reset(status.resets_at)}</td><td>{_bar(row)}</td></tr>"
    )


def _top_dags(row: BudgetRow) -> str:
    name = row.status.budget.name
    heading = f"{name}: top DAGs this window"
    if not row.top_dags:
        return (
            f"<h2>{esc(heading)}</h2>"
            '<p class="empty-list" data-testid="budget-no-dags">No spending in this window by the DAGs '
            "you may read.</p>"
        )
    lines = "".join(
        f'<tr data-testid="budget-dag" data-budget="{esc(name)}" data-dag-id="{esc(spend.dag_id)}" '
        f'data-spent="{spend.spent_credits}" data-reserved="{spend.reserved_credits}">'
        f'<td><a href="{url(route("gallery", {"dag_id": spend.dag_id}))}">{esc(spend.dag_id)}</a></td>'
        f"<td>{spend.spent_credits:,}</td><td>{spend.reserved_credits:,}</td></tr>"
        for spend in row.top_dags
    )
    return (
        f"<h2>{esc(heading)}</h2>"
        '<table class="numbers"><thead><tr><th>DAG</th><th>Spent</th><th>Reserved</th></tr></thead>'
        f"<tbody>{lines}</tbody></table>"
    )


def _view(view: BudgetsView) -> str:
    intro = (
        f'<p class="note">Ledger: connection {esc(view.conn_id)}. Totals count every DAG of the '
        "deployment; the DAG lists show only the DAGs you may read. Read at "
        f"{_reset(view.now)}.</p>"
    )
    if not view.budgets:
        return intro + (
            '<p class="empty-list" data-testid="budgets-empty">No budgets are defined. Define one with: '
            "airflow reve budget set NAME --limit CREDITS --window day.</p>"
        )
    table = (
        '<table class="numbers"><thead><tr><th>Budget</th><th>Covers</th><th>Window</th>'
        "<th>Limit</th><th>Spent</th><th>Reserved</th><th>Remaining</th><th>Resets</th><th></th>"
        f"</tr></thead><tbody>{''.join(_budget_row(row) for row in view.budgets)}</tbody></table>"
    )
    return intro + table + "".join(_top_dags(row) for row in view.budgets)


def budgets_page(outcome: BudgetsView | LedgerOff | LedgerFailed) -> str:
    if isinstance(outcome, LedgerOff):
        content = f'<p class="note" data-testid="budgets-off">{esc(TURN_ON)}</p>'
    elif isinstance(outcome, LedgerFailed):
        what = "did not answer in time" if outcome.timed_out else "could not be read"
        text = (
            f"The budget ledger (connection {outcome.conn_id}) {what}: {outcome.reason}. Budgets are "
            "not shown; the rest of the gallery and Airflow are not affected. Reload to try again."
        )
        content = (
            f'<p class="error" data-testid="budgets-error" data-timed-out="{str(outcome.timed_out).lower()}">'
            f"{esc(text)}</p>"
        )
    else:
        content = _view(outcome)
    body = f'<section class="panel" data-testid="budgets-panel"><h1>Reve budgets</h1>{content}</section>'
    return document("Reve budgets", body, active="budgets")

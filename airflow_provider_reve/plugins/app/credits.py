"""The credits panel: what Reve generations cost, per day and per DAG, drawn as inline SVG.

Counting rules (the README repeats them):

* A Reve task is counted once, by its id, however many task instances reported it (the
  submitting task and the sensor that waited for it both hold it in their XCom); its credits
  are the ``consumed_credits`` it was reported with, and it belongs to the day and DAG of the
  first report that carried them.
* Failed and skipped task instances are counted, not charged: Reve refunds failed tasks.
* Days are UTC days; the window ends today.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta

from airflow_provider_reve.plugins.app.queries import CreditRow
from airflow_provider_reve.plugins.app.rendering import document, esc, route, url

__all__ = ["DagTotals", "Summary", "credits_page", "summarize"]

_CHART_WIDTH = 720
_CHART_HEIGHT = 180
_TOP_DAGS = 12


@dataclass
class DagTotals:
    credits: int = 0
    generations: int = 0
    failed: int = 0
    skipped: int = 0


@dataclass
class Summary:
    days: list[date]
    per_day: dict[date, int] = field(default_factory=dict)
    per_dag: dict[str, DagTotals] = field(default_factory=lambda: defaultdict(DagTotals))
    total: int = 0
    generations: int = 0
    unknown_cost: int = 0  # generations whose credits were never reported
    failed: int = 0
    skipped: int = 0


def _credits(value: object) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(str(value))
    except ValueError:
        return None
    return int(number) if number.is_integer() and number >= 0 else None


def summarize(rows: Iterable[CreditRow], *, today: date, days: int) -> Summary:
    window = [today - timedelta(days=offset) for offset in range(days - 1, -1, -1)]
    summary = Summary(days=window, per_day=dict.fromkeys(window, 0))
    first_day = window[0]
    ordered = sorted(rows, key=lambda row: (row.when is None, row.when.timestamp() if row.when else 0.0))
    # reve task id -> whether it was already charged (True) or seen without a cost (False)
    seen: dict[str, bool] = {}
    for row in ordered:
        day = row.when.date() if row.when is not None else None
        if day is None or day < first_day or day > today:
            continue
        if row.state == "failed":
            summary.failed += 1
            summary.per_dag[row.dag_id].failed += 1
            continue
        if row.state == "skipped":
            summary.skipped += 1
            summary.per_dag[row.dag_id].skipped += 1
            continue
        if row.state != "success" or not row.reve_task_id:
            continue
        credits = _credits(row.credits)
        charged = seen.get(row.reve_task_id)
        if charged is None:
            summary.generations += 1
            summary.per_dag[row.dag_id].generations += 1
        if credits is None or charged:
            seen.setdefault(row.reve_task_id, False)
            continue
        seen[row.reve_task_id] = True
        summary.total += credits
        summary.per_day[day] += credits
        summary.per_dag[row.dag_id].credits += credits
    summary.unknown_cost = sum(1 for charged in seen.values() if not charged)
    return summary


def _day_chart(summary: Summary) -> str:
    peak = max(summary.per_day.values(), default=0) or 1
    count = len(summary.days)
    left, bottom, top = 48, 24, 12
    inner_w, inner_h = _CHART_WIDTH - left - 8, _CHART_HEIGHT - bottom - top
    slot = inner_w / max(count, 1)
    bars = []
    for position, day in enumerate(summary.days):
        value = summary.per_day.get(day, 0)
        height = 0 if value == 0 else max(1.0, inner_h * value / peak)
        x = left + position * slot + slot * 0.1
        y = top + inner_h - height
        bars.append(
            f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{slot * 0.8:.1f}" height="{height:.1f}" '
            f'data-day="{day.isoformat()}" data-credits="{value}"><title>{day.isoformat()}: {value:,} '
            "credits</title></rect>"
        )
        if position % max(1, count // 6) == 0 or position == count - 1:
            bars.append(
                f'<text class="tick" x="{x + slot * 0.4:.1f}" y="{_CHART_HEIGHT - 6}" '
                f'text-anchor="middle">{day.strftime("%m-%d")}</text>'
            )
    axis = (
        f'<line class="axis" x1="{left}" y1="{top + inner_h}" x2="{_CHART_WIDTH - 8}" y2="{top + inner_h}"/>'
        f'<text class="tick" x="{left - 6}" y="{top + 8}" text-anchor="end">{peak:,}</text>'
        f'<text class="tick" x="{left - 6}" y="{top + inner_h}" text-anchor="end">0</text>'
    )
    return (
        f'<svg class="chart" data-testid="credits-chart" viewBox="0 0 {_CHART_WIDTH} {_CHART_HEIGHT}" '
        f'role="img" aria-label="Credits per day, last {count} days">{axis}{"".join(bars)}</svg>'
    )


def _dag_chart(ranked: Sequence[tuple[str, DagTotals]]) -> str:
    if not ranked:
        return ""
    peak = max(totals.credits for _, totals in ranked) or 1
    row_h, label_w = 22, 220
    height = row_h * len(ranked) + 4
    parts = []
    for position, (dag_id, totals) in enumerate(ranked):
        y = 2 + position * row_h
        width = 0 if totals.credits == 0 else max(1.0, (_CHART_WIDTH - label_w - 70) * totals.credits / peak)
        shown = dag_id if len(dag_id) <= 32 else dag_id[:31] + "…"
        parts.append(
            f'<text class="label" x="{label_w - 6}" y="{y + 15}" text-anchor="end">{esc(shown)}'
            f"<title>{esc(dag_id)}</title></text>"
            f'<rect class="bar" x="{label_w}" y="{y + 3}" width="{width:.1f}" height="{row_h - 6}"/>'
            f'<text class="value" x="{label_w + width + 6:.1f}" y="{y + 15}">{totals.credits:,}</text>'
        )
    return (
        f'<svg class="chart" data-testid="credits-dag-chart" viewBox="0 0 {_CHART_WIDTH} {height}" '
        f'role="img" aria-label="Credits per DAG">{"".join(parts)}</svg>'
    )


def credits_page(summary: Summary, *, days: int, dag_id: str | None, dag_ids: Sequence[str]) -> str:
    ranked = sorted(summary.per_dag.items(), key=lambda item: (-item[1].credits, item[0]))
    totals = (
        '<dl class="totals" data-testid="credits-totals">'
        f'<dt>Credits</dt><dd data-testid="credits-total" data-value="{summary.total}">{summary.total:,}</dd>'
        f'<dt>Generations</dt><dd data-testid="credits-generations" data-value="{summary.generations}">'
        f"{summary.generations:,}</dd>"
        f'<dt>Failed (refunded)</dt><dd data-testid="credits-failed" data-value="{summary.failed}">'
        f"{summary.failed:,}</dd>"
        f'<dt>Skipped</dt><dd data-testid="credits-skipped" data-value="{summary.skipped}">'
        f"{summary.skipped:,}</dd>"
        "</dl>"
    )
    unknown = ""
    if summary.unknown_cost:
        unknown = (
            f'<p class="note" data-testid="credits-unknown">{summary.unknown_cost:,} generation(s) '
            "without a reported cost are not in the totals.</p>"
        )
    day_rows = "".join(
        f'<tr data-testid="credits-day" data-day="{day.isoformat()}" data-credits="{summary.per_day[day]}">'
        f"<td>{day.isoformat()}</td><td>{summary.per_day[day]:,}</td></tr>"
        for day in reversed(summary.days)
        if summary.per_day[day]
    )
    dag_rows = "".join(
        f'<tr data-testid="credits-dag" data-dag-id="{esc(name)}" data-credits="{totals.credits}">'
        f'<td><a href="{url(route("gallery", {"dag_id": name}))}">{esc(name)}</a></td>'
        f"<td>{totals.credits:,}</td><td>{totals.generations:,}</td><td>{totals.failed:,}</td>"
        f"<td>{totals.skipped:,}</td></tr>"
        for name, totals in ranked
    )
    options = "".join(
        f'<option value="{esc(name)}"{" selected" if name == dag_id else ""}>{esc(name)}</option>'
        for name in dag_ids
    )
    form = (
        '<form class="filters" method="get" action="credits">'
        f'<label>DAG<select name="dag_id"><option value="">All DAGs</option>{options}</select></label>'
        f'<label>Days<input type="number" name="days" min="1" max="90" value="{days}"></label>'
        '<button type="submit">Apply</button></form>'
    )
    scope = f" in {dag_id}" if dag_id else " in the DAGs you may read"
    body = (
        '<section class="panel" data-testid="credits-panel">'
        f"<h1>Reve credits, last {days} days{esc(scope)}</h1>"
        f"{form}{totals}{unknown}<h2>Per day (UTC)</h2>{_day_chart(summary)}"
        f"<h2>Per DAG</h2>{_dag_chart(ranked[:_TOP_DAGS])}"
        '<table class="numbers"><thead><tr><th>DAG</th><th>Credits</th><th>Generations</th>'
        f"<th>Failed</th><th>Skipped</th></tr></thead><tbody>{dag_rows}</tbody></table>"
        '<h2>Days with spending</h2><table class="numbers"><thead><tr><th>Day</th><th>Credits</th></tr>'
        f"</thead><tbody>{day_rows}</tbody></table></section>"
    )
    return document("Reve credits", body, active="credits")

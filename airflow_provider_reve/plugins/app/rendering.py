"""HTML for the gallery's pages: every value escaped, every URL checked, no script at all.

Prompts, task and run ids, models, error messages and URLs come from DAG authors, whoever
triggered the run, and a remote API. So:

* every text and attribute value goes through :func:`esc` (``html.escape`` with quotes);
* every ``href``/``src`` goes through :func:`url`, which accepts only a route of this app
  (built here from fixed names and percent-encoded values), Airflow's own UI paths, or an
  ``http(s)`` URL that ``links.safe_link`` accepts -- ``javascript:``, ``data:`` and friends
  can never reach an attribute;
* the pages carry no script (the Content-Security-Policy says ``script-src 'none'``); a broken
  image shows the placeholder drawn beneath it, by CSS alone.

Stable ``data-testid`` hooks (``reve-grid``, ``reve-card``, ``reve-image``, ``reve-video``,
``reve-prompt``, ``reve-credits``, ``credits-total``...) are part of the page's contract: the
browser tests use them.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from urllib.parse import quote, urlencode

from airflow_provider_reve.links import safe_link
from airflow_provider_reve.plugins.app.cards import Card, Media

__all__ = [
    "EXPIRED_URL",
    "MAX_MEDIA_PER_CARD",
    "MISSING_FILE",
    "NONE",
    "STYLESHEET",
    "airflow_ti_path",
    "document",
    "duration_text",
    "esc",
    "filter_form",
    "gallery_page",
    "grid",
    "message_page",
    "pager",
    "render_card",
    "route",
    "task_instance_page",
    "url",
]

#: Relative routes of this app (pages live at ``<prefix>/<route>``) and the Airflow UI's.
_OWN_ROUTES = ("gallery", "task-instance", "credits", "budgets", "media?", "static/", "../dags/")
STYLESHEET = "static/gallery.css"

EXPIRED_URL = "Result URL expired or unreachable. Store results with download_to to keep them."
MISSING_FILE = "Stored file not available."
NONE = "-"  # a value nobody reported
#: Files shown on one card. A Reve task returns a few; a manifest (written by DAG code) that names
#: thousands for one task must not make one card the size of a whole page.
MAX_MEDIA_PER_CARD = 16


def esc(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def url(target: str) -> str:
    """``target`` escaped for an attribute, if it is one of ours or a safe http(s) URL."""
    if target[:8].lower().startswith(("http://", "https://")):  # safe_link accepts "HTTPS://" too
        if safe_link(target) != target:
            raise ValueError("unsafe URL")
    elif not target.startswith(_OWN_ROUTES):
        raise ValueError("not a route of this app")
    return esc(target)


def route(name: str, params: Mapping[str, object] | None = None) -> str:
    query = urlencode({k: v for k, v in (params or {}).items() if v not in (None, "")})
    return f"{name}?{query}" if query else name


def airflow_ti_path(dag_id: str, run_id: str, task_id: str, map_index: int) -> str:
    """The task instance's page in the Airflow UI, relative to this app's pages."""
    path = f"../dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}/tasks/{quote(task_id, safe='')}"
    return f"{path}/mapped/{map_index}" if map_index >= 0 else path


def document(title: str, body: str, *, active: str = "") -> str:
    tabs = "".join(
        f'<a href="{url(href)}"{" aria-current=page" if name == active else ""}>{esc(label)}</a>'
        for name, href, label in (
            ("gallery", "gallery", "Gallery"),
            ("credits", "credits", "Credits"),
            ("budgets", "budgets", "Budgets"),
        )
    )
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="referrer" content="no-referrer">'
        f"<title>{esc(title)}</title>"
        f'<link rel="stylesheet" href="{url(STYLESHEET)}"></head>'
        f'<body><header><strong>Reve</strong><nav aria-label="Reve pages">{tabs}</nav></header>'
        f"<main>{body}</main></body></html>\n"
    )


def message_page(title: str, text: str, *, link: tuple[str, str] | None = None) -> str:
    """A page for 401/403/404/400: no stylesheet link (the caller may not be allowed to load it)."""
    anchor = ""
    if link is not None:
        href, label = link
        # The login URL is the auth manager's (e.g. "/auth/login?next=..."): a same-origin path.
        if href.startswith("/") and not href.startswith("//"):
            anchor = f' <a href="{esc(href)}" data-testid="reve-login">{esc(label)}</a>'
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="referrer" content="no-referrer"><title>{esc(title)}</title></head>'
        f"<body><h1>{esc(title)}</h1><p>{esc(text)}{anchor}</p></body></html>\n"
    )


# -- cards ---------------------------------------------------------------------------------------
def _when(value: datetime | None) -> str:
    if value is None:
        return ""
    return f'<time datetime="{esc(value.isoformat())}">{esc(value.strftime("%Y-%m-%d %H:%M UTC"))}</time>'


def duration_text(seconds: float | None) -> str:
    if seconds is None:
        return NONE
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def _media(item: Media, card: Card) -> str:
    src = url(item.src)
    placeholder = MISSING_FILE if item.stored else EXPIRED_URL
    label = f"Result {item.index + 1} of {card.reve_task_id or 'this task'}"
    stored = "true" if item.stored else "false"
    under = f'<span class="placeholder">{esc(placeholder)}</span>'
    if item.kind == "video":
        element = (
            f'<video controls preload="metadata" src="{src}" data-testid="reve-video" '
            f'data-stored="{stored}" aria-label="{esc(label)}"></video>'
        )
        return (
            f'<figure class="frame">{under}{element}</figure>'
            f'<a class="full" href="{src}" rel="noopener noreferrer" data-testid="reve-full-link">'
            "Full size</a>"
        )
    # alt="" on purpose: a broken image then paints nothing, and the placeholder beneath shows.
    element = (
        f'<img src="{src}" alt="" referrerpolicy="no-referrer" data-testid="reve-image" '
        f'data-stored="{stored}" data-index="{item.index}" data-placeholder="{esc(placeholder)}">'
    )
    return (
        f'<a class="frame" href="{src}" rel="noopener noreferrer" referrerpolicy="no-referrer" '
        f'data-testid="reve-full-link" aria-label="{esc(label)} (full size)">{under}{element}</a>'
    )


def _empty_media(card: Card) -> str:
    if card.state == "failed":
        text = "Failed: nothing was generated or kept (Reve refunds failed tasks). See the task log."
    elif card.state == "skipped":
        text = "Skipped (e.g. the content policy, with on_content_policy_violation='skip')."
    elif card.handed_on:
        text = "Submitted and handed on (wait_for_completion=False); no result recorded yet."
    elif card.state == "success" and card.result_url_count:
        text = "The result URLs were not plain http(s) URLs and are not shown."
    elif card.state == "success":
        text = "No result files recorded."
    else:
        text = "In progress."
    return (
        '<div class="frame empty" data-testid="reve-no-media">'
        f'<span class="placeholder">{esc(text)}</span></div>'
    )


def _status(card: Card) -> str:
    parts = [card.state or "unknown"]
    if card.reve_status and card.reve_status.lower() != (card.state or "").lower():
        parts.append(f"Reve {card.reve_status}")
    return " · ".join(parts)


def _columns(count: int) -> int:
    """Thumbnails side by side, so a card with several files is no taller than one with one."""
    return 1 if count <= 1 else 2 if count <= 4 else 3


def render_card(card: Card, *, current: bool = False) -> str:
    media = "".join(_media(item, card) for item in card.media[:MAX_MEDIA_PER_CARD])
    if not card.media:
        media = _empty_media(card)
    elif len(card.media) > MAX_MEDIA_PER_CARD:
        hidden = len(card.media) - MAX_MEDIA_PER_CARD
        media += f'<p class="full" data-testid="reve-more-media">{hidden:,} more file(s) not shown</p>'
    columns = _columns(min(len(card.media), MAX_MEDIA_PER_CARD))
    if card.prompt:
        prompt = f'<p class="prompt" data-testid="reve-prompt">{esc(card.prompt)}</p>'
    else:
        prompt = (
            '<p class="prompt unknown" data-testid="reve-prompt" data-unknown="true">'
            "Prompt not recorded (a sensor's task submitted elsewhere, or rendered fields Airflow "
            "no longer keeps).</p>"
        )
    credits = NONE if card.credits is None else f"{card.credits:,}"
    metadata = ""
    if card.metadata:
        shown = json.dumps(card.metadata, sort_keys=True, ensure_ascii=False)
        metadata = f'<dt>Metadata</dt><dd data-testid="reve-metadata"><code>{esc(shown)}</code></dd>'
    error = ""
    if card.error_code or card.error_message:
        error = (
            f'<p class="error" data-testid="reve-error">{esc(card.error_code or "")} '
            f"{esc(card.error_message or '')}</p>"
        )
    mapped = f" [{card.map_index}]" if card.map_index >= 0 else ""
    ti_link = airflow_ti_path(card.dag_id, card.run_id, card.task_id, card.map_index)
    tab = route(
        "task-instance",
        {"dag_id": card.dag_id, "run_id": card.run_id, "task_id": card.task_id, "map_index": card.map_index},
    )
    attributes = {
        "data-testid": "reve-card",
        "data-dag-id": card.dag_id,
        "data-run-id": card.run_id,
        "data-task-id": card.task_id,
        "data-map-index": card.map_index,
        "data-reve-task-id": card.reve_task_id or "",
        "data-state": card.state or "",
        "data-current": "true" if current else None,
    }
    attrs = " ".join(f'{name}="{esc(value)}"' for name, value in attributes.items() if value is not None)
    return (
        f'<li class="card state-{esc(card.state or "none")}" {attrs}>'
        f'<div class="media cols-{columns}" data-testid="reve-media">{media}</div>{prompt}'
        '<dl class="facts">'
        f'<dt>Model</dt><dd data-testid="reve-model">{esc(card.model or NONE)}</dd>'
        f'<dt>Status</dt><dd data-testid="reve-status">{esc(_status(card))}</dd>'
        f'<dt>Credits</dt><dd data-testid="reve-credits" data-credits="{esc(card.credits)}">'
        f"{esc(credits)}</dd>"
        f'<dt>Duration</dt><dd data-testid="reve-duration">{esc(duration_text(card.duration))}</dd>'
        f"<dt>When</dt><dd>{_when(card.when)}</dd>"
        f"{metadata}"
        "</dl>"
        f"{error}"
        f'<p class="where"><a href="{url(ti_link)}" data-testid="reve-ti-link">'
        f"{esc(card.dag_id)} / {esc(card.task_id)}{esc(mapped)}</a>"
        f'<span class="run" title="{esc(card.run_id)}">{esc(card.run_id)}</span>'
        f'<a href="{url(tab)}" data-testid="reve-media-link">Reve media of this task</a></p>'
        "</li>"
    )


def grid(cards: Iterable[Card], *, current_map_index: int | None = None) -> str:
    items = "".join(render_card(card, current=card.map_index == current_map_index) for card in cards)
    return f'<ul class="grid" data-testid="reve-grid">{items}</ul>'


# -- gallery page --------------------------------------------------------------------------------
def _select(name: str, label: str, options: Sequence[tuple[str, str]], chosen: str | None) -> str:
    rendered = "".join(
        f'<option value="{esc(value)}"{" selected" if value == (chosen or "") else ""}>{esc(text)}</option>'
        for value, text in options
    )
    return (
        f'<label>{esc(label)}<select name="{esc(name)}" data-testid="filter-{esc(name)}">'
        f"{rendered}</select></label>"
    )


def _input(name: str, label: str, value: str | None, *, kind: str = "text", extra: str = "") -> str:
    return (
        f'<label>{esc(label)}<input type="{kind}" name="{esc(name)}" value="{esc(value or "")}" '
        f'data-testid="filter-{esc(name)}"{extra}></label>'
    )


def filter_form(
    values: Mapping[str, str | None], dag_ids: Sequence[str], models: Sequence[str], statuses: Sequence[str]
) -> str:
    dags = [("", "All DAGs"), *((dag_id, dag_id) for dag_id in dag_ids)]
    if values.get("dag_id") and values["dag_id"] not in dag_ids:
        dags.append((str(values["dag_id"]), str(values["dag_id"])))
    status_options = [("", "Any status"), *((s, s.replace("_", " ")) for s in statuses)]
    model_list = "".join(f'<option value="{esc(m)}"></option>' for m in models)
    return (
        '<form class="filters" method="get" action="gallery" data-testid="reve-filters">'
        + _select("dag_id", "DAG", dags, values.get("dag_id"))
        + _input("run_id", "Run id", values.get("run_id"))
        + _input("model", "Model", values.get("model"), extra=' list="reve-models"')
        + f'<datalist id="reve-models">{model_list}</datalist>'
        + _select("status", "Status", status_options, values.get("status"))
        + _input("from", "From (UTC)", values.get("from"), kind="date")
        + _input("to", "To (UTC)", values.get("to"), kind="date")
        + '<button type="submit">Apply</button><a href="gallery">Reset</a></form>'
    )


def pager(
    total: int,
    page: int,
    per_page: int,
    params: Mapping[str, str | None],
    *,
    name: str = "gallery",
    labels: tuple[str, str] = ("← Newer", "Older →"),
) -> str:
    """Where this page is in ``total`` cards, with links to the pages before and after."""
    pages = max(1, -(-total // per_page))
    first = 0 if total == 0 else min(total, (page - 1) * per_page + 1)
    last = min(total, page * per_page)
    links = []
    if page > 1:
        links.append(
            f'<a rel="prev" href="{url(route(name, {**params, "page": min(page, pages + 1) - 1}))}" '
            f'data-testid="reve-prev">{esc(labels[0])}</a>'
        )
    if page < pages:
        links.append(
            f'<a rel="next" href="{url(route(name, {**params, "page": page + 1}))}" '
            f'data-testid="reve-next">{esc(labels[1])}</a>'
        )
    return (
        f'<nav class="pager" aria-label="Pages" data-testid="reve-pager">'
        f'<span data-testid="reve-count" data-total="{total}" data-first="{first}" data-last="{last}">'
        f"{first:,}-{last:,} of {total:,} · page {page:,} of {pages:,}</span>{''.join(links)}</nav>"
    )


def gallery_page(
    cards: Sequence[Card],
    *,
    total: int,
    page: int,
    per_page: int,
    params: Mapping[str, str | None],
    dag_ids: Sequence[str],
    models: Sequence[str],
    statuses: Sequence[str],
    notes: Sequence[str] = (),
) -> str:
    body = (
        "<h1>Reve gallery</h1>"
        + "".join(f'<p class="note" data-testid="reve-note">{esc(note)}</p>' for note in notes)
        + filter_form(params, dag_ids, models, statuses)
        + pager(total, page, per_page, params)
        + (
            grid(cards)
            if cards
            else '<p class="empty-list" data-testid="reve-empty">No Reve generations match, in the DAGs '
            "you may read.</p>"
        )
        + (pager(total, page, per_page, params) if len(cards) > 8 else "")
    )
    return document("Reve gallery", body, active="gallery")


def task_instance_page(
    dag_id: str,
    run_id: str,
    task_id: str,
    cards: Sequence[Card],
    map_index: int | None,
    *,
    total: int,
    page: int,
    per_page: int,
    params: Mapping[str, str | None],
) -> str:
    """The "Reve media" tab: one page of ``total`` cards, the tab's own instance first."""
    mapped = sorted({card.map_index for card in cards})
    heading = f"Reve media of {task_id}"
    intro = f"DAG {dag_id}, run {run_id}"
    if mapped and mapped != [-1]:
        intro += f", {total:,} card(s) of its mapped instances"
    if cards:
        nav = pager(total, page, per_page, params, name="task-instance", labels=("← Previous", "Next →"))
        content = nav + grid(cards, current_map_index=map_index) + (nav if len(cards) > 8 else "")
    elif total:
        content = pager(total, page, per_page, params, name="task-instance", labels=("← Previous", "Next →"))
    else:
        content = (
            '<p class="empty-list" data-testid="reve-empty">This task instance has no Reve media '
            "(not a Reve task, or it has not produced any yet).</p>"
        )
    body = f'<h1>{esc(heading)}</h1><p class="note">{esc(intro)}</p>{content}'
    return document(heading, body)

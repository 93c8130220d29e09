"""The gallery's stylesheet in a real browser (Debian's chromium): readable in both themes, and a
card with several files no taller than a card with one.

Every element that shows text (and the chart's SVG labels) is measured as the browser paints it:
its computed colour against the background it sits on (the first opaque ancestor's, with the
translucent ones blended in), in the light and in the dark colour scheme. WCAG 2 AA: 4.5:1, 3:1
for large text. The pages are the plugin's own HTML and stylesheet, rendered from cards of every
state; ``test_gallery_browser.py`` checks the same pages served by a real Airflow.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest

from airflow_provider_reve.plugins.app import rendering
from airflow_provider_reve.plugins.app.cards import Card, Media
from airflow_provider_reve.plugins.app.credits import Summary, credits_page, summarize
from airflow_provider_reve.plugins.app.queries import CreditRow
from airflow_provider_reve.plugins.app.routes.pages import stylesheet_bytes

# Runs in the page: [{text, ratio, needed}] for every text-bearing element.
CONTRAST_JS = """
() => {
  const parse = value => {
    const m = value.match(/rgba?\\(([^)]+)\\)/);
    if (!m) return null;
    const p = m[1].split(/[ ,\\/]+/).filter(Boolean).map(Number);
    return {r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1};
  };
  const over = (top, bottom) => ({
    r: top.r * top.a + bottom.r * (1 - top.a), g: top.g * top.a + bottom.g * (1 - top.a),
    b: top.b * top.a + bottom.b * (1 - top.a), a: 1});
  const background = element => {
    const layers = [];
    for (let e = element; e; e = e.parentElement) {
      const c = parse(getComputedStyle(e).backgroundColor);
      if (c && c.a > 0) { layers.push(c); if (c.a >= 1) break; }
    }
    let color = {r: 255, g: 255, b: 255, a: 1};  // the canvas
    if (layers.length && layers[layers.length - 1].a >= 1) color = layers.pop();
    while (layers.length) color = over(layers.pop(), color);
    return color;
  };
  const lum = c => {
    const f = v => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(c.r) + 0.7152 * f(c.g) + 0.0722 * f(c.b);
  };
  const ratio = (a, b) => {
    const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p);
    return (x + 0.05) / (y + 0.05);
  };
  const out = [];
  for (const e of document.querySelectorAll('body *')) {
    const style = getComputedStyle(e);
    if (style.visibility === 'hidden' || style.display === 'none') continue;
    const own = Array.from(e.childNodes).some(n => n.nodeType === 3 && n.textContent.trim());
    const control = ['BUTTON', 'INPUT', 'SELECT'].includes(e.tagName);
    if (!own && !control) continue;
    const box = e.getBoundingClientRect();
    if (box.width === 0 || box.height === 0) continue;
    const svg = e instanceof SVGElement;
    let fg = parse(svg ? style.fill : style.color);
    if (!fg) continue;
    const bg = background(svg ? e.ownerSVGElement || e : e);
    if (fg.a < 1) fg = over(fg, bg);
    const size = parseFloat(style.fontSize), bold = Number(style.fontWeight) >= 700;
    const large = size >= 24 || (size >= 18.66 && bold);
    out.push({text: (e.textContent || e.value || e.tagName).trim().slice(0, 40), tag: e.tagName,
              cls: String(e.getAttribute('class') || ''),
              ratio: Math.round(ratio(fg, bg) * 100) / 100, needed: large ? 3 : 4.5});
  }
  return out;
}
"""


def _card(state: str, files: int, **fields: Any) -> Card:
    card = Card(
        dag_id="example_reve_content_pipeline",
        run_id="scheduled__2026-12-07T00:00:00+00:00",
        task_id="generate",
        map_index=files,
        state=state,
        when=datetime(2026, 12, 7, 4, 0, tzinfo=timezone.utc),
        duration=12.5,
        reve_task_id=f"reve-{state}-{files}",
        reve_status="SUCCESS" if state == "success" else None,
        prompt=f"A lighthouse at dusk ({state}, {files} file(s))",
        model="reve-2.0",
        credits=5 * files,
        **fields,
    )
    card.media = [Media(kind="image", src=f"media?index={n}", index=n, stored=True) for n in range(files)]
    return card


def _gallery_html() -> str:
    cards = [
        _card("success", 1),
        _card("success", 3),
        _card("success", 4),
        _card("failed", 0, error_code="CONTENT_POLICY_VIOLATION", error_message="The prompt was refused."),
        _card("skipped", 0),
        _card("running", 0),
        _card("deferred", 0),
    ]
    return rendering.gallery_page(
        cards,
        total=120,
        page=2,
        per_page=len(cards),
        params={"dag_id": None},
        dag_ids=["example_reve_content_pipeline"],
        models=["reve-2.0"],
        statuses=["success", "failed"],
        notes=["Ignored from='yesterday': not a date (YYYY-MM-DD)."],
    )


def _credits_html() -> str:
    today = datetime(2026, 12, 7, tzinfo=timezone.utc).date()
    when = datetime(2026, 12, 6, 9, 0, tzinfo=timezone.utc)
    rows = [
        CreditRow(
            dag_id="example_reve_content_pipeline", when=when, state=state, reve_task_id=f"r-{n}", credits=n
        )
        for n, state in ((5, "success"), (12, "success"), (0, "failed"), (3, "skipped"))
    ]
    summary: Summary = summarize(rows, today=today, days=7)
    return credits_page(summary, days=7, dag_id=None, dag_ids=["example_reve_content_pipeline"])


def _show(page: Any, html: str) -> None:
    """The page as the plugin serves it, with its stylesheet inlined (no server needed)."""
    css = stylesheet_bytes().decode()
    page.set_content(
        html.replace(f'<link rel="stylesheet" href="{rendering.STYLESHEET}">', f"<style>{css}</style>")
    )


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("which", ["gallery", "credits", "message"])
def test_every_text_of_the_gallery_pages_is_readable_in_the_light_and_the_dark_theme(new_page, scheme, which):
    page = new_page()
    page.emulate_media(color_scheme=scheme)
    html = {
        "gallery": _gallery_html,
        "credits": _credits_html,
        "message": lambda: rendering.message_page(
            "Log in to Airflow", "Log in first.", link=("/auth/login", "Log in")
        ),
    }[which]()
    _show(page, html)

    measured = page.evaluate(CONTRAST_JS)

    assert any(item["tag"] == "BUTTON" for item in measured) or which != "gallery"
    too_faint = [item for item in measured if item["ratio"] < item["needed"]]
    assert measured
    assert too_faint == []


# The gallery's width in the UI's frame varies with the window and the side bar: the narrowest
# (cards of 240 px, where three thumbnails used to stack full width) to a wide screen.
@pytest.mark.parametrize("width", [540, 800, 1100, 1400])
def test_a_card_with_three_or_four_files_is_no_taller_than_a_card_with_one(new_page, width):
    page = new_page()
    page.set_viewport_size({"width": width, "height": 900})
    _show(page, _gallery_html())

    heights = page.eval_on_selector_all(
        '[data-testid="reve-card"]',
        "cards => Object.fromEntries(cards.map(c => [c.dataset.reveTaskId,"
        " c.querySelector('[data-testid=reve-media]').getBoundingClientRect().height]))",
    )

    one = heights["reve-success-1"]
    assert one > 0
    assert heights["reve-success-3"] <= one + 1 and heights["reve-success-4"] <= one + 1, heights

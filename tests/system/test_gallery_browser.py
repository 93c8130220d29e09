"""The Reve gallery in a real browser, against a real Airflow that ran the example content pipeline.

A person logs in on Airflow's own login page, opens "Reve gallery" from the UI's Browse menu
(the plugin's page then lives in the UI's iframe), and the test asserts what that person sees:
pixels decoded by the browser (``naturalWidth``), prompts and credits equal to what the metadata
DB says (rendered fields, XCom), the "Reve media" tab of a task instance, the Budgets panel showing
what the ledger counted, and a viewer of another team, who reads other DAGs, seeing none of it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

from .airflow_with_logins import AirflowWithLogins, Login
from .conftest import CONTENT_DAG_ID, GALLERY_BUDGET, OTHER_DAG_ID, ContentRun
from .test_gallery_theme_browser import CONTRAST_JS

CARD = '[data-testid="reve-card"]'
IMAGE = 'img[data-testid="reve-image"]'


def log_in(page: Any, airflow: AirflowWithLogins, login: Login) -> None:
    """Through Airflow's own login page, as a person would: the UI sends them there first."""
    page.goto(f"{airflow.base_url}/")
    page.wait_for_url("**/auth/login**")
    page.get_by_label("Username").fill(login.username)
    page.get_by_label("Password").fill(login.password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(lambda url: "/auth/" not in url)


def open_gallery_from_navigation(page: Any) -> Any:
    """Browse → "Reve gallery" in the UI's side bar; returns the frame the gallery renders in."""
    page.get_by_role("button", name="Browse").click()
    page.get_by_role("menuitem", name="Reve gallery").click()
    # The UI then mirrors the framed page's path into its own: /plugin/reve-gallery/reve/gallery.
    page.wait_for_url("**/plugin/reve-gallery**")
    return plugin_frame(page, "/reve/gallery")


def plugin_frame(page: Any, path: str) -> Any:
    """The frame showing the plugin page ``path``, once its document has loaded."""
    # The frame's own location, not its src: a fresh iframe holds a "complete" about:blank first.
    page.wait_for_function(
        "path => Array.from(document.querySelectorAll('iframe')).some(f => f.contentWindow"
        " && f.contentWindow.location.pathname.endsWith(path)"
        " && f.contentDocument.readyState === 'complete')",
        arg=path,
    )
    # Not the main frame: the UI mirrors the framed page's path into its own address
    # (/plugin/reve-gallery/reve/gallery), which ends the same way.
    return next(f for f in page.frames if f is not page.main_frame and f.url.split("?")[0].endswith(path))


def rendered_widths(frame: Any, selector: str) -> list[int]:
    """``naturalWidth`` of every image matching ``selector``, once each has finished loading
    (a broken image is complete too, with width 0: that is what the assertions catch)."""
    frame.wait_for_function(
        "sel => Array.from(document.querySelectorAll(sel)).every(i => i.complete)", arg=selector
    )
    return list(frame.eval_on_selector_all(selector, "imgs => imgs.map(i => i.naturalWidth)"))


def card_facts(frame: Any, selector: str) -> list[dict[str, Any]]:
    """What each card shows: its data attributes, prompt text, credits and its images' widths."""
    return list(
        frame.eval_on_selector_all(
            selector,
            """cards => cards.map(c => ({
                dag_id: c.dataset.dagId, run_id: c.dataset.runId, task_id: c.dataset.taskId,
                map_index: Number(c.dataset.mapIndex), reve_task_id: c.dataset.reveTaskId,
                current: c.dataset.current === 'true',
                prompt: c.querySelector('[data-testid=reve-prompt]').textContent,
                credits: c.querySelector('[data-testid=reve-credits]').textContent,
                images: Array.from(c.querySelectorAll('img[data-testid=reve-image]')).map(
                    i => ({width: i.naturalWidth, stored: i.dataset.stored})),
            }))""",
        )
    )


def test_a_team_member_opens_the_gallery_from_the_navigation_and_sees_every_image_with_its_prompt_and_credits(
    gallery_airflow: AirflowWithLogins,
    content_run: ContentRun,
    logins: dict[str, Login],
    new_page: Any,
    artifacts: Path,
) -> None:
    page = new_page()
    log_in(page, gallery_airflow, logins["member"])
    gallery = open_gallery_from_navigation(page)
    ours = f'{CARD}[data-dag-id="{CONTENT_DAG_ID}"][data-run-id="{content_run.run_id}"]'
    gallery.locator(ours).first.wait_for()

    widths = rendered_widths(gallery, f"{ours} {IMAGE}")
    # Down to the grid's last row: the README shows this picture (docs/gallery.png).
    grid = gallery.get_by_test_id("reve-grid").bounding_box()
    viewport = page.viewport_size
    assert grid is not None and viewport is not None
    height = min(viewport["height"], grid["y"] + grid["height"] + 24)
    page.screenshot(
        path=str(artifacts / "gallery.png"),
        clip={"x": 0, "y": 0, "width": viewport["width"], "height": height},
    )

    stored_files = sum(len(g.xcom["files"]) for g in content_run.generations)
    assert len(widths) == stored_files > 0
    assert all(width > 0 for width in widths), widths
    shown = {card["map_index"]: card for card in card_facts(gallery, ours)}
    assert sorted(shown) == [g.map_index for g in content_run.generations]
    for generation in content_run.generations:
        card = shown[generation.map_index]
        assert card["task_id"] == "generate"
        assert card["reve_task_id"] == generation.xcom["task_id"]
        assert card["prompt"] == generation.prompt
        assert card["credits"] == f"{generation.xcom['consumed_credits']:,}"
        # Served from the stored files (download_to), not from the short-lived result URLs.
        assert [image["stored"] for image in card["images"]] == ["true"] * len(generation.xcom["files"])


def test_the_reve_media_tab_of_a_mapped_generate_instance_shows_that_tasks_images(
    gallery_airflow: AirflowWithLogins,
    content_run: ContentRun,
    logins: dict[str, Login],
    new_page: Any,
    artifacts: Path,
) -> None:
    chosen = content_run.generations[-1]
    page = new_page()
    log_in(page, gallery_airflow, logins["member"])
    page.goto(
        f"{gallery_airflow.base_url}/dags/{CONTENT_DAG_ID}/runs/{quote(content_run.run_id, safe='')}"
        f"/tasks/generate/mapped/{chosen.map_index}"
    )
    page.get_by_role("link", name="Reve media").click()
    tab = plugin_frame(page, "/reve/task-instance")
    tab.locator(CARD).first.wait_for()

    widths = rendered_widths(tab, IMAGE)
    page.screenshot(path=str(artifacts / "task-instance-reve-media.png"))

    assert widths and all(width > 0 for width in widths), widths
    cards = card_facts(tab, CARD)
    # Every map index of this task, and nothing of any other task or run.
    assert {(c["dag_id"], c["run_id"], c["task_id"]) for c in cards} == {
        (CONTENT_DAG_ID, content_run.run_id, "generate")
    }
    assert sorted(c["reve_task_id"] for c in cards) == sorted(
        g.xcom["task_id"] for g in content_run.generations
    )
    current = [c for c in cards if c["current"]]
    assert [c["map_index"] for c in current] == [chosen.map_index]
    assert current[0]["prompt"] == chosen.prompt
    assert len(current[0]["images"]) == len(chosen.xcom["files"])


def test_a_viewer_of_another_team_sees_none_of_the_pipelines_generations(
    gallery_airflow: AirflowWithLogins,
    content_run: ContentRun,
    logins: dict[str, Login],
    new_page: Any,
    artifacts: Path,
) -> None:
    page = new_page()
    log_in(page, gallery_airflow, logins["outsider"])
    # A working viewer: Airflow lists their own team's DAG, and not the Reve pipeline.
    page.goto(f"{gallery_airflow.base_url}/dags")
    page.get_by_text(OTHER_DAG_ID).first.wait_for()
    assert page.get_by_text(CONTENT_DAG_ID).count() == 0

    gallery = open_gallery_from_navigation(page)
    gallery.get_by_test_id("reve-empty").wait_for()
    page.screenshot(path=str(artifacts / "gallery-other-team.png"))
    assert gallery.locator(CARD).count() == 0
    assert gallery.locator("img").count() == 0
    text = gallery.locator("body").inner_text()
    for generation in content_run.generations:
        assert generation.prompt not in text
    assert CONTENT_DAG_ID not in gallery.content()

    # Nor by typing the addresses the member's gallery links to: the tab and a stored file.
    first = content_run.generations[0]
    query = (
        f"dag_id={CONTENT_DAG_ID}&run_id={quote(content_run.run_id, safe='')}&task_id=generate"
        f"&map_index={first.map_index}"
    )
    tab = page.goto(f"{gallery_airflow.base_url}/reve/task-instance?{query}")
    assert tab is not None and tab.status == 403
    assert first.prompt not in page.content()
    media = page.goto(
        f"{gallery_airflow.base_url}/reve/media?{query}&reve_task_id={first.xcom['task_id']}&index=0"
    )
    assert media is not None and media.status == 403


def test_every_text_of_the_served_gallery_credits_and_budgets_pages_is_readable_in_both_themes(
    gallery_airflow: AirflowWithLogins,
    content_run: ContentRun,
    logins: dict[str, Login],
    new_page: Any,
) -> None:
    page = new_page()
    log_in(page, gallery_airflow, logins["member"])
    faint: dict[str, list[dict[str, Any]]] = {}
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        for path in ("/reve/gallery", "/reve/credits", "/reve/budgets"):
            page.goto(f"{gallery_airflow.base_url}{path}")
            page.wait_for_load_state("load")
            measured = page.evaluate(CONTRAST_JS)
            assert measured, path
            faint[f"{scheme} {path}"] = [item for item in measured if item["ratio"] < item["needed"]]

    assert faint == {key: [] for key in faint}


BUDGET_ROW_JS = """row => ({
    attrs: {...row.dataset},
    cells: Array.from(row.querySelectorAll('td')).map(td => td.textContent),
})"""


def test_the_budgets_panel_opened_from_the_gallery_shows_what_the_ledger_counted(
    gallery_airflow: AirflowWithLogins,
    content_run: ContentRun,
    gallery_ledger: Any,
    logins: dict[str, Login],
    new_page: Any,
    artifacts: Path,
) -> None:
    page = new_page()
    log_in(page, gallery_airflow, logins["member"])
    gallery = open_gallery_from_navigation(page)
    gallery.get_by_role("link", name="Budgets").click()
    panel = plugin_frame(page, "/reve/budgets")
    row_selector = f'[data-testid="budget"][data-budget="{GALLERY_BUDGET}"]'
    panel.locator(row_selector).wait_for()
    page.screenshot(path=str(artifacts / "gallery-budgets.png"))

    status = gallery_ledger.status(GALLERY_BUDGET)
    paid = sum(g.xcom["consumed_credits"] for g in content_run.generations)
    # Every generation reserved before paying and settled what it consumed: the ledger says so.
    assert (status.spent_credits, status.reserved_credits) == (paid, 0) and paid > 0
    shown = panel.eval_on_selector(row_selector, BUDGET_ROW_JS)
    assert shown["attrs"]["limit"] == str(status.budget.limit_credits)
    assert shown["attrs"]["spent"] == str(status.spent_credits)
    assert shown["attrs"]["reserved"] == str(status.reserved_credits)
    assert shown["attrs"]["remaining"] == str(status.remaining_credits)
    assert shown["attrs"]["resetsAt"] == status.resets_at.isoformat()
    # What a person reads: name, scope, window, then limit, spent, reserved, remaining, reset.
    cells = shown["cells"]
    assert cells[0] == GALLERY_BUDGET and cells[2] == "day (Europe/Paris)"
    assert cells[3:7] == [
        f"{status.budget.limit_credits:,}",
        f"{status.spent_credits:,}",
        f"{status.reserved_credits:,}",
        f"{status.remaining_credits:,}",
    ]
    assert cells[7] == status.resets_at.strftime("%Y-%m-%d %H:%M UTC")
    dag = panel.eval_on_selector(
        f'[data-testid="budget-dag"][data-budget="{GALLERY_BUDGET}"][data-dag-id="{CONTENT_DAG_ID}"]',
        BUDGET_ROW_JS,
    )
    assert (dag["attrs"]["spent"], dag["attrs"]["reserved"]) == (str(paid), "0")

    # Another team's viewer sees the same deployment-wide totals, and not the pipeline's DAG.
    other = new_page()
    log_in(other, gallery_airflow, logins["outsider"])
    other.goto(f"{gallery_airflow.base_url}/reve/budgets")
    other.locator(row_selector).wait_for()
    assert other.eval_on_selector(row_selector, BUDGET_ROW_JS)["attrs"]["spent"] == str(paid)
    assert other.locator('[data-testid="budget-dag"]').count() == 0
    assert CONTENT_DAG_ID not in other.content()

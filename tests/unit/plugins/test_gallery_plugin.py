"""The Reve gallery plugin through Airflow's own API app (``create_app()``), against the rows real
DAG runs left in the metadata DB (``tests/dags/gallery``, run with ``dag.test()`` against the fake
Reve API) and, for thousands of rows, bulk inserts of the same shapes (``tests/support/gallery_data.py``).
Users are real JWTs from Airflow's simple auth manager; DAG-level access is its team rule.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest

from airflow_provider_reve.plugins.app import media as gallery_media
from airflow_provider_reve.plugins.app.rendering import EXPIRED_URL
from airflow_provider_reve.results.storage import safe_stem
from tests.dags.gallery.reve_gallery_dags import HOSTILE_PROMPT
from tests.support.gallery_data import add_ti, remove_dag, seed_generations
from tests.support.gallery_support import (
    RED_TEAM,
    SECRET,
    SHOP,
    GalleryRuns,
    assert_only_safe_urls,
    bearer,
    card_key,
    cards_of,
    db_session,
    get,
    manifest_entry,
    media_params,
    read_page,
    return_values,
    task_value,
    token,
)

# The fixtures gallery_runs, api and red_team.
pytest_plugins = ("tests.support.gallery_support",)

BLUE = ["blue"]  # a team that does not own reve_gallery_secret


@pytest.fixture(scope="module")
def shop(gallery_runs: GalleryRuns, red_team: None) -> GalleryRuns:
    return gallery_runs


# -- who may look --------------------------------------------------------------------------------
def test_anonymous_requests_get_401_and_a_login_link_on_every_route(api, shop):
    run_id = shop.run_id(SHOP)
    paths = [
        "/reve/",
        "/reve/gallery",
        "/reve/credits",
        f"/reve/task-instance?dag_id={SHOP}&run_id={run_id}&task_id=hero",
        f"/reve/media?dag_id={SHOP}&run_id={run_id}&task_id=posters&map_index=0&reve_task_id=x&index=0",
        "/reve/static/gallery.css",
    ]
    for path in paths:
        response = api.get(path)
        assert response.status_code == 401, path
        assert "A red fox" not in response.text and "lighthouse" not in response.text
        [login] = read_page(response.text).testids["reve-login"]
        assert login["attrs"]["href"].startswith("/auth/login?next=%2Freve%2F")


@pytest.mark.parametrize("kind", ["expired", "forged", "garbage"])
def test_an_expired_forged_or_garbage_token_is_401_in_the_header_and_in_the_cookie(api, shop, kind):
    if kind == "expired":
        value = token(role="admin", expires=-3600)
    elif kind == "forged":
        claims = {"sub": "mallory", "role": "admin", "teams": [], "exp": 4102444800}
        value = jwt.encode(claims, "not-the-api-server-secret", algorithm="HS512")
    else:
        value = "not.a.jwt"
    assert get(api, "/reve/gallery", value).status_code == 401
    response = api.get("/reve/gallery", headers={"Cookie": f"_token={value}"})
    assert response.status_code == 401
    assert "A red fox" not in response.text


def test_a_valid_token_opens_the_gallery_from_the_header_and_from_the_ui_cookie(api, shop):
    value = token(teams=BLUE)
    by_header = get(api, "/reve/gallery", value, dag_id=SHOP)
    by_cookie = api.get("/reve/gallery", params={"dag_id": SHOP}, headers={"Cookie": f"_token={value}"})
    for response in (by_header, by_cookie):
        assert response.status_code == 200
        assert "A red fox in the snow" in response.text
    css = api.get("/reve/static/gallery.css", headers={"Cookie": f"_token={value}"})
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")


def test_a_user_outside_the_owning_team_sees_nothing_of_a_dag_they_may_not_read(api, shop):
    blue, red = token(teams=BLUE, username="bob"), token(teams=[RED_TEAM], username="rita")
    run_id = shop.run_id(SECRET)

    assert all(c["attrs"]["data-dag-id"] != SECRET for c in cards_of(api, blue))
    assert cards_of(api, blue, dag_id=SECRET) == []
    assert cards_of(api, blue, run_id=run_id) == []
    gallery = get(api, "/reve/gallery", blue).text
    assert SECRET not in gallery and "A secret prototype" not in gallery  # not even in the DAG filter
    credits = get(api, "/reve/credits", blue).text
    assert SECRET not in credits
    assert "credits-dag" not in get(api, "/reve/credits", blue, dag_id=SECRET).text
    tab = get(api, "/reve/task-instance", blue, dag_id=SECRET, run_id=run_id, task_id="secret")
    assert tab.status_code == 403 and "A secret prototype" not in tab.text
    media = get(
        api, "/reve/media", blue, dag_id=SECRET, run_id=run_id, task_id="secret", reve_task_id="x", index=0
    )
    assert media.status_code == 403

    # The same requests by the owning team and by an admin do show it: the filter is the team rule.
    for who in (red, token(role="admin", username="ada")):
        [card] = cards_of(api, who, dag_id=SECRET)
        assert card["reve-prompt"]["text"] == "A secret prototype"
        assert (
            get(api, "/reve/task-instance", who, dag_id=SECRET, run_id=run_id, task_id="secret").status_code
            == 200
        )


# -- what they see -------------------------------------------------------------------------------
def test_each_generation_shows_the_prompt_model_credits_and_media_its_run_recorded(api, shop):
    run = shop.runs[SHOP]
    cards = {card_key(c): c for c in cards_of(api, token(teams=BLUE), dag_id=SHOP)}
    # submit handed its task on to the sensor; store only stored files: neither is a card of its own.
    assert set(cards) == {
        ("posters", 0),
        ("posters", 1),
        ("clip", -1),
        ("hero", -1),
        ("wait", -1),
        ("refused", -1),
        ("broken", -1),
    }

    for map_index, result in return_values(run, "posters").items():
        card = cards[("posters", map_index)]
        assert card["attrs"]["data-reve-task-id"] == result["task_id"]
        assert card["reve-model"]["text"] == "seedream-5"
        assert card["reve-credits"]["attrs"]["data-credits"] == str(result["consumed_credits"])
        srcs = [img["src"] for img in card["images"]]
        assert [media_params(src)["index"] for src in srcs] == [str(e["index"]) for e in result["files"]]
        assert all(img["data-stored"] == "true" for img in card["images"])
    assert cards[("posters", 0)]["reve-prompt"]["text"] == "A red fox in the snow"

    hero = return_values(run, "hero")[-1]
    assert [img["src"] for img in cards[("hero", -1)]["images"]] == hero["result_urls"]  # not stored
    assert cards[("hero", -1)]["reve-credits"]["text"] == str(hero["consumed_credits"])

    waited, stored = return_values(run, "wait")[-1], return_values(run, "store")[-1]
    wait = cards[("wait", -1)]
    assert wait["reve-prompt"]["text"] == "A blue whale"  # the submitting task's rendered prompt
    assert wait["reve-credits"]["attrs"]["data-credits"] == str(waited["consumed_credits"])
    assert [media_params(img["src"])["task_id"] for img in wait["images"]] == ["store"] * len(stored)

    clip = return_values(run, "clip")[-1]
    [video] = cards[("clip", -1)]["videos"]
    assert cards[("clip", -1)]["images"] == [] and "controls" in video
    assert media_params(video["src"])["reve_task_id"] == clip["task_id"]

    assert cards[("refused", -1)]["attrs"]["data-state"] == "skipped"
    assert cards[("broken", -1)]["attrs"]["data-state"] == "failed"
    assert cards[("broken", -1)]["reve-prompt"]["text"] == "Broken"
    assert cards[("broken", -1)]["images"] == [] and "reve-no-media" in cards[("broken", -1)]


def test_the_grid_is_newest_first(api, shop):
    from airflow.models.taskinstance import TaskInstance
    from sqlalchemy import select

    shown = [card_key(c) for c in cards_of(api, token(teams=BLUE), dag_id=SHOP)]
    with db_session() as session:
        ends = dict(
            ((task_id, map_index), end)
            for task_id, map_index, end in session.execute(
                select(TaskInstance.task_id, TaskInstance.map_index, TaskInstance.end_date).where(
                    TaskInstance.dag_id == SHOP
                )
            )
        )
    assert [ends[key] for key in shown] == sorted((ends[key] for key in shown), reverse=True)


def test_stored_files_are_served_from_storage_with_their_own_content_type(api, shop):
    who = token(teams=BLUE)
    files = [
        entry for result in return_values(shop.runs[SHOP], "posters").values() for entry in result["files"]
    ]
    files += return_values(shop.runs[SHOP], "store")[-1] + return_values(shop.runs[SHOP], "clip")[-1]["files"]
    cards = cards_of(api, who, dag_id=SHOP)
    srcs = {
        (media_params(item["src"])["reve_task_id"], int(media_params(item["src"])["index"])): item["src"]
        for card in cards
        for item in card["images"] + card["videos"]
        if item["data-stored"] == "true"
    }
    assert len(srcs) == len(files)
    for entry in files:
        response = api.get(f"/reve/{srcs[(entry['reve_task_id'], entry['index'])]}", headers=bearer(who))
        assert response.status_code == 200
        assert response.content == Path(entry["path"]).read_bytes()
        assert response.headers["content-type"] == entry["content_type"]
        assert response.headers["x-content-type-options"] == "nosniff"
        assert "sandbox" in response.headers["content-security-policy"]


def test_a_result_url_is_shown_over_a_placeholder_for_when_it_has_expired(api, shop):
    page = get(api, "/reve/gallery", token(teams=BLUE), dag_id=SHOP).text
    hero = return_values(shop.runs[SHOP], "hero")[-1]
    for url in hero["result_urls"]:
        frame = page[: page.index(f'src="{url}"')].rsplit('<a class="frame"', 1)[1]
        assert '<span class="placeholder">' in frame and EXPIRED_URL.split(".")[0] in frame


def test_a_script_in_a_prompt_or_a_run_id_is_shown_as_text_never_as_markup(api, shop):
    run_id = '"><script>alert(3)</script>'
    with db_session() as session:
        add_ti(
            session, "reve_gallery_hostile", run_id, "t", prompt=HOSTILE_PROMPT, value=task_value("hostile-1")
        )
    try:
        who = token(teams=BLUE)
        responses = [
            get(api, "/reve/gallery", who, dag_id=SHOP),
            get(api, "/reve/gallery", who, dag_id="reve_gallery_hostile"),
            get(api, "/reve/task-instance", who, dag_id=SHOP, run_id=shop.run_id(SHOP), task_id="posters"),
            get(api, "/reve/task-instance", who, dag_id="reve_gallery_hostile", run_id=run_id, task_id="t"),
        ]
        for response in responses:
            assert response.status_code == 200
            page = read_page(response.text)
            assert "script" not in page.tags and page.tags.count("img") == len(
                [img for card in page.cards for img in card["images"]]
            )
            assert "<script" not in response.text and "<img src=x" not in response.text
            assert "script-src 'none'" in response.headers["content-security-policy"]
            assert HOSTILE_PROMPT in [card["reve-prompt"]["text"] for card in page.cards]
            assert_only_safe_urls(page.urls)
    finally:
        with db_session() as session:
            remove_dag(session, "reve_gallery_hostile")


def test_javascript_data_and_userinfo_urls_from_the_api_never_reach_an_href_or_a_src(api, shop):
    urls = [
        "javascript:alert(1)",
        "JaVaScRiPt:alert(2)",
        " javascript:alert(3)",
        "java\tscript:alert(4)",
        "data:text/html,<script>alert(5)</script>",
        "https://cdn.example.test@evil.example/x.png",
        "//evil.example/x.png",
        "https://cdn.example.test/fine.png",
    ]
    with db_session() as session:
        add_ti(session, "reve_gallery_urls", "r1", "t", prompt="urls", value=task_value("urls-1", urls))
    try:
        response = get(api, "/reve/gallery", token(teams=BLUE), dag_id="reve_gallery_urls")
        page = read_page(response.text)
        [card] = page.cards
        assert [img["src"] for img in card["images"]] == ["https://cdn.example.test/fine.png"]
        assert "javascript" not in response.text.lower() and "evil.example" not in response.text
        assert_only_safe_urls(page.urls)
    finally:
        with db_session() as session:
            remove_dag(session, "reve_gallery_urls")


def test_every_page_links_only_to_its_own_routes_the_airflow_ui_and_http_urls(api, shop):
    who = token(teams=BLUE)
    run_id = shop.run_id(SHOP)
    for path, params in [
        ("/reve/gallery", {}),
        ("/reve/gallery", {"dag_id": SHOP, "per_page": 2}),
        ("/reve/credits", {}),
        ("/reve/task-instance", {"dag_id": SHOP, "run_id": run_id, "task_id": "store"}),
    ]:
        page = read_page(get(api, path, who, **params).text)
        assert page.urls
        assert_only_safe_urls(page.urls)


# -- the task instance tab -----------------------------------------------------------------------
@pytest.mark.parametrize("map_index", ["1", "{MAP_INDEX}", None])
def test_the_media_tab_of_a_mapped_task_shows_every_map_index(api, shop, map_index):
    params = {"dag_id": SHOP, "run_id": shop.run_id(SHOP), "task_id": "posters"}
    if map_index is not None:
        params["map_index"] = map_index
    cards = cards_of(api, token(teams=BLUE), "/reve/task-instance", **params)
    assert sorted(card_key(c) for c in cards) == [("posters", 0), ("posters", 1)]
    current = [card_key(c) for c in cards if c["attrs"].get("data-current") == "true"]
    assert current == ([("posters", 1)] if map_index == "1" else [])
    if map_index == "1":
        assert card_key(cards[0]) == ("posters", 1)  # this instance first
    assert all(len(card["images"]) == 1 for card in cards)


def test_the_media_tab_of_a_handed_on_submission_shows_the_result_its_sensor_recorded(api, shop):
    run_id = shop.run_id(SHOP)
    who = token(teams=BLUE)
    [submit] = cards_of(api, who, "/reve/task-instance", dag_id=SHOP, run_id=run_id, task_id="submit")
    [wait] = cards_of(api, who, "/reve/task-instance", dag_id=SHOP, run_id=run_id, task_id="wait")
    assert submit["reve-prompt"]["text"] == wait["reve-prompt"]["text"] == "A blue whale"
    assert (
        submit["reve-credits"]["attrs"]["data-credits"] == wait["reve-credits"]["attrs"]["data-credits"] != ""
    )
    assert [i["src"] for i in submit["images"]] == [i["src"] for i in wait["images"]] != []


def test_the_media_tab_of_a_task_that_is_not_a_reve_task_says_so(api, shop):
    response = get(
        api, "/reve/task-instance", token(teams=BLUE), dag_id=SHOP, run_id=shop.run_id(SHOP), task_id="nope"
    )
    assert response.status_code == 200
    page = read_page(response.text)
    assert page.cards == [] and "reve-empty" in page.testids


# -- files ---------------------------------------------------------------------------------------
@pytest.fixture
def forged(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A secret file the API server can read, and manifests that try to make the gallery serve it."""
    secret = tmp_path / "api-server-secret.cfg"
    secret.write_bytes(b"jwt_secret = do-not-serve-me\n")
    png = tmp_path / "stored"
    png.mkdir()
    real = png / f"{safe_stem('legit')}_0.png"
    real.write_bytes(b"\x89PNG\r\n\x1a\n" + b"pixels" * 10)
    link = png / f"{safe_stem('linked')}_0.png"
    os.symlink(secret, link)
    wrong = png / f"{safe_stem('wrong')}_0.png"
    data = secret.read_bytes()
    wrong.write_bytes(b"x" * len(data))  # the size the manifest says, not the content
    cases = {
        # a path that is not a stored file's name, with the secret's true hash
        "named": (manifest_entry("named", secret, data), "ReveGenerateOperator"),
        # our file name, but a symlink to the secret
        "linked": (manifest_entry("linked", link, data), "ReveGenerateOperator"),
        # our file name and a real file, with a hash that is not its content's
        "wrong": (manifest_entry("wrong", wrong, data), "ReveGenerateOperator"),
        # a perfect entry, in the XCom of a task that is not a Reve task
        "python": (manifest_entry("legit", real, real.read_bytes()), "PythonOperator"),
        # a perfect entry that claims to be HTML: still served as the PNG its name says
        "legit": (
            manifest_entry("legit", real, real.read_bytes(), content_type="text/html"),
            "ReveGenerateOperator",
        ),
    }
    with db_session() as session:
        for name, (entry, operator) in cases.items():
            add_ti(
                session,
                "reve_gallery_forged",
                "r1",
                name,
                operator=operator,
                value=task_value(name, files=[entry]),
            )
    gallery_media.VERIFIED.clear()
    yield {"real": real.read_bytes()}
    with db_session() as session:
        remove_dag(session, "reve_gallery_forged")


def test_file_serving_refuses_every_file_a_manifest_names_unless_it_is_the_stored_file_itself(api, forged):
    who = token(teams=BLUE)

    def fetch(task_id: str, reve_task_id: str | None = None, **extra: Any) -> Any:
        params = {"dag_id": "reve_gallery_forged", "run_id": "r1", "task_id": task_id, "map_index": -1}
        params |= {"reve_task_id": reve_task_id or task_id, "index": 0, **extra}
        return api.get("/reve/media", params=params, headers=bearer(who))

    for case in ("named", "linked", "wrong"):
        response = fetch(case)
        assert response.status_code == 404, case
        assert b"do-not-serve-me" not in response.content
    assert fetch("python", "legit").status_code == 404
    assert fetch("legit", path="/etc/passwd", index=1).status_code == 404  # no path parameter exists
    assert fetch("legit", "someone-else").status_code == 404

    served = fetch("legit", "legit", path="/etc/passwd")  # the extra parameter changes nothing
    assert served.status_code == 200
    assert served.content == forged["real"]
    assert served.headers["content-type"] == "image/png"


@pytest.fixture
def bucket() -> Iterator[Any]:
    """fsspec's in-memory filesystem, reached through Airflow's object storage under a connection id."""
    from airflow.sdk.io.store import attach
    from fsspec.implementations.memory import MemoryFileSystem

    class GalleryMemoryFS(MemoryFileSystem):
        store: dict[str, Any] = {}  # its own store: fsspec keeps it on the class
        pseudo_dirs = [""]

    fs = GalleryMemoryFS()
    attach("memory", conn_id="reve_gallery_bucket", fs=fs)
    yield fs
    GalleryMemoryFS.store.clear()


def test_a_file_stored_in_object_storage_is_read_through_objectstoragepath(api, bucket):
    data = b"\x89PNG\r\n\x1a\n" + b"remote pixels" * 50
    path = f"memory://reve_gallery_bucket@media/reve/{safe_stem('remote-1')}_0.png"
    with bucket.open(path.split("@", 1)[1], "wb") as handle:
        handle.write(data)
    with db_session() as session:
        add_ti(
            session,
            "reve_gallery_remote",
            "r1",
            "t",
            value=task_value("remote-1", files=[manifest_entry("remote-1", path, data)]),
        )
    try:
        who = token(teams=BLUE)
        [card] = cards_of(api, who, dag_id="reve_gallery_remote")
        [image] = card["images"]
        response = api.get(f"/reve/{image['src']}", headers=bearer(who))
        assert response.status_code == 200 and response.content == data
        assert response.headers["content-type"] == "image/png"
        with bucket.open(path.split("@", 1)[1], "wb") as handle:
            handle.write(data[:-1] + b"!")  # same size, other content: no longer the stored file
        assert api.get(f"/reve/{image['src']}", headers=bearer(who)).status_code == 404
    finally:
        with db_session() as session:
            remove_dag(session, "reve_gallery_remote")


# -- paging and credits --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bulk(airflow_db: None) -> Iterator[Any]:
    with db_session() as session:
        seeded = seed_generations(session, "reve_gallery_bulk", 10_000, spacing=timedelta(minutes=3))
    yield seeded
    with db_session() as session:
        remove_dag(session, "reve_gallery_bulk")


def test_paging_walks_10000_generations_newest_first_without_repeats_or_gaps(api, bulk):
    who = token(teams=BLUE)
    seen: list[str] = []
    page = 1
    while True:
        response = get(api, "/reve/gallery", who, dag_id=bulk.dag_id, per_page=200, page=page)
        parsed = read_page(response.text)
        assert {count["attrs"]["data-total"] for count in parsed.testids["reve-count"]} == {"10000"}
        seen += [card["attrs"]["data-reve-task-id"] for card in parsed.cards]
        if "reve-next" not in parsed.testids:
            break
        next_link = parsed.testids["reve-next"][0]
        assert parse_qs(urlsplit(next_link["attrs"]["href"]).query)["page"] == [str(page + 1)]
        page += 1
    assert page == 50
    assert seen == bulk.newest_first


def test_the_filters_narrow_the_count_by_model_status_and_utc_day(api, bulk):
    who = token(teams=BLUE)

    def total(**params: Any) -> int:
        response = get(api, "/reve/gallery", who, dag_id=bulk.dag_id, per_page=1, **params)
        return int(read_page(response.text).testids["reve-count"][0]["attrs"]["data-total"])

    assert total(model="nano-banana") == len(range(1, 10_000, 3))
    assert total(status="success") == 10_000 and total(status="failed") == 0
    day = min(bulk.credits_by_day)  # the oldest day, partly covered
    expected = sum(
        1 for i in range(10_000) if (bulk.now - timedelta(minutes=3 * i)).date().isoformat() == day
    )
    assert total(**{"from": day, "to": day}) == expected
    assert total(model="no-such-model") == 0
    # A bad value is reported and ignored, never an error page.
    response = get(api, "/reve/gallery", who, dag_id=bulk.dag_id, status="<b>", to="tomorrow")
    assert response.status_code == 200 and "&lt;b&gt;" in response.text and "<b>" not in response.text


def test_the_credits_panel_sums_each_day_and_dag_and_counts_failed_and_skipped_apart(api, airflow_db):
    now = datetime.now(timezone.utc)
    with db_session() as session:
        seeded = seed_generations(
            session,
            "reve_gallery_credits",
            400,
            now=now,
            spacing=timedelta(hours=3),
            failed_every=9,
            skipped_every=11,
        )
    try:
        response = get(api, "/reve/credits", token(teams=BLUE), dag_id=seeded.dag_id)
        page = read_page(response.text)
        window = {(now.date() - timedelta(days=d)).isoformat() for d in range(30)}
        expected = {day: credits for day, credits in seeded.credits_by_day.items() if day in window}
        shown = {
            row["attrs"]["data-day"]: int(row["attrs"]["data-credits"]) for row in page.testids["credits-day"]
        }
        assert shown == expected
        assert int(page.testids["credits-total"][0]["attrs"]["data-value"]) == sum(expected.values())
        [dag_row] = page.testids["credits-dag"]
        assert int(dag_row["attrs"]["data-credits"]) == sum(expected.values())
        in_window = [i for i in range(400) if (now - timedelta(hours=3 * i)).date().isoformat() in window]
        failed = sum(1 for i in in_window if i % 9 == 8)
        skipped = sum(1 for i in in_window if i % 9 != 8 and i % 11 == 10)
        assert int(page.testids["credits-failed"][0]["attrs"]["data-value"]) == failed
        assert int(page.testids["credits-skipped"][0]["attrs"]["data-value"]) == skipped
        assert (
            int(page.testids["credits-generations"][0]["attrs"]["data-value"])
            == len(in_window) - failed - skipped
        )
        # The chart draws the same numbers.
        bars = {bar["attrs"]["data-day"]: int(bar["attrs"]["data-credits"]) for bar in _bars(response.text)}
        assert {day: value for day, value in bars.items() if value} == expected
    finally:
        with db_session() as session:
            remove_dag(session, seeded.dag_id)


def _bars(html: str) -> list[dict[str, Any]]:
    return [{"attrs": attrs} for attrs in read_page(html).bar_attrs]


def test_the_credits_of_a_real_run_count_a_submitted_and_sensed_task_once(api, shop):
    run = shop.runs[SHOP]
    expected = sum(r["consumed_credits"] for r in return_values(run, "posters").values())
    expected += return_values(run, "hero")[-1]["consumed_credits"]
    expected += return_values(run, "clip")[-1]["consumed_credits"]
    expected += return_values(run, "wait")[-1]["consumed_credits"]  # submit's own XCom has no cost
    page = read_page(get(api, "/reve/credits", token(teams=BLUE), dag_id=SHOP).text)
    assert int(page.testids["credits-total"][0]["attrs"]["data-value"]) == expected
    assert int(page.testids["credits-generations"][0]["attrs"]["data-value"]) == 5
    assert int(page.testids["credits-failed"][0]["attrs"]["data-value"]) == 1
    assert int(page.testids["credits-skipped"][0]["attrs"]["data-value"]) == 1


# -- how it is plugged in ------------------------------------------------------------------------
@pytest.mark.parametrize("lazy", [True, False])
def test_the_plugin_loads_exactly_once_whether_providers_are_discovered_lazily_or_not(lazy, monkeypatch):
    from airflow import plugins_manager, settings

    monkeypatch.setattr(settings, "LAZY_LOAD_PROVIDERS", lazy)
    plugins_manager._get_plugins.cache_clear()
    try:
        plugins, errors = plugins_manager._get_plugins()
        assert [p.name for p in plugins].count("reve_gallery") == 1
        assert not any("reve" in f"{source} {error}".lower() for source, error in errors.items())
    finally:
        plugins_manager._get_plugins.cache_clear()


def test_the_ui_lists_the_gallery_under_browse_and_a_media_tab_on_task_instances(api):
    response = get(api, "/api/v2/plugins", token(role="admin", username="ada"))
    assert response.status_code == 200
    [plugin] = [p for p in response.json()["plugins"] if p["name"] == "reve_gallery"]
    views = {view["destination"]: view for view in plugin["external_views"]}
    assert views["nav"]["category"] == "browse" and views["nav"]["name"] == "Reve gallery"
    assert views["nav"]["href"] == "reve/gallery"
    tab = views["task_instance"]
    assert tab["name"] == "Reve media"
    assert all(f"{{{name}}}" in tab["href"] for name in ("DAG_ID", "RUN_ID", "TASK_ID", "MAP_INDEX"))
    assert [app["url_prefix"] for app in plugin["fastapi_apps"]] == ["/reve"]


def test_processes_that_load_plugins_but_serve_no_ui_do_not_build_the_web_app(tmp_path):
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from airflow import plugins_manager\n"
        "plugins, _ = plugins_manager._get_plugins()\n"
        "assert 'reve_gallery' in [p.name for p in plugins]\n"
        "print('airflow_provider_reve.plugins.app' in sys.modules)\n"
    )
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "False"

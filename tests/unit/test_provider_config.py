"""The ``[reve]`` section: each deployment-wide option, set by ``AIRFLOW__REVE__<OPTION>``, changes
what a user sees; a bad value falls back to the default with a warning; ``airflow config list``
shows every option with its default.

Real parts throughout: the fake Reve API over loopback HTTP, the CDN stub, the gallery's FastAPI
app, the ``airflow`` command in a subprocess.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import structlog

from airflow_provider_reve import config
from airflow_provider_reve.client.retry import NO_RETRIES
from airflow_provider_reve.exceptions import ReveRateLimitError
from airflow_provider_reve.hooks.reve import ReveAsyncHook, ReveHook
from airflow_provider_reve.sensors.reve import ReveTaskSensor
from airflow_provider_reve.testing import FakeReveServer
from airflow_provider_reve.triggers.reve import ReveTaskTrigger
from tests.support.gallery_data import add_ti, remove_dag
from tests.support.gallery_support import bearer, db_session, manifest_entry, read_page, task_value, token
from tests.support.storage_stub import PNG, CdnStub, file, store, succeeded

# The fixture api.
pytest_plugins = ("tests.support.gallery_support",)

REPO = Path(__file__).resolve().parents[2]
ASYNC_MODEL = "seedream-5"
GALLERY_DAG, CARDS = "reve_config_page_size", 30
ELAPSED = re.compile(r"after (\d+)s of waiting")


@pytest.fixture
def server(fake_reve_server: FakeReveServer, reve_connection_env: str) -> FakeReveServer:
    return fake_reve_server


def submit(model: str, prompt: str) -> str:
    hook = ReveHook()
    try:
        return hook.generate(model, prompt).task_id
    finally:
        hook.close()


@pytest.fixture
def cdn() -> Iterator[CdnStub]:
    stub = CdnStub()
    yield stub
    stub.close()


@pytest.fixture(autouse=True)
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


# -- max_in_flight -------------------------------------------------------------------------------


async def in_flight_probe(server: FakeReveServer) -> BaseException | None:
    """One status read held by a slow answer, and a second one on the same loop that may take
    0.5 s: what happened to the second (``None``: it was answered)."""
    task_id = submit("reve-2.0", "a lighthouse")
    server.add_fault(kind="slow", endpoint="status", delay=3.0, times=1)
    hook = ReveAsyncHook(retry_policy=NO_RETRIES)
    async with hook.keep_session():
        held = asyncio.ensure_future(hook.aget_status(task_id))
        while server.requests_to("status") < 1:
            await asyncio.sleep(0.01)
        try:
            await hook.aget_status(task_id, within=0.5)
            outcome: BaseException | None = None
        except ReveRateLimitError as refused:
            outcome = refused
        await held
    return outcome


async def test_max_in_flight_of_one_holds_a_second_request_of_the_loop_until_the_first_is_answered(
    server, monkeypatch
):
    monkeypatch.setenv("AIRFLOW__REVE__MAX_IN_FLIGHT", "1")

    refused = await in_flight_probe(server)

    assert isinstance(refused, ReveRateLimitError), "the second request went out beside the first"
    assert refused.http_status is None  # never sent
    assert "1 of this connection's requests were still waiting for answers" in str(refused)
    assert server.requests_to("status") == 1


async def test_a_negative_max_in_flight_is_ignored_with_a_warning_and_requests_still_flow(
    server, monkeypatch, caplog
):
    monkeypatch.setenv("AIRFLOW__REVE__MAX_IN_FLIGHT", "-3")

    with caplog.at_level(logging.WARNING, logger="airflow_provider_reve.config"):
        outcome = await in_flight_probe(server)

    assert outcome is None  # 64 places: the second request was answered beside the first
    assert "[reve] max_in_flight = '-3' is not an integer of at least 1; using 64" in caplog.text


# -- stale_spool_age -----------------------------------------------------------------------------


def spools(folder: Path, hours_old: float) -> tuple[Path, Path]:
    """A spool untouched for ``hours_old`` hours, and one being written right now."""
    old = folder / ".reve-0123456789abcdef.part"
    live = folder / ".reve-fedcba9876543210.part"
    for path in (old, live):
        path.write_bytes(b"partial")
    then = time.time() - hours_old * 3600
    os.utime(old, (then, then))
    return old, live


def test_a_spool_older_than_the_configured_stale_spool_age_is_removed_by_the_next_download(
    cdn, tmp_path, monkeypatch
):
    monkeypatch.setenv("AIRFLOW__REVE__STALE_SPOOL_AGE", "7200")  # two hours, not a day
    old, live = spools(tmp_path, hours_old=3)

    store([succeeded("t1", cdn.route("/a.png", file(PNG)))], tmp_path)

    assert not old.exists(), "a three-hour-old spool stayed although the age is two hours"
    assert live.exists()


@pytest.mark.parametrize("value", ["60", "a day", "nan"])
def test_a_stale_spool_age_below_an_hour_or_not_a_number_keeps_the_default_day(
    cdn, tmp_path, monkeypatch, caplog, value
):
    # 60 s would take a peer's live download (written every read timeout) for a dead one.
    monkeypatch.setenv("AIRFLOW__REVE__STALE_SPOOL_AGE", value)
    recent, live = spools(tmp_path, hours_old=3)

    with caplog.at_level(logging.WARNING, logger="airflow_provider_reve.config"):
        store([succeeded("t1", cdn.route("/a.png", file(PNG)))], tmp_path)

    assert recent.exists() and live.exists()
    assert f"[reve] stale_spool_age = '{value}' is not a number of at least 3600" in caplog.text


# -- gallery_page_size, media_tab_page_size ------------------------------------------------------


@pytest.fixture(scope="module")
def thirty_cards(airflow_db: None) -> Iterator[None]:
    entries = [manifest_entry(f"file-{n:02d}", f"/nowhere/file-{n:02d}_0.png", b"x") for n in range(CARDS)]
    with db_session() as session:
        # 30 cards on the media tab of one task, and 30 generations in the gallery.
        add_ti(session, GALLERY_DAG, "r", "store", operator="ReveDownloadResultsOperator", value=entries)
        for n in range(CARDS):
            add_ti(session, GALLERY_DAG, "g", f"generate_{n:02d}", value=task_value(f"gen-{n:02d}"))
    yield
    with db_session() as session:
        remove_dag(session, GALLERY_DAG)


def gallery_cards(api: Any, **params: Any) -> list[Any]:
    response = api.get("/reve/gallery", params={"dag_id": GALLERY_DAG, **params}, headers=bearer(token()))
    assert response.status_code == 200, response.text
    return read_page(response.text).cards


def media_tab(api: Any, **params: Any) -> Any:
    query = {"dag_id": GALLERY_DAG, "run_id": "r", "task_id": "store", "map_index": "{MAP_INDEX}"}
    response = api.get("/reve/task-instance", params=query | params, headers=bearer(token()))
    assert response.status_code == 200, response.text
    return read_page(response.text)


def test_a_gallery_page_size_of_five_shows_five_cards_and_a_link_still_chooses_its_own(
    api, thirty_cards, monkeypatch
):
    monkeypatch.setenv("AIRFLOW__REVE__GALLERY_PAGE_SIZE", "5")

    assert len(gallery_cards(api)) == 5
    assert len(gallery_cards(api, per_page=7)) == 7
    assert len(media_tab(api).cards) == 30  # the tab has its own option (48 by default)


def test_a_media_tab_page_size_of_five_shows_five_cards_and_next_links_keep_it(
    api, thirty_cards, monkeypatch
):
    monkeypatch.setenv("AIRFLOW__REVE__MEDIA_TAB_PAGE_SIZE", "5")

    first = media_tab(api)

    assert len(first.cards) == 5
    [next_link, *_] = first.testids["reve-next"]
    assert "per_page" not in next_link["attrs"]["href"]  # the configured size is the default
    assert len(gallery_cards(api)) == 30


@pytest.mark.parametrize("value", ["five", "0", "-5", "201", "4.5"])
def test_a_bad_gallery_page_size_gives_the_default_page_and_a_warning_not_an_error(
    api, thirty_cards, monkeypatch, caplog, value
):
    monkeypatch.setenv("AIRFLOW__REVE__GALLERY_PAGE_SIZE", value)

    with caplog.at_level(logging.WARNING, logger="airflow_provider_reve.config"):
        cards = gallery_cards(api)

    assert len(cards) == 30  # every card fits the default 48
    assert f"[reve] gallery_page_size = '{value}' is not an integer from 1 to 200" in caplog.text


# -- progress_log_interval -----------------------------------------------------------------------


@pytest.mark.parametrize(("value", "every_poke"), [("0", True), ("3600", False)])
def test_progress_log_interval_sets_how_often_a_waiting_sensor_says_it_is_still_waiting(
    server, capfd, monkeypatch, value, every_poke
):
    monkeypatch.setenv("AIRFLOW__REVE__PROGRESS_LOG_INTERVAL", value)
    server.set_async_seconds(600)
    task_id = submit(ASYNC_MODEL, "a slow video")
    sensor = ReveTaskSensor(task_id="wait", reve_task_id=task_id, poke_interval=0.01, timeout=60)
    with ThreadPoolExecutor(max_workers=1) as pool:
        waiting = pool.submit(sensor.execute, {})
        deadline = time.monotonic() + 30
        while server.requests_to("status") < 6:
            assert time.monotonic() < deadline, "the sensor did not keep poking"
            time.sleep(0.01)
        server.finish_task(task_id)
        waiting.result(timeout=30)

    log = capfd.readouterr()
    progress = [line for line in (log.out + log.err).splitlines() if "still IN_PROGRESS" in line]
    assert len(progress) >= 5 if every_poke else len(progress) == 1


class SteppingClock:
    """A monotonic clock that moves five seconds each time the trigger reads it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        self.now += 5.0
        return self.now


async def test_progress_log_interval_sets_how_often_a_deferred_wait_logs_that_it_is_still_waiting(
    server, monkeypatch
):
    monkeypatch.setenv("AIRFLOW__REVE__PROGRESS_LOG_INTERVAL", "10")
    server.set_async_seconds(600)
    task_id = submit(ASYNC_MODEL, "a slow video")
    trigger = ReveTaskTrigger(reve_task_id=task_id, poll_interval=0.01, deadline=time.time() + 60)
    trigger._clock = SteppingClock()  # "30 s of waiting" in a fraction of a second

    with structlog.testing.capture_logs() as logs:
        running = asyncio.ensure_future(anext(aiter(trigger.run())))
        while server.requests_to("status") < 30:
            assert not running.done(), running.result()
            await asyncio.sleep(0.01)
        server.finish_task(task_id)
        event = await asyncio.wait_for(running, timeout=30)

    assert event.payload["outcome"] == "success"
    progress = [e["event"] for e in logs if "still IN_PROGRESS" in e["event"]]
    elapsed = [int(ELAPSED.search(line)[1]) for line in progress]  # type: ignore[index]
    # ~150 clock-seconds of waiting: a line per 10 s (the default 30 s would give at most 6).
    assert len(progress) >= 12
    assert all(later - earlier >= 10 for earlier, later in itertools.pairwise(elapsed))
    assert ReveTaskTrigger.progress_log_interval == config.PROGRESS_LOG_INTERVAL.default  # one default


# -- airflow config list -------------------------------------------------------------------------


def test_airflow_config_list_shows_every_reve_option_with_its_default(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__REVE__")},
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    env.pop("AIRFLOW__CORE__UNIT_TEST_MODE", None)
    executable = shutil.which("airflow", path=str(Path(sys.executable).parent)) or "airflow"

    listed = subprocess.run(
        [executable, "config", "list", "--section", "reve", "--color", "off", "--show-values", "-d", "-V"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert listed.returncode == 0, listed.stderr[-3000:]
    lines = {line.strip() for line in listed.stdout.splitlines()}
    assert "[reve]" in lines
    assert "ledger_conn_id =" in lines
    shown = {f"{o.name} = {o.provider_info()['default']}" for o in config.OPTIONS}
    assert shown <= lines, listed.stdout
    assert shown == {
        "max_in_flight = 64",
        "stale_spool_age = 86400",
        "gallery_page_size = 48",
        "media_tab_page_size = 48",
        "progress_log_interval = 30",
    }
    for option in config.OPTIONS:
        assert f"# Variable: AIRFLOW__REVE__{option.name.upper()}" in lines
        assert f"# {option.provider_info()['description']}" in lines

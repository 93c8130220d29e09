"""Fixtures for the gallery tests: real DAG runs, Airflow's real API app, real JWTs.

* ``gallery_runs`` runs ``tests/dags/gallery`` once per module with ``dag.test()`` against the
  fake Reve API (one fault: every ``nano-banana-pro`` task ends FAILED for content policy).
* ``api`` is Airflow's own FastAPI app (``create_app()``), which mounts the plugins found through
  the ``airflow.plugins`` entry point -- the gallery is reached at ``/reve/...`` exactly as in
  the API server, behind Airflow's auth manager (the simple auth manager, Airflow's default).
* ``red_team`` puts ``reve_gallery_secret`` in a DAG bundle owned by the team ``red``: the
  simple auth manager then lets only ``red`` members (and admins) read it. That is Airflow's
  own DAG-level rule, so the gallery's filtering is tested against it, not against a stub.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from airflow_provider_reve.links import safe_link
from airflow_provider_reve.testing import DEFAULT_API_KEY, FakeReveServer

GALLERY_DAGS = Path(__file__).resolve().parents[1] / "dags" / "gallery"
SHOP, SECRET = "reve_gallery_shop", "reve_gallery_secret"
RED_BUNDLE, RED_TEAM = "reve-gallery-red", "red"


@dataclass
class GalleryRuns:
    out: Path
    server: FakeReveServer
    runs: dict[str, Any]  # dag_id -> DagRun

    def run_id(self, dag_id: str) -> str:
        return str(self.runs[dag_id].run_id)


@pytest.fixture(scope="module")
def gallery_runs(airflow_db: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GalleryRuns]:
    from airflow import settings
    from airflow.dag_processing.dagbag import DagBag

    out = tmp_path_factory.mktemp("gallery-out")
    with pytest.MonkeyPatch.context() as patch, FakeReveServer() as server:
        patch.setenv("REVE_TEST_OUTPUT_DIR", str(out))
        patch.setenv("AIRFLOW__CORE__DAGS_FOLDER", str(GALLERY_DAGS))
        patch.setattr(settings, "DAGS_FOLDER", str(GALLERY_DAGS))
        connection = {"conn_type": "reve", "host": server.url, "password": DEFAULT_API_KEY}
        patch.setenv("AIRFLOW_CONN_REVE_DEFAULT", json.dumps(connection))
        # As conftest's autouse fixture does for function-scoped tests: poll at once after deferring.
        patch.setattr("airflow_provider_reve.triggers.reve.settle_time", lambda: 0.0)
        server.add_fault(
            kind="fail_task", model="nano-banana-pro", code="CONTENT_POLICY_VIOLATION", times=None
        )
        bag = DagBag(dag_folder=str(GALLERY_DAGS))
        assert bag.import_errors == {}
        runs = {dag_id: bag.dags[dag_id].test() for dag_id in (SHOP, SECRET)}
        yield GalleryRuns(out=out, server=server, runs=runs)


@pytest.fixture(scope="module")
def api(airflow_db: None) -> Iterator[Any]:
    from airflow.api_fastapi.app import create_app
    from fastapi.testclient import TestClient

    with TestClient(create_app(), base_url="http://testserver") as client:
        yield client


def token(
    role: str = "viewer", teams: list[str] | None = None, username: str = "alice", expires: int = 3600
) -> str:
    """A JWT issued by Airflow's auth manager, as the UI's login gives one."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    user = SimpleAuthManagerUser(username=username, role=role, teams=teams if teams is not None else [])
    return str(get_auth_manager().generate_jwt(user, expiration_time_in_seconds=expires))


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


@pytest.fixture(scope="module")
def red_team(gallery_runs: GalleryRuns) -> Iterator[None]:
    """``reve_gallery_secret`` belongs to team ``red`` (its bundle does), until the module ends."""
    from airflow.models.dag import DagModel
    from airflow.models.dagbundle import DagBundleModel
    from airflow.models.team import Team, dag_bundle_team_association_table
    from airflow.utils.session import create_session
    from sqlalchemy import delete, insert, update

    with create_session() as session:
        original = session.get(DagModel, SECRET).bundle_name
        session.add(Team(name=RED_TEAM))
        session.add(DagBundleModel(name=RED_BUNDLE))
        session.flush()
        session.execute(
            insert(dag_bundle_team_association_table).values(dag_bundle_name=RED_BUNDLE, team_name=RED_TEAM)
        )
        session.execute(update(DagModel).where(DagModel.dag_id == SECRET).values(bundle_name=RED_BUNDLE))
    yield
    with create_session() as session:
        session.execute(update(DagModel).where(DagModel.dag_id == SECRET).values(bundle_name=original))
        session.execute(
            delete(dag_bundle_team_association_table).where(
                dag_bundle_team_association_table.c.dag_bundle_name == RED_BUNDLE
            )
        )
        session.execute(delete(DagBundleModel).where(DagBundleModel.name == RED_BUNDLE))
        session.execute(delete(Team).where(Team.name == RED_TEAM))


def return_values(dag_run: Any, task_id: str) -> dict[int, Any]:
    from tests.support.reve_test_helpers import return_values as read

    return read(dag_run, task_id)


# -- reading the pages ---------------------------------------------------------------------------
class _Page(HTMLParser):
    """Collects the cards (``li[data-testid=reve-card]``), every URL attribute and every testid."""

    _URL_ATTRIBUTES = ("href", "src", "action", "poster", "data")

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.cards: list[dict[str, Any]] = []
        self.urls: list[str] = []
        self.testids: dict[str, list[dict[str, Any]]] = {}
        self.tags: list[str] = []
        self.bar_attrs: list[dict[str, str]] = []  # the credits chart's per-day bars
        self._open: list[tuple[str, dict[str, Any] | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        self.tags.append(tag)
        if tag == "rect" and "data-day" in values:
            self.bar_attrs.append(values)
        self.urls += [values[name] for name in self._URL_ATTRIBUTES if name in values]
        record = None
        if "data-testid" in values:
            record = {"tag": tag, "attrs": values, "text": ""}
            self.testids.setdefault(values["data-testid"], []).append(record)
            if values["data-testid"] == "reve-card":
                record.update(images=[], videos=[], links=[])
                self.cards.append(record)
            elif self.cards and self._inside_card():
                card = self.cards[-1]
                card[values["data-testid"]] = record
                if tag == "img":
                    card["images"].append(values)
                elif tag == "video":
                    card["videos"].append(values)
        if self.cards and self._inside_card() and "href" in values:
            self.cards[-1]["links"].append(values["href"])
        if tag not in ("img", "input", "meta", "link", "br", "source"):
            self._open.append((tag, record))

    def _inside_card(self) -> bool:
        return any(
            rec is not None and rec["attrs"].get("data-testid") == "reve-card" for _, rec in self._open
        )

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            open_tag, _ = self._open.pop()
            if open_tag == tag:
                break

    def handle_data(self, data: str) -> None:
        for _, record in self._open:
            if record is not None:
                record["text"] += data


def read_page(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    page.close()
    return page


# -- requests and rows ---------------------------------------------------------------------------
def get(client: Any, path: str, who: str | None = None, **params: Any) -> Any:
    return client.get(path, params=params, headers=bearer(who) if who else {})


def cards_of(client: Any, who: str, path: str = "/reve/gallery", **params: Any) -> list[dict[str, Any]]:
    response = get(client, path, who, **params)
    assert response.status_code == 200, response.text
    return read_page(response.text).cards


def card_key(card: dict[str, Any]) -> tuple[str, int]:
    return card["attrs"]["data-task-id"], int(card["attrs"]["data-map-index"])


def media_params(src: str) -> dict[str, str]:
    assert src.startswith("media?")
    return {name: values[0] for name, values in parse_qs(urlsplit(src).query).items()}


def assert_only_safe_urls(urls: list[str]) -> None:
    """Every href/src/action is a route of the plugin, the Airflow UI, or a plain http(s) URL."""
    own = (
        "gallery",
        "task-instance",
        "credits",
        "budgets",
        "media?",
        "static/gallery.css",
        "../dags/",
        "/auth/",
    )
    for value in urls:
        if value.startswith(("http://", "https://")):
            assert safe_link(value) == value, value
        else:
            assert value.startswith(own), value


def db_session() -> Any:
    """A metadata DB session, committed when the block ends."""
    from airflow.utils.session import create_session

    return create_session()


def task_value(
    reve_task_id: str, urls: list[str] | None = None, files: list[Any] | None = None
) -> dict[str, Any]:
    value: dict[str, Any] = {
        "task_id": reve_task_id,
        "status": "SUCCESS",
        "result_urls": urls if urls is not None else [],
        "consumed_credits": 5,
        "error_code": None,
        "error_message": None,
        "model": "reve-2.0",
    }
    if files is not None:
        value["files"] = files
    return value


def manifest_entry(reve_task_id: str, path: Path | str, data: bytes, **changes: Any) -> dict[str, Any]:
    entry = {
        "reve_task_id": reve_task_id,
        "index": 0,
        "url": "https://cdn.example.test/x.png",
        "path": str(path),
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "content_type": "image/png",
        "model": "reve-2.0",
        "consumed_credits": 5,
    }
    entry.update(changes)
    return entry

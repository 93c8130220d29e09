"""Turns task-instance rows into the cards the pages show: one card per Reve task per task instance.

A card puts together what Airflow keeps in three places: the task instance (state, times), its
XCom (``ReveTask.to_dict()``, ``files``) and its rendered fields (``prompt``). Two lookups
complete a card from its run, both bounded by the runs on the page:

* a sensor knows only the Reve task id: the prompt comes from the generate task that
  submitted it (and a handed-on submission's card takes the waiter's result);
* files stored by a ``ReveDownloadResultsOperator`` are found by Reve task id in its manifest.

Everything read from the DB is untrusted here (DAG authors and a remote API wrote it): wrong
types are dropped, never raised; URLs are kept only when ``links.safe_link`` accepts them.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

from airflow_provider_reve.client.catalog import get_spec
from airflow_provider_reve.links import safe_link
from airflow_provider_reve.plugins.app import queries
from airflow_provider_reve.plugins.app.queries import DOWNLOAD_OPERATORS, GENERATE_OPERATORS, TaskRow

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

__all__ = [
    "Card",
    "Draft",
    "Media",
    "Owner",
    "build_cards",
    "complete_cards",
    "draft_cards",
    "media_kind",
    "media_route",
]

_VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".m4v")


@dataclass(frozen=True)
class Media:
    """One result file: served by the plugin from storage (``stored``) or by its result URL."""

    kind: str  # "image" | "video"
    src: str  # a route of this app (relative) or a checked http(s) URL
    index: int
    stored: bool


@dataclass
class Card:
    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    state: str | None
    when: datetime | None
    duration: float | None
    reve_task_id: str | None = None
    reve_status: str | None = None
    prompt: str | None = None
    model: str | None = None
    credits: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    media: list[Media] = field(default_factory=list)
    result_url_count: int = 0  # result URLs the API gave (some may have been refused as unsafe)
    metadata: dict[str, Any] | None = None  # the caller's own JSON (``metadata=``), shown as is
    handed_on: bool = False


Owner = tuple[str, str, str, int]  # the task instance whose manifest names a file
# A card being built: the card, its task dict, and the stored files (with their manifest's owner).
_Pending = tuple[Card, "dict[str, Any] | None", "Owner | None", list[Any]]


def media_route(owner: tuple[str, str, str, int], reve_task_id: str, index: int) -> str:
    dag_id, run_id, task_id, map_index = owner
    query = urlencode(
        {
            "dag_id": dag_id,
            "run_id": run_id,
            "task_id": task_id,
            "map_index": map_index,
            "reve_task_id": reve_task_id,
            "index": index,
        }
    )
    return f"media?{query}"


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
        return int(number) if number.is_integer() else None
    return None


def _task_dict(value: Any) -> dict[str, Any] | None:
    return value if isinstance(value, dict) and _str(value.get("task_id")) else None


def _entries(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        return []
    return [
        entry
        for entry in value
        if isinstance(entry, dict)
        and _str(entry.get("reve_task_id"))
        and _int(entry.get("index")) is not None
    ]


def media_kind(content_type: Any, model: str | None, url: str | None = None) -> str:
    if isinstance(content_type, str):
        if content_type.startswith("video/"):
            return "video"
        if content_type.startswith("image/"):
            return "image"
    spec = get_spec(model) if model else None
    if spec is not None:
        return spec.kind
    if url and urlsplit(url).path.lower().endswith(_VIDEO_SUFFIXES):
        return "video"
    return "image"


def _fill_from_task(card: Card, task: dict[str, Any]) -> None:
    card.reve_task_id = _str(task.get("task_id"))
    card.reve_status = _str(task.get("status"))
    card.credits = _int(task.get("consumed_credits"))
    card.model = _str(task.get("model")) or card.model
    card.error_code = _str(task.get("error_code"))
    card.error_message = _str(task.get("error_message"))
    card.prompt = card.prompt or _str(task.get("prompt"))
    card.metadata = _dict(task.get("metadata")) or card.metadata


def _dict(value: Any) -> dict[str, Any] | None:
    return value if isinstance(value, dict) and value else None


def _stored_media(
    owner: tuple[str, str, str, int], entries: list[dict[str, Any]], model: str | None
) -> list[Media]:
    media = []
    for entry in sorted(entries, key=lambda e: _int(e.get("index")) or 0):
        index = _int(entry.get("index")) or 0
        media.append(
            Media(
                kind=media_kind(entry.get("content_type"), model, _str(entry.get("url"))),
                src=media_route(owner, str(entry["reve_task_id"]), index),
                index=index,
                stored=True,
            )
        )
    return media


def _url_media(task: dict[str, Any], model: str | None) -> tuple[list[Media], int]:
    urls = task.get("result_urls")
    if not isinstance(urls, list):
        return [], 0
    media = []
    for index, url in enumerate(urls):
        checked = safe_link(url)
        if checked:
            media.append(Media(kind=media_kind(None, model, checked), src=checked, index=index, stored=False))
    return media, len(urls)


def _base_card(row: TaskRow) -> Card:
    return Card(
        dag_id=row.dag_id,
        run_id=row.run_id,
        task_id=row.task_id,
        map_index=row.map_index,
        state=row.state,
        when=row.when,
        duration=row.duration,
        prompt=row.prompt,
        model=row.rendered_model,
    )


def build_cards(session: Session, rows: list[TaskRow]) -> list[Card]:
    """Cards for ``rows``, in their order; a download task gives one card per Reve task it stored."""
    return complete_cards(session, draft_cards(rows))


@dataclass
class Draft:
    """A card before its run is consulted: cheap to make (no query), so a page can be cut first."""

    card: Card
    task: dict[str, Any] | None
    owner: Owner | None
    files: list[Any]


def draft_cards(rows: list[TaskRow]) -> list[Draft]:
    """One draft per card ``rows`` give, in their order, without touching the database."""
    drafts: list[Draft] = []
    for row in rows:
        owner: Owner | None = (row.dag_id, row.run_id, row.task_id, row.map_index)
        if row.operator in DOWNLOAD_OPERATORS:
            by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for entry in _entries(row.value):
                by_task[entry["reve_task_id"]].append(entry)
            for reve_task_id, entries in by_task.items():
                card = _base_card(row)
                card.prompt = None  # a download task has no prompt of its own
                card.reve_task_id = reve_task_id
                card.reve_status = "SUCCESS"
                card.model = _str(entries[0].get("model"))
                card.credits = _int(entries[0].get("consumed_credits"))
                card.prompt = _str(entries[0].get("prompt"))
                card.metadata = _dict(entries[0].get("metadata"))
                drafts.append(Draft(card, None, owner, entries))
            continue
        card = _base_card(row)
        task = _task_dict(row.value)
        files: list[Any] = []
        if task is not None:
            _fill_from_task(card, task)
            files = _entries(task.get("files"))
            card.handed_on = (
                row.operator in GENERATE_OPERATORS
                and row.state == "success"
                and card.reve_status == "IN_PROGRESS"
            )
        drafts.append(Draft(card, task, owner if files else None, files))
    return drafts


def complete_cards(session: Session, drafts: list[Draft]) -> list[Card]:
    """The finished cards: prompts, results and files found elsewhere in their runs."""
    cards: list[_Pending] = [(d.card, d.task, d.owner, d.files) for d in drafts]
    _complete_from_runs(session, cards)
    result = []
    for card, task, owner, files in cards:
        if files and owner is not None:
            card.media = _stored_media(owner, files, card.model)
            card.result_url_count = max(card.result_url_count, len(files))
        elif task is not None:
            card.media, card.result_url_count = _url_media(task, card.model)
        result.append(card)
    return result


def _complete_from_runs(session: Session, cards: list[_Pending]) -> None:
    """Prompts from submitters, results from waiters and files from download tasks of the same run."""
    runs = {(c.dag_id, c.run_id) for c, *_ in cards if c.reve_task_id}
    ids = {c.reve_task_id for c, *_ in cards if c.reve_task_id}
    if not runs or not ids:
        return
    related = queries.related_tasks(session, runs, ids)
    manifests = queries.download_manifests(session, runs)
    stored: dict[tuple[str, str, str], tuple[Owner, list[dict[str, Any]]]] = {}
    for manifest in manifests:
        manifest_owner = (manifest.dag_id, manifest.run_id, manifest.task_id, manifest.map_index)
        for entry in _entries(manifest.entries):
            key = (manifest.dag_id, manifest.run_id, entry["reve_task_id"])
            first_owner, entries = stored.setdefault(key, (manifest_owner, []))
            if first_owner == manifest_owner:  # stored twice (two destinations): the first manifest serves
                entries.append(entry)
    for position, (card, task, owner, files) in enumerate(cards):
        if not card.reve_task_id:
            continue
        key = (card.dag_id, card.run_id, card.reve_task_id)
        submitter = related.submitters.get(key)
        if submitter is not None and not card.prompt:
            card.prompt = submitter.prompt
            card.model = card.model or submitter.model
        waiter = related.waiters.get(key)
        if card.handed_on and waiter is not None:
            # The submission's own XCom says IN_PROGRESS; the sensor knows how it ended.
            _fill_from_task(card, waiter)
            task = waiter
            files = _entries(waiter.get("files"))
            owner = related.waiter_owners[key] if files else None
        if not files and key in stored:
            owner, files = stored[key][0], stored[key][1]
        cards[position] = (card, task, owner, files)

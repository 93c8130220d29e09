"""A cleared task instance's earlier files: moved aside, never deleted without a trace.

Clearing a task instance generates afresh (a new, paid Reve task). Its new files land in the
destination beside the ones the earlier run of tries stored there. So that the folder holds one
current file per result, a store that knows which Airflow task instance it works for (its
*owner*: dag id, run id, task id, map index) keeps an **owner record** in the destination,
``reve-owner-<digest>.json``, listing the files that instance stored last. The next store for
the same owner, once every new file is in place:

* **moves** each earlier file that is not one of the new files into ``superseded/`` beside them
  (same name; ``<name>.<n>`` when taken), if it is still the file the record describes (size and
  sha256) -- a file someone replaced or edited since is left where it is;
* **replaces** nothing silently: an earlier file whose name a new file took (a ``file_name``
  template without ``{reve_task_id}``) was overwritten by the new file's rename; it is listed too;
* lists every earlier file in the new manifest's ``superseded``, with ``superseded_by`` (the new
  entry of the same result index, when there is one) and ``moved_to`` (``null`` when replaced).

Crash-safe: files move only after the new ones are complete, and the owner record is rewritten
last. A try killed between the two finds the earlier record again; a file already moved is found
in ``superseded/`` (same size and sha256) and listed as moved, so no trace is lost. Another DAG
run of the same task is another owner: daily runs into one folder accumulate, as before.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from airflow_provider_reve.exceptions import ReveStorageError
from airflow_provider_reve.results.naming import SUPERSEDED_FOLDER

__all__ = ["OWNER_FIELDS", "owner_record_name", "read_owner_record", "supersede_earlier"]

log = logging.getLogger(__name__)

OWNER_FIELDS = ("dag_id", "run_id", "task_id", "map_index")
_MAX_RECORD_BYTES = 16 * 1024 * 1024


def owner_record_name(owner: Mapping[str, Any]) -> str:
    key = json.dumps([owner.get(name) for name in OWNER_FIELDS])
    return f"reve-owner-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def read_owner_record(where: Any, owner: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The files the owner stored here last (entries of its last manifest), or ``[]``."""
    try:
        with where.target(owner_record_name(owner)).open("rb") as fh:
            record = json.loads(fh.read(_MAX_RECORD_BYTES))
    except (OSError, ValueError):
        return []
    files = record.get("files") if isinstance(record, dict) else None
    if not isinstance(files, list) or record.get("owner") != {k: owner.get(k) for k in OWNER_FIELDS}:
        return []
    return [entry for entry in files if isinstance(entry, dict)]


def supersede_earlier(
    where: Any,
    owner: Mapping[str, Any],
    files: list[dict[str, Any]],
    *,
    same_file: Callable[[Any, Any, Any], bool],
    write: Callable[[str, bytes], None],
    logger: Any = None,
) -> list[dict[str, Any]]:
    """Move the owner's earlier files aside; record the new ones; return the ``superseded`` list.

    :raises ReveStorageError: a move or the owner record failed. It runs after paying, so it is
        transient like every storage error then: a retry finds the record and the moves again.
    """
    try:
        return _supersede(where, owner, files, same_file=same_file, write=write, logger=logger or log)
    except Exception as error:  # OSError locally; an object store raises its own exceptions
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        raise ReveStorageError(
            f"moving this task instance's earlier files at {where} into {SUPERSEDED_FOLDER}/ (or "
            f"recording the new ones in {owner_record_name(owner)}) failed: {type(error).__name__}: {reason}"
        ) from None


def _supersede(
    where: Any,
    owner: Mapping[str, Any],
    files: list[dict[str, Any]],
    *,
    same_file: Callable[[Any, Any, Any], bool],
    write: Callable[[str, bytes], None],
    logger: Any,
) -> list[dict[str, Any]]:
    earlier = read_owner_record(where, owner)
    current = {entry["path"] for entry in files}
    by_index = {entry["index"]: entry for entry in files}
    new_keys = {(entry["reve_task_id"], entry["index"]) for entry in files}
    superseded: list[dict[str, Any]] = []
    for entry in earlier:
        try:
            key, path, name = (entry["reve_task_id"], entry["index"]), str(entry["path"]), _name(entry)
        except (KeyError, TypeError):
            continue
        if key in new_keys or name is None or where.shown(where.target(name)) != path:
            continue  # still current, or not a file of this destination (a hand-edited record)
        trace = {
            "reve_task_id": key[0],
            "index": key[1],
            "path": path,
            "bytes": entry.get("bytes"),
            "sha256": entry.get("sha256"),
            "superseded_by": _short(by_index.get(key[1])),
            "moved_to": None,
        }
        if path in current:
            logger.info("%s now holds a newer result (cleared and generated again); recorded", path)
            superseded.append(trace)
            continue
        moved = _move_aside(where, name, entry, same_file)
        if moved is None:
            continue  # gone or changed since it was stored: not ours to move, nothing to record
        trace["moved_to"] = moved
        logger.info("Moved %s to %s: this task instance was cleared and generated again", path, moved)
        superseded.append(trace)
    record = {"owner": {k: owner.get(k) for k in OWNER_FIELDS}, "files": files}
    write(owner_record_name(owner), json.dumps(record, indent=2, sort_keys=True).encode())
    return superseded


def _name(entry: Mapping[str, Any]) -> str | None:
    name = str(entry["path"]).replace("\\", "/").rsplit("/", 1)[-1]
    return name if name and name not in (".", "..") else None


def _short(entry: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if entry is None:
        return None
    return {"reve_task_id": entry["reve_task_id"], "index": entry["index"], "path": entry["path"]}


def _move_aside(
    where: Any, name: str, entry: Mapping[str, Any], same_file: Callable[..., bool]
) -> str | None:
    size, sha256 = entry.get("bytes"), entry.get("sha256")
    source = where.target(name)
    folder = where.target(SUPERSEDED_FOLDER)
    candidates = [folder / name, *(folder / f"{name}.{n}" for n in range(1, 100))]
    for target in candidates:
        if same_file(target, size, sha256):
            if same_file(source, size, sha256):
                _remove(source)  # moved by a killed try that had copied, not yet removed
            return str(where.shown(target))  # moved by a try that was killed before the record
    if not same_file(source, size, sha256):
        return None
    for target in candidates:
        if _exists(target):
            continue
        if where.local is not None:
            os.makedirs(folder, exist_ok=True)
            os.rename(source, target)  # one filesystem: atomic, never a half file
        else:
            source.copy(target)
            _remove(source)
        return str(where.shown(target))
    return None


def _exists(target: Any) -> bool:
    try:
        return bool(target.exists())
    except OSError:
        return True  # unknown: do not take the name


def _remove(target: Any) -> None:
    with contextlib.suppress(FileNotFoundError):
        target.unlink()

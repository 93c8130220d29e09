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

**Another file at a new file's name** (:class:`DisplacedFiles`): a ``file_name`` without
``{reve_task_id}`` gives the next DAG run's file the name the previous run's file has in a folder
shared by runs. Before a new file takes a name where a *different* file sits (another size or
sha256), and that file is not this same task instance's own earlier file (a clear, above), the
store moves it into ``superseded/`` under a name not taken there (``<name>``, ``<name>.1``...;
never overwritten, byte for byte) and the new manifest lists it under ``superseded`` with
``moved_to``, ``superseded_by`` and the ``owner`` (task instance) an owner record names for it
(``null`` when none does). Identical bytes at the name are reused, not moved. The move is
recorded first, in ``superseded/reve-displaced-<digest>.json`` (one per result that took the
name): a try killed between the record and the move, or between the move and the rename, leaves
the record, and the next store of that result lists the moved file from it (only while the file
is in ``superseded/`` with the recorded size and sha256; a record is a file anyone may edit).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from airflow_provider_reve.exceptions import ReveStorageError
from airflow_provider_reve.results.files import open_for_reading
from airflow_provider_reve.results.manifest import MANIFEST_NAME, manifest_entries, names_in
from airflow_provider_reve.results.naming import SUPERSEDED_FOLDER

__all__ = [
    "OWNER_FIELDS",
    "DisplacedFiles",
    "displaced_record_name",
    "owner_record_name",
    "read_owner_record",
    "supersede_earlier",
]

log = logging.getLogger(__name__)

OWNER_FIELDS = ("dag_id", "run_id", "task_id", "map_index")
_MAX_RECORD_BYTES = 16 * 1024 * 1024
_OWNER_RECORD = re.compile(r"reve-owner-[0-9a-f]{16}\.json")
# Owner records and manifests read to say whose file was moved aside, at most.
_MAX_RECORDS_READ = 1000
# Names tried in superseded/ for one moved file: a daily run's file for decades.
_MAX_MOVED_NAMES = 100_000
_HASH_CHUNK = 1024 * 1024


def owner_record_name(owner: Mapping[str, Any]) -> str:
    """The file name of an owner record: one per task instance (DAG, run, task, map index).

    :param owner: the task instance's identity (``OWNER_FIELDS``).
    :return: the file name.
    """
    key = json.dumps([owner.get(name) for name in OWNER_FIELDS])
    return f"reve-owner-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def read_owner_record(where: Any, owner: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The files the owner stored here last (entries of its last manifest), or ``[]``.

    Opened as every file of ours is read: only a regular file, without blocking. A FIFO under the
    record's name would otherwise hold the store of a paid task until its result URLs expire; it
    is no record of ours, so it is read as none, and the store's new record replaces it.
    Opened as every file of ours is read: only a regular file, without blocking. A FIFO under the
    record's name would otherwise hold the store of a paid task until its result URLs expire; it
    is no record of ours, so it is read as none, and the store's new record replaces it.

    :param where: the destination.
    :param owner: the task instance's identity.
    :return: the entries.
    """
    target = where.target(owner_record_name(owner))
    target = where.target(owner_record_name(owner))
    try:
        with open_for_reading(target) as fh:
            record = json.loads(fh.read(_MAX_RECORD_BYTES))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as error:
        log.warning("%s is not read as an owner record (%s); this store writes a new one", target, error)
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
    :param where: the destination.
    :param owner: the task instance's identity.
    :param files: the entries of the files it stores now.
    :param same_file: ``same_file(target, size, sha256)``: the file is there, unchanged.
    :param write: ``write(name, body)`` writes a small file whole at ``where``.
    :param logger: where the moves are logged; ``None``: this module's.
    :return: the ``superseded`` traces.
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
            "owner": {k: owner.get(k) for k in OWNER_FIELDS},
        }
        if path in current:
            # Replaced in place by this store's rename, unless another run's store had already
            # moved it out of its own new file's way (DisplacedFiles): then it is in superseded/.
            trace["moved_to"] = _found_moved(where, name, entry, same_file)
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


def _found_moved(
    where: Any, name: str, entry: Mapping[str, Any], same_file: Callable[..., bool]
) -> str | None:
    """Where in ``superseded/`` the file ``entry`` describes sits (``<name>`` or ``<name>.<n>``)."""
    folder = where.target(SUPERSEDED_FOLDER)
    for moved in sorted(_names(folder)):
        if moved == name or (moved.startswith(f"{name}.") and moved[len(name) + 1 :].isdigit()):
            target = folder / moved
            if same_file(target, entry.get("bytes"), entry.get("sha256")):
                return str(where.shown(target))
    return None


def _names(folder: Any) -> list[str]:
    try:
        return [path.name for path in folder.iterdir()]
    except Exception:  # no such folder yet, or a store that cannot list
        return []


def displaced_record_name(reve_task_id: str, index: int) -> str:
    """The record, in ``superseded/``, of the files moved out of the way of this result's file.

    :param reve_task_id: the result's Reve task id.
    :param index: the result's index in its task.
    :return: the record's file name.
    """
    key = json.dumps([reve_task_id, index])
    return f"reve-displaced-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


@dataclass(frozen=True)
class DisplacedFiles:
    """Moves a different file out of a new file's way into ``superseded/``, recorded first.

    :param where: the destination (``target(name)``, ``shown(target)``, ``local``/``remote``).
    :param same_file: ``same_file(target, size, sha256)``: the file is there, unchanged.
    :param open_file: opens a file for reading, refusing what is not a regular file.
    :param write: ``write(name, body)`` writes a small file of ours whole at ``where``.
    :param own_earlier: this task instance's earlier files by ``path`` (its owner record's
        entries), which a clear replaces in place: :func:`supersede_earlier` lists those.
    :param logger: where the moves are logged.
    """

    where: Any
    same_file: Callable[[Any, Any, Any], bool]
    open_file: Callable[[Any], Any]
    write: Callable[[str, bytes], None]
    own_earlier: Mapping[str, Mapping[str, Any]]
    logger: Any = log

    def make_room(self, target: Any, reve_task_id: str, index: int) -> None:
        """Before a new file takes ``target``: move the different file sitting there aside.

        Call it only when the file at ``target`` (if any) is not the new file itself. Left for
        the rename to replace, as before: nothing there, something that is not a regular file,
        and this task instance's own earlier file, unchanged since its owner record.

        :param target: the file the new result is about to take.
        :param reve_task_id: the new result's Reve task id.
        :param index: the new result's index in its task.
        """
        where = self.where
        occupant = self._digest(target)
        if occupant is None:
            return
        size, sha256 = occupant
        path = str(where.shown(target))
        own = self.own_earlier.get(path)
        if own is not None and own.get("bytes") == size and own.get("sha256") == sha256:
            return
        if where.local is not None:
            os.makedirs(where.target(SUPERSEDED_FOLDER), exist_ok=True)
        record = f"{SUPERSEDED_FOLDER}/{displaced_record_name(reve_task_id, index)}"
        displaced = self._read_displaced(record)
        planned = None
        for trace in displaced:
            if trace.get("path") != path or trace.get("sha256") != sha256:
                continue
            moved = self._moved_target(trace.get("moved_to"))
            if moved is not None and self.same_file(moved, size, sha256):
                _remove(target)  # copied aside by a killed try that had not removed it yet
                return
            if moved is not None and not _exists(moved):
                planned = moved  # recorded by a try killed before its move
        if planned is None:
            planned = self._free_target(target.name, [trace.get("moved_to") for trace in displaced])
            owner, stored_as = self.who_stored(path, sha256)
            trace = {
                "reve_task_id": stored_as.get("reve_task_id"),
                "index": stored_as.get("index"),
                "path": path,
                "bytes": size,
                "sha256": sha256,
                "owner": owner,
                "moved_to": str(where.shown(planned)),
            }
            body = {
                "result": {"reve_task_id": reve_task_id, "index": index},
                "displaced": [*displaced, trace],
            }
            self.write(record, json.dumps(body, indent=2, sort_keys=True).encode())
        _move(where, target, planned)
        self.logger.info(
            "Moved %s to %s: a different file (%s) takes its name; listed under 'superseded'",
            path,
            where.shown(planned),
            f"Reve task {reve_task_id}, result {index}",
        )

    def traces_for(self, files: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """The ``superseded`` traces of the files moved out of the way of ``files``, still intact.

        :param files: the manifest entries of the new files.
        :return: one trace per file moved aside.
        """
        folder = self.where.target(SUPERSEDED_FOLDER)
        if not _exists(folder):
            return []  # nothing was ever moved aside here: no record to read
        traces: list[dict[str, Any]] = []
        for entry in files:
            record = f"{SUPERSEDED_FOLDER}/{displaced_record_name(entry['reve_task_id'], entry['index'])}"
            for trace in self._read_displaced(record):
                moved = self._moved_target(trace.get("moved_to"))
                if moved is None or not self.same_file(moved, trace.get("bytes"), trace.get("sha256")):
                    continue  # not moved (a try killed before it), or deleted or changed since
                traces.append(
                    {
                        **{
                            key: trace.get(key)
                            for key in ("reve_task_id", "index", "path", "bytes", "sha256")
                        },
                        "owner": _owner(trace.get("owner")),
                        "moved_to": str(self.where.shown(moved)),
                        "superseded_by": _short(entry),
                    }
                )
        return traces

    def _digest(self, target: Any) -> tuple[int, str] | None:
        if self.where.local is not None:
            try:
                if not stat.S_ISREG(os.lstat(target).st_mode):
                    return None  # a FIFO, a link, a folder: the rename does what it always did
            except FileNotFoundError:
                return None
        elif not target.exists():
            return None
        digest, size = hashlib.sha256(), 0
        try:
            with self.open_file(target) as fh:
                for chunk in iter(lambda: fh.read(_HASH_CHUNK), b""):
                    digest.update(chunk)
                    size += len(chunk)
        except FileNotFoundError:
            return None
        return size, digest.hexdigest()

    def _read_displaced(self, record: str) -> list[dict[str, Any]]:
        body = _read_json(self.where.target(record), self.open_file)
        displaced = body.get("displaced") if isinstance(body, dict) else None
        if not isinstance(displaced, list):
            return []
        return [t for t in displaced if isinstance(t, dict) and isinstance(t.get("path"), str)]

    def _moved_target(self, moved_to: Any) -> Any | None:
        """The file in ``superseded/`` a record names, only if it is exactly one of ours there."""
        if not isinstance(moved_to, str):
            return None
        name = moved_to.replace("\\", "/").rsplit("/", 1)[-1]
        if not name or name in (".", ".."):
            return None
        target = self.where.target(f"{SUPERSEDED_FOLDER}/{name}")
        return target if str(self.where.shown(target)) == moved_to else None

    def _free_target(self, name: str, planned: Iterable[Any]) -> Any:
        folder = self.where.target(SUPERSEDED_FOLDER)
        taken = set(_names(folder)) | {str(p).rsplit("/", 1)[-1] for p in planned if isinstance(p, str)}
        for n in range(_MAX_MOVED_NAMES):
            candidate = name if n == 0 else f"{name}.{n}"
            if candidate not in taken and not _exists(folder / candidate):
                return folder / candidate
        raise FileExistsError(f"no free name for {name} in {folder}")

    def who_stored(self, path: str, sha256: str) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        """The task instance (owner record) and Reve result (entry) that stored this file here.

        :param path: the file's manifest ``path``.
        :param sha256: the file's SHA-256.
        :return: the owner record (``None`` when unknown) and the manifest entry.
        """
        names = sorted(names_in(self.where))
        stored_as: dict[str, Any] = {}
        for pattern in (_OWNER_RECORD, MANIFEST_NAME):
            for name in [name for name in names if pattern.fullmatch(name)][:_MAX_RECORDS_READ]:
                if pattern is _OWNER_RECORD:
                    record = _read_json(self.where.target(name), self.open_file)
                    files = record.get("files") if isinstance(record, dict) else None
                else:
                    record, files = None, manifest_entries(self.where.target(name), self.open_file)
                for entry in files if isinstance(files, list) else []:
                    if (
                        isinstance(entry, dict)
                        and entry.get("path") == path
                        and entry.get("sha256") == sha256
                    ):
                        stored_as = _short_stored(entry)
                        if record is not None and _owner(record.get("owner")) is not None:
                            return _owner(record.get("owner")), stored_as
        return None, stored_as


def _short_stored(entry: Mapping[str, Any]) -> dict[str, Any]:
    task_id, index = entry.get("reve_task_id"), entry.get("index")
    return {
        "reve_task_id": task_id if isinstance(task_id, str) else None,
        "index": index if type(index) is int else None,
    }


def _owner(value: Any) -> dict[str, Any] | None:
    if not isinstance(value, dict) or not all(isinstance(value.get(k), str) for k in OWNER_FIELDS[:3]):
        return None
    map_index = value.get("map_index")
    return {
        **{k: value[k] for k in OWNER_FIELDS[:3]},
        "map_index": map_index if type(map_index) is int else None,
    }


def _read_json(target: Any, open_file: Callable[[Any], Any]) -> Any:
    try:
        with open_file(target) as fh:
            return json.loads(fh.read(_MAX_RECORD_BYTES))
    except Exception:  # missing, unreadable, not ours: nothing known from it
        return None


def _move(where: Any, source: Any, target: Any) -> None:
    """``source`` to ``target`` in ``superseded/``, whole, never over a file already there."""
    if where.local is not None:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if os.path.lexists(target):
            raise FileExistsError(f"{target} appeared while moving {source} there")
        os.rename(source, target)  # one filesystem: atomic, never a half file
    else:
        source.copy(target)
        _remove(source)

"""Manifests in a destination: their names, writing one, and which earlier files a store reuses.

A manifest (``reve-manifest-<digest>.json``) is named for the set of Reve task ids it was
written for and lists one entry per stored file. The invariants:

* **Reuse is per file, from any manifest in the destination.** A file stored with tasks A and B
  is reused when a later call stores A and C, after A's URL expired. The set's own manifest is
  read first; the others only while the folder holds a file named for a result still missing
  (so a first store reads no manifest, however many an object-store folder holds).
* **Only the file this store would write counts.** An entry is reused when its file sits at the
  top of the destination under the name *this* store gives that result (the default
  ``<reve task id>_<index>`` or the caller's ``file_name`` template) and still has the entry's
  size and sha256. A manifest is a file anyone with access to the folder may have edited, so
  nothing it names elsewhere is trusted; in particular a file a cleared re-run moved into
  ``superseded/`` is never offered again as a current result.
* **A manifest is written whole** (through the caller's ``write``: renamed into place locally,
  one upload remotely), so a reader never sees half of one.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_provider_reve.models import ReveTask

__all__ = [
    "MANIFEST_NAME",
    "earlier_entries",
    "manifest_entries",
    "manifest_name",
    "named_for",
    "names_in",
    "write_manifest",
]

#: The names :func:`manifest_name` gives.
MANIFEST_NAME = re.compile(r"reve-manifest-[0-9a-f]{16}\.json")
# Earlier manifests read for files to reuse, at most (an object-store folder may hold any number).
_MAX_MANIFESTS = 1000
_MAX_MANIFEST_BYTES = 16 * 1024 * 1024

Key = tuple[str, int]


def manifest_name(task_ids: Iterable[str]) -> str:
    """The manifest's file name for this set of Reve task ids.

    :param task_ids: the Reve task ids (their order does not matter).
    :return: the file name.
    """
    # JSON, not a join: ids are API data, and ["a\nb"] must not name the manifest of ["a", "b"].
    digest = hashlib.sha256(json.dumps(list(task_ids)).encode()).hexdigest()[:16]
    return f"reve-manifest-{digest}.json"


def earlier_entries(
    where: Any,
    tasks: Sequence[ReveTask],
    stems: Mapping[Key, str],
    *,
    same_file: Callable[[Any, Any, Any], bool],
    open_file: Callable[[Any], Any] | None = None,
) -> dict[Key, dict[str, Any]]:
    """Entries of *any* manifest in ``where`` for files of ``tasks`` still intact there.

    :param where: the destination (``target(name)``, ``shown(target)``, ``local``/``remote``).
    :param stems: every result's file name without extension, as this store names it.
    :param same_file: ``same_file(target, size, sha256)``: the file is there, unchanged.
    :param open_file: opens a manifest for reading; the caller's refuses what is not a regular
        file (a FIFO named like a manifest would block ``open()`` for good).
    :param tasks: the Reve tasks whose files are looked for.
    :return: the entries, by ``(Reve task id, result index)``.
    """
    wanted = {(task.task_id, index) for task in tasks for index in range(len(task.result_urls))}
    own = manifest_name(task.task_id for task in tasks)
    kept: dict[Key, dict[str, Any]] = {}
    _reuse_from(where, own, wanted, stems, kept, same_file, open_file)
    if len(kept) == len(wanted):
        return kept
    names = names_in(where)
    manifests = sorted(name for name in names if MANIFEST_NAME.fullmatch(name) and name != own)
    for manifest in manifests[:_MAX_MANIFESTS]:
        missing = wanted - kept.keys()
        if not any(named_for(stems[key], name) for key in missing for name in names):
            break
        _reuse_from(where, manifest, missing, stems, kept, same_file, open_file)
    return kept


def manifest_entries(manifest: Any, open_file: Callable[[Any], Any] | None = None) -> list[dict[str, Any]]:
    """The ``files`` entries of the manifest at ``manifest`` (a path), ``[]`` if unreadable.

    :param open_file: how to open it (default ``manifest.open("rb")``).
    :param manifest: the manifest's path.
    :return: its ``files`` entries.
    """
    try:
        with open_file(manifest) if open_file is not None else manifest.open("rb") as fh:
            entries = json.loads(fh.read(_MAX_MANIFEST_BYTES)).get("files", [])
    except Exception:  # missing, unreadable, not ours: nothing to reuse from it
        return []
    return [entry for entry in entries if isinstance(entry, dict)] if isinstance(entries, list) else []


def write_manifest(
    where: Any,
    tasks: Sequence[ReveTask],
    files: list[dict[str, Any]],
    superseded: list[dict[str, Any]],
    *,
    write: Callable[[Any, bytes], None],
) -> str:
    """Write the manifest of ``files`` (and what they ``superseded``); return where it went.

    :param where: the destination.
    :param tasks: the Reve tasks whose files were stored.
    :param files: one entry per stored file.
    :param superseded: the traces of the files moved aside for them.
    :param write: ``write(name, body)`` writes a small file whole at ``where``.
    :return: the manifest's path or URI.
    """
    # "superseded" only when a clear left earlier files: a first store's manifest is unchanged.
    manifest: dict[str, Any] = {"files": files, **({"superseded": superseded} if superseded else {})}
    body = json.dumps(manifest, indent=2, sort_keys=True).encode()
    target = where.target(manifest_name(task.task_id for task in tasks))
    write(target, body)
    return str(where.shown(target))


def _reuse_from(
    where: Any,
    manifest: str,
    wanted: set[Key],
    stems: Mapping[Key, str],
    kept: dict[Key, dict[str, Any]],
    same_file: Callable[[Any, Any, Any], bool],
    open_file: Callable[[Any], Any] | None,
) -> None:
    for entry in manifest_entries(where.target(manifest), open_file):
        task_id, index, path = entry.get("reve_task_id"), entry.get("index"), entry.get("path")
        # Any JSON may be there: a list where an id belongs would make the key unhashable and
        # fail every try the same way, until the paid result's URLs expire.
        if not isinstance(task_id, str) or type(index) is not int or not isinstance(path, str):
            continue
        key, name = (task_id, index), path.rsplit("/", 1)[-1]
        if key not in wanted or key in kept or not named_for(stems[key], name):
            continue
        target = where.target(name)
        intact = same_file(target, entry.get("bytes"), entry.get("sha256"))
        if where.shown(target) == entry["path"] and intact:
            kept[key] = entry


def named_for(stem: str, name: str) -> bool:
    """Whether ``name`` is a file this store gives the result whose file stem is ``stem``.

    :param stem: a result's file stem.
    :param name: a file name.
    :return: ``True`` when ``name`` is that result's file.
    """
    # The extension comes from the content type: any one after the stem is ours.
    return name.startswith(f"{stem}.") and "." not in name[len(stem) + 1 :]


def names_in(where: Any) -> list[str]:
    """The names at the top of the destination ``where``; ``[]`` when it cannot be listed.

    :param where: the destination.
    :return: the names, or ``[]``.
    """
    folder = where.local if where.local is not None else where.remote
    try:
        return [path.name for path in folder.iterdir()]
    except Exception:  # cannot list (an object store without it): no other manifest is read
        return []

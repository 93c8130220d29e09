"""Store a finished task's result files at a destination and describe them in a manifest.

Result URLs are short-lived CDN links, so the files are fetched once, promptly, into storage
the user owns: a local folder or anything Airflow's object storage reaches (``s3://``,
``gs://``...). The promises, each one a test:

* **Our names, never the URL's.** ``<reve task id>_<index>.<ext>``: the task id reduced to
  ``[A-Za-z0-9._-]`` (plus a digest of the original when anything was changed, so two ids
  never share a name), the extension from the answer's Content-Type, else the requested
  ``output_format``, else ``bin``. Or the caller's ``file_name`` template (``results.naming``:
  checked so it cannot leave the folder, and refused before any download when two results of the
  store would share a name). Nothing can land outside the destination.
* **Untrusted URLs.** The fetch is :func:`airflow_provider_reve.results.download.download`: http(s)
  only, no credentials sent (these are not the API's URLs), redirects checked, size capped.
* **Crash-safe.** Each file is first streamed into a spool file while its size and sha256 are
  computed. Locally the spool lives beside the target under a hidden ``.reve-*.part`` name
  and is renamed into place; on an object store the final key is written in one upload from
  a local spool (an object becomes visible only once complete). A try killed midway leaves
  no file that looks complete, only a hidden spool, which a later store into the same
  folder removes once nothing has written to it for a day. The file steps live in
  ``results.files``.
* **Idempotent.** A file already at its final name with the same size and sha256 is left
  alone, so a retry over stored results does no work beyond the download check.
* **One current file per result.** Given its ``owner`` (the Airflow task instance), a store
  moves that instance's files from before a clear into ``superseded/`` (``results.supersede``) and
  its manifest lists them under ``superseded``.
* **No file overwritten without a trace.** A different file at the name a new file takes
  (another DAG run's, at a stable ``file_name``; anyone's) is moved into ``superseded/`` first,
  recorded before the move, and listed under ``superseded`` (``_supersede.DisplacedFiles``);
  only the same task instance's own earlier file is replaced in place (and listed so).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from airflow_provider_reve.client.redact import Redactor
from airflow_provider_reve.client.retry import RetryPolicy, call_with_retries, is_permanent
from airflow_provider_reve.defaults import DEFAULT_MAX_BYTES
from airflow_provider_reve.exceptions import (
    ReveDownloadError,
    ReveStorageError,
    ReveValidationError,
)
from airflow_provider_reve.models import ReveTask
from airflow_provider_reve.results.destination import Destination, asset_uri, resolve_destination
from airflow_provider_reve.results.files import (
    HASH_CHUNK,
    HashingWriter,
    open_for_reading,
    open_spool,
    remove_stale_spools,
    same_file,
    upload,
    write_file,
)
from airflow_provider_reve.results.manifest import (
    earlier_entries,
    manifest_name,
    named_for,
    names_in,
    write_manifest,
)
from airflow_provider_reve.results.naming import result_stems

__all__ = [
    "DEFAULT_MAX_BYTES",
    "Destination",
    "StoredResults",
    "asset_uri",
    "extension",
    "file_name",
    "manifest_name",
    "open_for_reading",
    "prepare_destination",
    "resolve_destination",
    "safe_stem",
    "store_results",
]

log = logging.getLogger(__name__)

# Known media types only: a server's Content-Type must not choose an arbitrary suffix.
EXTENSIONS = {
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/jpg": "jpg",
    "image/webp": "webp",
    "image/gif": "gif",
    "image/avif": "avif",
    "video/mp4": "mp4",
    "video/webm": "webm",
    "video/quicktime": "mov",
    "audio/mpeg": "mp3",
}
_OUTPUT_FORMATS = {"png": "png", "jpeg": "jpg", "jpg": "jpg", "webp": "webp", "mp4": "mp4"}
# No type, or "some bytes": only then does the requested output_format name the file.
_UNTYPED = frozenset({None, "application/octet-stream", "binary/octet-stream"})
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
# The tail :func:`safe_stem` gives an id it had to change. An id that already ends so is
# changed too, or "a-b-<digest of 'a/b'>" would take the name of "a/b".
_ALTERED = re.compile(r"-[0-9a-f]{8}$")
_MAX_STEM = 80
# HTTP statuses with which CDNs refuse a signed URL past its lifetime (or a deleted object).
_EXPIRED_STATUSES = frozenset({401, 403, 404, 410})
# Failures spelled out in one error, at most.
_MAX_REPORTED = 5


@dataclass(frozen=True)
class StoredResults:
    """What :func:`store_results` did: one manifest entry per file, and the manifest file."""

    files: list[dict[str, Any]]
    manifest_path: str | None
    destination: str
    superseded: list[dict[str, Any]] | None = None


def safe_stem(reve_task_id: str) -> str:
    """``reve_task_id`` as a file-name stem that cannot leave its folder or collide."""
    cleaned = _SAFE.sub("-", reve_task_id).strip(".-")[:_MAX_STEM]
    if cleaned == reve_task_id and not _ALTERED.search(cleaned):
        return cleaned
    digest = hashlib.sha256(reve_task_id.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{cleaned}-{digest}" if cleaned else f"task-{digest}"


def extension(content_type: str | None, output_format: str | None = None) -> str:
    if content_type in EXTENSIONS:
        return EXTENSIONS[content_type]
    if content_type not in _UNTYPED:
        return "bin"  # the server said what it is, and it is not a media type we know
    if isinstance(output_format, str) and output_format.lower() in _OUTPUT_FORMATS:
        return _OUTPUT_FORMATS[output_format.lower()]
    return "bin"


def file_name(
    reve_task_id: str, index: int, content_type: str | None, output_format: str | None = None
) -> str:
    return f"{safe_stem(reve_task_id)}_{index}.{extension(content_type, output_format)}"


def store_results(
    tasks: Sequence[ReveTask],
    destination: Any,
    *,
    allow_private_addresses: bool,
    max_bytes: int = DEFAULT_MAX_BYTES,
    output_format: str | None = None,
    retry_policy: RetryPolicy | None = None,
    logger: logging.Logger | Any = None,
    hidden: Iterable[str | None] = (),
    name_template: str | None = None,
    owner: Mapping[str, Any] | None = None,
) -> StoredResults:
    """Fetch every result URL of ``tasks`` into ``destination``; write and return the manifest.

    :raises ReveDownloadError: a file could not be fetched (after retrying transient errors).
        Every other file is still fetched and stored first (each file's fate is its own), the
        manifest lists those, and a re-run skips them; the error names every file that failed.
    :raises ReveStorageError: the destination cannot take files now (read-only, full, gone):
        transient, the tasks are paid and a later try stores them.
    :raises ReveValidationError: a task has not succeeded, or the destination is not a valid
        folder or URL.

    ``hidden`` secrets (the API key) are scrubbed from every URL in a log line or error: a redirect
    may put one in a path. Tasks listed twice are stored once. A file that any earlier manifest
    in this destination records (whatever set of tasks it was written for), and that is still
    there, under the name this store gives it, with its size and sha256, is reused without
    downloading: its URL may have expired since (see ``results.manifest``).

    ``name_template`` is a checked ``file_name`` template (see ``results.naming``); ``owner`` the Airflow
    task instance (``dag_id``, ``run_id``, ``task_id``, ``map_index``) whose earlier files here,
    from before a clear, are moved into ``superseded/`` once every new file is stored. Failing
    to move them or to write the owner record is a ``ReveStorageError`` (transient) too.
    """
    from airflow_provider_reve.results.download import check_url  # requests: only when a task runs

    logger = logger or log
    redact = Redactor(hidden)
    tasks = list({task.task_id: task for task in tasks}.values())
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        # Checked before any request: a templated "1000" would otherwise fail mid-download.
        raise ReveValidationError(f"max_bytes must be a positive integer, got {max_bytes!r}")
    where = resolve_destination(destination)
    policy = retry_policy or RetryPolicy()
    for task in tasks:
        if not task.succeeded:
            raise ReveValidationError(
                f"Reve task {task.task_id} is {task.status}: only a SUCCESS task has files to store"
            )
        for index, url in enumerate(task.result_urls):
            # Every URL's scheme, host and userinfo are checked before the first download, so a
            # file:// among them fails the call before any byte of any file is written.
            try:
                check_url(url, None)
            except ReveDownloadError as error:
                raise _explain(error, task, index) from None
    stems = result_stems(tasks, name_template)
    prepare_destination(where)
    remove_stale_spools(where.local, logger)
    earlier = earlier_entries(where, tasks, stems, same_file=same_file, open_file=open_for_reading)
    displaced = _displaced_files(where, owner, logger)
    files: list[dict[str, Any]] = []
    failures: list[ReveDownloadError] = []
    started = time.monotonic()
    for task in tasks:
        if failures and isinstance(failures[-1], ReveStorageError):
            break  # the destination itself fails: every other file would fail there too
        for index, url in enumerate(task.result_urls):
            kept = earlier.get((task.task_id, index))
            if kept is not None:
                logger.info("%s is already stored (an earlier manifest, same size and sha256)", kept["path"])
                files.append({**_described(kept, task, url), **_caller_data(task)})
                continue

            def fetch(task: ReveTask = task, index: int = index, url: str = url) -> dict[str, Any]:
                try:
                    return _store_one(
                        task,
                        index,
                        url,
                        stems[(task.task_id, index)],
                        where,
                        allow_private_addresses,
                        max_bytes,
                        output_format,
                        logger,
                        redact,
                        displaced.make_room,
                    )
                except ReveDownloadError:
                    raise
                except Exception as error:
                    # Disk full, permissions, a vanished folder, an object store's own exception
                    # class (not always an OSError): the storage's fault, not the URL's. Retried by
                    # the policy (it may pass), then reported with the path, never the URL; and the
                    # files stored before it still get their manifest, for the retry to reuse.
                    raise ReveStorageError(
                        f"storing result {index} of Reve task {task.task_id} at {where} failed: "
                        f"{type(error).__name__}: {getattr(error, 'strerror', None) or error}"
                    ) from None

            try:
                entry = call_with_retries(
                    fetch,
                    policy,
                    what=f"Downloading result {index} of Reve task {task.task_id}",
                )
            except ReveDownloadError as error:
                found = _stored_without_manifest(where, task, index, url, error, stems[(task.task_id, index)])
                if found is not None and _stored_for_another(displaced, found):
                    found = None  # another run's file at a stable name: not this result
                if found is not None:
                    logger.warning(
                        "Result %d of Reve task %s: its URL has expired, but %s is already stored (by a "
                        "try stopped before its manifest; files appear at their names only complete)",
                        index,
                        task.task_id,
                        found["path"],
                    )
                    files.append(found)
                    continue
                # Each file's fate is its own: one task's expired URL must not cost another
                # task's files, whose URLs are live now and expire too. Reported after all.
                logger.error("Could not store %s", error)
                failures.append(error)
                if isinstance(error, ReveStorageError):
                    break
                continue
            files.append(entry)
    superseded: list[dict[str, Any]] = []
    problems: list[ReveStorageError] = []
    try:
        # Files moved out of a stored file's way (another run's file at a stable name): listed
        # from their records, so a try killed after a move still lists what it moved.
        superseded = displaced.traces_for(files)
    except Exception as error:  # OSError, or an object store's own class
        problems.append(
            ReveStorageError(
                f"reading what was moved aside into superseded/ at {where} failed: "
                f"{type(error).__name__}: {getattr(error, 'strerror', None) or error}"
            )
        )
    if owner is not None and files and not failures:
        # Only once every new file is in place: a try that stored some leaves the earlier
        # files (and the owner record naming them) for the retry that stores the rest.
        try:
            moved = {trace["moved_to"] for trace in superseded}
            earlier_traces = _supersede(where, owner, files, logger)
            superseded += [t for t in earlier_traces if t["moved_to"] is None or t["moved_to"] not in moved]
        except ReveStorageError as error:
            problems.append(error)
    try:
        write = partial(write_file, where)
        manifest_path = write_manifest(where, tasks, files, superseded, write=write) if files else None
    except Exception as error:  # OSError, or an object store's own class
        problems.append(
            ReveStorageError(
                f"writing the manifest at {where} failed: {type(error).__name__}: "
                f"{getattr(error, 'strerror', None) or error}"
            )
        )
        manifest_path = None
    for problem in problems if failures else problems[1:]:
        logger.error("%s", problem)
    if failures:
        raise _not_all_stored(failures, len(files), where)
    if problems:
        raise problems[0]
    total = sum(entry["bytes"] for entry in files)
    logger.info(
        "Stored %d file(s), %d bytes, from %d Reve task(s) at %s in %.1fs%s",
        len(files),
        total,
        len(tasks),
        where,
        time.monotonic() - started,
        f"; manifest {manifest_path}" if manifest_path else "",
    )
    return StoredResults(
        files=files, manifest_path=manifest_path, destination=str(where), superseded=superseded
    )


def _caller_data(task: ReveTask) -> dict[str, Any]:
    return {"prompt": task.prompt, "request": task.request, "metadata": task.metadata}


def _supersede(
    where: Destination, owner: Mapping[str, Any], files: list[dict[str, Any]], logger: Any
) -> list[dict[str, Any]]:
    from airflow_provider_reve.results.supersede import supersede_earlier

    def write(name: str, body: bytes) -> None:
        write_file(where, where.target(name), body)

    return supersede_earlier(where, owner, files, same_file=same_file, write=write, logger=logger)


def _displaced_files(where: Destination, owner: Mapping[str, Any] | None, logger: Any) -> Any:
    """Moves another file out of a new file's name into ``superseded/`` (see ``_supersede``)."""
    from airflow_provider_reve.results.supersede import DisplacedFiles, read_owner_record

    try:
        own = read_owner_record(where, owner) if owner is not None else []
    except Exception:  # an object store's own class: then its earlier files are moved, not lost
        own = []
    return DisplacedFiles(
        where=where,
        same_file=same_file,
        open_file=open_for_reading,
        write=lambda name, body: write_file(where, where.target(name), body),
        own_earlier={str(entry.get("path")): entry for entry in own},
        logger=logger,
    )


def _stored_for_another(displaced: Any, found: Mapping[str, Any]) -> bool:
    """Whether an owner record or manifest here says the file ``found`` is another result's."""
    _, stored_as = displaced.who_stored(found["path"], found["sha256"])
    return stored_as.get("reve_task_id") not in (None, found["reve_task_id"])


def _store_one(
    task: ReveTask,
    index: int,
    url: str,
    stem: str,
    where: Destination,
    allow_private_addresses: bool,
    max_bytes: int,
    output_format: str | None,
    logger: Any,
    redact: Callable[[str], str],
    make_room: Callable[[Any, str, int], None],
) -> dict[str, Any]:
    from airflow_provider_reve.results.download import download

    fd, spool = open_spool(where.local)
    try:
        with os.fdopen(fd, "wb") as fh:
            writer = HashingWriter(fh)
            try:
                result = download(
                    url,
                    writer,
                    allow_private_addresses=allow_private_addresses,
                    max_bytes=max_bytes,
                    redact=redact,
                )
            except ReveDownloadError as error:
                raise _explain(error, task, index) from None
            fh.flush()
            os.fsync(fh.fileno())
        name = f"{stem}.{extension(result.content_type, output_format)}"
        target = where.target(name)
        sha256 = writer.sha256.hexdigest()
        if same_file(target, writer.size, sha256):
            logger.info("%s is already stored (same size and sha256); not writing it again", target)
        else:
            # Another file at this name (another DAG run's, at a stable file_name) goes into
            # superseded/, recorded, before the name is taken: never overwritten without a trace.
            make_room(target, task.task_id, index)
            if where.local is not None:
                os.replace(spool, target)  # atomic on one filesystem: the name appears complete
            else:
                upload(spool, target)
        return {
            "reve_task_id": task.task_id,
            "index": index,
            "url": url,
            "path": where.shown(target),
            "bytes": writer.size,
            "sha256": sha256,
            "content_type": result.content_type,
            "model": task.model,
            "consumed_credits": task.consumed_credits,
            **_caller_data(task),
        }
    finally:
        with contextlib.suppress(FileNotFoundError):
            spool.unlink()


def prepare_destination(where: Destination) -> None:
    """Create a local destination and prove a file can be written there.

    :raises ReveStorageError: not now. Before paying, the caller refuses that as invalid input
        (``mixins.finish.check_download_to``); after paying it is transient like any storage error.
    """
    if where.local is None:
        return
    try:
        where.local.mkdir(parents=True, exist_ok=True)
        fd, probe = open_spool(where.local)
        os.close(fd)
        probe.unlink()
    except OSError as error:
        raise ReveStorageError(
            f"download destination {where.local} is not writable: {type(error).__name__}: "
            f"{error.strerror or error}"
        ) from None


def _described(entry: dict[str, Any], task: ReveTask, url: str) -> dict[str, Any]:
    """A reused manifest entry with what a fresh one says: only its file is vouched for (size and
    sha256). Asset events, XCom and the gallery read ``content_type`` and ``model`` of every entry,
    so those come from the task and from the file's own name, not from a file anyone may edit."""
    suffix = str(entry["path"]).rpartition(".")[2]
    content_type = entry.get("content_type")
    if content_type is not None and (
        not isinstance(content_type, str) or EXTENSIONS.get(content_type) != suffix
    ):
        content_type = next((known for known, ext in EXTENSIONS.items() if ext == suffix), None)
    return {
        **entry,
        "url": url,
        "content_type": content_type,
        "model": task.model,
        "consumed_credits": task.consumed_credits,
    }


def _stored_without_manifest(
    where: Destination, task: ReveTask, index: int, url: str, error: ReveDownloadError, stem: str
) -> dict[str, Any] | None:
    """The entry for a file already at its final name, when its URL answered "expired".

    A try killed (or a manifest write failed) between storing a file and writing its manifest
    leaves the file with nothing that records it. It is complete -- a name is only ever given to
    a finished spool (rename) or a finished upload -- so once no download can replace it, it is
    the result. Only one file of ours, with an extension we give, counts; and not one that an
    owner record or manifest here lists for another result (another run's, at a stable name).
    """
    if error.http_status not in _EXPIRED_STATUSES:
        return None
    ours = {*EXTENSIONS.values(), "bin"}
    names = [name for name in names_in(where) if named_for(stem, name) and name.rpartition(".")[2] in ours]
    if len(names) != 1:
        return None
    target = where.target(names[0])
    digest, size = hashlib.sha256(), 0
    try:
        with open_for_reading(target) as fh:
            for chunk in iter(lambda: fh.read(HASH_CHUNK), b""):
                digest.update(chunk)
                size += len(chunk)
    except Exception:  # unreadable, not a regular file, gone: nothing to keep
        return None
    if size == 0:
        return None
    suffix = names[0].rpartition(".")[2]
    entry = {
        "reve_task_id": task.task_id,
        "index": index,
        "path": where.shown(target),
        "bytes": size,
        "sha256": digest.hexdigest(),
        "content_type": next((known for known, ext in EXTENSIONS.items() if ext == suffix), None),
    }
    return _described(entry, task, url)


def _not_all_stored(failures: list[ReveDownloadError], stored: int, where: Destination) -> ReveDownloadError:
    """One error for every file that could not be stored, typed so that a retry happens when
    any of them may still succeed (a 503, the destination) and not when none can (expired URLs)."""
    if isinstance(failures[-1], ReveStorageError):  # the files after it were not tried
        return ReveStorageError(
            f"{failures[-1]} ({stored} file(s) stored before; the others were not tried)"
            + "".join(f"; also {error}" for error in failures[:-1][:_MAX_REPORTED])
        )
    transient = [error for error in failures if not is_permanent(error)]
    first = (transient or failures)[0]
    shown = "; ".join(str(error) for error in failures[:_MAX_REPORTED])
    more = f"; and {len(failures) - _MAX_REPORTED} more" if len(failures) > _MAX_REPORTED else ""
    message = (
        f"{len(failures)} result file(s) could not be stored at {where} ({stored} other(s) were, and "
        f"are listed in the manifest): {shown}{more}"
    )
    return type(first)(message, url=first.url, http_status=first.http_status)


def _explain(error: ReveDownloadError, task: ReveTask, index: int) -> ReveDownloadError:
    """Say what a status means for a result URL; keep the type (it decides retries)."""
    where = f"result {index} of Reve task {task.task_id}"
    if error.http_status in _EXPIRED_STATUSES:
        message = (
            f"{where} could not be downloaded: {error.url} answered HTTP {error.http_status}, which "
            "for a result URL means it has expired (CDN links live for a limited time after the task "
            "finished) or was removed. Download promptly: pass download_to= to the generating task. "
            "The generation itself was paid; generating again is a new, paid task."
        )
    else:
        message = f"{where}: {error}"
    return type(error)(message, url=error.url, http_status=error.http_status)

"""Store a finished task's result files at a destination and describe them in a manifest.

Result URLs are short-lived CDN links, so the files are fetched once, promptly, into storage
the user owns: a local folder or anything Airflow's object storage reaches (``s3://``,
``gs://``...). The promises, each one a test:

* **Our names, never the URL's.** ``<reve task id>_<index>.<ext>``: the task id reduced to
  ``[A-Za-z0-9._-]`` (plus a digest of the original when anything was changed, so two ids
  never share a name), the extension from the answer's Content-Type, else the requested
  ``output_format``, else ``bin``. Nothing can land outside the destination.
* **Untrusted URLs.** The fetch is :func:`airflow_provider_reve._download.download`: http(s)
  only, no credentials sent (these are not the API's URLs), redirects checked, size capped.
* **Crash-safe.** Each file is first streamed into a spool file while its size and sha256 are
  computed. Locally the spool lives beside the target under a hidden ``.reve-*.part`` name
  and is renamed into place; on an object store the final key is written in one upload from
  a local spool (an object becomes visible only once complete). A try killed midway leaves
  no file that looks complete, only a hidden spool, which a later store into the same
  folder removes once nothing has written to it for a day.
* **Idempotent.** A file already at its final name with the same size and sha256 is left
  alone, so a retry over stored results does no work beyond the download check.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

from airflow_provider_reve._defaults import DEFAULT_MAX_BYTES
from airflow_provider_reve._redact import Redactor
from airflow_provider_reve._retry import RetryPolicy, call_with_retries, is_permanent
from airflow_provider_reve.exceptions import (
    ReveDownloadError,
    ReveStorageError,
    ReveValidationError,
)
from airflow_provider_reve.models import ReveTask

__all__ = [
    "DEFAULT_MAX_BYTES",
    "Destination",
    "StoredResults",
    "asset_uri",
    "file_name",
    "resolve_destination",
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
_LOCAL_PROTOCOLS = ("", "file", "local")
# HTTP statuses with which CDNs refuse a signed URL past its lifetime (or a deleted object).
_EXPIRED_STATUSES = frozenset({401, 403, 404, 410})
_HASH_CHUNK = 1024 * 1024
# A live spool is written to at least every read timeout; one untouched for a day belongs to a
# killed try (SIGKILL, OOM, a lost host) and would otherwise stay in the folder for ever.
STALE_SPOOL_SECONDS = 24 * 3600
_SPOOL_NAME = re.compile(r"\.reve-[0-9a-f]{16}\.part")
# Earlier manifests read for files to reuse, and failures spelled out in one error.
_MAX_MANIFESTS = 1000
_MANIFEST_NAME = re.compile(r"reve-manifest-[0-9a-f]{16}\.json")
_MAX_REPORTED = 5


@dataclass(frozen=True)
class Destination:
    """Where files go: a local folder (``local``) or an object-store folder (``remote``)."""

    local: Path | None
    remote: Any | None  # airflow.sdk.ObjectStoragePath, imported lazily

    def __str__(self) -> str:
        return str(self.local if self.local is not None else self.remote)

    def target(self, name: str) -> Path | Any:
        if self.local is not None:
            return self.local / name
        assert self.remote is not None
        return self.remote / name

    def shown(self, target: Path | Any) -> str:
        """The manifest's ``path``: absolute filesystem path, or the object-store URI."""
        return str(target)


@dataclass(frozen=True)
class StoredResults:
    """What :func:`store_results` did: one manifest entry per file, and the manifest file."""

    files: list[dict[str, Any]]
    manifest_path: str | None
    destination: str


def resolve_destination(value: Any) -> Destination:
    """A local path, a ``file://`` URL, or any ``ObjectStoragePath`` / object-store URL string."""
    where = _resolve(value)
    if where.local is not None and where.local.exists() and not where.local.is_dir():
        raise ReveValidationError(f"download destination {where.local} exists and is not a folder")
    return where


def _resolve(value: Any) -> Destination:
    if isinstance(value, os.PathLike) and getattr(value, "protocol", None) is None:
        # pathlib.Path, or any other os.PathLike (pytest's tmpdir...): a local folder.
        return Destination(local=_absolute(Path(os.fsdecode(os.fspath(value)))), remote=None)
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise ReveValidationError("download destination is empty")
        if "://" not in text:
            return Destination(local=_absolute(Path(text)), remote=None)
        scheme, _, rest = text.partition("://")
        if scheme.lower() in _LOCAL_PROTOCOLS:
            # Read here, not by ObjectStoragePath, which would resolve "file://data/reve" against
            # this process's working directory (and FILE:// is the same scheme as file://).
            return Destination(local=_absolute(_local_url_path(text, rest)), remote=None)
        from airflow.sdk import ObjectStoragePath

        try:
            value = ObjectStoragePath(text)
        except (ValueError, ImportError) as error:
            raise ReveValidationError(f"download destination: {error}") from None
    protocol = getattr(value, "protocol", None)
    if protocol is None or not hasattr(value, "open"):
        raise ReveValidationError(
            f"download destination must be a path, a URL string or an ObjectStoragePath, "
            f"got {type(value).__name__}"
        )
    if protocol in _LOCAL_PROTOCOLS:
        # A local folder gets the temporary-name-and-rename treatment, which needs real paths.
        return Destination(local=Path(value.path).absolute(), remote=None)
    try:
        value.fs  # noqa: B018 -- resolves the scheme's filesystem: fails now, not after paying
    except (ValueError, ImportError) as error:
        raise ReveValidationError(
            f"download destination {protocol}://... has no filesystem here ({error}); install the "
            "Airflow provider that brings it (e.g. apache-airflow-providers-amazon for s3://)"
        ) from None
    return Destination(local=None, remote=value)


def _local_url_path(url: str, rest: str) -> Path:
    """The path of a ``file://`` / ``local://`` URL: ``file:///abs`` or ``file://localhost/abs``."""
    host, slash, path = rest.partition("/")
    if host.lower() in ("", "localhost"):
        return Path(slash + path)
    raise ReveValidationError(
        f"download destination must be an absolute path, got {url!r}: a local URL takes three "
        f"slashes ({url.partition(':')[0].lower()}:///{rest}), and {host!r} would be read as a "
        "folder of the working directory"
    )


def _absolute(path: Path) -> Path:
    path = path.expanduser()
    if not path.is_absolute():
        # The try that defers and the one that resumes may run in different working directories.
        raise ReveValidationError(f"download destination must be an absolute path, got {str(path)!r}")
    return path


def asset_uri(path: str) -> str:
    """The Asset URI for a stored file: ``file:///abs/path`` locally, the object URI otherwise.

    The connection id an ``ObjectStoragePath`` carries (``s3://aws_default@bucket/key``) is
    dropped: it says how to reach the object, not which object it is, and a DAG scheduled on
    ``Asset("s3://bucket/key")`` must see the event.
    """
    if "://" in path:
        scheme, _, rest = path.partition("://")
        netloc, slash, key = rest.partition("/")
        # "#" and "?" in a key are part of the object's name: Airflow would drop a fragment
        # and sort a query, merging different objects into one asset.
        return f"{scheme}://{netloc.rpartition('@')[2]}{slash}{quote(key, safe='/')}"
    return Path(path).absolute().as_uri()


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


class _HashingWriter:
    """Counts and hashes the bytes on their way into the spool."""

    def __init__(self, fh: IO[bytes]) -> None:
        self._fh = fh
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self._fh.write(data)


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
    there with its size and sha256, is reused without downloading: its URL may have expired since.
    """
    from airflow_provider_reve._download import _check_url  # requests: only when a task runs

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
                _check_url(url, None)
            except ReveDownloadError as error:
                raise _explain(error, task, index) from None
    prepare_destination(where)
    _remove_stale_spools(where.local, logger)
    earlier = _earlier_entries(where, tasks)
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
                files.append({**kept, "url": url})
                continue

            def fetch(task: ReveTask = task, index: int = index, url: str = url) -> dict[str, Any]:
                try:
                    return _store_one(
                        task,
                        index,
                        url,
                        where,
                        allow_private_addresses,
                        max_bytes,
                        output_format,
                        logger,
                        redact,
                    )
                except OSError as error:
                    # Disk full, permissions, a vanished folder: the storage's fault, not the URL's.
                    # Retried by the policy (it may pass), then reported with the path, never the URL.
                    raise ReveStorageError(
                        f"storing result {index} of Reve task {task.task_id} at {where} failed: "
                        f"{type(error).__name__}: {error.strerror or error}"
                    ) from None

            try:
                entry = call_with_retries(
                    fetch,
                    policy,
                    what=f"Downloading result {index} of Reve task {task.task_id}",
                )
            except ReveDownloadError as error:
                # Each file's fate is its own: one task's expired URL must not cost another
                # task's files, whose URLs are live now and expire too. Reported after all.
                logger.error("Could not store %s", error)
                failures.append(error)
                if isinstance(error, ReveStorageError):
                    break
                continue
            files.append(entry)
    try:
        manifest_path = _write_manifest(where, tasks, files) if files else None
    except OSError as error:
        problem = ReveStorageError(
            f"writing the manifest at {where} failed: {type(error).__name__}: {error.strerror or error}"
        )
        if not failures:
            raise problem from None
        logger.error("%s", problem)
        manifest_path = None
    if failures:
        raise _not_all_stored(failures, len(files), where)
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
    return StoredResults(files=files, manifest_path=manifest_path, destination=str(where))


def _store_one(
    task: ReveTask,
    index: int,
    url: str,
    where: Destination,
    allow_private_addresses: bool,
    max_bytes: int,
    output_format: str | None,
    logger: Any,
    redact: Callable[[str], str],
) -> dict[str, Any]:
    from airflow_provider_reve._download import download

    fd, spool = _open_spool(where.local)
    try:
        with os.fdopen(fd, "wb") as fh:
            writer = _HashingWriter(fh)
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
        name = file_name(task.task_id, index, result.content_type, output_format)
        target = where.target(name)
        sha256 = writer.sha256.hexdigest()
        if _same_file(target, writer.size, sha256):
            logger.info("%s is already stored (same size and sha256); not writing it again", target)
        elif where.local is not None:
            os.replace(spool, target)  # atomic on one filesystem: the name appears complete
        else:
            _upload(spool, target)
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
        }
    finally:
        with contextlib.suppress(FileNotFoundError):
            spool.unlink()


def prepare_destination(where: Destination) -> None:
    """Create a local destination and prove a file can be written there.

    :raises ReveStorageError: not now. Before paying, the caller refuses that as invalid input
        (``_finish.check_download_to``); after paying it is transient like any storage error.
    """
    if where.local is None:
        return
    try:
        where.local.mkdir(parents=True, exist_ok=True)
        fd, probe = _open_spool(where.local)
        os.close(fd)
        probe.unlink()
    except OSError as error:
        raise ReveStorageError(
            f"download destination {where.local} is not writable: {type(error).__name__}: "
            f"{error.strerror or error}"
        ) from None


def _remove_stale_spools(folder: Path | None, logger: Any) -> None:
    """Delete our own hidden spools in ``folder`` that nothing has written to for a day."""
    if folder is None:
        return
    cutoff = time.time() - STALE_SPOOL_SECONDS
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        if not _SPOOL_NAME.fullmatch(entry.name):
            continue
        try:
            if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < cutoff:
                os.unlink(entry.path)
                logger.info("Removed %s, a download spool left by a killed try", entry.path)
        except OSError:  # gone already (a peer swept it), or not ours to delete: harmless
            continue


def _earlier_entries(where: Destination, tasks: Sequence[ReveTask]) -> dict[tuple[str, int], dict[str, Any]]:
    """Entries of *any* manifest in this destination for files of ``tasks`` still intact there.

    Per file, not per set of tasks: a file stored with tasks A and B is reused when a later call
    stores A and C, after A's URL expired. This set's own manifest is read first; the others only
    while the folder holds a file of ours that none read so far vouches for (so a first store
    reads no manifest, however many an object-store folder holds).
    """
    wanted = {(task.task_id, index) for task in tasks for index in range(len(task.result_urls))}
    own = manifest_name(task.task_id for task in tasks)
    kept: dict[tuple[str, int], dict[str, Any]] = {}
    _reuse_from(where, own, wanted, kept)
    if len(kept) == len(wanted):
        return kept
    names = _names_in(where)
    manifests = sorted(name for name in names if _MANIFEST_NAME.fullmatch(name) and name != own)
    for manifest in manifests[:_MAX_MANIFESTS]:
        missing = wanted - kept.keys()
        if not any(_named_for(key, name) for key in missing for name in names):
            break
        _reuse_from(where, manifest, missing, kept)
    return kept


def _reuse_from(
    where: Destination,
    manifest: str,
    wanted: set[tuple[str, int]],
    kept: dict[tuple[str, int], dict[str, Any]],
) -> None:
    for entry in _manifest_entries(where.target(manifest)):
        try:
            key = (entry["reve_task_id"], entry["index"])
            name = str(entry["path"]).rsplit("/", 1)[-1]
        except (KeyError, TypeError):
            continue
        # Only a file with the name we give it, inside this destination, counts: a manifest is a
        # file anyone with access to the folder may have edited.
        if key not in wanted or key in kept or not _named_for(key, name):
            continue
        target = where.target(name)
        if where.shown(target) == entry["path"] and _same_file(
            target, entry.get("bytes"), entry.get("sha256")
        ):
            kept[key] = entry


def _named_for(key: tuple[str, int], name: str) -> bool:
    return name.startswith(f"{safe_stem(key[0])}_{key[1]}.")


def _names_in(where: Destination) -> list[str]:
    folder = where.local if where.local is not None else where.remote
    try:
        return [path.name for path in folder.iterdir()]  # type: ignore[union-attr]
    except Exception:  # cannot list (an object store without it): no other manifest is read
        return []


def _manifest_entries(manifest: Any) -> list[Any]:
    try:
        with manifest.open("rb") as fh:
            entries = json.loads(fh.read(16 * 1024 * 1024)).get("files", [])
    except Exception:  # missing, unreadable, not ours: nothing to reuse from it
        return []
    return [entry for entry in entries if isinstance(entry, dict)] if isinstance(entries, list) else []


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


def _open_spool(folder: Path | None) -> tuple[int, Path]:
    """A new, empty spool file: hidden ``.reve-*.part`` in a local destination, else private temp.

    In the destination the spool becomes the stored file by rename, so it is created with the
    permissions any new file there gets (``0o666`` less the umask): ``mkstemp``'s ``0o600``
    would leave the results unreadable to the web server or user they are stored for.
    """
    if folder is None:
        fd, name = tempfile.mkstemp(prefix=".reve-", suffix=".part")
        return fd, Path(name)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    while True:
        path = folder / f".reve-{secrets.token_hex(8)}.part"
        try:
            return os.open(path, flags, 0o666), path
        except FileExistsError:  # pragma: no cover -- 64 random bits
            continue


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


def _same_file(target: Path | Any, size: int, sha256: str) -> bool:
    try:
        if not target.exists() or target.stat().st_size != size:
            return False
        digest = hashlib.sha256()
        with target.open("rb") as fh:
            for chunk in iter(lambda: fh.read(_HASH_CHUNK), b""):
                digest.update(chunk)
    except (OSError, ValueError):
        return False
    return digest.hexdigest() == sha256


def _upload(spool: Path, target: Any) -> None:
    # One upload of the final key through Airflow's filesystem registry (``open``, not
    # ``write_bytes``), so connections and credentials configured in Airflow apply.
    try:
        with spool.open("rb") as src, target.open("wb") as dst:
            shutil.copyfileobj(src, dst, _HASH_CHUNK)
    except BaseException:
        with contextlib.suppress(Exception):
            target.unlink()
        raise


def manifest_name(task_ids: Iterable[str]) -> str:
    # JSON, not a join: ids are API data, and ["a\nb"] must not name the manifest of ["a", "b"].
    digest = hashlib.sha256(json.dumps(list(task_ids)).encode()).hexdigest()[:16]
    return f"reve-manifest-{digest}.json"


def _write_manifest(where: Destination, tasks: Sequence[ReveTask], files: list[dict[str, Any]]) -> str:
    body = json.dumps({"files": files}, indent=2, sort_keys=True).encode()
    target = where.target(manifest_name(task.task_id for task in tasks))
    if where.local is not None:
        fd, spool = _open_spool(where.local)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(body)
            os.replace(spool, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                spool.unlink()
    else:
        with target.open("wb") as fh:
            fh.write(body)
    return where.shown(target)


def tasks_from_results(results: Any, *, parse: Callable[[Any], Any] | None = None) -> list[ReveTask]:
    """``results`` as ``ReveTask`` objects: one task dict, a list of them, or nested lists
    (a mapped task's output). A ``files`` manifest added by ``download_to`` is ignored."""
    if parse is not None:
        results = parse(results)
    if isinstance(results, dict):
        results = [results]
    if isinstance(results, ReveTask):
        results = [results]
    if not isinstance(results, (list, tuple)) and not _is_lazy_sequence(results):
        raise ReveValidationError(
            "results must be a Reve task dict (what ReveGenerateOperator returns) or a list of them, "
            f"got {type(results).__name__}"
        )
    tasks: list[ReveTask] = []
    for item in results:
        if item is None:
            continue  # a mapped generation that was skipped (content policy) has no result
        if isinstance(item, (list, tuple)) or _is_lazy_sequence(item):
            tasks.extend(tasks_from_results(list(item)))
            continue
        if isinstance(item, ReveTask):
            tasks.append(item)
            continue
        if isinstance(item, dict):
            item = {key: value for key, value in item.items() if key != "files"}
        try:
            tasks.append(ReveTask.from_dict(item))
        except (ValueError, TypeError) as error:
            raise ReveValidationError(f"not a Reve task dict: {error}") from None
    return tasks


def _is_lazy_sequence(value: Any) -> bool:
    # A mapped task's pulled XCom (LazyXComSequence) is iterable but neither list nor tuple.
    return (
        hasattr(value, "__iter__") and hasattr(value, "__len__") and not isinstance(value, (str, bytes, dict))
    )

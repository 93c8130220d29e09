"""Serves stored result files -- only files a manifest names, only after they prove to be them.

The route never takes a path. It takes a task instance and a (Reve task id, index) pair, finds
that entry in the task instance's ``return_value`` manifest, and reads the entry's ``path``.
A manifest is written by a task, i.e. by DAG code, which the API server should not trust with
its own files (its configuration, its secrets). So before a byte is sent:

* the file name must be one the provider gives a stored file (``<safe reve task id>_<index>``,
  or a name a ``file_name`` template may render: ``[A-Za-z0-9._-]``, no ``..``), with a media
  extension and Content-Type;
* a local file must be a regular file, not a symlink, and the size must match;
* the content must hash to the manifest's ``sha256``. Nobody can write a manifest that points at
  a file they cannot read and still match its hash, so a forged manifest gets nothing.

Local paths are read directly; anything else (``s3://...``) through Airflow's
``ObjectStoragePath`` and its connections. Verified local files are remembered by
(path, device, inode, size, mtime) so a gallery page does not hash every image each time.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import IO, Any

from airflow_provider_reve._naming import is_result_stem
from airflow_provider_reve._storage import EXTENSIONS, safe_stem

#: What may be served, by extension: images and videos only, never HTML, SVG or scripts.
MEDIA_TYPES = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "webp": "image/webp",
    "gif": "image/gif",
    "avif": "image/avif",
    "mp4": "video/mp4",
    "webm": "video/webm",
    "mov": "video/quicktime",
}
MAX_BYTES = 1024**3  # the download default: nothing larger was ever stored by the provider
_IN_MEMORY = 32 * 1024 * 1024
_CHUNK = 1024 * 1024
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_LOCAL_SCHEMES = ("file://", "local://")


class MediaRefused(Exception):
    """The entry is missing, malformed, or the file is not the one the manifest describes."""


@dataclass(frozen=True)
class Entry:
    path: str
    size: int
    sha256: str
    content_type: str
    file_name: str


def find_entry(value: Any, reve_task_id: str, index: int) -> dict[str, Any] | None:
    """The manifest entry for (``reve_task_id``, ``index``) in a ``return_value``, if any.

    ``value`` is a generate operator's or sensor's dict (its ``files``) or a download
    operator's manifest list.
    """
    entries = value.get("files") if isinstance(value, dict) else value
    if not isinstance(entries, list):
        return None
    for entry in entries:
        if (
            isinstance(entry, dict)
            and entry.get("reve_task_id") == reve_task_id
            and entry.get("index") == index
            and not isinstance(entry.get("index"), bool)
        ):
            return entry
    return None


def check_entry(entry: dict[str, Any]) -> Entry:
    """The entry's fields, or :class:`MediaRefused` when they are not a stored file's."""
    path, size, digest = entry.get("path"), entry.get("bytes"), entry.get("sha256")
    reve_task_id, index = entry.get("reve_task_id"), entry.get("index")
    if not isinstance(path, str) or not path or "\x00" in path:
        raise MediaRefused("no path")
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_BYTES:
        raise MediaRefused("no size")
    if not isinstance(digest, str) or not _SHA256.match(digest):
        raise MediaRefused("no sha256")
    if not isinstance(reve_task_id, str) or not isinstance(index, int) or isinstance(index, bool):
        raise MediaRefused("no id")
    name = PurePosixPath(path.split("://", 1)[-1]).name
    stem, _, suffix = name.rpartition(".")
    named = stem == f"{safe_stem(reve_task_id)}_{index}" or is_result_stem(stem)
    if not named or suffix not in MEDIA_TYPES:
        raise MediaRefused("not a stored result file name")
    declared = entry.get("content_type")
    # The suffix was chosen from the Content-Type when the file was stored; serve the type the
    # name says, so a manifest cannot make an image be read as anything else.
    if isinstance(declared, str) and declared in EXTENSIONS and EXTENSIONS[declared] != suffix:
        raise MediaRefused("content type does not match the file name")
    return Entry(path=path, size=size, sha256=digest, content_type=MEDIA_TYPES[suffix], file_name=name)


class _VerifiedCache:
    """Local files already hashed, by identity; bounded, thread-safe."""

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._seen: OrderedDict[tuple[Any, ...], None] = OrderedDict()
        self._lock = threading.Lock()

    def __contains__(self, key: tuple[Any, ...]) -> bool:
        with self._lock:
            if key in self._seen:
                self._seen.move_to_end(key)
                return True
            return False

    def add(self, key: tuple[Any, ...]) -> None:
        with self._lock:
            self._seen[key] = None
            while len(self._seen) > self._size:
                self._seen.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._seen.clear()


VERIFIED = _VerifiedCache()


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith(_LOCAL_SCHEMES)


def _local_path(path: str) -> str:
    for scheme in _LOCAL_SCHEMES:
        if path.startswith(scheme):
            return path[len(scheme) :]
    return path


def _hash(handle: IO[bytes], limit: int) -> tuple[str, int]:
    digest, total = hashlib.sha256(), 0
    while chunk := handle.read(_CHUNK):
        total += len(chunk)
        if total > limit:
            break
        digest.update(chunk)
    return digest.hexdigest(), total


@dataclass
class Opened:
    """A verified file, ready to send: ``body`` is bytes, or chunks from an open handle."""

    entry: Entry
    body: bytes | Iterator[bytes]


def _chunks(handle: IO[bytes]) -> Iterator[bytes]:
    try:
        while chunk := handle.read(_CHUNK):
            yield chunk
    finally:
        handle.close()


def open_verified(entry: Entry) -> Opened:
    """Open the file and prove it is the manifest's; :class:`MediaRefused` otherwise."""
    if _is_local(entry.path):
        return _open_local(entry)
    return _open_remote(entry)


def _open_local(entry: Entry) -> Opened:
    path = _local_path(entry.path)
    if not os.path.isabs(path):
        raise MediaRefused("not an absolute path")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        raise MediaRefused("not readable") from None
    try:
        # Checked on the raw descriptor, closed on every way out: a directory opens fine but
        # fails fdopen(), and a leaked descriptor per request would starve the api-server.
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size != entry.size:
            raise MediaRefused("not the stored file")
        handle = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    try:
        key = (path, info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, entry.sha256)
        if entry.size <= _IN_MEMORY:
            data = handle.read(entry.size + 1)
            handle.close()
            if len(data) != entry.size or (
                key not in VERIFIED and hashlib.sha256(data).hexdigest() != entry.sha256
            ):
                raise MediaRefused("not the stored file")
            VERIFIED.add(key)
            return Opened(entry, data)
        if key not in VERIFIED:
            digest, total = _hash(handle, entry.size)
            if total != entry.size or digest != entry.sha256:
                raise MediaRefused("not the stored file")
            VERIFIED.add(key)
        handle.seek(0)
        return Opened(entry, _chunks(handle))
    except BaseException:
        handle.close()
        raise


def _open_remote(entry: Entry) -> Opened:
    # One read into a local spool while hashing: what is sent is exactly what was checked.
    from airflow.sdk import ObjectStoragePath

    spool = tempfile.SpooledTemporaryFile(max_size=_IN_MEMORY)  # noqa: SIM115 -- handed to the response
    try:
        digest, total = hashlib.sha256(), 0
        try:
            with ObjectStoragePath(entry.path).open("rb") as source:
                while chunk := source.read(_CHUNK):
                    total += len(chunk)
                    if total > entry.size:
                        break
                    digest.update(chunk)
                    spool.write(chunk)
        except Exception:
            raise MediaRefused("not readable") from None
        if total != entry.size or digest.hexdigest() != entry.sha256:
            raise MediaRefused("not the stored file")
        spool.seek(0)
        return Opened(entry, _chunks(spool))  # type: ignore[arg-type]
    except BaseException:
        spool.close()
        raise

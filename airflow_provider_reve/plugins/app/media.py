"""Serves stored result files -- only files a manifest names, only after they prove to be them.

The route never takes a path. It takes a task instance and a (Reve task id, index) pair, finds
that entry in the task instance's ``return_value`` manifest, and reads the entry's ``path``.
A manifest is written by a task, i.e. by DAG code, which the API server should not trust with
its own files (its configuration, its secrets). So before a byte is sent:

* the file name must be the one the provider gives a stored file
  (``<safe reve task id>_<index>.<media extension>``), with a media Content-Type;
* a local file must be a regular file, not a symlink, and the size must match;
* the content must hash to the manifest's ``sha256``. Nobody can write a manifest that points at
  a file they cannot read and still match its hash, so a forged manifest gets nothing.

The ``path`` is read once by :func:`locations.locate` (every local spelling gives one local
path; only listed object-store schemes are remote). Local paths are opened non-blocking, with
``O_NOFOLLOW``; anything else through Airflow's ``ObjectStoragePath`` and its connections, into a
local copy that is hashed as it is written: what is sent is exactly what was checked. Every read
runs in :mod:`reading`'s pool under a deadline (the caller waits with a time limit).

Verified local files are remembered by what a writer cannot put back: path, device, inode, size,
mtime *and ctime* (``utime`` restores an mtime, nothing restores a ctime). A file is remembered
only once its ctime is :data:`SETTLE_SECONDS` old, so a rewrite within the same clock tick as the
check cannot keep the old ctime (git's "racy clean" rule); until then it is hashed every time.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import IO, Any

from airflow_provider_reve._storage import EXTENSIONS, safe_stem
from airflow_provider_reve.plugins.app.locations import Location, LocationRefused, locate
from airflow_provider_reve.plugins.app.reading import Deadline, ReadTimedOut

__all__ = [
    "MAX_BYTES",
    "MEDIA_TYPES",
    "SETTLE_SECONDS",
    "VERIFIED",
    "Entry",
    "MediaRefused",
    "Opened",
    "check_entry",
    "find_entry",
    "open_verified",
]

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
#: Seconds a file's ctime must be in the past before a successful check is remembered.
SETTLE_SECONDS = 2.0


class MediaRefused(Exception):
    """The entry is missing, malformed, or the file is not the one the manifest describes."""


@dataclass(frozen=True)
class Entry:
    location: Location
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
    try:
        location = locate(path)
    except LocationRefused as refused:
        raise MediaRefused(str(refused)) from None
    name = location.name
    stem, _, suffix = name.rpartition(".")
    if stem != f"{safe_stem(reve_task_id)}_{index}" or suffix not in MEDIA_TYPES:
        raise MediaRefused("not a stored result file name")
    declared = entry.get("content_type")
    # The suffix was chosen from the Content-Type when the file was stored; serve the type the
    # name says, so a manifest cannot make an image be read as anything else.
    if isinstance(declared, str) and declared in EXTENSIONS and EXTENSIONS[declared] != suffix:
        raise MediaRefused("content type does not match the file name")
    return Entry(
        location=location, size=size, sha256=digest, content_type=MEDIA_TYPES[suffix], file_name=name
    )


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


class Opened:
    """A verified file, ready to send: its bytes, or an open descriptor read with ``pread``."""

    def __init__(self, entry: Entry, *, data: bytes | None = None, handle: IO[bytes] | None = None) -> None:
        self.entry = entry
        self.data = data
        self._handle = handle

    def read_at(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes at ``offset`` (blocking: run it in :mod:`reading`'s pool)."""
        if self.data is not None:
            return self.data[offset : offset + length]
        assert self._handle is not None
        return os.pread(self._handle.fileno(), length, offset)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def open_verified(entry: Entry, deadline: Deadline) -> Opened:
    """Open the file and prove it is the manifest's; :class:`MediaRefused` otherwise.

    Blocking: call it through :func:`reading.within`. ``deadline`` is checked between chunks.
    """
    if entry.location.local is not None:
        return _open_local(entry, entry.location.local, deadline)
    return _open_remote(entry, str(entry.location.remote), deadline)


def _open_local(entry: Entry, path: str, deadline: Deadline) -> Opened:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)  # non-blocking: a FIFO opens at once, and is refused below
    except OSError:
        raise MediaRefused("not readable") from None
    try:
        # Checked on the raw descriptor, closed on every way out: a directory opens fine but
        # fails fdopen(), and a leaked descriptor per request would starve the api-server.
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size != entry.size:
            raise MediaRefused("not a regular file of the stored size")
        handle = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    try:
        key = (path, info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns, entry.sha256)
        known = key in VERIFIED
        if entry.size <= _IN_MEMORY:
            data = os.pread(fd, entry.size + 1, 0)
            if len(data) != entry.size or (not known and hashlib.sha256(data).hexdigest() != entry.sha256):
                raise MediaRefused("not the stored file")
            handle.close()
            opened = Opened(entry, data=data)
        else:
            if not known and _pread_hash(fd, entry.size, deadline) != entry.sha256:
                raise MediaRefused("not the stored file")
            opened = Opened(entry, handle=handle)
        if not known and time.time_ns() - info.st_ctime_ns > SETTLE_SECONDS * 1e9:
            VERIFIED.add(key)
        return opened
    except BaseException:
        handle.close()
        raise


def _pread_hash(fd: int, size: int, deadline: Deadline) -> str:
    digest, offset = hashlib.sha256(), 0
    while offset < size:
        deadline.check()
        chunk = os.pread(fd, min(_CHUNK, size - offset), offset)
        if not chunk:
            raise MediaRefused("shorter than the stored file")
        digest.update(chunk)
        offset += len(chunk)
    if os.pread(fd, 1, offset):
        raise MediaRefused("longer than the stored file")
    return digest.hexdigest()


def _open_remote(entry: Entry, path: str, deadline: Deadline) -> Opened:
    # One read into a local copy while hashing: what is sent is exactly what was checked.
    from airflow.sdk import ObjectStoragePath

    in_memory = entry.size <= _IN_MEMORY
    buffer = bytearray()
    spool = None if in_memory else tempfile.TemporaryFile()  # noqa: SIM115 -- handed to the response
    try:
        digest, total = hashlib.sha256(), 0
        try:
            with ObjectStoragePath(path).open("rb") as source:
                while chunk := source.read(_CHUNK):
                    deadline.check()
                    total += len(chunk)
                    if total > entry.size:
                        break
                    digest.update(chunk)
                    if spool is None:
                        buffer += chunk
                    else:
                        spool.write(chunk)
        except ReadTimedOut:
            raise
        except Exception:
            raise MediaRefused("not readable") from None
        if total != entry.size or digest.hexdigest() != entry.sha256:
            raise MediaRefused("not the stored file")
        if spool is None:
            return Opened(entry, data=bytes(buffer))
        spool.flush()
        return Opened(entry, handle=spool)
    except BaseException:
        if spool is not None:
            spool.close()
        raise

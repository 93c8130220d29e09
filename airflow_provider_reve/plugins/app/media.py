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

The ``path`` is read once by :func:`locations.locate` (every local spelling gives one local
path; only listed object-store schemes are remote). Local paths are opened non-blocking, with
``O_NOFOLLOW``; anything else through Airflow's ``ObjectStoragePath`` and its connections, into a
local copy that is hashed as it is written. Every read runs in :mod:`reading`'s pool under a
deadline (the caller waits with a time limit).

What is sent is exactly what was checked. A file of one chunk at most is read once into memory,
hashed and sent from that copy. A larger one is sent from the file (one chunk in memory at a
time, however slowly the client reads), which a writer of the store can rewrite in
place after the check: so the check also records the sha256 of each :data:`CHUNK`-aligned chunk
(:class:`ChunkDigests`), and every chunk read for a response is hashed again and compared before
a byte of it is sent. A chunk that changed ends the response there (the client sees a cut-short
transfer), never sends what the manifest does not describe.

Verified local files are remembered (with their chunk digests) by what a writer cannot put back:
path, device, inode, size, mtime *and ctime* (``utime`` restores an mtime, nothing restores a
ctime). A file is remembered only once its ctime is :data:`SETTLE_SECONDS` old, so a rewrite
within the same clock tick as the check cannot keep the old ctime (git's "racy clean" rule); until
then it is hashed every time.
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

from airflow_provider_reve.plugins.app.locations import Location, LocationRefused, locate
from airflow_provider_reve.plugins.app.reading import Deadline, ReadTimedOut
from airflow_provider_reve.results.naming import is_result_stem
from airflow_provider_reve.results.storage import EXTENSIONS, safe_stem

__all__ = [
    "CHUNK",
    "MAX_BYTES",
    "MEDIA_TYPES",
    "SETTLE_SECONDS",
    "VERIFIED",
    "ChunkDigests",
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
#: The unit a large file is verified and sent in: each aligned chunk has its own recorded sha256.
CHUNK = 1024 * 1024
#: Files up to this size are sent from one in-memory copy. A response held by a client that reads
#: slowly (or never) keeps its body in memory until it is sent, so it is one chunk, never a whole
#: file: a few dozen stalled viewers of a 30 MiB video must not hold a gigabyte of the api-server.
_IN_MEMORY = CHUNK
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
    named = stem == f"{safe_stem(reve_task_id)}_{index}" or is_result_stem(stem)
    if not named or suffix not in MEDIA_TYPES:
        raise MediaRefused("not a stored result file name")
    declared = entry.get("content_type")
    # The suffix was chosen from the Content-Type when the file was stored; serve the type the
    # name says, so a manifest cannot make an image be read as anything else.
    if isinstance(declared, str) and declared in EXTENSIONS and EXTENSIONS[declared] != suffix:
        raise MediaRefused("content type does not match the file name")
    return Entry(
        location=location, size=size, sha256=digest, content_type=MEDIA_TYPES[suffix], file_name=name
    )


class ChunkDigests:
    """The sha256 of a whole file and of each of its :data:`CHUNK`-aligned chunks, fed in any pieces."""

    def __init__(self) -> None:
        self._whole = hashlib.sha256()
        self._chunk = hashlib.sha256()
        self._filled = 0
        self._done: list[bytes] = []

    def update(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        self._whole.update(view)
        while view:
            piece = view[: CHUNK - self._filled]
            self._chunk.update(piece)
            self._filled += len(piece)
            view = view[len(piece) :]
            if self._filled == CHUNK:
                self._done.append(self._chunk.digest())
                self._chunk, self._filled = hashlib.sha256(), 0

    def hexdigest(self) -> str:
        return self._whole.hexdigest()

    def chunks(self) -> tuple[bytes, ...]:
        """The digest of each chunk, the last (shorter) one included."""
        return (*self._done, self._chunk.digest()) if self._filled else tuple(self._done)


class _VerifiedCache:
    """Local files already hashed, by identity, with their chunk digests; bounded, thread-safe.

    Bounded by entries and by the bytes of digests held (32 bytes per MiB of file), so many
    large files cannot grow it past a few megabytes.
    """

    def __init__(self, size: int = 4096, digest_bytes: int = 4 * 1024 * 1024) -> None:
        self._size = size
        self._digest_bytes = digest_bytes
        self._held = 0
        self._seen: OrderedDict[tuple[Any, ...], tuple[bytes, ...]] = OrderedDict()
        self._lock = threading.Lock()

    def __contains__(self, key: tuple[Any, ...]) -> bool:
        return self.get(key) is not None

    def get(self, key: tuple[Any, ...]) -> tuple[bytes, ...] | None:
        """The chunk digests of a remembered file (empty for a file sent from memory), or ``None``."""
        with self._lock:
            if key in self._seen:
                self._seen.move_to_end(key)
                return self._seen[key]
            return None

    def add(self, key: tuple[Any, ...], chunks: tuple[bytes, ...] = ()) -> None:
        with self._lock:
            if key in self._seen:
                self._held -= 32 * len(self._seen.pop(key))
            self._seen[key] = chunks
            self._held += 32 * len(chunks)
            while len(self._seen) > self._size or (self._held > self._digest_bytes and len(self._seen) > 1):
                _, dropped = self._seen.popitem(last=False)
                self._held -= 32 * len(dropped)

    def clear(self) -> None:
        with self._lock:
            self._seen.clear()
            self._held = 0


VERIFIED = _VerifiedCache()


class Opened:
    """A verified file, ready to send: its bytes, or an open descriptor and its chunk digests."""

    def __init__(
        self,
        entry: Entry,
        *,
        data: bytes | None = None,
        handle: IO[bytes] | None = None,
        chunks: tuple[bytes, ...] = (),
    ) -> None:
        self.entry = entry
        self.data = data
        self._handle = handle
        self._chunks = chunks

    def read_at(self, offset: int, length: int) -> bytes:
        """Up to ``length`` verified bytes at ``offset``, never past the end of ``offset``'s chunk.

        Blocking: run it in :mod:`reading`'s pool. From a file, the whole aligned chunk is read
        and hashed again; :class:`MediaRefused` when it is no longer the chunk that was verified.
        """
        if self.data is not None:
            return self.data[offset : offset + length]
        assert self._handle is not None
        number = offset // CHUNK
        if number >= len(self._chunks):
            return b""
        start = number * CHUNK
        chunk = os.pread(self._handle.fileno(), min(CHUNK, self.entry.size - start), start)
        if hashlib.sha256(chunk).digest() != self._chunks[number]:
            raise MediaRefused(f"changed after it was verified (chunk {number})")
        return chunk[offset - start : offset - start + length]

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
        known = VERIFIED.get(key)
        chunks: tuple[bytes, ...] = ()
        if entry.size <= _IN_MEMORY:
            data = os.pread(fd, entry.size + 1, 0)
            hashed = known is not None or hashlib.sha256(data).hexdigest() == entry.sha256
            if len(data) != entry.size or not hashed:
                raise MediaRefused("not the stored file")
            handle.close()
            opened = Opened(entry, data=data)
        else:
            if known is None:
                digests = _pread_hash(fd, entry.size, deadline)
                if digests.hexdigest() != entry.sha256:
                    raise MediaRefused("not the stored file")
                chunks = digests.chunks()
            else:
                chunks = known
            opened = Opened(entry, handle=handle, chunks=chunks)
        if known is None and time.time_ns() - info.st_ctime_ns > SETTLE_SECONDS * 1e9:
            VERIFIED.add(key, chunks)
        return opened
    except BaseException:
        handle.close()
        raise


def _pread_hash(fd: int, size: int, deadline: Deadline) -> ChunkDigests:
    digests, offset = ChunkDigests(), 0
    while offset < size:
        deadline.check()
        chunk = os.pread(fd, min(CHUNK, size - offset), offset)
        if not chunk:
            raise MediaRefused("shorter than the stored file")
        digests.update(chunk)
        offset += len(chunk)
    if os.pread(fd, 1, offset):
        raise MediaRefused("longer than the stored file")
    return digests


def _open_remote(entry: Entry, path: str, deadline: Deadline) -> Opened:
    # One read into a local copy while hashing: what is sent is exactly what was checked.
    from airflow.sdk import ObjectStoragePath

    in_memory = entry.size <= _IN_MEMORY
    buffer = bytearray()
    spool = None if in_memory else tempfile.TemporaryFile()  # noqa: SIM115 -- handed to the response
    try:
        digests, total = ChunkDigests(), 0
        try:
            with ObjectStoragePath(path).open("rb") as source:
                while chunk := source.read(CHUNK):
                    deadline.check()
                    total += len(chunk)
                    if total > entry.size:
                        break
                    digests.update(chunk)
                    if spool is None:
                        buffer += chunk
                    else:
                        spool.write(chunk)
        except ReadTimedOut:
            raise
        except Exception:
            raise MediaRefused("not readable") from None
        if total != entry.size or digests.hexdigest() != entry.sha256:
            raise MediaRefused("not the stored file")
        if spool is None:
            return Opened(entry, data=bytes(buffer))
        spool.flush()
        return Opened(entry, handle=spool, chunks=digests.chunks())
    except BaseException:
        if spool is not None:
            spool.close()
        raise

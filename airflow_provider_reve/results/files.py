"""The crash-safe file steps of storing results: spools, non-blocking reads, whole writes.

``results.storage`` decides what to store and where; this module only touches files, the same
way locally and on an object store (an ``ObjectStoragePath``):

* a download is streamed into a **spool** (:func:`open_spool`): a hidden ``.reve-*.part`` file
  beside its target, renamed into place once complete, or a private temp file uploaded in one
  go (:func:`upload`); so no name ever shows a partial file. A spool a killed try left behind is
  swept once nothing has written to it for ``[reve] stale_spool_age`` (:func:`remove_stale_spools`);
* a file that may be anyone's is **read without blocking** (:func:`open_for_reading`): locally
  only a regular file is opened, never a FIFO or a device that would hold the worker;
* a small file of ours (manifest, owner record) is **written whole** (:func:`write_file`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shutil
import stat
import tempfile
import time
from pathlib import Path
from typing import IO, Any

from airflow_provider_reve import config
from airflow_provider_reve.results.destination import Destination

__all__ = [
    "HASH_CHUNK",
    "STALE_SPOOL_SECONDS",
    "HashingWriter",
    "open_for_reading",
    "open_spool",
    "remove_stale_spools",
    "same_file",
    "upload",
    "write_file",
]

#: Bytes read or copied at a time.
HASH_CHUNK = 1024 * 1024
# A live spool is written to at least every read timeout; one untouched for a day belongs to a
# killed try (SIGKILL, OOM, a lost host) and would otherwise stay in the folder for ever.
#: The default of ``[reve] stale_spool_age``, read at each sweep.
STALE_SPOOL_SECONDS = config.STALE_SPOOL_AGE.default
_SPOOL_NAME = re.compile(r"\.reve-[0-9a-f]{16}\.part")


class HashingWriter:
    """Counts and hashes the bytes on their way into the spool."""

    def __init__(self, fh: IO[bytes]) -> None:
        self._fh = fh
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self._fh.write(data)


def remove_stale_spools(folder: Path | None, logger: Any) -> None:
    """Delete our own hidden spools in ``folder`` that nothing has written to for
    ``[reve] stale_spool_age`` seconds (a day by default)."""
    if folder is None:
        return
    cutoff = time.time() - config.stale_spool_age()
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


def open_spool(folder: Path | None) -> tuple[int, Path]:
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


def open_for_reading(target: Path | Any) -> IO[bytes]:
    """``target`` opened for reading; locally only a regular file, and without blocking.

    A FIFO (or a symlink to one, or to a device) under one of our names would block ``open`` or
    feed bytes for ever, holding the worker of a paid task until its URLs expire.
    """
    if not isinstance(target, Path):
        return target.open("rb")  # type: ignore[no-any-return]
    flags = (
        os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    )
    fd = os.open(target, flags)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{target} is not a regular file")
        if flags & getattr(os, "O_NONBLOCK", 0):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def same_file(target: Path | Any, size: int, sha256: str) -> bool:
    """Whether ``target`` is a readable regular file of exactly ``size`` bytes and ``sha256``."""
    try:
        if not target.exists() or target.stat().st_size != size:
            return False
        digest = hashlib.sha256()
        with open_for_reading(target) as fh:
            for chunk in iter(lambda: fh.read(HASH_CHUNK), b""):
                digest.update(chunk)
    except (OSError, ValueError):
        return False
    return digest.hexdigest() == sha256


def upload(spool: Path, target: Any) -> None:
    """Copy a finished local spool to its object-store key; remove the key when the copy fails."""
    # One upload of the final key through Airflow's filesystem registry (``open``, not
    # ``write_bytes``), so connections and credentials configured in Airflow apply.
    try:
        with spool.open("rb") as src, target.open("wb") as dst:
            shutil.copyfileobj(src, dst, HASH_CHUNK)
    except BaseException:
        with contextlib.suppress(Exception):
            target.unlink()
        raise


def write_file(where: Destination, target: Path | Any, body: bytes) -> None:
    """Write a small file of ours whole: renamed into place locally, one upload remotely."""
    if where.local is not None:
        fd, spool = open_spool(where.local)
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

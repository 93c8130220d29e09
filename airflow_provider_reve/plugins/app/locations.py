"""Where a manifest's ``path`` points: one reading of every spelling, made before any check.

A manifest is written by DAG code, so its ``path`` is untrusted text. It is read once, here, into a
:class:`Location`, and every later check works on that one reading (a check written for one
spelling is never skipped by another):

* the scheme is compared without regard to case (``FILE://``, ``File://``, ``LOCAL://``);
* every local spelling -- a bare path, ``file://``, ``local://`` in any case -- gives the same
  local path, so the local rules (regular file, no symlink, non-blocking open) apply to all;
* a local path must be absolute; ``file://host/...`` (any host) and ``file://relative`` are
  refused. It is handed to the kernel as it is (``..`` included: a ``download_to`` spelled with
  ``..`` writes such paths); the file-name, regular-file, no-symlink and sha256 rules make any
  other way of reaching a file useless;
* nothing is percent-decoded: the provider writes paths as they are, so ``%2e%2e`` is a literal
  name that no stored file has, and a second, encoded spelling cannot exist;
* a remote path is read only for a scheme in :data:`REMOTE_SCHEMES` (object stores). Anything
  else -- ``http(s)``, ``ftp``, ``sftp``, ``data``, a scheme nobody listed -- is refused: the
  api-server would otherwise fetch whatever a DAG author names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["LOCAL_SCHEMES", "REMOTE_SCHEMES", "Location", "LocationRefused", "locate"]

LOCAL_SCHEMES = frozenset({"file", "local"})
#: Object stores Airflow's ``ObjectStoragePath`` reaches through a connection; ``memory`` is the
#: in-process store (tests, examples). Nothing else is ever opened by the api-server.
REMOTE_SCHEMES = frozenset({"s3", "s3a", "gs", "gcs", "abfs", "abfss", "az", "adl", "oci", "memory"})
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


class LocationRefused(ValueError):
    """The path is not a spelling the gallery reads."""


@dataclass(frozen=True)
class Location:
    """One file: ``local`` (an absolute, normal path) or ``remote`` (``scheme://rest``, lower-case scheme)."""

    local: str | None = None
    remote: str | None = None

    @property
    def name(self) -> str:
        """The last component of the path: the file's name."""
        text = self.local if self.local is not None else str(self.remote)
        return text.rsplit("/", 1)[-1]


def locate(path: str) -> Location:
    """The one reading of ``path``, or :class:`LocationRefused`."""
    if not path or "\x00" in path or any(ord(char) < 32 for char in path):
        raise LocationRefused("empty, or a control character")
    match = _SCHEME.match(path)
    if match is None:
        if "://" in path:
            raise LocationRefused("not a URL scheme")
        return Location(local=_local(path))
    scheme, rest = match.group(1).lower(), path[match.end() :]
    if scheme in LOCAL_SCHEMES:
        if not rest.startswith("/"):
            raise LocationRefused(f"{scheme}:// with a host or a relative path")
        return Location(local=_local(rest))
    if scheme in REMOTE_SCHEMES:
        if not rest or rest.startswith("/"):
            raise LocationRefused("no bucket")
        return Location(remote=f"{scheme}://{rest}")
    raise LocationRefused(f"scheme {scheme!r} is not read by the gallery")


def _local(path: str) -> str:
    if not path.startswith("/"):
        raise LocationRefused("not an absolute path")
    return path

"""Where stored results go: a destination as the user spells it, read once, refused early.

A destination is a local folder or an object-store folder (anything Airflow's object storage
reaches). The invariants:

* **Absolute or refused.** A relative path, a relative ``file://`` URL, a path with a NUL are
  refused as input (``ReveValidationError``): the try that defers and the one that resumes may run
  in different working directories, so "relative" has no stable meaning.
* **Local spellings are local.** A path, ``file://`` / ``local://`` in any case, ``file://localhost``
  and a ``file`` ``ObjectStoragePath`` all become the same local folder, which gets the
  temporary-name-and-rename treatment (real paths).
* **An object store without its provider fails now,** before anything is paid for.
* **One Asset per object.** :func:`asset_uri` drops the connection id an ``ObjectStoragePath``
  carries and quotes ``#`` and ``?`` in a key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from airflow_provider_reve.exceptions import ReveValidationError

__all__ = ["Destination", "asset_uri", "resolve_destination"]

_LOCAL_PROTOCOLS = ("", "file", "local")


@dataclass(frozen=True)
class Destination:
    """Where files go: a local folder (``local``) or an object-store folder (``remote``).

    :param local: the local folder, or ``None`` for an object store.
    :param remote: the object-store folder (an ``ObjectStoragePath``), or ``None`` for a local one.
    """

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
        """The manifest's ``path``: absolute filesystem path, or the object-store URI.

        :param target: a file of this destination.
        :return: the path or URI.
        """
        return str(target)


def resolve_destination(value: Any) -> Destination:
    """A local path, a ``file://`` URL, or any ``ObjectStoragePath`` / object-store URL string.

    :param value: the ``download_to`` or ``destination`` value, rendered.
    :return: the destination it names.
    :raises ReveValidationError: for a value that names no folder.
    """
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
    if "\x00" in str(path):
        # No filesystem takes one; refused as input, not left to fail as a ValueError mid-try.
        raise ReveValidationError(f"download destination contains a NUL character: {str(path)!r}")
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

    :param path: a manifest ``path``: an absolute path or an object-store URI.
    :return: the URI.
    """
    if "://" in path:
        scheme, _, rest = path.partition("://")
        netloc, slash, key = rest.partition("/")
        # "#" and "?" in a key are part of the object's name: Airflow would drop a fragment
        # and sort a query, merging different objects into one asset.
        return f"{scheme}://{netloc.rpartition('@')[2]}{slash}{quote(key, safe='/')}"
    return Path(path).absolute().as_uri()

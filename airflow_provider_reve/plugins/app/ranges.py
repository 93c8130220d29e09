"""The ``Range`` header of a media request: one byte range, or the whole file.

What is served (RFC 9110, section 14): a single ``bytes=first-last``, ``bytes=first-`` or
``bytes=-suffix`` gives ``206`` with ``Content-Range``; a syntactically valid range that starts
beyond the end gives ``416`` with ``Content-Range: bytes */size``; anything else -- several
ranges, another unit, garbage, an ``If-Range`` that does not name this file -- is ignored and the
whole file is sent with ``200``, as the RFC allows. The range is cut from a file that was already
verified whole, so a range is never a way around the sha256 check.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["ByteRange", "Unsatisfiable", "requested_range"]

_SPEC = re.compile(r"^bytes=(\d{0,19})-(\d{0,19})$", re.IGNORECASE)


@dataclass(frozen=True)
class ByteRange:
    """Bytes ``start`` to ``end`` inclusive of a file of ``size`` bytes."""

    start: int
    end: int
    size: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    @property
    def content_range(self) -> str:
        return f"bytes {self.start}-{self.end}/{self.size}"


class Unsatisfiable(Exception):
    """A valid range that no byte of the file is in: ``416``."""


def requested_range(
    header: str | None, size: int, *, if_range: str | None = None, etag: str | None = None
) -> ByteRange | None:
    """The one range to send, ``None`` for the whole file, or :class:`Unsatisfiable`."""
    if header is None:
        return None
    if if_range is not None and if_range.strip() != etag:
        return None  # the client's copy is of another file (or a date we cannot compare): send it all
    match = _SPEC.match(header.strip().replace(" ", ""))
    if match is None:
        return None
    first, last = match.group(1), match.group(2)
    if not first and not last:
        return None
    if not first:  # the last N bytes
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise Unsatisfiable
        return ByteRange(max(0, size - suffix), size - 1, size)
    start = int(first)
    if last and int(last) < start:
        return None  # invalid: ignored
    if start >= size:
        raise Unsatisfiable
    end = min(int(last), size - 1) if last else size - 1
    return ByteRange(start, end, size)

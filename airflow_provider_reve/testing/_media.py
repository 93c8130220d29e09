"""Real media bytes for the fake Reve API's result URLs, made with the standard library only.

* :func:`png_bytes` -- a genuine 64x64 RGB PNG (signature, IHDR, zlib-compressed IDAT, IEND, every
  chunk with its CRC). Any image viewer or Pillow opens it. Its two gradient colours derive from the
  prompt, so different prompts give visibly different pictures and the same prompt the same bytes.
* :func:`mp4_bytes` -- a structurally valid ISO base media (MP4) file: an ``ftyp`` box (brand
  ``isom``, compatible with ``mp42``) followed by a ``moov`` box holding a movie header (``mvhd``)
  with the requested duration, and a ``free`` box naming the prompt hash. It has **no tracks**, so
  it is the right type (``video/mp4``) and parses as MP4, but it is not guaranteed to play as a
  video: players open it as an empty movie. Use it to test downloading and content-type handling,
  not decoding.
"""

from __future__ import annotations

import hashlib
import struct
import zlib

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_CONTENT_TYPE = "image/png"
MP4_CONTENT_TYPE = "video/mp4"
IMAGE_SIZE = 64


def _seed(prompt: str, index: int) -> bytes:
    return hashlib.sha256(f"{index}\x00{prompt}".encode()).digest()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def png_bytes(prompt: str = "", index: int = 0, size: int = IMAGE_SIZE) -> bytes:
    """A ``size`` x ``size`` 8-bit RGB PNG: a diagonal gradient between two prompt-derived colours."""
    if size < 1:
        raise ValueError("size must be >= 1")
    seed = _seed(prompt, index)
    start, end = seed[0:3], seed[3:6]
    span = max(2 * (size - 1), 1)
    rows = bytearray()
    for y in range(size):
        rows.append(0)  # filter type 0 (None) for every scanline
        for x in range(size):
            t = (x + y) / span
            rows.extend(round(a + (b - a) * t) for a, b in zip(start, end, strict=True))
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)  # 8-bit, truecolour, no interlace
    return (
        PNG_SIGNATURE
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(bytes(rows), 9))
        + _png_chunk(b"IEND", b"")
    )


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def _mvhd(duration_seconds: float) -> bytes:
    timescale = 1000
    identity_matrix = struct.pack(">9i", 0x00010000, 0, 0, 0, 0x00010000, 0, 0, 0, 0x40000000)
    payload = (
        struct.pack(">B3x", 0)  # version 0, flags 0
        + struct.pack(">IIII", 0, 0, timescale, max(0, round(duration_seconds * timescale)))
        + struct.pack(">IH", 0x00010000, 0x0100)  # rate 1.0, volume 1.0
        + bytes(10)  # reserved
        + identity_matrix
        + bytes(24)  # pre_defined
        + struct.pack(">I", 1)  # next_track_ID
    )
    return _box(b"mvhd", payload)


def mp4_bytes(prompt: str = "", duration_seconds: float = 5.0) -> bytes:
    """An MP4 container (``ftyp`` + ``moov``/``mvhd`` + ``free``); see the module docstring."""
    ftyp = _box(b"ftyp", b"isom" + struct.pack(">I", 0x200) + b"isom" + b"iso2" + b"mp41" + b"mp42")
    moov = _box(b"moov", _mvhd(duration_seconds))
    note = b"fake-reve " + hashlib.sha256(prompt.encode()).hexdigest()[:16].encode()
    return ftyp + moov + _box(b"free", note)

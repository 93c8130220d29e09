"""Real media bytes for the fake Reve API's result URLs, made with the standard library only.

* :func:`png_bytes` -- a genuine 64x64 RGB PNG (signature, IHDR, zlib-compressed IDAT, IEND, every
  chunk with its CRC). Any image viewer or Pillow opens it. Its two gradient colours derive from the
  prompt, so different prompts give visibly different pictures and the same prompt the same bytes.
* :func:`jpeg_bytes` -- a baseline JFIF JPEG of the same gradient, in 8x8 tiles: every tile is one
  flat colour, so only the DC coefficient of each block is coded and no DCT is needed. Quantisation
  by 8 keeps each tile's colour exact up to the YCbCr round trip.
* :func:`webp_bytes` -- a lossless (VP8L) WebP in a RIFF container: the image split diagonally into
  the two prompt colours, coded with one-bit "simple" prefix codes, no transforms.
* :func:`mp4_bytes` -- a structurally valid ISO base media (MP4) file: an ``ftyp`` box (brand
  ``isom``, compatible with ``mp42``) followed by a ``moov`` box holding a movie header (``mvhd``)
  with the requested duration, and a ``free`` box naming the prompt hash. It has **no tracks**, so
  it is the right type (``video/mp4``) and parses as MP4, but it is not guaranteed to play as a
  video: players open it as an empty movie. Use it to test downloading and content-type handling,
  not decoding.

:func:`image_bytes` picks the encoder for an ``output_format`` and returns the bytes, the
``Content-Type`` and the file extension.
"""

from __future__ import annotations

import hashlib
import struct
import zlib

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_CONTENT_TYPE = "image/png"
JPEG_CONTENT_TYPE = "image/jpeg"
WEBP_CONTENT_TYPE = "image/webp"
MP4_CONTENT_TYPE = "video/mp4"
IMAGE_SIZE = 64

#: ``output_format`` -> (Content-Type, file extension).
IMAGE_FORMATS = {
    "png": (PNG_CONTENT_TYPE, "png"),
    "jpeg": (JPEG_CONTENT_TYPE, "jpg"),
    "webp": (WEBP_CONTENT_TYPE, "webp"),
}


def _seed(prompt: str, index: int) -> bytes:
    return hashlib.sha256(f"{index}\x00{prompt}".encode()).digest()


def gradient_colours(prompt: str = "", index: int = 0) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """The two RGB colours every image for ``(prompt, index)`` is drawn with."""
    seed = _seed(prompt, index)
    return (seed[0], seed[1], seed[2]), (seed[3], seed[4], seed[5])


def gradient_pixel(prompt: str, index: int, x: float, y: float, size: int) -> tuple[int, int, int]:
    """The gradient's colour at ``(x, y)``: from the first colour (top left) to the second."""
    start, end = gradient_colours(prompt, index)
    t = (x + y) / max(2 * (size - 1), 1)
    r, g, b = (round(a + (b - a) * t) for a, b in zip(start, end, strict=True))
    return r, g, b


def image_bytes(output_format: str | None, prompt: str = "", index: int = 0) -> tuple[bytes, str, str]:
    """``(bytes, content_type, extension)`` for ``output_format`` (``None``: PNG)."""
    fmt = output_format or "png"
    if fmt not in IMAGE_FORMATS:
        raise ValueError(f"unknown output_format {output_format!r}; use one of {sorted(IMAGE_FORMATS)}")
    encode = {"png": png_bytes, "jpeg": jpeg_bytes, "webp": webp_bytes}[fmt]
    content_type, extension = IMAGE_FORMATS[fmt]
    return encode(prompt, index), content_type, extension


# ---------------------------------------------------------------------------------------- PNG


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def png_bytes(prompt: str = "", index: int = 0, size: int = IMAGE_SIZE) -> bytes:
    """A ``size`` x ``size`` 8-bit RGB PNG: a diagonal gradient between two prompt-derived colours."""
    if size < 1:
        raise ValueError("size must be >= 1")
    rows = bytearray()
    for y in range(size):
        rows.append(0)  # filter type 0 (None) for every scanline
        for x in range(size):
            rows.extend(gradient_pixel(prompt, index, x, y, size))
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)  # 8-bit, truecolour, no interlace
    return (
        PNG_SIGNATURE
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(bytes(rows), 9))
        + _png_chunk(b"IEND", b"")
    )


# ---------------------------------------------------------------------------------------- JPEG

_JPEG_QUANT = 8  # one value for all 64 coefficients; a flat tile's DC then quantises to (value - 128)
_DC_CODE_LENGTH = 4  # twelve DC categories (0..11), all coded with 4 bits: category n is code n


class _MsbBitWriter:
    """Bits written most significant first, with JPEG's 0xFF -> 0xFF 0x00 byte stuffing."""

    def __init__(self) -> None:
        self.out = bytearray()
        self._acc = 0
        self._count = 0

    def write(self, value: int, bits: int) -> None:
        for shift in range(bits - 1, -1, -1):
            self._acc = (self._acc << 1) | ((value >> shift) & 1)
            self._count += 1
            if self._count == 8:
                self.out.append(self._acc)
                if self._acc == 0xFF:
                    self.out.append(0x00)
                self._acc = self._count = 0

    def flush(self) -> bytes:
        while self._count:
            self.write(1, 1)  # pad the last byte with 1-bits, as the standard asks
        return bytes(self.out)


def _segment(marker: int, payload: bytes) -> bytes:
    return struct.pack(">HH", 0xFF00 | marker, len(payload) + 2) + payload


def _ycbcr(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    r, g, b = rgb
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b + 128
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b + 128
    y_, cb_, cr_ = (min(255, max(0, round(v))) for v in (y, cb, cr))
    return y_, cb_, cr_


def jpeg_bytes(prompt: str = "", index: int = 0, size: int = IMAGE_SIZE) -> bytes:
    """A ``size`` x ``size`` baseline JPEG (YCbCr 4:4:4): the PNG's gradient in flat 8x8 tiles."""
    if size < 1:
        raise ValueError("size must be >= 1")
    blocks = (size + 7) // 8
    dc_lengths = bytes([0, 0, 0, 12] + [0] * 12)  # 12 codes of length 4
    ac_lengths = bytes([1] + [0] * 15)  # 1 code of length 1: end-of-block, the only AC symbol used
    header = (
        b"\xff\xd8"
        + _segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")
        + _segment(0xDB, b"\x00" + bytes([_JPEG_QUANT] * 64))
        + _segment(0xC0, struct.pack(">BHHB", 8, size, size, 3) + b"\x01\x11\x00\x02\x11\x00\x03\x11\x00")
        + _segment(0xC4, b"\x00" + dc_lengths + bytes(range(12)) + b"\x10" + ac_lengths + b"\x00")
        + _segment(0xDA, b"\x03\x01\x00\x02\x00\x03\x00\x00\x3f\x00")
    )
    bits = _MsbBitWriter()
    previous = [0, 0, 0]
    for block_y in range(blocks):
        for block_x in range(blocks):
            centre_x = min(block_x * 8 + 3.5, size - 1)
            centre_y = min(block_y * 8 + 3.5, size - 1)
            colour = _ycbcr(gradient_pixel(prompt, index, centre_x, centre_y, size))
            for component, value in enumerate(colour):
                dc = value - 128  # level shift; the DC of a flat block is 8x that, quantised by 8
                diff, previous[component] = dc - previous[component], dc
                category = abs(diff).bit_length()
                bits.write(category, _DC_CODE_LENGTH)
                if category:
                    bits.write(diff if diff > 0 else diff + (1 << category) - 1, category)
                bits.write(0, 1)  # end of block: every AC coefficient is zero
    return header + bits.flush() + b"\xff\xd9"


# ---------------------------------------------------------------------------------------- WebP


class _LsbBitWriter:
    """Bits written least significant first, as VP8L reads them."""

    def __init__(self) -> None:
        self._value = 0
        self._count = 0

    def write(self, value: int, bits: int) -> None:
        self._value |= (value & ((1 << bits) - 1)) << self._count
        self._count += bits

    def getvalue(self) -> bytes:
        return self._value.to_bytes((self._count + 7) // 8, "little")


def _simple_prefix_code(bits: _LsbBitWriter, symbols: list[int]) -> None:
    """A VP8L "simple" prefix code of one or two 8-bit symbols."""
    bits.write(1, 1)  # simple code
    bits.write(len(symbols) - 1, 1)
    bits.write(1, 1)  # the first symbol takes 8 bits
    for symbol in symbols:
        bits.write(symbol, 8)


def webp_bytes(prompt: str = "", index: int = 0, size: int = IMAGE_SIZE) -> bytes:
    """A ``size`` x ``size`` lossless WebP: top-left triangle in one prompt colour, the rest in the
    other. Each channel that differs between the two colours costs one bit per pixel."""
    if not 1 <= size <= 16384:
        raise ValueError("size must be from 1 to 16384")
    first, second = gradient_colours(prompt, index)
    bits = _LsbBitWriter()
    bits.write(0x2F, 8)  # VP8L signature
    bits.write(size - 1, 14)
    bits.write(size - 1, 14)
    bits.write(0, 1)  # alpha is not used
    bits.write(0, 3)  # version 0
    bits.write(0, 1)  # no transform
    bits.write(0, 1)  # no colour cache
    bits.write(0, 1)  # one prefix-code group for the whole image
    # Prefix codes in VP8L order: green, red, blue, alpha, distance. With two symbols of length 1,
    # canonical coding gives code 0 to the smaller symbol.
    channels = [(first[1], second[1]), (first[0], second[0]), (first[2], second[2])]
    for a, b in channels:
        _simple_prefix_code(bits, [a] if a == b else sorted((a, b)))
    _simple_prefix_code(bits, [255])  # alpha: opaque, zero bits per pixel
    _simple_prefix_code(bits, [0])  # distance: unused
    for y in range(size):
        for x in range(size):
            chosen = first if x + y < size else second
            for (a, b), value in zip(channels, (chosen[1], chosen[0], chosen[2]), strict=True):
                if a != b:
                    bits.write(int(value == max(a, b)), 1)
    payload = bits.getvalue()
    chunk = b"VP8L" + struct.pack("<I", len(payload)) + payload + b"\x00" * (len(payload) % 2)
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


# ---------------------------------------------------------------------------------------- MP4


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

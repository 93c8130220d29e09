"""The fake serves the image format a request asks for: real JPEG and WebP bytes, with the matching
Content-Type and file extension, decoded here by small readers written from the two standards
(ITU T.81 baseline JPEG, the WebP lossless bitstream) -- not by the code that wrote them."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest
import requests

from airflow_provider_reve.testing import FakeReveServer
from airflow_provider_reve.testing._media import gradient_colours, gradient_pixel

KEY = "sk-media"
PROMPT = "a red fox in the snow"


@pytest.fixture
def server() -> Iterator[FakeReveServer]:
    with FakeReveServer(api_keys={KEY: 10_000}) as fake:
        yield fake


def result_files(server: FakeReveServer, **params: object) -> list[requests.Response]:
    body = {"model": "reve-2.0", "prompt": PROMPT, **params}
    answer = requests.post(
        f"{server.url}/api/v1/generate", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=5
    )
    urls = answer.json()["data"]["response"]["resultUrls"]
    return [requests.get(url, timeout=5) for url in urls]


# ---------------------------------------------------------------------------- a baseline JPEG reader


class MsbBits:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def bit(self) -> int:
        value = (self.data[self.pos // 8] >> (7 - self.pos % 8)) & 1
        self.pos += 1
        return value

    def bits(self, count: int) -> int:
        value = 0
        for _ in range(count):
            value = (value << 1) | self.bit()
        return value


def huffman_table(counts: bytes, symbols: bytes) -> dict[tuple[int, int], int]:
    """Canonical codes (T.81 Annex C): (length, code) -> symbol."""
    table, code, index = {}, 0, 0
    for length in range(1, 17):
        for _ in range(counts[length - 1]):
            table[(length, code)] = symbols[index]
            code, index = code + 1, index + 1
        code <<= 1
    return table


def decode_symbol(bits: MsbBits, table: dict[tuple[int, int], int]) -> int:
    code = 0
    for length in range(1, 17):
        code = (code << 1) | bits.bit()
        if (length, code) in table:
            return table[(length, code)]
    raise AssertionError("no Huffman code matches")


def extend(bits: MsbBits, size: int) -> int:
    value = bits.bits(size)
    return value if size == 0 or value >= 1 << (size - 1) else value - (1 << size) + 1


def decode_flat_tiles_jpeg(data: bytes) -> tuple[int, int, list[list[tuple[float, float, float]]]]:
    """Width, height and the RGB colour of every 8x8 tile of a baseline, 4:4:4, three-component
    JPEG whose blocks carry no AC energy (asserted)."""
    assert data[:2] == b"\xff\xd8"
    assert data[-2:] == b"\xff\xd9"
    pos, quant, tables, frame, scan = 2, {}, {}, None, None
    while scan is None:
        assert data[pos] == 0xFF
        marker, (length,) = data[pos + 1], struct.unpack(">H", data[pos + 2 : pos + 4])
        payload, pos = data[pos + 4 : pos + 2 + length], pos + 2 + length
        if marker == 0xDB:
            assert payload[0] >> 4 == 0  # 8-bit values
            quant[payload[0] & 15] = payload[1:65]
        elif marker == 0xC0:  # baseline
            precision, height, width, count = struct.unpack(">BHHB", payload[:6])
            frame = (height, width, [payload[6 + 3 * i : 9 + 3 * i] for i in range(count)])
            assert precision == 8
        elif marker == 0xC4:
            rest = payload
            while rest:
                counts = rest[1:17]
                total = sum(counts)
                tables[(rest[0] >> 4, rest[0] & 15)] = huffman_table(counts, rest[17 : 17 + total])
                rest = rest[17 + total :]
        elif marker == 0xDA:
            scan = [(payload[1 + 2 * i], payload[2 + 2 * i]) for i in range(payload[0])]
            assert payload[-3:] == b"\x00\x3f\x00"  # spectral selection 0..63, no approximation
        else:
            assert marker == 0xE0 and payload.startswith(b"JFIF\x00")
    assert frame is not None
    height, width, components = frame
    assert [c[1] for c in components] == [0x11, 0x11, 0x11]  # no subsampling
    entropy = data[pos:-2]
    assert all(entropy[i + 1] == 0 for i in range(len(entropy) - 1) if entropy[i] == 0xFF)
    bits = MsbBits(entropy.replace(b"\xff\x00", b"\xff"))
    predictors = [0, 0, 0]
    tiles: list[list[tuple[float, float, float]]] = []
    for _ in range((height + 7) // 8):
        row = []
        for _ in range((width + 7) // 8):
            values = []
            for index, (component_id, selectors) in enumerate(scan):
                quantisation = quant[components[index][2]]
                predictors[index] += extend(bits, decode_symbol(bits, tables[(0, selectors >> 4)]))
                end_of_block = decode_symbol(bits, tables[(1, selectors & 15)])
                assert end_of_block == 0, f"AC energy in a flat tile (component {component_id})"
                values.append(predictors[index] * quantisation[0] / 8 + 128)  # IDCT of a DC-only block
            y, cb, cr = values
            row.append(
                (
                    y + 1.402 * (cr - 128),
                    y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128),
                    y + 1.772 * (cb - 128),
                )
            )
        tiles.append(row)
    return width, height, tiles


def test_output_format_jpeg_serves_a_baseline_jpeg_named_and_typed_as_one(server):
    files = result_files(server, output_format="jpeg", num_images=2)

    assert [file.url.rsplit(".", 1)[1] for file in files] == ["jpg", "jpg"]
    for index, file in enumerate(files):
        assert file.headers["Content-Type"] == "image/jpeg"
        width, height, tiles = decode_flat_tiles_jpeg(file.content)
        assert (width, height) == (64, 64)
        for tile_y, row in enumerate(tiles):
            for tile_x, colour in enumerate(row):
                expected = gradient_pixel(PROMPT, index, tile_x * 8 + 3.5, tile_y * 8 + 3.5, 64)
                assert all(abs(got - want) <= 2 for got, want in zip(colour, expected, strict=True))
    assert files[0].content != files[1].content


# ---------------------------------------------------------------------------- a lossless WebP reader


class LsbBits:
    def __init__(self, data: bytes) -> None:
        self.value, self.pos = int.from_bytes(data, "little"), 0

    def bits(self, count: int) -> int:
        value = (self.value >> self.pos) & ((1 << count) - 1)
        self.pos += count
        return value


def decode_simple_webp(data: bytes) -> tuple[int, int, list[tuple[int, int, int, int]]]:
    """Width, height and ARGB pixels of a VP8L image without transforms, colour cache or
    meta prefix codes, whose prefix codes are all "simple" ones (asserted)."""
    assert data[:4] == b"RIFF"
    assert data[8:16] == b"WEBPVP8L"
    assert struct.unpack("<I", data[4:8])[0] == len(data) - 8
    (size,) = struct.unpack("<I", data[16:20])
    bits = LsbBits(data[20 : 20 + size])
    assert bits.bits(8) == 0x2F
    width, height = bits.bits(14) + 1, bits.bits(14) + 1
    bits.bits(1)  # alpha hint
    assert bits.bits(3) == 0  # version
    assert bits.bits(1) == 0  # no transform
    assert bits.bits(1) == 0  # no colour cache
    assert bits.bits(1) == 0  # no meta prefix codes
    codes = []
    for _ in range(5):  # green, red, blue, alpha, distance
        assert bits.bits(1) == 1  # simple code
        count = bits.bits(1) + 1
        symbols = [bits.bits(8 if bits.bits(1) else 1)]
        if count == 2:
            symbols.append(bits.bits(8))
        codes.append(sorted(symbols))  # canonical: the smaller symbol has code 0

    def read(code: list[int]) -> int:
        return code[0] if len(code) == 1 else code[bits.bits(1)]

    pixels = []
    for _ in range(width * height):
        green = read(codes[0])
        assert green < 256  # a literal, not a back-reference
        pixels.append((read(codes[3]), read(codes[1]), green, read(codes[2])))
    assert (bits.pos + 7) // 8 == size
    return width, height, pixels


def test_output_format_webp_serves_a_lossless_webp_named_and_typed_as_one(server):
    [file] = result_files(server, output_format="webp")

    assert file.url.endswith(".webp")
    assert file.headers["Content-Type"] == "image/webp"
    width, height, pixels = decode_simple_webp(file.content)
    assert (width, height) == (64, 64)
    first, second = gradient_colours(PROMPT, 0)
    assert pixels[0] == (255, *first)
    assert pixels[-1] == (255, *second)
    assert {pixel[1:] for pixel in pixels} == {first, second}


def test_without_output_format_the_image_is_a_png(server):
    [file] = result_files(server)
    [explicit] = result_files(server, output_format="png")

    assert file.url.endswith(".png")
    assert file.headers["Content-Type"] == explicit.headers["Content-Type"] == "image/png"
    assert file.content[:8] == explicit.content[:8] == b"\x89PNG\r\n\x1a\n"

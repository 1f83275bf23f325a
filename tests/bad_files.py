"""Hostile files for the bad-input tests: tiny to write, expensive only if a reader trusts them."""
from __future__ import annotations

import struct
import zlib


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(side: int = 20_000) -> bytes:
    """A 1-bit greyscale PNG of side x side black pixels (~48 kB for 20000: 400 M pixels, 1.2 GB
    once decoded to RGB), written chunk by chunk so that the test never holds the pixels."""
    rows = zlib.compress(b"\0" * (side * (1 + (side + 7) // 8)), 9)  # filter byte + packed bits
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", rows)
            + _chunk(b"IEND", b""))

"""Deterministic "generated" images for the demo engine, written as PNG in pure Python.

The demo engine has no model: an output image is a colourful plasma pattern whose
palette, frequencies and phases are all derived from ``sha256(seed, prompt)``.
The same prompt and seed therefore always give byte-identical PNG files, which
makes the demo engine handy in tests.

Only :mod:`zlib` and :mod:`struct` are used (no Pillow).
"""

from __future__ import annotations

import hashlib
import math
import struct
import zlib

__all__ = ["PNG_SIGNATURE", "encode_png", "render_png", "render_rgb"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data and the CRC of type + data."""
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def encode_png(width: int, height: int, rgb: bytes) -> bytes:
    """Encode ``width * height`` 8-bit RGB pixels (row-major, no padding) as a PNG file."""
    if width <= 0 or height <= 0:
        raise ValueError("width and height must be positive")
    stride = width * 3
    if len(rgb) != stride * height:
        raise ValueError(f"expected {stride * height} bytes of RGB data, got {len(rgb)}")
    # Every scanline starts with its filter type; 0 means "None".
    raw = b"".join(b"\x00" + rgb[y * stride : (y + 1) * stride] for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        PNG_SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw, 6))
        + _chunk(b"IEND", b"")
    )


def _palette(digest: bytes) -> list[bytes]:
    """A 256-entry cosine palette (after Inigo Quilez) chosen by the digest."""
    offsets = [digest[i] / 255.0 for i in range(3)]
    freq = 0.6 + digest[3] / 255.0
    entries: list[bytes] = []
    for i in range(256):
        t = i / 255.0
        channels = (
            round(255 * (0.5 + 0.5 * math.cos(2 * math.pi * (freq * t + offset))))
            for offset in offsets
        )
        entries.append(bytes(channels))
    return entries


def render_rgb(prompt: str, seed: int, width: int = 256, height: int = 256) -> bytes:
    """Raw RGB pixels of the image for ``prompt`` and ``seed``."""
    digest = hashlib.sha256(f"{seed}\x00{prompt}".encode()).digest()
    palette = _palette(digest)

    def param(index: int, low: float, high: float) -> float:
        return low + (high - low) * digest[index] / 255.0

    scale = 256.0 / max(width, height)
    f1, f2, f3, f4 = (param(4 + i, 0.02, 0.09) * scale for i in range(4))
    p1, p2, p3, p4 = (param(8 + i, 0.0, 2 * math.pi) for i in range(4))
    cx, cy = param(12, 0.2, 0.8) * width, param(13, 0.2, 0.8) * height
    shift = digest[14]

    # Separable terms are tabulated once; only the radial term is per pixel.
    sx = [math.sin(x * f1 + p1) for x in range(width)]
    sy = [math.sin(y * f2 + p2) for y in range(height)]
    sxy = [math.sin(s * f3 + p3) for s in range(width + height)]
    dx2 = [(x - cx) ** 2 for x in range(width)]

    rows: list[bytes] = []
    for y in range(height):
        row_y = sy[y]
        dy2 = (y - cy) ** 2
        indices = (
            (
                int(
                    (sx[x] + row_y + sxy[x + y] + math.sin(math.sqrt(dx2[x] + dy2) * f4 + p4) + 4.0)
                    * 31.875
                )
                + shift
            )
            & 0xFF
            for x in range(width)
        )
        rows.append(b"".join([palette[i] for i in indices]))
    return b"".join(rows)


def render_png(prompt: str, seed: int, width: int = 256, height: int = 256) -> bytes:
    """The PNG file for ``prompt`` and ``seed``: deterministic, ``width`` x ``height``."""
    return encode_png(width, height, render_rgb(prompt, seed, width, height))

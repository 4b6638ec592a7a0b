"""Headless Chromium for `make test-ops` (tests/ops): a page's DOM after rendering and a
screenshot, and a PNG decoder (zlib only: no imaging library) to tell a blank screenshot
from a drawn one. `make test-ops` installs Chromium (ops/apt_tools.sh)."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# a tag that would make a browser fetch or link anything
FETCHING_TAG = re.compile(r"<[a-zA-Z][^>]*\s(src|href|srcset|data|poster)\s*=", re.I)


def chromium() -> str:
    """The browser's path; AssertionError naming what to install when it is missing."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    raise AssertionError("chromium is not installed: `make test-ops` installs it (Debian: "
                         "apt-get install chromium fonts-dejavu-core)")


def _run(page: Path, profile: Path, *options: str) -> subprocess.CompletedProcess[str]:
    profile.mkdir(parents=True, exist_ok=True)
    argv = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            "--no-first-run", "--disable-extensions", "--disable-background-networking",
            f"--user-data-dir={profile}", *options, page.resolve().as_uri()]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{' '.join(argv)}: exit {done.returncode}\n{done.stderr}"
    return done


def dump_dom(page: Path, profile: Path) -> str:
    """The DOM Chromium built from ``page``, serialized."""
    return _run(page, profile, "--dump-dom").stdout


def screenshot(page: Path, out: Path, profile: Path, size: tuple[int, int] = (1280, 2000),
               ) -> Path:
    _run(page, profile, f"--screenshot={out}", f"--window-size={size[0]},{size[1]}")
    assert out.is_file() and out.stat().st_size > 0, f"no screenshot at {out}"
    return out


@dataclass(frozen=True)
class Image:
    width: int
    height: int
    pixels: list[tuple[int, int, int]]  # RGB, row by row

    def colours(self) -> Counter[tuple[int, int, int]]:
        return Counter(self.pixels)


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def read_png(path: Path) -> Image:
    """An 8-bit RGB or RGBA, non-interlaced PNG (what Chromium writes), as RGB pixels."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour_type in (2, 6) and interlace == 0, (depth, colour_type)
    channels = 3 if colour_type == 2 else 4
    stride = width * channels
    raw = zlib.decompress(idat)
    rows: list[bytearray] = []
    previous = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up = previous[i]
            corner = previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                line[i] = (line[i] + _paeth(left, up, corner)) & 0xFF
            else:
                assert kind == 0, f"unknown PNG filter {kind}"
        rows.append(line)
        previous = line
    pixels = [(r[i], r[i + 1], r[i + 2]) for r in rows for i in range(0, stride, channels)]
    return Image(width, height, pixels)


def hex_rgb(colour: str) -> tuple[int, int, int]:
    """``#0072B2`` as (0, 114, 178)."""
    value = int(colour.removeprefix("#"), 16)
    return value >> 16, (value >> 8) & 0xFF, value & 0xFF

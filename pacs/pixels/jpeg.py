"""Baseline JPEG of a large picture, encoded in horizontal strips on several cores.

libjpeg-turbo encodes on one core; a 512x512 slice takes it ~0.4-0.8 ms here,
most of a cold render. JPEG's restart markers make the pieces of a scan
independent: at each restart the encoder pads to a byte boundary and the DC
predictions start again, exactly as at the start of an image. So strips whose
height is a whole number of MCU rows, encoded as separate pictures with the
same (standard) tables, joined with RSTn markers between their entropy-coded
data and a DRI segment naming the interval, are one valid baseline JPEG
(ITU-T T.81 B.2.4.4, E.1.4) that decodes to exactly the pixels of the one-piece
encoding: every 8x8 block is quantised the same, and chroma subsampling never
crosses an MCU row. Anything unexpected in a strip's stream (optimised or
differing tables, a progressive or multi-scan stream, markers of its own)
falls back to the one-piece encoding.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

_CORES = os.cpu_count() or 1
_STRIP_PIXELS = 1 << 18
"""Fewest pixels a strip is worth. Waking a second core costs this VM about
0.15-0.2 ms, so a 512x512 slice (two strips of 0.2-0.3 ms) gains nothing;
a 2500x3000 CR goes from 13-17 to 10-11 ms."""
_MAX_INTERVAL = 0xFFFF  # a DRI's restart interval is 16 bits

_SOI, _EOI, _SOS, _DRI = 0xD8, 0xD9, 0xDA, 0xDD
_SOF_BASELINE, _SOF_EXTENDED = 0xC0, 0xC1
_TABLES = (0xC4, 0xDB)  # DHT, DQT


@functools.cache
def _strip_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=max(1, _CORES - 1), thread_name_prefix="jpeg-strip")


def encode_in_strips(
    display: np.ndarray, encode: Callable[[np.ndarray], bytes], cores: int = _CORES
) -> bytes:
    """``encode(display)``, but by strips on up to ``cores`` threads when the
    picture is large enough. ``encode`` must write baseline JPEG with fixed
    tables (libjpeg's default): then the result decodes to the same pixels."""
    rows = display.shape[0]
    strips = min(cores, display.size // _STRIP_PIXELS, rows // 16)
    if strips < 2:
        return encode(display)
    # 16 rows: a whole number of MCU rows whatever the chroma subsampling.
    height = (-(-rows // strips) + 15) // 16 * 16
    bounds = [(start, min(start + height, rows)) for start in range(0, rows, height)]
    pool = _strip_pool()
    later = [pool.submit(encode, display[a:b]) for a, b in bounds[1:]]
    first = encode(display[bounds[0][0] : bounds[0][1]])
    pieces = [first, *(future.result() for future in later)]
    joined = join_strips(pieces, rows, height)
    return joined if joined is not None else encode(display)


def join_strips(pieces: list[bytes], rows: int, strip_rows: int) -> bytes | None:
    """One JPEG of ``rows`` rows from strips of ``strip_rows`` rows each (the
    last may be shorter), or ``None`` when they cannot be joined as they are."""
    strips = []
    for piece in pieces:
        strip = _split(piece)
        if strip is None:
            return None
        strips.append(strip)
    first = strips[0]
    # Alike but for their height (frame header bytes 5-6): the same tables, scan header.
    if any(
        s.tables != first.tables
        or s.sos != first.sos
        or s.frame[:5] + s.frame[7:] != first.frame[:5] + first.frame[7:]
        for s in strips[1:]
    ):
        return None
    mcu_rows, mcu_columns = first.mcu
    if strip_rows % mcu_rows:
        return None
    interval = (strip_rows // mcu_rows) * -(-first.columns // mcu_columns)
    if interval > _MAX_INTERVAL:
        return None
    out = bytearray(first.before_frame)
    out += first.frame[:5] + rows.to_bytes(2, "big") + first.frame[7:]
    out += first.between
    out += bytes((0xFF, _DRI, 0, 4)) + interval.to_bytes(2, "big")
    out += first.sos
    for number, strip in enumerate(strips):
        if number:
            out += bytes((0xFF, 0xD0 + (number - 1) % 8))
        out += strip.scan
    out += bytes((0xFF, _EOI))
    return bytes(out)


@dataclass(slots=True)
class _Strip:
    """A one-scan baseline JPEG cut into the pieces joining needs."""

    before_frame: bytes
    frame: bytes
    """The frame header segment (SOF0/SOF1), marker included."""
    between: bytes
    """The segments between the frame header and the scan header."""
    sos: bytes
    scan: bytes
    """The entropy-coded data."""
    tables: list[bytes]
    columns: int
    mcu: tuple[int, int]
    """(rows, columns) of pixels in one MCU."""


def _split(stream: bytes) -> _Strip | None:
    """``stream`` as a ``_Strip``, or ``None`` when it is not a one-scan baseline JPEG."""
    if stream[:2] != b"\xff\xd8" or stream[-2:] != b"\xff\xd9":
        return None
    tables: list[bytes] = []
    position, frame_at, frame_end = 2, -1, -1
    while position + 4 <= len(stream):
        if stream[position] != 0xFF:
            return None
        marker = stream[position + 1]
        length = int.from_bytes(stream[position + 2 : position + 4], "big")
        end = position + 2 + length
        if marker == _SOS:
            scan = stream[end:-2]
            # A marker inside the scan (RSTn, a second scan) is not ours to join.
            if frame_at < 0 or _has_marker(scan):
                return None
            frame = stream[frame_at:frame_end]
            count = frame[9]
            sampling = [frame[10 + 3 * k + 1] for k in range(count)]
            horizontal = max(s >> 4 for s in sampling)
            vertical = max(s & 15 for s in sampling)
            return _Strip(
                before_frame=stream[:frame_at],
                frame=frame,
                between=stream[frame_end:position],
                sos=stream[position:end],
                scan=scan,
                tables=tables,
                columns=int.from_bytes(frame[7:9], "big"),
                # One component is one 8x8 block per MCU (T.81 A.2.2).
                mcu=(8, 8) if count == 1 else (8 * vertical, 8 * horizontal),
            )
        if marker in (_SOF_BASELINE, _SOF_EXTENDED):
            frame_at, frame_end = position, end
        elif marker in _TABLES:
            tables.append(stream[position:end])
        elif marker == _DRI or (0xC2 <= marker <= 0xCF and marker not in (0xC4, 0xC8)):
            return None  # restarts of its own, progressive, lossless or arithmetic
        position = end
    return None


def _has_marker(scan: bytes) -> bool:
    """Whether entropy-coded data holds a marker: in it every 0xFF byte is
    followed by a stuffed 0x00 (T.81 B.1.1.5), so any other 0xFF starts one."""
    return scan.count(b"\xff") != scan.count(b"\xff\x00")

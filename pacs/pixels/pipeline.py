"""The grey-scale pixel pipeline as one lookup table (PS3.3 C.11).

Stored value -> Modality LUT (rescale, or a LUT) -> VOI (window with the
LINEAR, LINEAR_EXACT or SIGMOID function, or a VOI LUT) -> Presentation LUT
(MONOCHROME1 and INVERSE flip) -> 8-bit output. For integer data of up to
16 bits every step depends on the stored value alone, so the whole chain is
computed once per distinct window over the range of possible stored values
(at most 65,536 entries) and applied to the frame with one ``numpy.take``:
no per-pixel arithmetic in floating point.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

LINEAR = "LINEAR"
LINEAR_EXACT = "LINEAR_EXACT"
SIGMOID = "SIGMOID"
_FUNCTIONS = (LINEAR, LINEAR_EXACT, SIGMOID)
_LUT_LIMIT = 1 << 16


@dataclass(frozen=True, slots=True)
class Window:
    centre: float
    width: float
    function: str = LINEAR


def voi_window(
    values: np.ndarray, window: Window, low: float = 0.0, high: float = 255.0
) -> np.ndarray:
    """PS3.3 C.11.2.1.2 (and C.11.2.1.3 for SIGMOID): values -> [low, high] floats."""
    x = values.astype(np.float64, copy=False)
    c, w = window.centre, window.width
    span = high - low
    if window.function == SIGMOID:
        # Far below a narrow window exp() overflows to inf, and span/inf is the
        # exact limit, 0.
        with np.errstate(over="ignore"):
            return span / (1.0 + np.exp(-4.0 * (x - c) / max(w, 1e-9))) + low
    if window.function == LINEAR_EXACT:
        w = max(w, 1e-9)
        y = ((x - c) / w + 0.5) * span + low
        return np.clip(y, low, high)
    # LINEAR: width must be at least 1 (C.11.2.1.2.1)
    w = max(w, 1.0)
    if w == 1.0:
        return np.where(x <= c - 0.5, low, high).astype(np.float64)
    y = ((x - (c - 0.5)) / (w - 1.0) + 0.5) * span + low
    return np.clip(y, low, high)


def first_window(dataset: Any) -> Window | None:
    """The instance's own first window (Window Center/Width and its function), if any."""
    centres = dataset.get("WindowCenter")
    widths = dataset.get("WindowWidth")
    if centres is None or widths is None:
        return None
    try:
        centre = float(np.atleast_1d(np.asarray(centres, dtype=object))[0])
        width = float(np.atleast_1d(np.asarray(widths, dtype=object))[0])
    except (TypeError, ValueError):
        return None
    function = str(dataset.get("VOILUTFunction", LINEAR) or LINEAR).upper()
    return Window(centre, width, function if function in _FUNCTIONS else LINEAR)


def grey_lut(
    dataset: Any,
    window: Window | None,
    frame: np.ndarray | None = None,
) -> tuple[np.ndarray, int]:
    """An 8-bit lookup table over every possible stored value, and its offset.

    ``lut[stored - offset]`` is the displayed value. Without a window of the
    caller's or the instance's (or a VOI LUT), the frame's own range is used.
    Tables made from a rescale and a window are cached: the slices of a
    series share them. Raises ``ValueError`` for data a table cannot cover
    (floats, over 16 bits).
    """
    bits_stored = _int(dataset, "BitsStored", _int(dataset, "BitsAllocated", 8))
    signed = _int(dataset, "PixelRepresentation", 0) == 1
    if bits_stored > 16:
        raise ValueError(f"{bits_stored}-bit data needs no table")
    if window is None:
        window = first_window(dataset)
    if "ModalityLUTSequence" in dataset or (window is None and dataset.get("VOILUTSequence")):
        return _lut_from_sequences(dataset, window, frame, bits_stored, signed)
    slope, intercept = _rescale(dataset)
    if window is None:
        # A rescale is monotonic: the frame's extremes map to the range's ends.
        lowest = -(1 << (bits_stored - 1)) if signed else 0
        if frame is not None and frame.size:
            top = lowest + (1 << bits_stored) - 1
            ends = np.clip([int(frame.min()), int(frame.max())], lowest, top)
        else:
            ends = np.array([lowest, lowest + (1 << bits_stored) - 1])
        low, high = sorted(float(end) * slope + intercept for end in ends)
        window = Window((low + high) / 2 + 0.5, max(high - low, 1.0) + 1.0)
    return _linear_lut(bits_stored, signed, slope, intercept, window, _inverted(dataset))


@functools.lru_cache(maxsize=128)
def _linear_lut(
    bits_stored: int, signed: bool, slope: float, intercept: float, window: Window, inverted: bool
) -> tuple[np.ndarray, int]:
    lowest = -(1 << (bits_stored - 1)) if signed else 0
    stored = np.arange(lowest, lowest + (1 << bits_stored), dtype=np.int64)
    out = voi_window(stored * slope + intercept, window)
    if inverted:
        out = 255.0 - out
    lut = np.rint(out).astype(np.uint8)
    lut.setflags(write=False)  # shared by every caller: read-only
    return lut, lowest


def _lut_from_sequences(
    dataset: Any, window: Window | None, frame: np.ndarray | None, bits_stored: int, signed: bool
) -> tuple[np.ndarray, int]:
    """The general, uncached table: a Modality LUT Sequence and/or a VOI LUT Sequence."""
    lowest = -(1 << (bits_stored - 1)) if signed else 0
    size = 1 << bits_stored
    stored = np.arange(lowest, lowest + size, dtype=np.int64)
    modality = _modality(dataset, stored)
    if window is not None:
        out = voi_window(modality, window)
    elif dataset.get("VOILUTSequence"):
        out = _voi_lut(dataset, modality)
    else:
        if frame is not None and frame.size:
            present = modality[np.clip(frame.astype(np.int64) - lowest, 0, size - 1)]
            low, high = float(present.min()), float(present.max())
        else:
            low, high = float(modality.min()), float(modality.max())
        out = voi_window(modality, Window((low + high) / 2 + 0.5, max(high - low, 1.0) + 1.0))
    if _inverted(dataset):
        out = 255.0 - out
    return np.rint(out).astype(np.uint8), lowest


def apply_lut(frame: np.ndarray, lut: np.ndarray, offset: int) -> np.ndarray:
    """Map stored values through ``lut`` with one ``take`` (out-of-range values clamp).

    8- and 16-bit frames index a table over every bit pattern of their type
    directly, without widening the frame (a 2500x3000 CR: 14 -> 7 ms). A large
    frame goes through in blocks of rows: ``take`` makes a temporary array of
    machine-size indexes as large as what it is given, and one of 60 MB for
    a CR is fresh memory, every page of it a fault (the same CR: 15-18 -> 8 ms
    on this VM; below ``_TAKE_BLOCK`` pixels one call is faster).
    """
    if frame.dtype.itemsize <= 2 and frame.dtype.kind in "iu":
        patterns = 1 << (8 * frame.dtype.itemsize)
        unsigned: Any = frame.view(np.uint8 if patterns == 256 else np.uint16)
        table = _by_pattern(lut.tobytes(), offset, patterns, frame.dtype.kind == "i")
        if unsigned.size <= 4 * _TAKE_BLOCK or unsigned.ndim < 2:
            mapped: np.ndarray = np.take(table, unsigned)
            return mapped
        mapped = np.empty(unsigned.shape, dtype=table.dtype)
        rows = max(1, _TAKE_BLOCK // (unsigned.size // unsigned.shape[0]))
        for start in range(0, unsigned.shape[0], rows):
            np.take(table, unsigned[start : start + rows], out=mapped[start : start + rows])
        return mapped
    index = frame.astype(np.int64, copy=False) - offset
    np.clip(index, 0, len(lut) - 1, out=index)
    return np.take(lut, index)


_TAKE_BLOCK = 1 << 17
"""Pixels mapped per ``take`` call in a large frame (1 MB of indexes)."""


@functools.lru_cache(maxsize=64)
def _by_pattern(lut: bytes, offset: int, patterns: int, signed: bool) -> np.ndarray:
    """``lut`` re-indexed by the raw bit pattern of an 8- or 16-bit value.

    Cached: scrolling a series renders with the same table again and again.
    """
    table = np.frombuffer(lut, dtype=np.uint8)
    values = np.arange(patterns, dtype=np.int64)
    if signed:
        values[values >= patterns // 2] -= patterns
    by_pattern: np.ndarray = table[np.clip(values - offset, 0, len(table) - 1)]
    return by_pattern


def _voi_lut(dataset: Any, values: np.ndarray) -> np.ndarray:
    """PS3.3 C.11.2.1.1: the first VOI LUT, its output scaled from its own bit depth.

    Values below the first mapped one take the first entry, above the last
    the last entry.
    """
    item = dataset.VOILUTSequence[0]
    entries, first, bits = (int(v) for v in item.LUTDescriptor)
    entries = entries or 65536
    data = item.LUTData
    if isinstance(data, bytes | bytearray):
        # OW (or US read as bytes): 16-bit words in the data set's byte order
        big = getattr(dataset, "original_encoding", (None, True))[1] is False
        table = np.frombuffer(bytes(data), dtype=">u2" if big else "<u2")
    else:
        table = np.atleast_1d(np.asarray(data, dtype=np.float64))
    table = table[:entries].astype(np.float64)
    index = np.clip(np.rint(values).astype(np.int64) - first, 0, len(table) - 1)
    scaled: np.ndarray = table[index] * (255.0 / float((1 << bits) - 1))
    return scaled


def _modality(dataset: Any, stored: np.ndarray) -> np.ndarray:
    if "ModalityLUTSequence" in dataset:
        from pydicom.pixels.processing import apply_modality_lut

        return np.asarray(apply_modality_lut(stored.copy(), dataset), dtype=np.float64)
    slope, intercept = _rescale(dataset)
    return stored * slope + intercept


def _rescale(dataset: Any) -> tuple[float, float]:
    try:
        slope = float(dataset.get("RescaleSlope") or 1.0)
        intercept = float(dataset.get("RescaleIntercept") or 0.0)
    except (TypeError, ValueError):
        return 1.0, 0.0  # malformed DS: show stored values
    if not (np.isfinite(slope) and np.isfinite(intercept)) or slope == 0:
        return 1.0, 0.0
    return slope, intercept


def _int(dataset: Any, keyword: str, default: int) -> int:
    try:
        return int(dataset.get(keyword) or default)
    except (TypeError, ValueError):
        return default


def _inverted(dataset: Any) -> bool:
    """MONOCHROME1 shows low values white. Its Presentation LUT Shape, when
    given, is INVERSE, naming the same single inversion (PS3.3 C.7.6.16.2.13);
    INVERSE on MONOCHROME2 asks for one too."""
    monochrome1 = str(dataset.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1"
    shape = str(dataset.get("PresentationLUTShape", "") or "").strip().upper()
    return monochrome1 or shape == "INVERSE"

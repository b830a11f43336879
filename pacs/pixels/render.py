"""Rendering a frame to a picture (PS3.18 10.4.1.1.4 rendered resources).

Grey-scale frames go through ``pipeline`` (one lookup table for the Modality
LUT, the VOI window or LUT and MONOCHROME1 inversion); colour frames are
RGB after pydicom's YBR conversion, or through the palette. Only the frame
asked for is decoded. Encoded by Pillow as JPEG, PNG or GIF.
"""

from __future__ import annotations

from io import BytesIO
from typing import Any

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_color_lut

from pacs.errors import NotFoundError
from pacs.pixels.frames import frame_array, parse
from pacs.pixels.pipeline import Window, apply_lut, grey_lut

FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG", "image/gif": "GIF"}


def render(
    part10: bytes,
    media_type: str = "image/jpeg",
    *,
    frame: int = 0,
    window: tuple[float, float] | Window | None = None,
    size: tuple[int, int] | None = None,
    quality: int = 90,
) -> bytes:
    """One frame (0-based) as JPEG, PNG or GIF.

    ``window`` is (centre, width) or a ``Window``; ``size`` (rows, columns)
    fits the picture inside that box, keeping its shape.
    """
    dataset, pixels = decode_frame(part10, frame)
    if isinstance(window, tuple):
        window = Window(*window)
    return picture(dataset, pixels, media_type, window=window, size=size, quality=quality)


def decode_frame(part10: bytes, frame: int) -> tuple[Dataset, np.ndarray]:
    """The header (without pixel data) and one decoded frame (0-based).

    The file is parsed once; only the frame asked for is decoded.
    """
    dataset = parse(part10)
    frames = _int(dataset, "NumberOfFrames", 1)
    if not 0 <= frame < frames:
        raise NotFoundError(f"frame {frame + 1} is out of range (1-{frames})")
    pixels = frame_array(dataset, frame)
    # Callers cache the header with the frame: keep the encoded pixels out of it.
    for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if keyword in dataset:
            delattr(dataset, keyword)
    return dataset, pixels


def picture(
    dataset: Dataset,
    pixels: np.ndarray,
    media_type: str,
    *,
    window: Window | None = None,
    size: tuple[int, int] | None = None,
    quality: int = 90,
) -> bytes:
    """A decoded frame through the display pipeline, encoded as ``media_type``."""
    image = Image.fromarray(to_display(dataset, pixels, window))
    if size is not None:
        image.thumbnail((size[1], size[0]), Image.Resampling.BILINEAR)
    out = BytesIO()
    kind = FORMATS[media_type]
    if kind == "JPEG":
        image.save(out, format=kind, quality=quality)
    elif kind == "PNG":
        # zlib level 1: a 2500x3000 CR in 65 ms instead of 167, for a file
        # ~1.7 times larger; a viewer waits on the encoder more than on the link.
        image.save(out, format=kind, compress_level=1)
    else:
        image.save(out, format=kind)
    return out.getvalue()


def to_display(dataset: Any, pixels: np.ndarray, window: Window | None) -> np.ndarray:
    """8-bit grey (rows, columns) or RGB (rows, columns, 3) for display."""
    photometric = str(dataset.get("PhotometricInterpretation", "")).strip()
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(pixels, dataset)
        return _to_8_bits(rgb, 16 if rgb.dtype == np.uint16 else 8)
    if pixels.ndim == 3 and pixels.shape[-1] in (3, 4):
        return _to_8_bits(pixels[..., :3], _int(dataset, "BitsStored", 8))
    if pixels.dtype.kind == "f" or _int(dataset, "BitsStored", 8) > 16:
        values = pixels.astype(np.float64)
        low, high = float(values.min()), float(values.max())
        return np.rint((values - low) * (255.0 / max(high - low, 1e-9))).astype(np.uint8)
    lut, offset = grey_lut(dataset, window, pixels)
    return apply_lut(pixels, lut, offset)


def _int(dataset: Any, keyword: str, default: int) -> int:
    """An integer attribute, or ``default`` when absent or malformed (an IS of '1A')."""
    try:
        return int(dataset.get(keyword) or default)
    except (TypeError, ValueError):
        return default


def _to_8_bits(rgb: np.ndarray, bits: int) -> np.ndarray:
    if rgb.dtype == np.uint8 or bits <= 8:
        return rgb.astype(np.uint8, copy=False)
    return (rgb >> (bits - 8)).astype(np.uint8)

"""Rendering a frame to a picture (PS3.18 10.4.1.1.4 rendered resources).

Grey-scale frames go through ``pipeline`` (one lookup table for the Modality
LUT, the VOI window or LUT and MONOCHROME1 inversion); colour frames are
RGB after pydicom's YBR conversion, or through the palette. Only the frame
asked for is decoded. Encoded as JPEG, PNG (libjpeg-turbo, libpng) or GIF (Pillow).
"""

from __future__ import annotations

import functools
from io import BytesIO
from typing import Any

import numpy as np
from PIL import Image
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_color_lut

from pacs.errors import NotFoundError
from pacs.pixels.codecs import load_imagecodecs
from pacs.pixels.frames import frame_array, parse
from pacs.pixels.jpeg import encode_in_strips
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
    dataset: Any,
    pixels: np.ndarray,
    media_type: str,
    *,
    window: Window | None = None,
    size: tuple[int, int] | None = None,
    quality: int = 90,
) -> bytes:
    """A decoded frame through the display pipeline, encoded as ``media_type``.

    ``dataset`` is a pydicom data set or a ``JsonHeader`` (anything with
    ``get`` and ``in`` by keyword).
    """
    return encode_picture(display_array(dataset, pixels, window, size), media_type, quality)


def display_array(
    dataset: Any,
    pixels: np.ndarray,
    window: Window | None = None,
    size: tuple[int, int] | None = None,
) -> np.ndarray:
    """A decoded frame as 8-bit grey or RGB for display, fitted inside ``size`` (rows, columns)."""
    display = to_display(dataset, pixels, window)
    if size is not None and (display.shape[0] > size[0] or display.shape[1] > size[1]):
        image = Image.fromarray(display)
        image.thumbnail((size[1], size[0]), Image.Resampling.BILINEAR)
        display = np.asarray(image)
    return display


def animated_gif(displays: list[np.ndarray], frame_ms: float) -> bytes:
    """Frames shown one after the other, looping (a multi-frame instance as one picture)."""
    images = [Image.fromarray(display) for display in displays]
    out = BytesIO()
    images[0].save(
        out,
        format="GIF",
        save_all=True,
        append_images=images[1:],
        duration=max(20, round(frame_ms)),
        loop=0,
    )
    return out.getvalue()


def encode_picture(display: np.ndarray, media_type: str, quality: int = 90) -> bytes:
    """8-bit grey or RGB as JPEG, PNG or GIF.

    JPEG and PNG go straight from the array to libjpeg-turbo and libpng
    (imagecodecs), a large JPEG in strips on several cores
    (``pacs.pixels.jpeg``). PNG uses zlib level 1 with run-length matching on
    rows filtered by "up": a 2500x3000 CR in ~22 ms and ~470 KB, where
    Pillow's level 1 took ~200 ms for ~600 KB (``benchmarks/imaging.py``); a
    viewer waits on the encoder more than on the link.
    """
    codecs = load_imagecodecs()
    kind = FORMATS[media_type]
    display = np.ascontiguousarray(display)  # a view of RGBA's first three samples is not
    if codecs is not None and kind == "JPEG":
        return encode_in_strips(
            display, lambda part: bytes(codecs.jpeg8_encode(part, level=quality))
        )
    if codecs is not None and kind == "PNG":
        return bytes(codecs.png_encode(display, level=1, strategy=3, filter=32))
    out = BytesIO()
    image = Image.fromarray(display)
    if kind == "JPEG":
        image.save(out, format=kind, quality=quality)
    elif kind == "PNG":
        image.save(out, format=kind, compress_level=1)
    else:
        image.save(out, format=kind)
    return out.getvalue()


class JsonHeader:
    """Image attributes read from an instance's precomputed DICOM JSON.

    Enough of a data set for the grey pipeline (``get`` and ``in`` by
    keyword), so a frame read in place renders without parsing the file.
    """

    __slots__ = ("_model",)

    def __init__(self, model: dict[str, Any]) -> None:
        self._model = model

    def get(self, keyword: str, default: Any = None) -> Any:
        element = self._model.get(_tag_of(keyword))
        if not element or "Value" not in element:
            return default
        value = element["Value"]
        return value[0] if len(value) == 1 else value

    def __contains__(self, keyword: object) -> bool:
        return isinstance(keyword, str) and _tag_of(keyword) in self._model


@functools.cache
def _tag_of(keyword: str) -> str:
    tag = tag_for_keyword(keyword)
    return "" if tag is None else f"{tag:08X}"


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

"""Rendering a frame to an 8-bit picture (PS3.3 C.11 pixel pipeline, first cut).

Modality LUT (rescale or LUT sequence), then the first VOI window or VOI LUT
of the instance (or the caller's window), MONOCHROME1 inverted, colour kept
as RGB; encoded by Pillow. The imaging-core issue extends this.
"""

from __future__ import annotations

from io import BytesIO
from typing import Any

import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut

from pacs.errors import InvalidDatasetError, UnsupportedTransferSyntaxError

FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG", "image/gif": "GIF"}


def render(
    part10: bytes,
    media_type: str = "image/jpeg",
    *,
    frame: int = 0,
    window: tuple[float, float] | None = None,
    size: tuple[int, int] | None = None,
    quality: int = 90,
) -> bytes:
    """One frame (0-based) as JPEG, PNG or GIF; ``window`` is (centre, width);
    ``size`` (rows, columns) fits the picture inside that box, keeping its shape."""
    try:
        dataset = dcmread(BytesIO(part10))
        pixels = dataset.pixel_array
    except (NotImplementedError, RuntimeError) as exc:
        raise UnsupportedTransferSyntaxError(f"cannot decode the pixel data: {exc}") from exc
    except Exception as exc:  # pydicom signals bad pixel data with assorted types
        raise InvalidDatasetError(f"cannot decode the pixel data: {exc}") from exc
    frames = int(dataset.get("NumberOfFrames") or 1)
    if not 0 <= frame < frames:
        raise InvalidDatasetError(f"frame {frame + 1} is out of range (1-{frames})")
    if frames > 1:
        pixels = pixels[frame]
    samples = int(dataset.get("SamplesPerPixel") or 1)
    if samples == 1:
        image = _grey(dataset, pixels, window)
        picture = Image.fromarray(image, mode="L")
    else:
        if pixels.dtype != np.uint8:
            top = float(2 ** int(dataset.get("BitsStored") or 8) - 1)
            pixels = np.clip(pixels.astype(np.float32) * (255.0 / top), 0, 255)
        picture = Image.fromarray(pixels.astype(np.uint8), mode="RGB")
    if size is not None:
        picture.thumbnail((size[1], size[0]))
    out = BytesIO()
    kind = FORMATS[media_type]
    picture.save(out, format=kind, **({"quality": quality} if kind == "JPEG" else {}))
    return out.getvalue()


def _grey(dataset: Any, pixels: np.ndarray, window: tuple[float, float] | None) -> np.ndarray:
    values = apply_modality_lut(pixels, dataset).astype(np.float64)
    if window is None and "WindowCenter" in dataset and "WindowWidth" in dataset:
        window = (
            float(np.atleast_1d(dataset.WindowCenter)[0]),
            float(np.atleast_1d(dataset.WindowWidth)[0]),
        )
    if window is not None:
        # PS3.3 C.11.2.1.2.1, linear function
        centre, width = window
        low = centre - 0.5 - (max(width, 1.0) - 1) / 2
        high = centre - 0.5 + (max(width, 1.0) - 1) / 2
    else:
        if "VOILUTSequence" in dataset:
            values = apply_voi_lut(values, dataset, index=0).astype(np.float64)
        low, high = float(values.min()), float(values.max())
    scale = 255.0 / max(high - low, 1e-9)
    image = np.clip((values - low) * scale, 0, 255).astype(np.uint8)
    if dataset.get("PhotometricInterpretation", "") == "MONOCHROME1":
        image = 255 - image
    return image

"""Frames and bulk data values out of a stored Part 10 file."""

from __future__ import annotations

from collections.abc import Sequence
from io import BytesIO

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.pixels.utils import pixel_array
from pydicom.tag import Tag

from pacs.errors import InvalidDatasetError, UnsupportedTransferSyntaxError


def decode_frames(part10: bytes, indices: Sequence[int]) -> list[bytes]:
    """Decode frames (0-based) to native little-endian pixel bytes.

    Colour JPEG comes out as RGB, as pydicom decodes it. Each frame is decoded
    on its own, so one frame of a large multi-frame instance costs one frame.
    """
    frames = []
    for index in indices:
        try:
            array = pixel_array(BytesIO(part10), index=index)
        except (NotImplementedError, RuntimeError) as exc:
            raise UnsupportedTransferSyntaxError(f"cannot decode the pixel data: {exc}") from exc
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            raise InvalidDatasetError(f"cannot decode the pixel data: {exc}") from exc
        frames.append(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes())
    return frames


def bulk_value(part10: bytes, path: Sequence[str]) -> bytes | None:
    """The raw value at ``path`` (tag, item number, tag, ...), or ``None``.

    Tags are 8 hex digits; item numbers count from 1, as in the BulkDataURIs
    of ``pacs.core.dicomjson``.
    """
    try:
        dataset: Dataset = dcmread(BytesIO(part10), force=True)
    except Exception as exc:  # pydicom signals bad files with assorted types
        raise InvalidDatasetError(f"stored file cannot be parsed: {exc}") from exc
    steps = list(path)
    while steps:
        try:
            tag = Tag(int(steps.pop(0), 16))
        except ValueError:
            return None
        if tag not in dataset:
            return None
        element = dataset[tag]
        if not steps:
            value = element.value
            return bytes(value) if isinstance(value, bytes | bytearray) else None
        try:
            number = int(steps.pop(0))
            item = element.value[number - 1] if number >= 1 else None
        except (ValueError, IndexError, TypeError):
            return None
        if not isinstance(item, Dataset):
            return None  # a number into a value that is not a sequence
        dataset = item
    return None

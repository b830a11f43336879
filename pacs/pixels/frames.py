"""Frames and bulk data values out of a stored Part 10 file."""

from __future__ import annotations

import logging
import struct
from collections.abc import Sequence
from io import BytesIO

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragmented_frames
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.utils import pixel_array
from pydicom.tag import Tag
from pydicom.uid import UID

from pacs.errors import CorruptDataError, UnsupportedTransferSyntaxError
from pacs.pixels.codecs import FrameFormat, preferred_plugin

log = logging.getLogger(__name__)


def decode_frames(part10: bytes, indices: Sequence[int]) -> list[bytes]:
    """Decode frames (0-based) to native little-endian pixel bytes.

    Colour JPEG comes out as RGB, as pydicom decodes it. Each frame is decoded
    on its own, so one frame of a large multi-frame instance costs one frame.
    """
    dataset = parse(part10)
    frames = []
    for index in indices:
        array = frame_array(dataset, index)
        frames.append(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes())
    return frames


FrameSpan = tuple[int, tuple[int, ...]]
"""Where one frame lies in an encapsulated Pixel Data value: the offset of its
first fragment's bytes, and the length of each of its fragments (consecutive
fragments are 8 bytes apart: the next item's tag and length)."""


def frame_spans(value: bytes | bytearray, number_of_frames: int) -> list[FrameSpan]:
    """Each frame's place in an encapsulated Pixel Data value (PS3.5 A.4), from
    its first item (the Basic Offset Table) on, grouped into frames as pydicom
    groups them (``generate_fragmented_frames``: the offset table, one fragment
    per frame, or JPEG markers). Raises ``ValueError`` for anything else than
    a plain sequence of items: the caller then reads frames pydicom's way."""
    starts, lengths = [], []
    position = 0
    while position + 8 <= len(value):
        group, element, length = struct.unpack_from("<HHL", value, position)
        if (group, element) == (0xFFFE, 0xE0DD):
            break
        if (group, element) != (0xFFFE, 0xE000) or length == 0xFFFFFFFF:
            raise ValueError(f"({group:04X},{element:04X}) where an item was expected")
        starts.append(position + 8)
        lengths.append(length)
        position += 8 + length
    if not starts:
        raise ValueError("no Basic Offset Table item")
    # The two cases pydicom needs not be asked (it would copy every fragment):
    # one frame is all the fragments; with no offset table and a fragment per
    # frame, each fragment is a frame.
    if number_of_frames == 1 and len(starts) > 1:
        return [(starts[1], tuple(lengths[1:]))]
    if lengths[0] == 0 and len(starts) - 1 == number_of_frames:
        return [(start, (length,)) for start, length in zip(starts[1:], lengths[1:], strict=True)]
    spans, fragment = [], 1  # after the Basic Offset Table
    for fragments in generate_fragmented_frames(value, number_of_frames=number_of_frames):
        sizes = tuple(len(f) for f in fragments)
        if tuple(lengths[fragment : fragment + len(sizes)]) != sizes:
            raise ValueError("fragments do not line up with the items")
        spans.append((starts[fragment], sizes))
        fragment += len(sizes)
    return spans


def span_bytes(span: FrameSpan, data: bytes | bytearray | memoryview, start: int = 0) -> bytes:
    """The frame ``span`` names, out of ``data`` that begins at ``start`` of the value."""
    position, parts = span[0] - start, []
    for size in span[1]:
        parts.append(data[position : position + size])
        position += size + 8
    return parts[0] if len(parts) == 1 and isinstance(parts[0], bytes) else b"".join(parts)


def span_length(span: FrameSpan) -> int:
    """Bytes from the first fragment's start to the last one's end."""
    return sum(span[1]) + 8 * (len(span[1]) - 1)


def parse(part10: bytes) -> Dataset:
    try:
        return dcmread(BytesIO(part10))
    except Exception as exc:  # pydicom signals bad files with assorted types
        raise CorruptDataError(f"stored file cannot be parsed: {exc}") from exc


def frame_array(dataset: Dataset, index: int) -> np.ndarray:
    """One decoded frame (0-based) of a parsed Part 10 data set.

    Our imagecodecs plugin decodes where it is preferred (see
    ``pacs.pixels.codecs``), pylibjpeg where it is not or when ours fails.
    Raises ``UnsupportedTransferSyntaxError`` when no decoder is installed
    and ``CorruptDataError`` when the pixel data is corrupt.
    """
    syntax = dataset.file_meta.get("TransferSyntaxUID", "")
    plugin = preferred_plugin(str(syntax), _int(dataset, "SamplesPerPixel", 1))
    try:
        if plugin:
            try:
                return pixel_array(dataset, index=index, decoding_plugin=plugin)
            except Exception as exc:  # any failure of ours: pylibjpeg may still read it
                log.debug("imagecodecs could not decode frame %d: %s", index + 1, exc)
        try:
            return pixel_array(dataset, index=index)
        except (NotImplementedError, RuntimeError):
            raise
        except Exception:
            # pydicom's frame reader is stricter than its whole-image one (a
            # file whose meta names the wrong VR encoding): decode it whole.
            whole = dataset.pixel_array
            return whole[index] if _int(dataset, "NumberOfFrames", 1) > 1 else whole
    except (NotImplementedError, RuntimeError) as exc:
        if not _decoder_installed(str(syntax)):
            raise UnsupportedTransferSyntaxError(
                f"cannot decode the pixel data: no decoder for {syntax} is installed"
            ) from exc
        # A decoder was there and every one failed: the codestream is at fault.
        raise CorruptDataError(f"cannot decode the pixel data: {_last_reason(exc)}") from exc
    except Exception as exc:  # pydicom signals bad pixel data with assorted types
        raise CorruptDataError(f"cannot decode the pixel data: {_last_reason(exc)}") from exc


def _decoder_installed(syntax: str) -> bool:
    try:
        return bool(get_decoder(UID(syntax)).is_available)
    except (NotImplementedError, ValueError):
        return False


def _last_reason(exc: Exception) -> str:
    """pydicom lists every plugin's failure on lines of their own: the reason is the last."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def grey_frame(
    data: bytes | bytearray | memoryview, shape: tuple[int, int], fmt: FrameFormat
) -> np.ndarray:
    """A native little endian grey frame (its bytes, read in place) as values.

    Signed values are sign-extended from Bits Stored, as pydicom does.
    """
    kind = "i" if fmt.signed else "u"
    frame = np.frombuffer(data, dtype=f"<{kind}{fmt.bits_allocated // 8}").reshape(shape)
    spare = fmt.bits_allocated - fmt.bits_stored
    if fmt.signed and spare > 0:
        frame = (frame << spare) >> spare
    return frame


def _int(dataset: Dataset, keyword: str, default: int) -> int:
    """An integer attribute, or ``default`` when absent or malformed (an IS of '1A')."""
    try:
        return int(dataset.get(keyword) or default)
    except (TypeError, ValueError):
        return default


def bulk_value(part10: bytes, path: Sequence[str]) -> bytes | None:
    """The raw value at ``path`` (tag, item number, tag, ...), or ``None``.

    Tags are 8 hex digits; item numbers count from 1, as in the BulkDataURIs
    of ``pacs.core.dicomjson``.
    """
    try:
        dataset: Dataset = dcmread(BytesIO(part10), force=True)
    except Exception as exc:  # pydicom signals bad files with assorted types
        raise CorruptDataError(f"stored file cannot be parsed: {exc}") from exc
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

"""Transfer syntax conversion for retrieval (PS3.5 Section 10, Annex A).

For now: any syntax whose pixel data pydicom's decoders (with the pylibjpeg
plugins) can read, to Explicit or Implicit VR Little Endian, so that a
destination that accepts only uncompressed images still gets them. Data sets
with native pixel data are re-encoded element by element, never decoded.
"""

from __future__ import annotations

import zlib
from io import BytesIO

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.encoders.base import get_encoder
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from pacs.errors import InvalidDatasetError, UnsupportedTransferSyntaxError

NATIVE_SYNTAXES = frozenset(
    (
        ImplicitVRLittleEndian,
        ExplicitVRLittleEndian,
        ExplicitVRBigEndian,
        DeflatedExplicitVRLittleEndian,
    )
)
"""Syntaxes whose pixel data is not compressed: conversion between them never decodes pixels."""
_TARGETS = frozenset((ExplicitVRLittleEndian, ImplicitVRLittleEndian))
LOSSLESS_TARGETS = frozenset((RLELossless, JPEG2000Lossless))
"""Compressed syntaxes we encode: lossless only, so the instance stays the same
instance (lossy output is a new instance, PS3.4 A.1.2.x; that comes with the
imaging core)."""


def can_transcode(source: str, target: str) -> bool:
    if source == target:
        return True
    if target in LOSSLESS_TARGETS:
        if not _encoder_available(target):
            return False
    elif target not in _TARGETS:
        return False
    if source in NATIVE_SYNTAXES:
        return True
    try:
        return bool(get_decoder(UID(source)).is_available)
    except NotImplementedError:
        return False


def encodable(target: str, bits_allocated: int | None, samples_per_pixel: int | None) -> bool:
    """Whether an image of this shape can be written in ``target`` (a conversion
    that fails half-way through a multipart response could only drop the
    connection, so WADO-RS asks first)."""
    if target not in LOSSLESS_TARGETS:
        return True
    return bits_allocated in (8, 16) and (samples_per_pixel or 1) in (1, 3)


def _encoder_available(target: str) -> bool:
    try:
        return bool(get_encoder(UID(target)).is_available)
    except NotImplementedError:
        return False


def transcode(data: bytes, source: str, target: str) -> bytes:
    """Re-encode a data set (without file meta) from ``source`` to ``target`` syntax.

    Compressed pixel data is decoded (colour JPEG to RGB, as PS3.5 8.2.1 says a
    decoded YBR_FULL_422 image is), and Photometric Interpretation follows.
    Raises ``UnsupportedTransferSyntaxError`` when no decoder or encoder exists.
    """
    if source == target:
        return data
    if not can_transcode(source, target):
        raise UnsupportedTransferSyntaxError(
            f"cannot convert {UID(source).name} to {UID(target).name}"
            " (a decoder may be missing: install pylibjpeg with its plugins)"
        )
    source_uid = UID(source)
    if source == DeflatedExplicitVRLittleEndian:
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        data = inflater.decompress(data) + inflater.flush()
    try:
        dataset = read_dataset(
            BytesIO(data), source_uid.is_implicit_VR, source_uid.is_little_endian
        )
        dataset.file_meta = FileMetaDataset()
        dataset.file_meta.TransferSyntaxUID = source_uid
        if source_uid.is_compressed:
            # The same instance in another encoding keeps its UID, as in Orthanc and dcm4chee.
            dataset.decompress(generate_instance_uid=False)
        elif source_uid == ExplicitVRBigEndian:
            _to_little_endian(dataset)
    except (ValueError, TypeError, AttributeError, RuntimeError, NotImplementedError) as exc:
        raise InvalidDatasetError(f"cannot decode the stored pixel data: {exc}") from exc
    if target in LOSSLESS_TARGETS:
        try:
            dataset.compress(UID(target), generate_instance_uid=False)
        except (ValueError, TypeError, AttributeError, RuntimeError, NotImplementedError) as exc:
            raise UnsupportedTransferSyntaxError(
                f"cannot encode this image as {UID(target).name}: {exc}"
            ) from exc
        return _encode(dataset, ExplicitVRLittleEndian)
    return _encode(dataset, UID(target))


def _to_little_endian(dataset: Dataset) -> None:
    """Make a big endian data set writable as little endian.

    pydicom converts numbers (US, FL...) when it reads them, but keeps OW and
    other word-valued bytes as they were, so Pixel Data must be byte-swapped
    here or every 16-bit pixel would come out garbled.
    """
    for element in dataset.iterall():
        _ = element.value  # decode each value in the source byte order
    if "PixelData" in dataset:
        bits = int(dataset.get("BitsAllocated") or 8)
        if bits in (16, 32):
            words = np.frombuffer(dataset.PixelData, dtype=f">u{bits // 8}")
            dataset.PixelData = words.astype(f"<u{bits // 8}").tobytes()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian


def _encode(dataset: Dataset, target: UID) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_implicit_VR = target.is_implicit_VR
    buffer.is_little_endian = target.is_little_endian
    del dataset.file_meta
    write_dataset(buffer, dataset)
    return buffer.getvalue()

"""Transfer syntax conversion for retrieval (PS3.5 Section 10, Annex A).

For now: any syntax whose pixel data pydicom's decoders (with the pylibjpeg
plugins) can read, to Explicit or Implicit VR Little Endian, so that a
destination that accepts only uncompressed images still gets them. Data sets
with native pixel data are re-encoded element by element, never decoded.
"""

from __future__ import annotations

import zlib
from io import BytesIO

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
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


def can_transcode(source: str, target: str) -> bool:
    if source == target:
        return True
    if target not in _TARGETS:
        return False
    if source in NATIVE_SYNTAXES:
        return True
    try:
        return bool(get_decoder(UID(source)).is_available)
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
    except (ValueError, TypeError, AttributeError, RuntimeError, NotImplementedError) as exc:
        raise InvalidDatasetError(f"cannot decode the stored pixel data: {exc}") from exc
    return _encode(dataset, UID(target))


def _encode(dataset: Dataset, target: UID) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_implicit_VR = target.is_implicit_VR
    buffer.is_little_endian = target.is_little_endian
    del dataset.file_meta
    write_dataset(buffer, dataset)
    return buffer.getvalue()

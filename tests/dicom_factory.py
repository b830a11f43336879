"""Deterministic test data: small synthetic images, raw encodings, Part 10 wrappers.

Nothing here imports the project: the tests build their inputs with pydicom
alone, so that an encoding bug in ``pacs`` cannot hide behind the same bug in
the test data.
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
import zlib
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom.config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import data_element_generator
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    generate_uid,
)


def uid(*parts: object) -> str:
    """A valid, deterministic UID (pydicom root + hash of ``parts``)."""
    return str(generate_uid(entropy_srcs=["pacs-tests", *map(str, parts)]))


@contextlib.contextmanager
def lenient_values() -> Iterator[None]:
    """Let a test put invalid values (bad UIDs) into a data set without a warning."""
    settings = pydicom.config.settings
    saved = settings.writing_validation_mode
    settings.writing_validation_mode = pydicom.config.IGNORE
    try:
        yield
    finally:
        settings.writing_validation_mode = saved


def make_ct(
    study: object = 1,
    series: object = 1,
    instance: int = 1,
    *,
    patient_id: str = "PAT-1",
    patient_name: str = "Test^Patient",
    modality: str = "CT",
    sop_class_uid: str = CTImageStorage,
    size: int = 8,
    variant: int = 0,
) -> Dataset:
    """A small CT-like image with 16-bit pixels; same arguments give the same bytes.

    ``variant`` changes the pixel values only, to make "same UID, different
    content" copies.
    """
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = uid("instance", study, series, instance)
    ds.StudyInstanceUID = uid("study", study)
    ds.SeriesInstanceUID = uid("series", study, series)
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyDate = "20240102"
    ds.StudyTime = "101500"
    ds.AccessionNumber = f"ACC{study}"[:16]
    ds.StudyID = str(study)[:16]
    ds.Modality = modality
    ds.SeriesNumber = str(series) if isinstance(series, int) else "1"
    ds.InstanceNumber = instance
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.Rows = size
    ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    seed = hashlib.sha256(f"{study}/{series}/{instance}/{variant}".encode()).digest()
    ds.PixelData = (seed * (size * size * 2 // len(seed) + 1))[: size * size * 2]
    return ds


def encode(ds: Dataset, transfer_syntax_uid: str = ExplicitVRLittleEndian) -> bytes:
    """The data set encoded as a C-STORE would carry it (no file meta)."""
    ts = UID(transfer_syntax_uid)
    buffer = DicomBytesIO()
    buffer.is_little_endian = ts.is_little_endian
    buffer.is_implicit_VR = ts.is_implicit_VR
    write_dataset(buffer, ds)
    data = buffer.getvalue()
    if ts == DeflatedExplicitVRLittleEndian:
        compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        data = compressor.compress(data) + compressor.flush()
    return data


def part10_bytes(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, raw: bytes
) -> bytes:
    """Preamble, file meta and then ``raw`` untouched (which may be malformed on purpose)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = transfer_syntax_uid
    meta.ImplementationClassUID = uid("implementation")
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = False
    buffer.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return buffer.getvalue() + raw


def write_part10(
    path: Path, sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, raw: bytes
) -> Path:
    path.write_bytes(part10_bytes(sop_class_uid, sop_instance_uid, transfer_syntax_uid, raw))
    return path


# Every VR of PS3.5 Table 6.2-1: anything else in explicit VR is not DICOM.
KNOWN_VRS = frozenset(
    (
        "AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT",
        "OB", "OD", "OF", "OL", "OV", "OW", "PN", "SH", "SL", "SQ", "SS", "ST",
        "SV", "TM", "UC", "UI", "UL", "UN", "UR", "US", "UT", "UV",
    )
)  # fmt: skip


def well_formed(raw: bytes, transfer_syntax_uid: str) -> bool:
    """Independent (pydicom-based) check that an encoded data set is complete.

    pydicom reads truncated values silently, so compare each element's declared
    length with what was read, and require the stream to end on a boundary.
    """
    ts = UID(transfer_syntax_uid)
    if ts == DeflatedExplicitVRLittleEndian:
        try:
            inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            raw = inflater.decompress(raw) + inflater.flush()
        except zlib.error:
            return False
        if not inflater.eof:
            return False
    stream = BytesIO(raw)
    end_of_last_element = 0
    try:
        for element in data_element_generator(
            stream, ts.is_implicit_VR, ts.is_little_endian, defer_size=None
        ):
            if not ts.is_implicit_VR and element.VR not in KNOWN_VRS:
                return False
            length = getattr(element, "length", 0xFFFFFFFF)
            value = element.value if isinstance(element.value, bytes) else b""
            if length != 0xFFFFFFFF and len(value) != length:
                return False
            end_of_last_element = stream.tell()
    except Exception:  # pydicom gives up on garbage with assorted errors
        return False
    # pydicom stops quietly on a partial element header: it must not be there.
    return end_of_last_element == len(raw)


def query(db_path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
    """Run one SELECT against a (possibly live) index file and close the connection."""
    with contextlib.closing(sqlite3.connect(db_path, timeout=30)) as connection:
        connection.row_factory = sqlite3.Row
        return connection.execute(sql, params).fetchall()


def blob_files(blob_dir: Path) -> list[Path]:
    """Every stored blob file (the ``.incoming`` scratch folder excluded)."""
    return sorted(
        p
        for p in blob_dir.rglob("*")
        if p.is_file() and ".incoming" not in p.relative_to(blob_dir).parts
    )


def incoming_files(blob_dir: Path) -> list[Path]:
    incoming = blob_dir / ".incoming"
    return sorted(incoming.iterdir()) if incoming.exists() else []


__all__ = [
    "blob_files",
    "encode",
    "incoming_files",
    "lenient_values",
    "make_ct",
    "part10_bytes",
    "query",
    "uid",
    "well_formed",
    "write_part10",
]

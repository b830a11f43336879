"""pacs.core.encoding: walking encoded data sets, and the Part 10 file meta."""

from __future__ import annotations

import struct
import warnings
import zlib
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filereader import data_element_generator, read_dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
)
from pynetdicom.dsutils import split_dataset

from pacs.core import encoding
from pacs.core.attributes import check_uid
from pacs.errors import InvalidDatasetError
from tests.conftest import PYDICOM_TEST_FILES, bundled_dicom_files
from tests.dicom_factory import encode, make_ct, well_formed

UNDEFINED = 0xFFFFFFFF


def raw_of(path: Path) -> tuple[bytes, str]:
    """The encoded data set of a file and its transfer syntax (as pydicom sees it)."""
    try:
        meta, offset = split_dataset(path)
        ts = meta.get("TransferSyntaxUID")
    except Exception:
        offset, ts = 0, None
    if not ts:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            implicit, little = pydicom.dcmread(path, force=True).original_encoding
        ts = (
            ImplicitVRLittleEndian
            if implicit
            else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
        )
    return path.read_bytes()[offset:], str(ts)


def walk(raw: bytes, ts: str) -> encoding.Layout:
    enc = encoding.Encoding.of(ts)
    return encoding.walk(encoding.inflate(raw) if enc.deflated else raw, enc)


def top_level_boundaries(raw: bytes, ts: str) -> set[int]:
    """Offsets where a top-level element ends, found with pydicom's reader."""
    uid = UID(ts)
    stream = BytesIO(raw)
    ends = {0}
    for _ in data_element_generator(
        stream, uid.is_implicit_VR, uid.is_little_endian, defer_size=None
    ):
        ends.add(stream.tell())
    assert stream.tell() == len(raw)
    return ends


def test_encoding_of_transfer_syntaxes() -> None:
    assert encoding.Encoding.of(ImplicitVRLittleEndian) == encoding.Encoding(True, True, False)
    assert encoding.Encoding.of(ExplicitVRLittleEndian) == encoding.Encoding(False, True, False)
    assert encoding.Encoding.of(ExplicitVRBigEndian) == encoding.Encoding(False, False, False)
    assert encoding.Encoding.of(DeflatedExplicitVRLittleEndian) == encoding.Encoding(
        False, True, True
    )
    assert encoding.Encoding.of(JPEGBaseline8Bit) == encoding.Encoding(False, True, False)


@pytest.mark.parametrize("path", bundled_dicom_files(), ids=lambda p: p.name)
def test_walk_agrees_with_pydicom_on_every_bundled_file(path: Path) -> None:
    raw, ts = raw_of(path)
    if well_formed(raw, ts):
        layout = walk(raw, ts)
        if layout.pixel_data_offset is None:
            assert "PixelData" not in pydicom.dcmread(path, force=True)
        else:
            assert layout.header_end < layout.pixel_data_offset
    else:
        with pytest.raises(InvalidDatasetError):
            walk(raw, ts)


def test_bundled_corpus_has_the_known_malformed_files() -> None:
    for name in ("MR_truncated.dcm", "rtplan_truncated.dcm"):
        raw, ts = raw_of(PYDICOM_TEST_FILES / name)
        with pytest.raises(InvalidDatasetError, match="past the end"):
            walk(raw, ts)


TRUNCATION_FILES = [
    "CT_small.dcm",  # explicit VR little endian
    "MR_small_implicit.dcm",  # implicit VR
    "MR_small_bigendian.dcm",  # explicit VR big endian
    "JPEG2000.dcm",  # encapsulated pixel data
    "MR_small_RLE.dcm",  # encapsulated, elements after the pixel data
    "rtplan.dcm",  # implicit VR, nested sequences
    "test-SR.dcm",  # deeply nested sequences
    "priv_SQ.dcm",  # undefined-length private sequence, implicit VR
]


@pytest.mark.parametrize("name", TRUNCATION_FILES)
def test_every_truncation_is_detected(name: str) -> None:
    raw, ts = raw_of(PYDICOM_TEST_FILES / name)
    boundaries = top_level_boundaries(raw, ts)
    cuts = set(range(0, min(len(raw), 4000))) | set(range(0, len(raw), 61))
    cuts |= set(range(max(0, len(raw) - 64), len(raw)))
    for cut in sorted(cuts):
        if cut in boundaries:
            walk(raw[:cut], ts)  # a whole number of elements is complete
        else:
            with pytest.raises(InvalidDatasetError):
                walk(raw[:cut], ts)
            if cut % 17 == 0:  # the tests' own checker agrees (sampled: it is slow)
                assert not well_formed(raw[:cut], ts)


@pytest.mark.parametrize(
    ("name", "header"),
    [
        ("CT_small.dcm", 12),
        ("MR_small_implicit.dcm", 8),
        ("MR_small_bigendian.dcm", 12),
        ("JPEG2000.dcm", 12),
        ("MR_small_RLE.dcm", 12),
    ],
)
def test_pixel_data_offset_and_length(name: str, header: int) -> None:
    path = PYDICOM_TEST_FILES / name
    raw, ts = raw_of(path)
    layout = walk(raw, ts)
    pixels = pydicom.dcmread(path).PixelData
    offset = layout.pixel_data_offset
    assert offset is not None
    assert layout.header_end == offset - header
    uid = UID(ts)
    order = "<" if uid.is_little_endian else ">"
    tag = struct.unpack_from(order + "HH", raw, layout.header_end)
    assert tag == (0x7FE0, 0x0010)
    if uid.is_compressed:
        assert layout.pixel_data_length == UNDEFINED
        assert raw[offset : offset + len(pixels)] == pixels
        # the fragments end with a sequence delimiter
        assert raw[offset + len(pixels) : offset + len(pixels) + 8] == b"\xfe\xff\xdd\xe0" + bytes(
            4
        )
    else:
        assert layout.pixel_data_length == len(pixels)
        assert raw[offset : offset + len(pixels)] == pixels


def test_no_pixel_data() -> None:
    raw, ts = raw_of(PYDICOM_TEST_FILES / "rtplan.dcm")
    layout = walk(raw, ts)
    assert (layout.header_end, layout.pixel_data_offset, layout.pixel_data_length) == (
        len(raw),
        None,
        None,
    )


def test_the_walk_keeps_the_encoded_uids_of_the_top_level() -> None:
    path = PYDICOM_TEST_FILES / "rtplan.dcm"
    raw, ts = raw_of(path)
    dataset = pydicom.dcmread(path)
    kept = walk(raw, ts).uid_values
    assert {tag: value.rstrip(b"\0 ") for tag, value in kept.items() if value} == {
        0x00080016: dataset.SOPClassUID.encode(),
        0x00080018: dataset.SOPInstanceUID.encode(),
        0x0020000D: dataset.StudyInstanceUID.encode(),
        0x0020000E: dataset.SeriesInstanceUID.encode(),
    }
    # UIDs inside sequences (referenced instances...) are not the instance's own.
    assert len(kept) == 4


def _with_icon(ds: Dataset) -> Dataset:
    icon = Dataset()
    icon.Rows = icon.Columns = 2
    icon.BitsAllocated = 8
    icon.PixelData = b"\x01\x02\x03\x04"
    ds.IconImageSequence = Sequence([icon])
    return ds


@pytest.mark.parametrize(
    "ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian]
)
@pytest.mark.parametrize("undefined_length", [False, True])
def test_pixel_data_inside_a_sequence_is_not_the_image(ts: str, undefined_length: bool) -> None:
    ds = _with_icon(make_ct("icon", 1, 1))
    ds["IconImageSequence"].is_undefined_length = undefined_length
    for item in ds.IconImageSequence:
        item.is_undefined_length_sequence_item = undefined_length
    raw = encode(ds, ts)
    layout = walk(raw, ts)
    assert layout.pixel_data_length == len(ds.PixelData)
    assert layout.pixel_data_offset is not None
    assert raw[layout.pixel_data_offset :] == ds.PixelData  # the top-level image, last element
    read = pydicom.dcmread(BytesIO(raw), force=True)
    assert read.IconImageSequence[0].PixelData == b"\x01\x02\x03\x04"


def test_float_pixel_data_ends_the_header_but_is_not_pixel_data() -> None:
    ds = make_ct("float", 1, 1)
    del ds.PixelData
    ds.FloatPixelData = struct.pack("<4f", 1, 2, 3, 4)
    raw = encode(ds)
    layout = walk(raw, ExplicitVRLittleEndian)
    assert layout.pixel_data_offset is None
    assert raw[layout.header_end : layout.header_end + 4] == b"\xe0\x7f\x08\x00"


def test_header_stream_holds_only_the_metadata() -> None:
    ds = make_ct("stream", 1, 1, size=64)
    raw = encode(ds)
    layout = walk(raw, ExplicitVRLittleEndian)
    header = encoding.header_stream(raw, layout).getvalue()
    assert header == raw[: layout.header_end]
    assert ds.PixelData not in header
    parsed = pydicom.dcmread(BytesIO(header), force=True)
    assert parsed.SOPInstanceUID == ds.SOPInstanceUID and "PixelData" not in parsed


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\x08\x00", "truncated element header"),
        (b"\x08\x00\x18\x00UI\x04\x001.2", "past the end"),
        (b"\x08\x00\x18\x00\x01\x02\x04\x001.23", "invalid VR"),
        (b"\x08\x00\x18\x00UI\x04\x001.23\x00", "truncated element header"),
        (b"\xfe\xff\x00\xe0\x00\x00\x00\x00", "unexpected delimiter"),
        (b"\x08\x00\x18\x00UI\xff\xff", "past the end"),
        (b"\x10\x00\x10\x00PN\x00\x00\xff\xff\xff", "truncated element header"),
    ],
    ids=["short-header", "short-value", "bad-vr", "trailing-byte", "stray-item", "long", "partial"],
)
def test_malformed_explicit_encodings(raw: bytes, message: str) -> None:
    with pytest.raises(InvalidDatasetError, match=message):
        encoding.walk(raw, encoding.Encoding.of(ExplicitVRLittleEndian))


def test_undefined_length_on_a_plain_element_is_refused() -> None:
    raw = b"\x10\x00\x10\x00UT\x00\x00\xff\xff\xff\xff"
    with pytest.raises(InvalidDatasetError, match="undefined length"):
        encoding.walk(raw, encoding.Encoding.of(ExplicitVRLittleEndian))


def test_empty_data_set_walks() -> None:
    assert encoding.walk(b"", encoding.Encoding.of(ExplicitVRLittleEndian)) == encoding.Layout(
        0, None, None, header_elements=[]
    )


def test_garbage_is_refused() -> None:
    garbage = bytes((i * 197 + 11) % 256 for i in range(4096))
    for ts in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian):
        with pytest.raises(InvalidDatasetError):
            encoding.walk(garbage, encoding.Encoding.of(ts))


def test_deeply_nested_sequences_are_refused() -> None:
    ds = Dataset()
    ds.PatientID = "deep"
    inner = ds
    for _ in range(80):
        item = Dataset()
        item.PatientID = "deep"
        item.is_undefined_length_sequence_item = True
        inner.ReferencedStudySequence = Sequence([item])
        inner["ReferencedStudySequence"].is_undefined_length = True
        inner = item
    raw = encode(ds)
    assert raw.count(b"\xfe\xff\xdd\xe0") == 80  # really undefined lengths, walked item by item
    with pytest.raises(InvalidDatasetError, match="nested too deeply"):
        encoding.walk(raw, encoding.Encoding.of(ExplicitVRLittleEndian))


def test_inflate() -> None:
    ds = make_ct("deflate", 1, 1)
    plain = encode(ds)
    deflated = encode(ds, DeflatedExplicitVRLittleEndian)
    assert encoding.inflate(deflated) == plain
    with pytest.raises(InvalidDatasetError, match="truncated"):
        encoding.inflate(deflated[: len(deflated) // 2])
    with pytest.raises(InvalidDatasetError, match="cannot be inflated"):
        encoding.inflate(b"\xff" * 64)
    # a zlib stream (with header) is not what the transfer syntax means
    with pytest.raises(InvalidDatasetError):
        encoding.inflate(zlib.compress(plain))


@pytest.mark.parametrize("ae_title", ["MODALITY", "ODD", ""])
@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit])
def test_file_meta_parses_back_with_pydicom(ae_title: str, ts: str) -> None:
    ds = make_ct("meta", 1, 1)
    sop_instance = ds.SOPInstanceUID + ".1"  # odd length: needs a NUL pad
    meta = encoding.file_meta_bytes(CTImageStorage, sop_instance, ts, ae_title)
    assert meta[:132] == b"\x00" * 128 + b"DICM"
    assert len(meta) % 2 == 0
    raw = encode(ds, ts if ts != JPEGBaseline8Bit else ExplicitVRLittleEndian)
    parsed = pydicom.dcmread(BytesIO(meta + raw))
    fm = parsed.file_meta
    assert fm.FileMetaInformationGroupLength == len(meta) - 132 - 12
    assert fm.FileMetaInformationVersion == b"\x00\x01"
    assert fm.MediaStorageSOPClassUID == CTImageStorage
    assert fm.MediaStorageSOPInstanceUID == sop_instance
    assert fm.TransferSyntaxUID == ts
    assert fm.ImplementationClassUID == encoding.IMPLEMENTATION_CLASS_UID
    assert check_uid("ImplementationClassUID", fm.ImplementationClassUID)
    assert fm.ImplementationVersionName == encoding.IMPLEMENTATION_VERSION_NAME
    if ae_title:
        assert fm.SourceApplicationEntityTitle == ae_title
    else:
        assert "SourceApplicationEntityTitle" not in fm
    assert parsed.SOPInstanceUID == ds.SOPInstanceUID

    elements, offset = encoding.split_part10(meta + raw)
    assert offset == len(meta)
    assert encoding.uid_value(elements[0x00020010]) == ts
    assert encoding.uid_value(elements[0x00020003]) == sop_instance


def test_split_part10_without_preamble_and_with_broken_meta() -> None:
    raw = encode(make_ct("split", 1, 1))
    assert encoding.split_part10(raw) == ({}, 0)
    meta = encoding.file_meta_bytes(CTImageStorage, "1.2.3", ExplicitVRLittleEndian, "")
    group_length_end = 132 + 12
    broken = meta[:group_length_end] + b"\x02\x00\x10\x00UI\xff\x00" + b"1.2"
    with pytest.raises(InvalidDatasetError, match="file meta"):
        encoding.split_part10(broken)


def test_garbage_inside_a_defined_length_sequence_is_rejected() -> None:
    # Explicit VR: (0008,1140) SQ of defined length whose only "item" is garbage.
    garbage = b"\x01\x02\x03\x04\x05\x06\x07\x08"
    sequence = struct.pack("<HH2sHL", 0x0008, 0x1140, b"SQ", 0, len(garbage)) + garbage
    with pytest.raises(InvalidDatasetError, match="expected an item"):
        encoding.walk(sequence, encoding.Encoding.of(ExplicitVRLittleEndian))


def test_defined_length_sequence_items_are_walked() -> None:
    inner = struct.pack("<HH2sH", 0x0008, 0x1150, b"UI", 4) + b"1.2\x00"
    item = struct.pack("<HHL", 0xFFFE, 0xE000, len(inner)) + inner
    sequence = struct.pack("<HH2sHL", 0x0008, 0x1140, b"SQ", 0, len(item)) + item
    layout = encoding.walk(sequence, encoding.Encoding.of(ExplicitVRLittleEndian))
    assert layout.pixel_data_offset is None
    truncated_inner = item[:-2]
    broken = struct.pack("<HH2sHL", 0x0008, 0x1140, b"SQ", 0, len(truncated_inner))
    with pytest.raises(InvalidDatasetError):
        encoding.walk(broken + truncated_inner, encoding.Encoding.of(ExplicitVRLittleEndian))


def read_header_with_pydicom(plain: bytes, layout: encoding.Layout, ts: str) -> Dataset:
    enc = encoding.Encoding.of(ts)
    return read_dataset(encoding.header_stream(plain, layout), enc.implicit_vr, enc.little_endian)


def assert_same_header(built: Dataset, read: Dataset) -> None:
    """Both hold the same raw elements in the same order, and decode alike."""
    assert list(built._dict) == list(read._dict)
    for tag, element in read._dict.items():
        assert tuple(built._dict[tag]) == tuple(element), f"{tag}"
    assert built.original_encoding == read.original_encoding
    assert built.original_character_set == read.original_character_set
    assert built._character_set == read._character_set
    assert built.to_json_dict(suppress_invalid_tags=True) == read.to_json_dict(
        suppress_invalid_tags=True
    )


@pytest.mark.parametrize("path", bundled_dicom_files(), ids=lambda p: p.name)
def test_header_dataset_is_what_pydicom_reads(path: Path) -> None:
    raw, ts = raw_of(path)
    if not well_formed(raw, ts):
        return
    enc = encoding.Encoding.of(ts)
    plain = encoding.inflate(raw) if enc.deflated else raw
    layout = encoding.walk(plain, enc)
    built = encoding.header_dataset(plain, layout, enc)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        read = read_header_with_pydicom(plain, layout, ts)
        if built is None:
            # Left to pydicom: an undefined-length element before the pixel data.
            assert layout.header_elements is None and len(read) > 0
            return
        assert_same_header(built, read)


def test_header_dataset_covers_most_bundled_files() -> None:
    built = 0
    for path in bundled_dicom_files():
        raw, ts = raw_of(path)
        if well_formed(raw, ts) and ts != DeflatedExplicitVRLittleEndian:
            enc = encoding.Encoding.of(ts)
            built += encoding.header_dataset(raw, encoding.walk(raw, enc), enc) is not None
    assert built >= 0.6 * len(bundled_dicom_files())


@pytest.mark.parametrize(
    "ts", [ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian]
)
def test_header_dataset_of_a_vietnamese_ct_with_sequences(ts: str) -> None:
    ds = make_ct("header", 1, 1, size=32)
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "Nguyễn^Văn An"
    ds.InstitutionName = ""
    item = Dataset()
    item.ReferencedSOPClassUID = ds.SOPClassUID
    item.ReferencedSOPInstanceUID = "1.2.3.4"
    ds.ReferencedImageSequence = Sequence([item])
    ds.ProcedureCodeSequence = Sequence([])
    raw = encode(ds, ts)
    enc = encoding.Encoding.of(ts)
    layout = encoding.walk(raw, enc)
    built = encoding.header_dataset(raw, layout, enc)
    assert built is not None
    assert_same_header(built, read_header_with_pydicom(raw, layout, ts))
    assert str(built.PatientName) == "Nguyễn^Văn An"
    assert built.ReferencedImageSequence[0].ReferencedSOPInstanceUID == "1.2.3.4"
    assert "PixelData" not in built


def test_header_dataset_leaves_implicit_data_that_looks_explicit_to_pydicom() -> None:
    # (0009,0010) of length 0x4955, whose length bytes read "UI": pydicom
    # would read this data set as explicit VR; the walk as implicit.
    raw = struct.pack("<HHL", 0x0009, 0x0010, 0x4955) + b"x" * 0x4955
    enc = encoding.Encoding.of(ImplicitVRLittleEndian)
    layout = encoding.walk(raw, enc)
    assert layout.header_elements is not None
    assert encoding.header_dataset(raw, layout, enc) is None

"""pacs.core.attributes: UID validation and the values the index keeps."""

from __future__ import annotations

import struct
import warnings
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, MRImageStorage

from pacs.core import encoding
from pacs.core.attributes import (
    check_request,
    check_uid,
    index_values,
    plain_required_uids,
    required_uids,
)
from pacs.errors import DatasetMismatchError, InvalidDatasetError
from tests.conftest import bundled_dicom_files
from tests.dicom_factory import encode, lenient_values, make_ct


@pytest.mark.parametrize(
    "value",
    [
        "1.2.840.10008.5.1.4.1.1.2",
        "2.25.329800735698586629295641978511506172918",
        "0",
        "1.2.3",
        "1.2.03.4",  # leading zero in a component: tolerated, as Orthanc does
        "1.02",
        "1." + "2" * 62,  # exactly 64 characters
    ],
)
def test_valid_uids(value: str) -> None:
    assert check_uid("SOPInstanceUID", value) == value


def test_uid_padding_is_stripped() -> None:
    assert check_uid("SOPInstanceUID", "1.2.3\x00") == "1.2.3"
    assert check_uid("SOPInstanceUID", "1.2.3 ") == "1.2.3"


@pytest.mark.parametrize(
    "value",
    [
        "1." + "2" * 63,  # 65 characters
        "1.2.840.abc",
        "1.2.3a",
        "A.B",
        "../../x",
        "1.2.3/../../etc",
        "1.2/3",
        "/1.2.3",
        "..",
        ".1.2",
        "1.2.",
        "1..2",
        "1.2 .3",
        "1.2.3\n",
        "1,2,3",
        "-1.2",
        "\u0661.\u0662",  # Arabic-Indic digits are digits to str.isdigit, not to DICOM
        "1.2.3\\1.2.4",  # a multi-value in one string
    ],
)
def test_invalid_uids(value: str) -> None:
    with pytest.raises(InvalidDatasetError, match="is not a valid UID"):
        check_uid("SOPInstanceUID", value)


@pytest.mark.parametrize("value", [None, "", "   "])
def test_missing_uids(value: str | None) -> None:
    with pytest.raises(InvalidDatasetError, match="SOPInstanceUID is missing"):
        check_uid("SOPInstanceUID", value)


def test_multi_valued_uid_is_rejected() -> None:
    with pytest.raises(InvalidDatasetError, match="several values"):
        check_uid("SeriesInstanceUID", MultiValue(str, ["1.2.3", "1.2.4"]))


def test_error_message_is_bounded() -> None:
    with pytest.raises(InvalidDatasetError) as info:
        check_uid("SOPInstanceUID", "x" * 10_000)
    assert len(str(info.value)) < 200


def test_required_uids_of_a_complete_data_set() -> None:
    ds = make_ct("attrs", 1, 1)
    assert required_uids(ds) == {
        "StudyInstanceUID": ds.StudyInstanceUID,
        "SeriesInstanceUID": ds.SeriesInstanceUID,
        "SOPInstanceUID": ds.SOPInstanceUID,
        "SOPClassUID": CTImageStorage,
    }


@pytest.mark.parametrize(
    "keyword", ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"]
)
def test_required_uids_names_the_missing_one(keyword: str) -> None:
    ds = make_ct("attrs", 1, 1)
    delattr(ds, keyword)
    with pytest.raises(InvalidDatasetError, match=f"{keyword} is missing"):
        required_uids(ds)


def test_required_uids_refuses_a_multi_valued_uid_in_a_data_set() -> None:
    ds = make_ct("attrs", 1, 1)
    ds.StudyInstanceUID = ["1.2.3", "1.2.4"]
    with pytest.raises(InvalidDatasetError, match="StudyInstanceUID has several values"):
        required_uids(ds)


def test_required_uids_refuses_path_tricks_in_a_data_set() -> None:
    ds = make_ct("attrs", 1, 1)
    with lenient_values():
        ds.SeriesInstanceUID = "1.2.3/../../etc"
    with pytest.raises(InvalidDatasetError, match="SeriesInstanceUID"):
        required_uids(ds)


def test_check_request() -> None:
    ds = make_ct("attrs", 1, 1)
    uids = required_uids(ds)
    check_request(uids, CTImageStorage, ds.SOPInstanceUID)
    check_request(uids, None, None)  # nothing announced: nothing to compare
    with pytest.raises(DatasetMismatchError, match="SOP Class UID"):
        check_request(uids, MRImageStorage, ds.SOPInstanceUID)
    with pytest.raises(DatasetMismatchError, match="SOP Instance UID"):
        check_request(uids, CTImageStorage, ds.SOPInstanceUID + ".9")
    assert issubclass(DatasetMismatchError, InvalidDatasetError)


def test_index_values_decodes_utf8_person_names() -> None:
    ds = make_ct("attrs", 1, 1, patient_name="Nguyễn^Văn An")
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.ReferringPhysicianName = "Trần^Thị Bích"
    values = index_values(ds)
    assert values["patient_name"] == "Nguyễn^Văn An"
    assert values["referring_physician_name"] == "Trần^Thị Bích"


def test_index_values_from_encoded_bytes() -> None:
    # The archive parses received bytes: decode them through pydicom as it does.
    ds = make_ct("attrs", 1, 1, patient_name="Ελληνικά^Όνομα")
    ds.SpecificCharacterSet = "ISO_IR 126"
    read = pydicom.dcmread(BytesIO(encode(ds)), force=True)
    assert index_values(read)["patient_name"] == "Ελληνικά^Όνομα"


def test_index_values_types_and_multi_values() -> None:
    ds = make_ct("attrs", 3, 7)
    values = index_values(ds)
    assert values["sop_instance_uid"] == ds.SOPInstanceUID
    assert values["study_instance_uid"] == ds.StudyInstanceUID
    assert values["modality"] == "CT"
    assert values["instance_number"] == 7 and isinstance(values["instance_number"], int)
    assert values["series_number"] == 3
    assert values["rows"] == 8 and values["bits_allocated"] == 16
    assert values["image_type"] == "ORIGINAL\\PRIMARY\\AXIAL"
    assert values["patient_id"] == "PAT-1"
    assert "study_description" not in values  # absent attributes are absent


def test_index_values_skips_empty_and_unparseable_integers() -> None:
    # Real-world data sets carry an IS of '1A'; pydicom cannot even build one,
    # so splice the element into the encoded bytes and read them back.
    ds = make_ct("attrs", 1, 1)
    ds.StudyDescription = ""
    raw = encode(ds)
    bad_is = struct.pack("<HH2sH", 0x0020, 0x0012, b"IS", 2) + b"1A"  # AcquisitionNumber
    at = raw.index(b"\x20\x00\x13\x00")  # before InstanceNumber, keeping tag order
    read = pydicom.dcmread(BytesIO(raw[:at] + bad_is + raw[at:]), force=True)
    assert read.AcquisitionNumber == "1A"
    values = index_values(read)
    assert "study_description" not in values
    assert "acquisition_number" not in values
    assert values["instance_number"] == 1


def test_index_values_follows_sequence_paths() -> None:
    ds = make_ct("attrs", 1, 1)
    first, second = Dataset(), Dataset()
    first.RequestedProcedureID = "RP-1"
    first.ScheduledProcedureStepID = "SPS-1"
    second.RequestedProcedureID = "RP-2"
    ds.RequestAttributesSequence = Sequence([first, second])
    issuer = Dataset()
    issuer.LocalNamespaceEntityID = "HOSPITAL"
    ds.IssuerOfAccessionNumberSequence = Sequence([issuer])
    values = index_values(ds)
    assert values["requested_procedure_id"] == "RP-1"  # first item only
    assert values["scheduled_procedure_step_id"] == "SPS-1"
    assert values["issuer_of_accession_number"] == "HOSPITAL"

    ds.RequestAttributesSequence = Sequence([])
    assert "requested_procedure_id" not in index_values(ds)


def _uids_both_ways(data: bytes, transfer_syntax_uid: str) -> tuple[object, object]:
    """(the UIDs read from the walk's encoded values, or None; what
    ``required_uids`` says of the parsed data set: its UIDs or its error)."""
    enc = encoding.Encoding.of(transfer_syntax_uid)
    plain = encoding.inflate(data) if enc.deflated else data
    layout = encoding.walk(plain, enc)
    fast = plain_required_uids(layout.uid_values)
    dataset = read_dataset(
        encoding.header_stream(plain, layout), enc.implicit_vr, enc.little_endian
    )
    try:
        parsed: object = required_uids(dataset)
    except InvalidDatasetError as exc:
        parsed = exc
    return fast, parsed


def test_uids_read_from_the_encoded_values_equal_the_parsed_ones() -> None:
    """Ingest names the blob from the UIDs as encoded, before pydicom parses
    the data set: wherever it does, on every pydicom test file in every
    transfer syntax, they must be the ones pydicom gives."""
    compared = fallen_back = 0
    for path in bundled_dicom_files():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = path.read_bytes()
            meta, offset = encoding.split_part10(data)
            raw_syntax = meta.get(0x00020010)
            if not raw_syntax:
                continue
            try:
                fast, parsed = _uids_both_ways(data[offset:], encoding.uid_value(raw_syntax))
            except Exception:
                continue  # not a complete data set: the walk or pydicom refuses it
        if fast is None:
            fallen_back += 1  # e.g. UIDs encoded as UN: pydicom reads those
        else:
            assert fast == parsed, path.name
            compared += 1
    assert compared > 50 and fallen_back < compared / 4


def _series_uid_at(data: bytes) -> int:
    """Offset of the Series Instance UID element in an explicit VR LE data set."""
    return data.index(b"\x20\x00\x0e\x00UI")


@pytest.mark.parametrize(
    ("raw", "plain"),
    [
        (b"1.2.3\x00", "1.2.3"),  # NUL padding, as PS3.5 9.1 pads UIDs
        (b"1.2.3 ", "1.2.3"),  # space padding, which some modalities use
        (b"", None),  # empty: missing
        (b"1.2.3\\1.2.4", None),  # several values
        (b"../../x", None),  # a path trick
        (b" 1.2.3", None),  # leading space: left to pydicom and check_uid
        ("1.2.\u0663".encode(), None),  # not ASCII
    ],
)
def test_an_encoded_uid_is_used_only_when_plainly_valid(raw: bytes, plain: str | None) -> None:
    ds = make_ct("attrs", 1, 1)
    data = encode(ds)
    at = _series_uid_at(data)
    (length,) = struct.unpack_from("<H", data, at + 6)
    element = struct.pack("<HH2sH", 0x0020, 0x000E, b"UI", len(raw)) + raw
    patched = data[:at] + element + data[at + 8 + length :]
    fast, parsed = _uids_both_ways(patched, "1.2.840.10008.1.2.1")
    if plain is None:
        assert fast is None
    else:
        assert fast is not None and fast["SeriesInstanceUID"] == plain
        assert fast == parsed


def test_an_encoded_uid_under_another_vr_or_twice_is_left_to_pydicom() -> None:
    ds = make_ct("attrs", 1, 1)
    data = encode(ds)
    at = _series_uid_at(data)
    (length,) = struct.unpack_from("<H", data, at + 6)
    as_lo = data[:at] + data[at : at + 4] + b"LO" + data[at + 6 :]
    assert (
        plain_required_uids(
            encoding.walk(as_lo, encoding.Encoding.of("1.2.840.10008.1.2.1")).uid_values
        )
        is None
    )
    element = data[at : at + 8 + length]
    twice = data[: at + 8 + length] + element + data[at + 8 + length :]
    assert (
        plain_required_uids(
            encoding.walk(twice, encoding.Encoding.of("1.2.840.10008.1.2.1")).uid_values
        )
        is None
    )
    # Implicit VR has no VR to check: the value is taken as the UI it must be.
    implicit = encode(ds, "1.2.840.10008.1.2")
    fast, parsed = _uids_both_ways(implicit, "1.2.840.10008.1.2")
    assert fast is not None and fast == parsed


def _decoded_by_pydicom(dataset: Dataset) -> dict[str, object]:
    """``index_values`` as pydicom decodes each value (what the plain-value
    reading must agree with)."""
    from pacs.core.attributes import _PLAN, decoded_value

    decoded = {
        column: decoded_value(dataset, path, tag, column, kind) for column, kind, path, tag in _PLAN
    }
    values: dict[str, object] = {k: v for k, v in decoded.items() if v is not None and v != ""}
    return values


CHARSET_FILES = sorted(
    (Path(pydicom.data.__path__[0]) / "charset_files").glob("*.dcm")  # type: ignore[attr-defined]
)


@pytest.mark.parametrize("path", bundled_dicom_files() + CHARSET_FILES, ids=lambda p: p.name)
def test_index_values_read_from_the_bytes_equal_pydicom_decoding(path: Path) -> None:
    """Plain values are read from their encoded bytes; every test file of
    pydicom (all VRs, both byte orders, implicit VR, every character set)
    must give what pydicom's own decoding gives."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            fast = index_values(pydicom.dcmread(path, stop_before_pixels=True, force=True))
        except InvalidDatasetError:
            pytest.skip("a value pydicom cannot decode (checked by the test below)")
        expected = _decoded_by_pydicom(pydicom.dcmread(path, stop_before_pixels=True, force=True))
    assert fast == expected


@pytest.mark.parametrize(
    ("keyword", "vr", "raw", "column", "value"),
    [
        ("PatientName", "PN", b"Doe^John \\Roe^Jane ", "patient_name", "Doe^John\\Roe^Jane"),
        ("ImageType", "CS", b"ORIGINAL\\PRIMARY\\ ", "image_type", "ORIGINAL\\PRIMARY\\"),
        ("StudyDescription", "LO", b" CHEST \x00", "study_description", "CHEST"),
        ("InstanceNumber", "IS", b" 12 ", "instance_number", 12),
        ("InstanceNumber", "IS", b"-3\\4", "instance_number", -3),
        ("Rows", "US", struct.pack("<HH", 512, 256), "rows", 512),
        ("ImageComments", "LT", b"a\\b ", "image_comments", "a\\b"),
        ("AccessionNumber", "SH", b"  ", "accession_number", None),
    ],
)
def test_index_values_from_plain_bytes(
    keyword: str, vr: str, raw: bytes, column: str, value: object
) -> None:
    from pydicom.datadict import tag_for_keyword

    ds = make_ct("attrs", 1, 1)
    if keyword in ds:
        del ds[keyword]
    tag = tag_for_keyword(keyword)
    element = struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), len(raw)) + raw
    encoded = encode(ds)
    # Keep tag order: insert before the first element with a larger tag.
    at = _position_for(encoded, tag)
    read = pydicom.dcmread(BytesIO(encoded[:at] + element + encoded[at:]), force=True)
    values = index_values(read)
    assert values.get(column) == value
    assert values == _decoded_by_pydicom(
        pydicom.dcmread(BytesIO(encoded[:at] + element + encoded[at:]), force=True)
    )


def _position_for(encoded: bytes, tag: int) -> int:
    """Where an element with ``tag`` goes among the explicit-VR LE data set's elements."""
    read = pydicom.dcmread(BytesIO(encoded), force=True)
    following = [e for e in read.iterall() if int(e.tag) > tag]
    if not following:
        return len(encoded)
    after = int(following[0].tag)
    return encoded.index(struct.pack("<HH", after >> 16, after & 0xFFFF))

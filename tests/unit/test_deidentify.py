"""De-identification (PS3.15 Annex E), checked attribute by attribute against Table E.1-1."""

from __future__ import annotations

import json
import re
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    CTImageStorage,
    EnhancedCTImageStorage,
    EnhancedSRStorage,
    ExplicitVRLittleEndian,
    PositronEmissionTomographyImageStorage,
    SecondaryCaptureImageStorage,
    UltrasoundImageStorage,
)

from pacs.core.deidentify import (
    BASIC_PROFILE,
    TABLE_EDITION,
    BurnedInAnnotationError,
    DatePolicy,
    Deidentifier,
    DeidentifyOptions,
    OffsetScope,
    PseudonymMap,
    burned_in_risk,
)
from tests.conftest import PYDICOM_TEST_FILES
from tests.dicom_factory import lenient_values, make_ct, uid

UID_2_25 = re.compile(r"2\.25\.(0|[1-9][0-9]*)")


def text_for(tag: int) -> str:
    return f"S{tag:08X}"  # fits every text VR (CS and AE included), names the tag


def value_for(tag: int, vr: str) -> Any:
    """A recognisable original value for ``tag`` of ``vr``."""
    vr = vr.split(" or ")[0]
    if vr == "SQ":
        item = Dataset()
        item.ReferencedSOPClassUID = CTImageStorage
        item.ReferencedSOPInstanceUID = uid("referenced", tag)
        item.CodeMeaning = f"meaning {tag:08X}"
        item.add_new(0x00090010, "LO", "PRIVATE CREATOR")
        item.add_new(0x00091001, "LO", "private in an item")
        return Sequence([item])
    return {
        "PN": f"Secret^T{tag:08X}",
        "DA": "20240102",
        "DT": "20240102101500",
        "TM": "101500",
        "UI": uid("original", tag),
        "DS": "42",
        "IS": "42",
        "AS": "042Y",
        "AT": 0x00100010,
        "UR": "http://secret.example/",
        "FL": 42.0,
        "FD": 42.0,
    }.get(vr, 42 if vr in ("US", "SS", "UL", "SL", "UV", "SV") else None) or (
        b"\x01\x02\x03\x04" if vr in ("OB", "OW", "OF", "OL", "OD", "OV", "UN") else text_for(tag)
    )


def dataset_with_every_attribute(sop_class_uid: str = CTImageStorage) -> Dataset:
    """Every attribute Table E.1-1 lists, each with a value, plus the ranges
    (curve, overlay), private attributes and pixel data."""
    ds = make_ct(study="every", patient_id="PID-12345", patient_name="Doe^John")
    ds.SOPClassUID = sop_class_uid
    with lenient_values():
        for rule in BASIC_PROFILE.values():
            if rule.keyword in ("PatientID", "PatientName", "SOPInstanceUID", "StudyInstanceUID"):
                continue  # make_ct gave them
            if rule.keyword == "SeriesInstanceUID":
                continue
            vr = dictionary_VR(rule.tag)
            ds.add_new(rule.tag, vr.split(" or ")[0], value_for(rule.tag, vr))
        ds.add_new(0x50000005, "US", 2)  # Curve Dimensions
        ds.add_new(0x60000010, "US", 8)  # Overlay Rows
        ds.add_new(0x60003000, "OW", b"\xff" * 8)  # Overlay Data
        ds.add_new(0x60004000, "LT", "overlay comment: Doe")  # Overlay Comments
        ds.add_new(0x00090010, "LO", "ACME 1.0")
        ds.add_new(0x00091001, "LO", "Doe^John in a private tag")
        ds.add_new(0x00290010, "LO", "ACME SQ")
        ds.add_new(0x00291001, "SQ", Sequence([Dataset()]))
    return ds


def deidentify(ds: Dataset, **options: Any) -> tuple[Dataset, Deidentifier]:
    deidentifier = Deidentifier(DeidentifyOptions(**options))
    out, _ = deidentifier.dataset(ds)
    return out, deidentifier


def codes(out: Dataset) -> list[tuple[str, str]]:
    return [(i.CodeValue, i.CodingSchemeDesignator) for i in out.DeidentificationMethodCodeSequence]


def is_empty(out: Dataset, tag: int) -> bool:
    element = out[tag]
    return element.value is None or len(element.value) == 0


# -- the table -------------------------------------------------------------------


def test_the_table_is_the_2024b_basic_profile() -> None:
    assert TABLE_EDITION == "PS3.15 2024b"
    assert len(BASIC_PROFILE) == 617
    for rule in BASIC_PROFILE.values():
        assert keyword_for_tag(rule.tag) == rule.keyword, f"{rule.tag:08X} is not {rule.keyword}"
    # Spot checks, read off the standard's table by hand.
    expected = {
        "AccessionNumber": "Z",
        "PatientBirthDate": "Z",
        "PatientSex": "Z",
        "PatientAge": "X",
        "StudyDate": "Z",
        "SeriesDate": "X/D",
        "AcquisitionDateTime": "X/Z/D",
        "ContentDate": "Z/D",
        "InstitutionName": "X/Z/D",
        "ReferringPhysicianName": "Z",
        "StudyDescription": "X",
        "SOPInstanceUID": "U",
        "FrameOfReferenceUID": "U",
        "ReferencedSOPInstanceUID": "U",
        "ReferencedImageSequence": "X/Z/U*",
        "SourceImageSequence": "X/Z/U*",
        "ContentSequence": "D",
        "VerifyingObserverName": "D",
        "IconImageSequence": "X",
        "DigitalSignaturesSequence": "X",
        "AcquisitionContextSequence": "X/Z",
    }
    by_keyword = {rule.keyword: rule for rule in BASIC_PROFILE.values()}
    assert {k: by_keyword[k].action for k in expected} == expected
    characteristics = {r.keyword: r.patient_characteristics for r in BASIC_PROFILE.values()}
    assert {k for k, v in characteristics.items() if v == "K"} >= {
        "PatientSex",
        "PatientAge",
        "PatientSize",
        "PatientWeight",
    }
    assert by_keyword["StudyDescription"].clean_descriptors
    assert not by_keyword["PatientName"].clean_descriptors


def test_every_attribute_of_the_table_is_protected_as_it_says() -> None:
    ds = dataset_with_every_attribute()
    out, deidentifier = deidentify(ds)
    checked = 0
    for rule in BASIC_PROFILE.values():
        tag, action = rule.tag, rule.action
        original = ds.get(tag)
        if rule.keyword in ("PatientID", "PatientName"):
            assert str(out[tag].value) != str(original.value)
            assert str(out[tag].value).startswith(("ANON-", "ANONYMOUS^"))
        elif action == "X" or action in ("X/Z", "X/D", "X/Z/D"):
            # a CT image requires none of the combined ones: X
            assert tag not in out, rule
        elif action in ("Z", "Z/D"):
            assert tag in out and is_empty(out, tag), rule
        elif action == "D":
            assert tag in out and not is_empty(out, tag), rule
            if original.VR == "SQ":
                assert len(out[tag].value) == 1 and len(out[tag].value[0]) == 0, rule
            else:
                assert out[tag].value != original.value, rule
        elif action == "U":
            assert UID_2_25.fullmatch(str(out[tag].value)), rule
            assert out[tag].value != original.value
            assert out[tag].value == deidentifier.new_uid(str(original.value))
        elif action == "X/Z/U*":
            (item,) = out[tag].value
            assert item.ReferencedSOPClassUID == CTImageStorage
            referenced = original.value[0].ReferencedSOPInstanceUID
            assert item.ReferencedSOPInstanceUID == deidentifier.new_uid(referenced)
            assert 0x00091001 not in item and 0x00090010 not in item
        else:
            raise AssertionError(f"untested action {action}")
        checked += 1
    assert checked == len(BASIC_PROFILE)
    # The ranges and the private groups.
    assert not [e.tag for e in out if e.tag.group & 0xFF00 in (0x5000, 0x6000)]
    assert not [e.tag for e in out if e.tag.is_private]
    # Kept: what the table does not list (pixel data, image attributes).
    assert out.PixelData is ds.PixelData
    assert out.Rows == ds.Rows and out.Modality == "CT" and out.SeriesNumber == ds.SeriesNumber


def test_combined_actions_keep_what_the_iod_requires() -> None:
    enhanced = dataset_with_every_attribute(EnhancedCTImageStorage)
    out, _ = deidentify(enhanced)
    for keyword in ("ContentDate", "ContentTime", "AcquisitionDateTime", "DeviceSerialNumber"):
        assert out[keyword].value and out[keyword].value != enhanced[keyword].value, keyword
    assert out.ContentDate == "19000101"
    assert "AcquisitionContextSequence" in out and len(out.AcquisitionContextSequence) == 0
    assert "SeriesDate" not in out and "InstitutionName" not in out

    pet = dataset_with_every_attribute(PositronEmissionTomographyImageStorage)
    out, _ = deidentify(pet)
    assert out.SeriesDate == "19000101" and out.SeriesTime == "000000"  # Type 1: D
    assert is_empty(out, 0x00080022) and is_empty(out, 0x00080032)  # Type 2: Z
    assert "AcquisitionDateTime" not in out

    report = dataset_with_every_attribute(EnhancedSRStorage)
    out, _ = deidentify(report)
    assert out.ContentDate == "19000101" and out.ContentTime == "000000"


# -- a representative study -----------------------------------------------------------


def representative(instance: int = 1, series: int = 1, study: str = "rep") -> Dataset:
    """A CT slice as a modality sends it, with something in every category."""
    ds = make_ct(study=study, series=series, instance=instance, patient_id="PID-12345")
    ds.PatientName = "Doe^John^Q"
    ds.PatientBirthDate = "19700315"
    ds.PatientSex = "M"
    ds.PatientSize = "1.80"
    ds.PatientWeight = "82"
    ds.Allergies = "Penicillin (noted by Dr Smith)"
    ds.OtherPatientIDs = "OTHER-999"
    ds.InstitutionName = "Provincial Hospital North"
    ds.InstitutionAddress = "1 Main Street"
    ds.ReferringPhysicianName = "Smith^Anna"
    ds.OperatorsName = "Tech^Tom"
    ds.StationName = "CT01"
    ds.DeviceSerialNumber = "SN-4242"
    ds.StudyDescription = "CT CHEST Doe 2024-01-02 PID-12345"
    ds.SeriesDescription = "AXIAL 5mm"
    ds.ImageComments = "Patient John Doe, see Dr Smith"
    ds.SeriesDate = "20240102"
    ds.AcquisitionDate = "20240102"
    ds.ContentDate = "20240102"
    ds.AcquisitionDateTime = "20240102101733.5"
    ds.SeriesTime = "101600"
    ds.ContentTime = "101733"
    ds.DateOfLastDetectorCalibration = "20231201"
    ds.add_new(0x00181012, "DA", "20240103")  # Date of Secondary Capture (X)
    ds.FrameOfReferenceUID = uid("frame", study)
    ds.InstanceCreatorUID = uid("creator")
    ref = Dataset()
    ref.ReferencedSOPClassUID = CTImageStorage
    ref.ReferencedSOPInstanceUID = uid("instance", study, 1, 1)  # the first slice
    ds.ReferencedImageSequence = Sequence([ref])
    study_ref = Dataset()
    study_ref.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    study_ref.ReferencedSOPInstanceUID = uid("study", study)
    ds.ReferencedStudySequence = Sequence([study_ref])
    request = Dataset()
    request.RequestedProcedureID = "RP-77"
    request.AccessionNumber = "ACC-NESTED"
    request.ScheduledProcedureStepID = "SPS-1"
    ds.RequestAttributesSequence = Sequence([request])
    ds.BurnedInAnnotation = "NO"
    with lenient_values():
        ds.add_new(0x00091010, "LO", "ACME")
        ds.add_new(0x00091001, "LO", "Doe^John")
        ds.add_new(0x60000010, "US", 8)
        ds.add_new(0x60003000, "OW", b"\xff" * 8)
        ds.add_new(0x50000005, "US", 1)
    return ds


def part10(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_representative_instance_round_trips_and_leaks_nothing() -> None:
    ds = representative()
    ds.file_meta.SourceApplicationEntityTitle = "CT_NORTH"
    result = Deidentifier(DeidentifyOptions()).part10(part10(ds))
    back = pydicom.dcmread(BytesIO(result.data))

    assert result.data[:128] == b"\x00" * 128 and result.data[128:132] == b"DICM"
    assert back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert back.file_meta.MediaStorageSOPInstanceUID == back.SOPInstanceUID
    assert "SourceApplicationEntityTitle" not in back.file_meta
    assert back.PixelData == ds.PixelData
    assert back.PatientIdentityRemoved == "YES"
    assert back.LongitudinalTemporalInformationModified == "REMOVED"
    assert codes(back) == [("113100", "DCM")]
    assert "Basic Profile" in str(back.DeidentificationMethod)
    assert back.StudyDate == "" and back.StudyTime == "" and back.PatientBirthDate == ""
    assert back.AccessionNumber == "" and back.ReferringPhysicianName == ""
    for gone in (
        "SeriesDate",
        "AcquisitionDate",
        "AcquisitionDateTime",
        "InstitutionName",
        "OperatorsName",
        "StudyDescription",
        "ImageComments",
        "PatientSize",
        "PatientWeight",
        "Allergies",
        "OtherPatientIDs",
        "RequestAttributesSequence",
        "ReferencedStudySequence",
    ):
        assert gone not in back, gone
    assert back.ContentDate == ""  # Z/D, Type 2C for a CT image
    assert back.PatientSex == ""
    # Nothing identifying anywhere in the file, not even in a private tag.
    for secret in (
        "Doe",
        "John",
        "PID-12345",
        "OTHER-999",
        "Provincial",
        "Smith",
        "CT_NORTH",
        "SN-4242",
        "20240102",
        "19700315",
        ds.StudyInstanceUID,
        ds.SOPInstanceUID,
        ds.FrameOfReferenceUID,
    ):
        assert secret.encode() not in result.data, secret


def test_uids_are_consistent_within_the_study_and_new() -> None:
    originals = [representative(instance=i, series=s) for s in (1, 2) for i in (1, 2)]
    deidentifier = Deidentifier(DeidentifyOptions())
    results = [deidentifier.part10(part10(ds)) for ds in originals]
    outs = [pydicom.dcmread(BytesIO(r.data)) for r in results]

    assert len({o.StudyInstanceUID for o in outs}) == 1
    assert len({o.SeriesInstanceUID for o in outs}) == 2
    assert len({o.SOPInstanceUID for o in outs}) == 4
    assert len({o.FrameOfReferenceUID for o in outs}) == 1
    assert len({o.PatientID for o in outs}) == 1 and len({str(o.PatientName) for o in outs}) == 1
    for ds, out in zip(originals, outs, strict=True):
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            assert out[keyword].value != ds[keyword].value
            assert UID_2_25.fullmatch(out[keyword].value) and len(out[keyword].value) <= 64
        # The reference to the first slice is the first slice's new UID.
        assert out.ReferencedImageSequence[0].ReferencedSOPInstanceUID == outs[0].SOPInstanceUID
        assert (
            out.SeriesInstanceUID
            == outs[
                0 if ds.SeriesInstanceUID == originals[0].SeriesInstanceUID else 2
            ].SeriesInstanceUID
        )
    originals_uids = {
        ds[k].value for ds in originals for k in ("StudyInstanceUID", "SOPInstanceUID")
    }
    assert not originals_uids & {o.SOPInstanceUID for o in outs}


def test_the_same_map_gives_the_same_output_and_another_key_other_uids() -> None:
    data = part10(representative())
    first = Deidentifier(DeidentifyOptions(dates=DatePolicy.SHIFT))
    out = first.part10(data)
    saved = json.loads(json.dumps(first.mapping.to_json()))
    again = Deidentifier(DeidentifyOptions(dates=DatePolicy.SHIFT), PseudonymMap.from_json(saved))
    assert again.part10(data).data == out.data
    other = Deidentifier(DeidentifyOptions(dates=DatePolicy.SHIFT)).part10(data)
    assert other.sop_instance_uid != out.sop_instance_uid
    # The map holds what re-identifies; the output holds none of it.
    assert (
        saved["patients"]["PID-12345"]["patient_id"] == pydicom.dcmread(BytesIO(out.data)).PatientID
    )
    assert saved["uids"][representative().SOPInstanceUID] == out.sop_instance_uid
    study = saved["studies"][representative().StudyInstanceUID]
    assert study["study_instance_uid"] == out.study_instance_uid
    assert study["patient"] == "PID-12345" and study["date_offset_days"] < 0
    with pytest.raises(ValueError, match="not a de-identification map"):
        PseudonymMap.from_json({"format": "something else"})


# -- options ------------------------------------------------------------------------


def test_modified_dates_shift_every_date_by_one_offset() -> None:
    ds = representative()
    unlisted = 0x00141020  # Expiry Date: a date Table E.1-1 does not list
    assert unlisted not in BASIC_PROFILE
    ds.add_new(unlisted, "DA", "20240105")
    out, _ = deidentify(ds, dates=DatePolicy.SHIFT, date_offset_days=-100)
    assert out.StudyDate == "20230924"  # 2024-01-02 minus 100 days
    assert out.SeriesDate == out.AcquisitionDate == out.ContentDate == "20230924"
    assert out.AcquisitionDateTime == "20230924101733.5"  # time of day kept
    assert out.DateOfLastDetectorCalibration == "20230823"
    assert out[unlisted].value == "20230927"
    assert out.StudyTime == "101500" and out.SeriesTime == "101600"
    assert out.PatientBirthDate == ""  # the profile never keeps it
    assert out.DateOfSecondaryCapture == "20230925"
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"
    assert ("113107", "DCM") in codes(out)


def test_derived_offsets_per_patient_or_per_study() -> None:
    first, second = representative(study="a"), representative(study="b")
    patient = Deidentifier(DeidentifyOptions(dates=DatePolicy.SHIFT))
    shifted = [patient.dataset(ds)[0].StudyDate for ds in (first, second)]
    assert shifted[0] == shifted[1] != "20240102"  # same patient, same shift
    offset = patient.mapping.patients["PID-12345"].date_offset_days
    assert offset is not None and -3650 <= offset <= -365
    per_study = Deidentifier(
        DeidentifyOptions(dates=DatePolicy.SHIFT, offset_scope=OffsetScope.STUDY)
    )
    per_study.dataset(first), per_study.dataset(second)
    offsets = {s["date_offset_days"] for s in per_study.mapping.studies.values()}
    assert len(offsets) == 2


def test_dates_removed_by_default_including_unlisted_ones() -> None:
    ds = representative()
    ds.add_new(0x00181200, "DA", "20240101")  # Date of Last Calibration (X)
    ds.add_new(0x00400244, "DA", "20240102")  # Performed Procedure Step Start Date (X)
    ds.add_new(0x00141020, "DA", "20240105")  # Expiry Date (not in the table)
    out, _ = deidentify(ds)
    assert out[0x00141020].value == ""
    assert out.StudyDate == "" and "SeriesDate" not in out and "AcquisitionDateTime" not in out
    assert "DateOfLastCalibration" not in out and "PerformedProcedureStepStartDate" not in out


def test_retain_patient_characteristics() -> None:
    ds = representative()
    out, _ = deidentify(ds, retain_patient_characteristics=True)
    assert (out.PatientSex, out.PatientSize, out.PatientWeight) == ("M", "1.80", "82")
    assert out.PatientAge == "053Y"  # added from the birth and study dates
    assert out.Allergies == "Penicillin (noted by Dr *****)"  # cleaned
    assert ("113108", "DCM") in codes(out)
    ds.PatientAge = "052Y"
    out, _ = deidentify(ds, retain_patient_characteristics=True)
    assert out.PatientAge == "052Y"
    out, _ = deidentify(ds)
    assert "PatientAge" not in out and "PatientWeight" not in out and out.PatientSex == ""


def test_clean_descriptors_keeps_descriptions_without_identifiers() -> None:
    out, _ = deidentify(representative(), clean_descriptors=True)
    assert out.StudyDescription == "CT CHEST *** ********** *********"
    assert out.SeriesDescription == "AXIAL 5mm"
    assert out.ImageComments == "Patient **** ***, see Dr *****"
    # A cleaned sequence: the profile inside, text scrubbed.
    (request,) = out.RequestAttributesSequence
    assert "RequestedProcedureID" not in request and request.AccessionNumber == ""
    assert ("113105", "DCM") in codes(out)
    out, _ = deidentify(representative())
    assert "StudyDescription" not in out and "SeriesDescription" not in out


def test_patient_name_and_id_given_or_a_stable_pseudonym() -> None:
    out, _ = deidentify(representative(), patient_id="TRIAL-001", patient_name="Case^One")
    assert (out.PatientID, str(out.PatientName)) == ("TRIAL-001", "Case^One")
    first, _ = deidentify(representative())
    assert re.fullmatch(r"ANON-[0-9A-Z]{10}", first.PatientID)
    assert str(first.PatientName) == "ANONYMOUS^" + first.PatientID[5:]
    deidentifier = Deidentifier(DeidentifyOptions())
    a, _ = deidentifier.dataset(representative(instance=1))
    b, _ = deidentifier.dataset(representative(instance=2))
    c, _ = deidentifier.dataset(make_ct(study="x", patient_id="SOMEONE-ELSE"))
    assert a.PatientID == b.PatientID != c.PatientID


# -- burned-in annotation ---------------------------------------------------------------


def test_burned_in_annotation_is_refused_unless_allowed() -> None:
    marked = representative()
    marked.BurnedInAnnotation = "YES"
    with pytest.raises(BurnedInAnnotationError, match=r"Burned In Annotation \(0028,0301\) is YES"):
        deidentify(marked)
    for sop_class in (SecondaryCaptureImageStorage, UltrasoundImageStorage):
        capture = representative()
        capture.SOPClassUID = sop_class
        del capture.BurnedInAnnotation
        assert burned_in_risk(capture) is not None
        with pytest.raises(BurnedInAnnotationError, match="--allow-burned-in"):
            deidentify(capture)
        capture.BurnedInAnnotation = "NO"  # the modality vouches for its pixels
        assert burned_in_risk(capture) is None
    screen = representative()
    del screen.BurnedInAnnotation
    screen.ImageType = ["DERIVED", "SECONDARY", "SCREEN SAVE"]
    assert "SCREEN SAVE" in str(burned_in_risk(screen))

    deidentifier = Deidentifier(DeidentifyOptions(allow_burned_in=True))
    out, warnings = deidentifier.dataset(marked)
    assert warnings and "pixel data may show patient identity" in warnings[0]
    assert out.PixelData is marked.PixelData and out.BurnedInAnnotation == "YES"


# -- every transfer syntax ------------------------------------------------------------

CORPUS = [
    "CT_small.dcm",  # explicit little endian
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "image_dfl.dcm",  # deflated
    "MR_small_jp2klossless.dcm",
    "JPEG2000.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "JPEG-lossy.dcm",
    "JPGExtended.dcm",
    "SC_rgb_rle_2frame.dcm",
    "rtplan.dcm",
    "waveform_ecg.dcm",
]


@pytest.mark.parametrize("name", CORPUS)
def test_pixel_data_and_transfer_syntax_unchanged(name: str) -> None:
    path: Path = PYDICOM_TEST_FILES / name
    source = pydicom.dcmread(path)
    result = Deidentifier(DeidentifyOptions(allow_burned_in=True)).part10(path.read_bytes())
    back = pydicom.dcmread(BytesIO(result.data))
    assert back.file_meta.TransferSyntaxUID == source.file_meta.TransferSyntaxUID
    if "PixelData" in source:
        assert back.PixelData == source.PixelData
        if "NumberOfFrames" in source or back.file_meta.TransferSyntaxUID.is_compressed:
            pass
        else:
            assert (back.pixel_array == source.pixel_array).all()
    assert back.SOPInstanceUID != source.SOPInstanceUID
    assert back.PatientIdentityRemoved == "YES"
    assert not [e.tag for e in back if e.tag.is_private]


def test_a_node_is_a_configured_one_or_given_in_full() -> None:
    from pacs.config import Node
    from pacs.deidentify_study import resolve_node
    from pacs.errors import ConfigError

    known = (Node("DEST", "10.0.0.5", 104),)
    assert resolve_node("DEST", known) == known[0]
    assert resolve_node("OTHER@127.0.0.1:11112", known) == Node("OTHER", "127.0.0.1", 11112)
    with pytest.raises(ConfigError, match="NOWHERE: not a known node"):
        resolve_node("NOWHERE", known)

"""The query engine: C-FIND/QIDO keys to index queries (PS3.4 C.2.2.2), and the
archive's search, count and retrieval selection over the in-memory index."""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_dataset
from pydicom.uid import (
    JPEG2000,
    JPEG2000MC,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    MRImageStorage,
    RLELossless,
    SecondaryCaptureImageStorage,
)
from pynetdicom.dsutils import split_dataset

from pacs.core import Archive
from pacs.core.query import build_query, row_values, search_key
from pacs.errors import InvalidQueryError, StorageError, UnsupportedTransferSyntaxError
from pacs.index.query import AnyOf, Condition, Query, Range, SingleValue, UidList, Wildcard
from pacs.index.schema import UNIQUE_KEYS, Level
from pacs.types import Caller
from tests.conftest import PYDICOM_TEST_FILES
from tests.dicom_factory import encode, make_ct, well_formed

CALLER = Caller("T", "127.0.0.1")
P, ST, SE, IM = Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE


def image(
    study: str,
    series: int = 1,
    instance: int = 1,
    *,
    patient_id: str = "PAT-1",
    patient_name: str = "Doe^John",
    modality: str = "CT",
    sop_class_uid: str = CTImageStorage,
    **keywords: Any,
) -> Dataset:
    """``make_ct`` with further attributes set by DICOM keyword."""
    ds = make_ct(
        study,
        series,
        instance,
        patient_id=patient_id,
        patient_name=patient_name,
        modality=modality,
        sop_class_uid=sop_class_uid,
    )
    for keyword, value in keywords.items():
        setattr(ds, keyword, value)
    return ds


def only(query: Query) -> Condition:
    assert len(query.conditions) == 1, query.conditions
    return query.conditions[0]


# -- build_query: which matching kind each key and value become ---------------------------


@pytest.mark.parametrize("value", ["", "*", "   ", " * "])
@pytest.mark.parametrize(
    "keyword",
    ["PatientName", "PatientID", "StudyInstanceUID", "StudyDate", "StudyTime", "SeriesNumber"],
)
def test_universal_matching_adds_no_condition(keyword: str, value: str) -> None:
    """C.2.2.2.3: a zero-length value, or ``*`` alone (C.2.2.2.4), matches everything."""
    assert build_query(IM, {keyword: value}).conditions == ()


@pytest.mark.parametrize(
    ("keyword", "value", "expected"),
    [
        # C.2.2.2.1 single value
        ("PatientID", "PAT-1", Condition(P, "patient_id", SingleValue("PAT-1"))),
        ("PatientID", "  PAT-1 ", Condition(P, "patient_id", SingleValue("PAT-1"))),
        ("AccessionNumber", "A[1]", Condition(ST, "accession_number", SingleValue("A[1]"))),
        ("StudyDate", "20240131", Condition(ST, "study_date", SingleValue("20240131"))),
        ("StudyDate", "2024.01.31", Condition(ST, "study_date", SingleValue("20240131"))),
        ("StudyTime", "12:00", Condition(ST, "study_time", SingleValue("1200"))),
        ("SeriesNumber", "2", Condition(SE, "series_number", SingleValue("2"))),
        (
            "NumberOfStudyRelatedInstances",
            "3",
            Condition(ST, "number_of_study_related_instances", SingleValue("3")),
        ),
        (
            "AcquisitionDateTime",
            "20240101120000-0500",  # a UTC offset, not a range
            Condition(IM, "acquisition_date_time", SingleValue("20240101120000-0500")),
        ),
        (
            "AcquisitionDateTime",
            "20240101120000+0100",
            Condition(IM, "acquisition_date_time", SingleValue("20240101120000+0100")),
        ),
        # multi-valued attributes: one of the values equals the key
        ("ImageType", "AXIAL", Condition(IM, "image_type", SingleValue("AXIAL"), True)),
        (
            "ModalitiesInStudy",
            "MR",
            Condition(ST, "modalities_in_study", SingleValue("MR"), True),
        ),
        # C.2.2.2.4 wildcards
        ("PatientID", "PAT*", Condition(P, "patient_id", Wildcard("PAT*"))),
        ("PatientID", "PA?-1", Condition(P, "patient_id", Wildcard("PA?-1"))),
        ("AccessionNumber", "A[1]*", Condition(ST, "accession_number", Wildcard("A[1]*"))),
        ("ImageType", "AX*", Condition(IM, "image_type", Wildcard("AX*"), True)),
        # C.2.2.2.2 list of UIDs
        ("StudyInstanceUID", "1.2.3", Condition(ST, "study_instance_uid", SingleValue("1.2.3"))),
        (
            "StudyInstanceUID",
            "1.2.3\\1.2.4",
            Condition(ST, "study_instance_uid", UidList(("1.2.3", "1.2.4"))),
        ),
        (
            "SOPInstanceUID",
            "1.2.3\\ 1.2.4 \\1.2.5",
            Condition(IM, "sop_instance_uid", UidList(("1.2.3", "1.2.4", "1.2.5"))),
        ),
        (
            "SOPClassesInStudy",
            f"{CTImageStorage}\\{MRImageStorage}",
            Condition(ST, "sop_classes_in_study", UidList((CTImageStorage, MRImageStorage)), True),
        ),
        # several values for other keys: any one matches
        (
            "ModalitiesInStudy",
            "CT\\MR",
            Condition(
                ST, "modalities_in_study", AnyOf((SingleValue("CT"), SingleValue("MR"))), True
            ),
        ),
        (
            "Modality",
            "CT\\M*",
            Condition(SE, "modality", AnyOf((SingleValue("CT"), Wildcard("M*")))),
        ),
        (
            "StudyDate",
            "20240101\\20240215",
            Condition(ST, "study_date", AnyOf((SingleValue("20240101"), SingleValue("20240215")))),
        ),
        (
            "SeriesNumber",
            "1\\2",
            Condition(SE, "series_number", AnyOf((SingleValue("1"), SingleValue("2")))),
        ),
    ],
)
def test_matching_kind(keyword: str, value: str, expected: Condition) -> None:
    assert only(build_query(IM, {keyword: value})) == expected


@pytest.mark.parametrize(
    ("keyword", "value", "expected"),
    [
        ("StudyDate", "20240101-", Range("20240101", None)),
        ("StudyDate", "-20241231", Range(None, "20241231")),
        ("StudyDate", "20240101-20240131", Range("20240101", "20240131")),
        ("StudyDate", "2024.01.01-2024.01.31", Range("20240101", "20240131")),
        ("StudyDate", "20240101-20240101", Range("20240101", "20240101")),
        # upper bounds of partial times reach the end of the period they name
        ("StudyTime", "-1200", Range(None, "120059.999999")),
        ("StudyTime", "-12", Range(None, "125959.999999")),
        ("StudyTime", "1000-1200", Range("1000", "120059.999999")),
        ("StudyTime", "10:00-12:00", Range("1000", "120059.999999")),
        ("StudyTime", "1200-1200", Range("1200", "120059.999999")),
        ("StudyTime", "-120000", Range(None, "120000.999999")),
        ("StudyTime", "-120000.5", Range(None, "120000.599999")),
        ("StudyTime", "-120000.123456", Range(None, "120000.123456")),
        ("StudyTime", "120000-", Range("120000", None)),
        ("AcquisitionDateTime", "20240101-20240102", Range("20240101", "20240102235959.999999")),
        ("AcquisitionDateTime", "-2024", Range(None, "20241231235959.999999")),
        ("AcquisitionDateTime", "202401011200-", Range("202401011200", None)),
        (
            "AcquisitionDateTime",
            "20240101120000-0500-20240102",
            Range("20240101120000-0500", "20240102235959.999999"),
        ),
        (
            "AcquisitionDateTime",
            "20240101120000+0100-20240101130000+0100",
            Range("20240101120000+0100", "20240101130000.999999"),
        ),
    ],
)
def test_range_matching(keyword: str, value: str, expected: Range) -> None:
    """C.2.2.2.5: ``A-B``, ``A-`` and ``-B`` on DA, TM and DT."""
    condition = only(build_query(IM, {keyword: value}))
    assert condition.match == expected
    assert not condition.multi_valued


def test_a_date_time_range_of_years() -> None:
    """ "2023-2024" cannot be a year with a UTC offset: -2024 is no offset
    (PS3.5 Table 6.2-1 allows -1200 to +1400), so it is a range of years."""
    condition = only(build_query(IM, {"AcquisitionDateTime": "2023-2024"}))
    assert condition.match == Range("2023", "20241231235959.999999")


def test_person_names_fold_case_by_default() -> None:
    condition = only(build_query(P, {"PatientName": "Doe^JOHN"}))
    assert condition == Condition(P, "patient_name_norm", SingleValue("doe^john"))
    condition = only(build_query(P, {"PatientName": "NGUYỄN*"}))
    assert condition == Condition(P, "patient_name_norm", Wildcard("nguyễn*"))


def test_person_names_keep_case_when_told() -> None:
    query = build_query(P, {"PatientName": "Doe^JOHN*"}, case_insensitive_names=False)
    assert only(query) == Condition(P, "patient_name", Wildcard("Doe^JOHN*"))


def test_person_names_are_compared_in_nfc() -> None:
    """A client may send decomposed Unicode (NFD); the index holds NFC."""
    decomposed = unicodedata.normalize("NFD", "Nguyễn^Văn An")
    assert decomposed != unicodedata.normalize("NFC", decomposed)
    condition = only(build_query(P, {"PatientName": decomposed}))
    assert condition.match == SingleValue(unicodedata.normalize("NFC", "nguyễn^văn an"))


def test_multi_valued_person_name_key() -> None:
    condition = only(build_query(ST, {"NameOfPhysiciansReadingStudy": "Smith^Anna"}))
    assert condition == Condition(
        ST, "name_of_physicians_reading_study_norm", SingleValue("smith^anna"), True
    )


def test_keys_of_lower_levels_are_ignored() -> None:
    """C.4.1.3.1: a hierarchical query matches keys of its level and above only."""
    keys = {
        "PatientID": "PAT-1",
        "StudyDate": "20240101",
        "Modality": "CT",
        "SOPInstanceUID": "1.2.3",
        "NumberOfSeriesRelatedInstances": "2",
    }
    levels = {level: {c.level for c in build_query(level, keys).conditions} for level in Level}
    assert levels == {P: {P}, ST: {P, ST}, SE: {P, ST, SE}, IM: {P, ST, SE, IM}}
    series_columns = {c.column for c in build_query(SE, keys).conditions}
    assert series_columns == {
        "patient_id",
        "study_date",
        "modality",
        "number_of_series_related_instances",
    }


def test_unknown_and_unindexed_keys_are_ignored() -> None:
    keys = {
        "NoSuchKeyword": "x",
        "PatientMotherBirthName": "Smith",  # a DICOM keyword the index does not hold
        "ScheduledProcedureStepID": "SPS1",  # held only inside a sequence
        "PatientID": "PAT-1",
    }
    assert build_query(IM, keys).conditions == (Condition(P, "patient_id", SingleValue("PAT-1")),)


def test_return_keys_become_columns_of_the_level_and_above() -> None:
    query = build_query(
        ST,
        {},
        [
            "PatientName",
            "StudyDate",
            "Modality",  # series level: not a study column
            "NoSuchKeyword",
            "StudyDate",
            "ModalitiesInStudy",
            "NumberOfPatientRelatedStudies",
        ],
    )
    assert query.columns == (
        (P, "patient_name"),  # returned as stored, never folded
        (ST, "study_date"),
        (ST, "modalities_in_study"),
        (P, "number_of_patient_related_studies"),
    )


def test_paging_is_passed_to_the_index() -> None:
    query = build_query(ST, {"PatientID": "PAT-1"}, limit=10, offset=20)
    assert (query.level, query.limit, query.offset) == (ST, 10, 20)
    assert build_query(ST, {}).limit is None
    assert build_query(ST, {}).offset == 0


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("StudyDate", "2024-13"),
        ("StudyDate", "2024"),
        ("StudyDate", "2024011"),
        ("StudyDate", "January"),
        ("StudyDate", "-"),
        ("StudyDate", "20241231-20240101"),  # reversed
        ("StudyDate", "20240101-20240131-20240201"),
        ("StudyDate", "20240101\\20240105-20240107"),  # a range inside a list
        ("StudyDate", "2024*"),
        ("PatientBirthDate", "1970??01"),
        ("StudyTime", "1300-1200"),
        ("StudyTime", "12h00"),
        ("StudyTime", "1"),
        ("AcquisitionDateTime", "20240102-20240101"),
        ("AcquisitionDateTime", "2024-01-01T12:00"),
        ("AcquisitionDateTime", "20240101120000+01"),
        ("StudyInstanceUID", "1.2.abc"),
        ("StudyInstanceUID", "1.2.*"),
        ("StudyInstanceUID", "1.2.3?"),
        ("StudyInstanceUID", "*.3"),
        ("StudyInstanceUID", "1.2.3\\1.2.x"),
        ("SeriesInstanceUID", "1." + "2" * 63),  # 65 characters
        ("SOPInstanceUID", "../1.2"),
        ("SOPClassesInStudy", "1.2.840.10008.5.1.4.1.1.*"),
        ("SeriesNumber", "two"),
        ("SeriesNumber", "1*"),
        ("SeriesNumber", "1.5"),
        ("NumberOfStudyRelatedInstances", "many"),
    ],
)
def test_malformed_values_are_refused(keyword: str, value: str) -> None:
    with pytest.raises(InvalidQueryError):
        build_query(IM, {keyword: value})


@pytest.mark.parametrize(
    ("keyword", "value"),
    [("StudyDate", "20241301"), ("StudyDate", "20240132"), ("StudyTime", "250000")],
)
def test_impossible_calendar_values_are_refused(keyword: str, value: str) -> None:
    """Eight digits are not a date: month 13, day 32 or hour 25 are malformed too."""
    with pytest.raises(InvalidQueryError):
        build_query(IM, {keyword: value})


def test_a_uid_list_of_empty_values_is_not_an_internal_error() -> None:
    """``\\`` alone holds no UID: like an empty value, it matches everything."""
    assert build_query(ST, {"StudyInstanceUID": "\\"}).conditions == ()


# -- search_key and row_values ----------------------------------------------------


def test_search_key() -> None:
    key = search_key("PatientName")
    assert key is not None
    assert (key.keyword, key.attribute.level, key.attribute.column) == (
        "PatientName",
        P,
        "patient_name",
    )
    assert not key.multi_valued
    multi = {
        keyword: found.multi_valued
        for keyword in (
            "ImageType",
            "ModalitiesInStudy",
            "SOPClassesInStudy",
            "NameOfPhysiciansReadingStudy",
            "PatientID",
            "StudyDate",
            "SeriesNumber",
        )
        if (found := search_key(keyword)) is not None
    }
    assert multi == {
        "ImageType": True,
        "ModalitiesInStudy": True,
        "SOPClassesInStudy": True,
        "NameOfPhysiciansReadingStudy": True,
        "PatientID": False,
        "StudyDate": False,
        "SeriesNumber": False,
    }
    computed = search_key("NumberOfSeriesRelatedInstances")
    assert computed is not None and computed.attribute.level is SE
    assert search_key("NoSuchKeyword") is None
    assert search_key("PatientMotherBirthName") is None


def test_row_values() -> None:
    row = {
        "patient_name": "Nguyễn^Văn An",
        "patient_name_norm": "nguyễn^văn an",
        "image_type": "ORIGINAL\\PRIMARY\\AXIAL",
        "modalities_in_study": "CT",
        "series_number": 2,
        "study_date": None,
        "pk": 7,
    }
    values = row_values(
        row,
        [
            "PatientName",
            "ImageType",
            "ModalitiesInStudy",
            "SeriesNumber",
            "StudyDate",
            "Modality",  # not in the row: returned empty
            "NoSuchKeyword",  # not a key the index knows: left out
        ],
    )
    assert values == {
        "PatientName": "Nguyễn^Văn An",
        "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"],
        "ModalitiesInStudy": ["CT"],  # multi-valued: a list even with one value
        "SeriesNumber": 2,
        "StudyDate": None,
        "Modality": None,
    }


# -- searching the archive ------------------------------------------------------------

# Per study: patient, study date and time, and other study-level attributes.
STUDIES: dict[str, dict[str, Any]] = {
    "a": {"patient_id": "PAT-1", "StudyDate": "20240101", "StudyTime": "120000"},
    "b": {
        "patient_id": "PAT-1",
        "StudyDate": "20240131",
        "StudyTime": "120030",
        "NameOfPhysiciansReadingStudy": ["Smith^Anna", "Jones^Bob"],
    },
    "c": {
        "patient_id": "PAT-2",
        "patient_name": "Nguyễn^Văn An",
        "SpecificCharacterSet": "ISO_IR 192",
        "StudyDate": "20240215",
        "StudyTime": "115959",
    },
    "d": {
        "patient_id": "PAT-3",
        "patient_name": "Müller^Hans",
        "StudyDate": "20231231",
        "StudyTime": "1201",
    },
    "e": {
        "patient_id": "PAT-4",
        "patient_name": "doe^jane",
        "StudyDate": "20250101",
        "StudyTime": "120100",
    },
}
# (study, series, instance, attributes of the series or instance)
IMAGES: list[tuple[str, int, int, dict[str, Any]]] = [
    ("a", 1, 1, {}),
    ("a", 1, 2, {"ImageType": ["DERIVED", "SECONDARY", "LOCALIZER"]}),
    ("a", 2, 1, {"modality": "MR", "sop_class_uid": MRImageStorage}),
    ("b", 1, 1, {}),
    ("c", 1, 1, {}),
    ("d", 1, 1, {"modality": "OT", "sop_class_uid": SecondaryCaptureImageStorage}),
    ("e", 1, 1, {"modality": "MR", "sop_class_uid": MRImageStorage}),
]
ALL_IMAGES = {f"{study}/{series}/{instance}" for study, series, instance, _ in IMAGES}


@dataclass
class Corpus:
    """The archive holding STUDIES and IMAGES, with entities named "a", "a/1", "a/1/1"."""

    archive: Archive
    names: dict[str, str] = field(default_factory=dict)
    """UID -> name, for every study, series and instance; patient IDs name themselves."""

    def uid(self, name: str) -> str:
        return next(uid for uid, n in self.names.items() if n == name)

    def find(self, level: Level, keys: Mapping[str, str], **options: Any) -> set[str]:
        """Names of the entities at ``level`` that match ``keys``."""
        unique = UNIQUE_KEYS[level].keyword
        rows = list(self.archive.search(level, keys, [unique], **options))
        found = [self.names.get(row[unique], row[unique]) for row in rows]
        assert len(found) == len(set(found)), f"an entity came twice: {found}"
        assert self.archive.count(level, keys, **options) == len(found)
        return set(found)


@pytest.fixture
def corpus(memory_archive: Archive) -> Corpus:
    result = Corpus(memory_archive)
    for study, series, instance, attributes in IMAGES:
        ds = image(study, series, instance, **{**STUDIES[study], **attributes})
        memory_archive.ingest_dataset(ds, CALLER)
        result.names[ds.StudyInstanceUID] = study
        result.names[ds.SeriesInstanceUID] = f"{study}/{series}"
        result.names[ds.SOPInstanceUID] = f"{study}/{series}/{instance}"
    return result


def test_universal_matching_finds_everything(corpus: Corpus) -> None:
    assert corpus.find(P, {}) == {"PAT-1", "PAT-2", "PAT-3", "PAT-4"}
    assert corpus.find(ST, {"PatientName": "", "StudyDate": "*"}) == set("abcde")
    assert corpus.find(SE, {"Modality": "*"}) == {"a/1", "a/2", "b/1", "c/1", "d/1", "e/1"}
    assert corpus.find(IM, {"SOPInstanceUID": ""}) == ALL_IMAGES


def test_single_value_matching(corpus: Corpus) -> None:
    assert corpus.find(ST, {"PatientID": "PAT-1"}) == {"a", "b"}
    assert corpus.find(ST, {"PatientID": "pat-1"}) == set()  # IDs are case-sensitive
    assert corpus.find(ST, {"PatientID": "PAT"}) == set()
    assert corpus.find(ST, {"StudyDate": "20240131"}) == {"b"}
    assert corpus.find(SE, {"Modality": "MR"}) == {"a/2", "e/1"}
    assert corpus.find(ST, {"AccessionNumber": "ACCc"}) == {"c"}


def test_keys_of_several_levels_all_apply(corpus: Corpus) -> None:
    assert corpus.find(SE, {"PatientID": "PAT-1", "StudyDate": "20240101"}) == {"a/1", "a/2"}
    assert corpus.find(IM, {"PatientID": "PAT-1", "Modality": "CT"}) == {
        "a/1/1",
        "a/1/2",
        "b/1/1",
    }
    assert corpus.find(IM, {"PatientID": "PAT-2", "Modality": "MR"}) == set()


def test_wildcard_matching(corpus: Corpus) -> None:
    assert corpus.find(P, {"PatientID": "PAT-*"}) == {"PAT-1", "PAT-2", "PAT-3", "PAT-4"}
    assert corpus.find(P, {"PatientID": "*-2"}) == {"PAT-2"}
    assert corpus.find(P, {"PatientID": "PA?-3"}) == {"PAT-3"}
    assert corpus.find(P, {"PatientID": "PAT?3"}) == {"PAT-3"}
    assert corpus.find(P, {"PatientID": "PAT-?"}) == {"PAT-1", "PAT-2", "PAT-3", "PAT-4"}
    assert corpus.find(P, {"PatientID": "PAT-??"}) == set()  # ? is exactly one character
    assert corpus.find(P, {"PatientID": "pat-*"}) == set()  # case-sensitive
    assert corpus.find(ST, {"AccessionNumber": "ACC*"}) == set("abcde")
    assert corpus.find(SE, {"Modality": "?R"}) == {"a/2", "e/1"}


def test_a_bracket_in_a_wildcard_value_is_literal(memory_archive: Archive) -> None:
    """GLOB treats ``[...]`` as a character class; DICOM has no such thing."""
    for n, patient_id in enumerate(["A[1]B", "A1B", "AB", "A]B"]):
        memory_archive.ingest_dataset(image(f"bracket{n}", patient_id=patient_id), CALLER)

    def found(value: str) -> set[str]:
        rows = memory_archive.search(P, {"PatientID": value}, ["PatientID"])
        return {row["PatientID"] for row in rows}

    assert found("A[1]*") == {"A[1]B"}
    assert found("A[1]B") == {"A[1]B"}
    assert found("A[1]?") == {"A[1]B"}
    assert found("*[*") == {"A[1]B"}
    assert found("*]*") == {"A[1]B", "A]B"}
    assert found("A[*") == {"A[1]B"}
    assert found("A1*") == {"A1B"}
    assert found("A[]]*") == set()


def test_date_ranges(corpus: Corpus) -> None:
    # a 20240101, b 20240131, c 20240215, d 20231231, e 20250101
    assert corpus.find(ST, {"StudyDate": "20240101-"}) == {"a", "b", "c", "e"}
    assert corpus.find(ST, {"StudyDate": "-20241231"}) == {"a", "b", "c", "d"}
    assert corpus.find(ST, {"StudyDate": "20240101-20240131"}) == {"a", "b"}
    assert corpus.find(ST, {"StudyDate": "20240102-20240130"}) == set()
    assert corpus.find(ST, {"StudyDate": "-20240131"}) == {"a", "b", "d"}  # bounds included
    assert corpus.find(ST, {"StudyDate": "2024.01.01-2024.01.31"}) == {"a", "b"}
    assert corpus.find(ST, {"StudyDate": "20240101\\20240215"}) == {"a", "c"}
    assert corpus.find(P, {"PatientBirthDate": "19600101-19800101"}) == {
        "PAT-1",
        "PAT-2",
        "PAT-3",
        "PAT-4",
    }


def test_time_ranges_include_the_whole_upper_period(corpus: Corpus) -> None:
    # a 120000, b 120030, c 115959, d 1201 (stored to the minute), e 120100
    assert corpus.find(ST, {"StudyTime": "-1200"}) == {"a", "b", "c"}  # 12:00:30 included
    assert corpus.find(ST, {"StudyTime": "1200-1200"}) == {"a", "b"}
    assert corpus.find(ST, {"StudyTime": "1200-"}) == {"a", "b", "d", "e"}
    assert corpus.find(ST, {"StudyTime": "12-12"}) == {"a", "b", "d", "e"}
    assert corpus.find(ST, {"StudyTime": "1201-1201"}) == {"d", "e"}
    assert corpus.find(ST, {"StudyTime": "-120000"}) == {"a", "c"}
    assert corpus.find(ST, {"StudyTime": "11:00-12:00"}) == {"a", "b", "c"}


def test_date_time_ranges_with_utc_offsets(memory_archive: Archive) -> None:
    moments = {
        1: "20231231235959.5",
        2: "20240101000000+0100",
        3: "20240101120000+0100",
        4: "20240101235959-0500",
        5: "20240102000000",
    }
    for instance, moment in moments.items():
        memory_archive.ingest_dataset(image("dt", 1, instance, AcquisitionDateTime=moment), CALLER)

    def found(value: str) -> set[int]:
        rows = memory_archive.search(IM, {"AcquisitionDateTime": value}, ["InstanceNumber"])
        return {row["InstanceNumber"] for row in rows}

    assert found("20240101-20240101") == {2, 3, 4}
    assert found("-20240101") == {1, 2, 3, 4}
    assert found("20240102-") == {5}
    assert found("20240101120000-") == {3, 4, 5}
    assert found("20240101120000+0100") == {3}
    assert found("20240101120000-0500") == set()
    assert found("20240101120000+0100-20240101235959+0100") == {3, 4}
    assert found("202401011200-20240101120000") == {3}
    rows = list(memory_archive.search(IM, {"InstanceNumber": "4"}, ["AcquisitionDateTime"]))
    assert rows == [{"AcquisitionDateTime": "20240101235959-0500"}]


def test_uid_lists(corpus: Corpus) -> None:
    a, c = corpus.uid("a"), corpus.uid("c")
    assert corpus.find(ST, {"StudyInstanceUID": a}) == {"a"}
    assert corpus.find(ST, {"StudyInstanceUID": f"{a}\\{c}"}) == {"a", "c"}
    assert corpus.find(ST, {"StudyInstanceUID": f"{a}\\{c}\\1.2.3"}) == {"a", "c"}
    assert corpus.find(SE, {"StudyInstanceUID": f"{a}\\{c}"}) == {"a/1", "a/2", "c/1"}
    sops = f"{corpus.uid('a/1/2')}\\{corpus.uid('e/1/1')}"
    assert corpus.find(IM, {"SOPInstanceUID": sops}) == {"a/1/2", "e/1/1"}
    # the list narrows with the other keys
    assert corpus.find(IM, {"SOPInstanceUID": sops, "Modality": "MR"}) == {"e/1/1"}


def test_several_values_for_other_keys(corpus: Corpus) -> None:
    assert corpus.find(SE, {"Modality": "CT\\OT"}) == {"a/1", "b/1", "c/1", "d/1"}
    assert corpus.find(SE, {"Modality": "OT\\M*"}) == {"a/2", "d/1", "e/1"}
    assert corpus.find(P, {"PatientID": "PAT-2\\PAT-4\\PAT-9"}) == {"PAT-2", "PAT-4"}
    assert corpus.find(SE, {"SeriesNumber": "1\\2"}) == {
        "a/1",
        "a/2",
        "b/1",
        "c/1",
        "d/1",
        "e/1",
    }


def test_modalities_in_study_is_multi_valued(corpus: Corpus) -> None:
    assert corpus.find(ST, {"ModalitiesInStudy": "MR"}) == {"a", "e"}  # a has CT and MR
    assert corpus.find(ST, {"ModalitiesInStudy": "CT"}) == {"a", "b", "c"}
    assert corpus.find(ST, {"ModalitiesInStudy": "CT\\MR"}) == {"a", "b", "c", "e"}
    assert corpus.find(ST, {"ModalitiesInStudy": "OT\\US"}) == {"d"}
    assert corpus.find(ST, {"ModalitiesInStudy": "C*"}) == {"a", "b", "c"}
    assert corpus.find(ST, {"ModalitiesInStudy": "*R"}) == {"a", "e"}
    # one value must equal the key: no match on part of a value
    assert corpus.find(ST, {"ModalitiesInStudy": "C"}) == set()
    assert corpus.find(ST, {"ModalitiesInStudy": "T"}) == set()
    assert corpus.find(ST, {"ModalitiesInStudy": "CT\\\\"}) == {"a", "b", "c"}


def test_sop_classes_in_study_is_multi_valued(corpus: Corpus) -> None:
    assert corpus.find(ST, {"SOPClassesInStudy": MRImageStorage}) == {"a", "e"}
    both = f"{SecondaryCaptureImageStorage}\\{MRImageStorage}"
    assert corpus.find(ST, {"SOPClassesInStudy": both}) == {"a", "d", "e"}
    # a prefix of a stored UID is another UID
    assert corpus.find(ST, {"SOPClassesInStudy": "1.2.840.10008.5.1.4.1.1"}) == set()


def test_image_type_matches_one_of_its_values(corpus: Corpus) -> None:
    everything_but_localizer = ALL_IMAGES - {"a/1/2"}
    assert corpus.find(IM, {"ImageType": "LOCALIZER"}) == {"a/1/2"}
    assert corpus.find(IM, {"ImageType": "DERIVED"}) == {"a/1/2"}
    assert corpus.find(IM, {"ImageType": "AXIAL"}) == everything_but_localizer
    assert corpus.find(IM, {"ImageType": "PRIMARY"}) == everything_but_localizer
    assert corpus.find(IM, {"ImageType": "ORIG*"}) == everything_but_localizer
    assert corpus.find(IM, {"ImageType": "*ARY"}) == ALL_IMAGES  # PRIMARY, SECONDARY
    assert corpus.find(IM, {"ImageType": "AXIAL\\LOCALIZER"}) == ALL_IMAGES
    assert corpus.find(IM, {"ImageType": "ORIGINAL\\PRIMARY"}) == everything_but_localizer
    assert corpus.find(IM, {"ImageType": "AX"}) == set()


def test_a_wildcard_matches_within_one_value_of_a_multi_valued_attribute(
    corpus: Corpus,
) -> None:
    """C.2.2.2.4 on a multi-valued attribute: some value must match the pattern.
    No single value of ORIGINAL\\PRIMARY\\AXIAL matches these patterns; they only
    match the values joined with backslashes."""
    assert corpus.find(IM, {"ImageType": "ORIGINAL*AXIAL"}) == set()
    assert corpus.find(IM, {"ImageType": "PRIMARY?AXIAL"}) == set()


def test_integer_keys(corpus: Corpus) -> None:
    assert corpus.find(SE, {"SeriesNumber": "2"}) == {"a/2"}
    assert corpus.find(SE, {"SeriesNumber": "3"}) == set()
    assert corpus.find(IM, {"InstanceNumber": "2"}) == {"a/1/2"}
    assert corpus.find(IM, {"Rows": "8", "Columns": "8"}) == ALL_IMAGES
    rows = list(corpus.archive.search(SE, {"SeriesNumber": "2"}, ["SeriesNumber", "Modality"]))
    assert rows == [{"SeriesNumber": 2, "Modality": "MR"}]


def test_computed_keys_are_returned(corpus: Corpus) -> None:
    study_keys = [
        "StudyInstanceUID",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
        "ModalitiesInStudy",
        "SOPClassesInStudy",
    ]
    studies = {
        corpus.names[row["StudyInstanceUID"]]: row
        for row in corpus.archive.search(ST, {}, study_keys)
    }
    assert studies["a"] == {
        "StudyInstanceUID": corpus.uid("a"),
        "NumberOfStudyRelatedSeries": 2,
        "NumberOfStudyRelatedInstances": 3,
        "ModalitiesInStudy": ["CT", "MR"],
        "SOPClassesInStudy": sorted([CTImageStorage, MRImageStorage]),
    }
    assert studies["d"]["ModalitiesInStudy"] == ["OT"]
    assert studies["d"]["SOPClassesInStudy"] == [SecondaryCaptureImageStorage]
    assert {name: row["NumberOfStudyRelatedInstances"] for name, row in studies.items()} == {
        "a": 3,
        "b": 1,
        "c": 1,
        "d": 1,
        "e": 1,
    }

    patient_keys = [
        "PatientID",
        "NumberOfPatientRelatedStudies",
        "NumberOfPatientRelatedSeries",
        "NumberOfPatientRelatedInstances",
    ]
    patients = {row["PatientID"]: row for row in corpus.archive.search(P, {}, patient_keys)}
    assert patients["PAT-1"] == {
        "PatientID": "PAT-1",
        "NumberOfPatientRelatedStudies": 2,
        "NumberOfPatientRelatedSeries": 3,
        "NumberOfPatientRelatedInstances": 4,
    }
    assert patients["PAT-4"]["NumberOfPatientRelatedStudies"] == 1

    series = {
        corpus.names[row["SeriesInstanceUID"]]: row["NumberOfSeriesRelatedInstances"]
        for row in corpus.archive.search(
            SE, {}, ["SeriesInstanceUID", "NumberOfSeriesRelatedInstances"]
        )
    }
    assert series == {"a/1": 2, "a/2": 1, "b/1": 1, "c/1": 1, "d/1": 1, "e/1": 1}


def test_computed_keys_can_be_matched(corpus: Corpus) -> None:
    assert corpus.find(ST, {"NumberOfStudyRelatedInstances": "3"}) == {"a"}
    assert corpus.find(ST, {"NumberOfStudyRelatedSeries": "2"}) == {"a"}
    assert corpus.find(P, {"NumberOfPatientRelatedStudies": "2"}) == {"PAT-1"}
    assert corpus.find(SE, {"NumberOfSeriesRelatedInstances": "2"}) == {"a/1"}


def test_returned_values_have_their_types(corpus: Corpus) -> None:
    keys = [
        "PatientName",
        "PatientID",
        "StudyDate",
        "SeriesNumber",
        "InstanceNumber",
        "ImageType",
        "NameOfPhysiciansReadingStudy",
        "ReferringPhysicianName",  # not in the data set
    ]
    rows = list(corpus.archive.search(IM, {"SOPInstanceUID": corpus.uid("b/1/1")}, keys))
    assert rows == [
        {
            "PatientName": "Doe^John",
            "PatientID": "PAT-1",
            "StudyDate": "20240131",
            "SeriesNumber": 1,
            "InstanceNumber": 1,
            "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"],
            "NameOfPhysiciansReadingStudy": ["Smith^Anna", "Jones^Bob"],
            "ReferringPhysicianName": None,
        }
    ]


def test_keys_of_lower_levels_are_ignored_at_a_higher_level(corpus: Corpus) -> None:
    lower = {
        "StudyDate": "19000101",
        "Modality": "XX",
        "SOPInstanceUID": "1.2.3",
        "NumberOfSeriesRelatedInstances": "99",
        "ImageType": "NONE",
    }
    assert corpus.find(P, lower) == {"PAT-1", "PAT-2", "PAT-3", "PAT-4"}
    assert corpus.find(ST, {k: v for k, v in lower.items() if k != "StudyDate"}) == set("abcde")
    # and they are returned empty, never with a value of some lower entity
    rows = list(corpus.archive.search(ST, {"PatientID": "PAT-2"}, ["Modality", "SOPInstanceUID"]))
    assert rows == [{"Modality": None, "SOPInstanceUID": None}]


def test_unknown_keys_are_ignored(corpus: Corpus) -> None:
    keys = {"NoSuchKeyword": "x", "PatientMotherBirthName": "Nobody", "PatientID": "PAT-2"}
    assert corpus.find(ST, keys) == {"c"}
    rows = list(corpus.archive.search(ST, keys, ["NoSuchKeyword", "PatientMotherBirthName"]))
    assert rows == [{}]


def test_search_pages(corpus: Corpus) -> None:
    """With a limit or offset, entities come in storage order, so pages join up."""
    unique = ["StudyInstanceUID"]
    pages = [
        [
            corpus.names[row["StudyInstanceUID"]]
            for row in corpus.archive.search(ST, {}, unique, limit=2, offset=offset)
        ]
        for offset in (0, 2, 4, 6)
    ]
    assert pages == [["a", "b"], ["c", "d"], ["e"], []]
    rows = corpus.archive.search(ST, {"PatientID": "PAT-1"}, unique, offset=1)
    assert [corpus.names[row["StudyInstanceUID"]] for row in rows] == ["b"]
    assert list(corpus.archive.search(ST, {}, unique, limit=0)) == []


def test_count(corpus: Corpus) -> None:
    archive = corpus.archive
    assert archive.count(P, {}) == 4
    assert archive.count(ST, {}) == 5
    assert archive.count(SE, {}) == 6
    assert archive.count(IM, {}) == len(IMAGES)
    assert archive.count(ST, {"PatientName": "doe*"}) == 3
    assert archive.count(ST, {"PatientName": "doe*"}, case_insensitive_names=False) == 1
    assert archive.count(IM, {"StudyDate": "20240101-20240131", "Modality": "CT"}) == 3
    assert archive.count(ST, {"Modality": "MR"}) == 5  # a series key: ignored at study level


def test_malformed_values_are_refused_by_search_and_count(corpus: Corpus) -> None:
    for keys in (
        {"StudyDate": "2024-13"},
        {"StudyInstanceUID": "1.2.abc"},
        {"StudyDate": "20241231-20240101"},
        {"StudyInstanceUID": "1.2.*"},
    ):
        with pytest.raises(InvalidQueryError):
            list(corpus.archive.search(ST, keys, ["StudyInstanceUID"]))
        with pytest.raises(InvalidQueryError):
            corpus.archive.count(ST, keys)


def test_a_list_of_empty_values_is_not_an_internal_error(corpus: Corpus) -> None:
    """``\\`` alone for a text key: two empty values, each of them universal.
    It may be refused as a query error, but must not reach the index as broken SQL."""
    try:
        found = corpus.find(SE, {"Modality": "\\"})
    except InvalidQueryError:
        return
    assert found == {"a/1", "a/2", "b/1", "c/1", "d/1", "e/1"}


# -- person names -------------------------------------------------------------------

PEOPLE = {
    # patient ID: (name, Specific Character Set)
    "VN": ("Nguyễn^Văn An", "ISO_IR 192"),
    "VN2": ("Nguyen^Binh", "ISO_IR 100"),
    "DE": ("Müller^Hans", "ISO_IR 100"),
    "DE2": ("MÜLLER^ANNA", "ISO_IR 192"),
    "GR": ("Διονυσιος", "ISO_IR 126"),
    "DOE1": ("Doe^John", "ISO_IR 100"),
    "DOE2": ("doe^jane", "ISO_IR 100"),
}


@pytest.fixture
def people(memory_archive: Archive) -> Archive:
    for patient_id, (name, charset) in PEOPLE.items():
        ds = image(
            f"person-{patient_id}",
            patient_id=patient_id,
            patient_name=name,
            SpecificCharacterSet=charset,
        )
        memory_archive.ingest_dataset(ds, CALLER)
    return memory_archive


def patients(archive: Archive, name: str, *, case_insensitive_names: bool = True) -> set[str]:
    rows = archive.search(
        P, {"PatientName": name}, ["PatientID"], case_insensitive_names=case_insensitive_names
    )
    return {row["PatientID"] for row in rows}


def test_names_are_stored_in_their_character_sets(people: Archive) -> None:
    """The fixture really sends each name in its own encoding."""
    encoded = {
        "VN": "Nguyễn".encode(),
        "DE": "Müller".encode("latin-1"),
        "DE2": "MÜLLER".encode(),
        "GR": "Διονυσιος".encode("iso8859-7"),
    }
    for patient_id, expected in encoded.items():
        sop = make_ct(f"person-{patient_id}").SOPInstanceUID
        assert expected in people.read_instance(sop), patient_id
    names = {
        row["PatientID"]: row["PatientName"]
        for row in people.search(P, {}, ["PatientID", "PatientName"])
    }
    assert names == {patient_id: name for patient_id, (name, _) in PEOPLE.items()}


def test_vietnamese_names_match_without_case(people: Archive) -> None:
    assert patients(people, "nguyễn^văn an") == {"VN"}
    assert patients(people, "NGUYỄN^VĂN AN") == {"VN"}
    assert patients(people, "NGUYỄN*") == {"VN"}
    assert patients(people, "*văn*") == {"VN"}
    assert patients(people, "*VĂN AN") == {"VN"}
    assert patients(people, "nguy?n*") == {"VN", "VN2"}
    assert patients(people, unicodedata.normalize("NFD", "NGUYỄN*")) == {"VN"}


def test_diacritics_are_significant(people: Archive) -> None:
    assert patients(people, "Nguyen*") == {"VN2"}
    assert patients(people, "nguyen^van an") == set()
    assert patients(people, "*van*") == set()
    assert patients(people, "nguyễn^binh") == set()
    assert patients(people, "MULLER*") == set()


def test_names_in_other_character_sets_match_without_case(people: Archive) -> None:
    assert patients(people, "müller^hans") == {"DE"}
    assert patients(people, "MÜLLER^HANS") == {"DE"}
    assert patients(people, "müller*") == {"DE", "DE2"}
    assert patients(people, "*ANNA") == {"DE2"}
    assert patients(people, "διονυσιος") == {"GR"}
    assert patients(people, "ΔΙΟΝΥΣΙΟΣ") == {"GR"}
    assert patients(people, "doe*") == {"DOE1", "DOE2"}
    assert patients(people, "DOE^JOHN") == {"DOE1"}


def test_names_keep_case_when_told(people: Archive) -> None:
    def exact(name: str) -> set[str]:
        return patients(people, name, case_insensitive_names=False)

    assert exact("Nguyễn^Văn An") == {"VN"}
    assert exact("nguyễn^văn an") == set()
    assert exact("NGUYỄN*") == set()
    assert exact("Doe*") == {"DOE1"}
    assert exact("doe*") == {"DOE2"}
    assert exact("Müller*") == {"DE"}
    assert exact("MÜLLER*") == {"DE2"}


def test_ignoring_case_never_loses_a_match(memory_archive: Archive) -> None:
    """Whatever matches with case respected must match when case is ignored.
    ``?`` is one character (C.2.2.2.4), and ß is one character."""
    memory_archive.ingest_dataset(image("weiss", patient_id="WS", patient_name="Weiß^Anna"), CALLER)
    assert patients(memory_archive, "Wei?^Anna", case_insensitive_names=False) == {"WS"}
    assert patients(memory_archive, "Wei?^Anna") == {"WS"}


def test_multi_valued_names_match_one_value(corpus: Corpus) -> None:
    assert corpus.find(ST, {"NameOfPhysiciansReadingStudy": "jones^bob"}) == {"b"}
    assert corpus.find(ST, {"NameOfPhysiciansReadingStudy": "SMITH^ANNA"}) == {"b"}
    assert corpus.find(ST, {"NameOfPhysiciansReadingStudy": "jones*"}) == {"b"}
    assert corpus.find(ST, {"NameOfPhysiciansReadingStudy": "jones"}) == set()


# -- instances to retrieve (C-MOVE, C-GET) ------------------------------------------


def retrieved(corpus: Corpus, level: Level, keys: Mapping[str, str]) -> set[str]:
    instances = corpus.archive.instances_to_retrieve(level, keys)
    names = [corpus.names[instance.sop_instance_uid] for instance in instances]
    assert len(names) == len(set(names)), f"an instance came twice: {names}"
    for instance in instances:
        assert instance == corpus.archive.instance(instance.sop_instance_uid)
    return set(names)


def test_retrieve_a_study(corpus: Corpus) -> None:
    assert retrieved(corpus, ST, {"StudyInstanceUID": corpus.uid("a")}) == {
        "a/1/1",
        "a/1/2",
        "a/2/1",
    }
    both = f"{corpus.uid('a')}\\{corpus.uid('e')}"
    assert retrieved(corpus, ST, {"StudyInstanceUID": both}) == {
        "a/1/1",
        "a/1/2",
        "a/2/1",
        "e/1/1",
    }
    assert retrieved(corpus, ST, {"StudyInstanceUID": "1.2.3"}) == set()


def test_retrieve_ignores_keys_other_than_unique_keys(corpus: Corpus) -> None:
    keys = {
        "StudyInstanceUID": corpus.uid("b"),
        "PatientName": "Nobody*",
        "Modality": "MR",
        "StudyDate": "19000101",
        "SeriesInstanceUID": corpus.uid("a/1"),  # a key of a lower level
    }
    assert retrieved(corpus, ST, keys) == {"b/1/1"}


def test_retrieve_series(corpus: Corpus) -> None:
    a1, b1 = corpus.uid("a/1"), corpus.uid("b/1")
    assert retrieved(corpus, SE, {"SeriesInstanceUID": a1}) == {"a/1/1", "a/1/2"}
    assert retrieved(corpus, SE, {"SeriesInstanceUID": f"{a1}\\{b1}"}) == {
        "a/1/1",
        "a/1/2",
        "b/1/1",
    }
    # the unique keys of the levels above narrow the match
    assert retrieved(
        corpus, SE, {"StudyInstanceUID": corpus.uid("a"), "SeriesInstanceUID": a1}
    ) == {"a/1/1", "a/1/2"}
    assert (
        retrieved(corpus, SE, {"StudyInstanceUID": corpus.uid("b"), "SeriesInstanceUID": a1})
        == set()
    )
    assert retrieved(corpus, SE, {"PatientID": "PAT-2", "SeriesInstanceUID": a1}) == set()


def test_retrieve_images(corpus: Corpus) -> None:
    sops = f"{corpus.uid('a/1/2')}\\{corpus.uid('d/1/1')}"
    assert retrieved(corpus, IM, {"SOPInstanceUID": sops}) == {"a/1/2", "d/1/1"}
    assert retrieved(
        corpus, IM, {"SeriesInstanceUID": corpus.uid("a/1"), "SOPInstanceUID": sops}
    ) == {"a/1/2"}


def test_retrieve_a_patient(corpus: Corpus) -> None:
    assert retrieved(corpus, P, {"PatientID": "PAT-1"}) == {"a/1/1", "a/1/2", "a/2/1", "b/1/1"}
    assert retrieved(corpus, P, {"PatientID": "PAT-2\\PAT-4"}) == {"c/1/1", "e/1/1"}
    assert retrieved(corpus, P, {"PatientID": "PAT-9"}) == set()


@pytest.mark.parametrize(
    ("level", "keys"),
    [
        (P, {}),
        (P, {"PatientID": ""}),
        (P, {"PatientID": "   "}),
        (ST, {}),
        (ST, {"StudyInstanceUID": ""}),
        (ST, {"PatientID": "PAT-1"}),
        (SE, {"StudyInstanceUID": "1.2.3"}),
        (IM, {"StudyInstanceUID": "1.2.3", "SeriesInstanceUID": "1.2.3.4"}),
    ],
)
def test_retrieve_needs_the_unique_key_of_its_level(
    corpus: Corpus, level: Level, keys: dict[str, str]
) -> None:
    with pytest.raises(InvalidQueryError):
        corpus.archive.instances_to_retrieve(level, keys)


@pytest.mark.parametrize(
    ("level", "keys"),
    [
        (P, {"PatientID": "PAT*"}),
        (P, {"PatientID": "PAT-?"}),
        (ST, {"StudyInstanceUID": "1.2.*"}),
        (ST, {"StudyInstanceUID": "*"}),
        (SE, {"StudyInstanceUID": "1.2.?", "SeriesInstanceUID": "1.2.3.4"}),
        (IM, {"SOPInstanceUID": "1.2.3\\1.2.*"}),
    ],
)
def test_retrieve_refuses_wildcards(corpus: Corpus, level: Level, keys: dict[str, str]) -> None:
    with pytest.raises(InvalidQueryError):
        corpus.archive.instances_to_retrieve(level, keys)


def test_retrieve_refuses_malformed_uids(corpus: Corpus) -> None:
    with pytest.raises(InvalidQueryError):
        corpus.archive.instances_to_retrieve(ST, {"StudyInstanceUID": "1.2.abc"})
    with pytest.raises(InvalidQueryError):
        corpus.archive.instances_to_retrieve(
            SE, {"StudyInstanceUID": "x", "SeriesInstanceUID": corpus.uid("a/1")}
        )


# -- the data set for transfer -----------------------------------------------------------


def parse(data: bytes, transfer_syntax_uid: str) -> Dataset:
    """A data set without file meta, read independently with pydicom."""
    implicit = transfer_syntax_uid == ImplicitVRLittleEndian
    ds = read_dataset(BytesIO(data), is_implicit_VR=implicit, is_little_endian=True)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax_uid)
    return ds


def test_stored_syntax_is_sent_unchanged(memory_archive: Archive) -> None:
    ds = make_ct("transfer", size=16)
    memory_archive.ingest_dataset(ds, CALLER)
    stored = memory_archive.instance(ds.SOPInstanceUID)
    for accepted in (
        [ExplicitVRLittleEndian],
        [ExplicitVRLittleEndian, ImplicitVRLittleEndian],
        [JPEGBaseline8Bit, ExplicitVRLittleEndian],  # not for 16-bit data: skipped
    ):
        assert memory_archive.dataset_for_transfer(stored, accepted) == (
            ExplicitVRLittleEndian,
            encode(ds),
        )
    # The caller's order decides, even over the stored syntax (a node's preference).
    syntax, _ = memory_archive.dataset_for_transfer(
        stored, [ImplicitVRLittleEndian, ExplicitVRLittleEndian]
    )
    assert syntax == ImplicitVRLittleEndian


def test_native_syntax_is_converted(memory_archive: Archive) -> None:
    ds = make_ct("transfer", size=16)
    memory_archive.ingest_dataset(ds, CALLER)
    stored = memory_archive.instance(ds.SOPInstanceUID)
    syntax, data = memory_archive.dataset_for_transfer(stored, [ImplicitVRLittleEndian])
    assert syntax == ImplicitVRLittleEndian
    assert well_formed(data, ImplicitVRLittleEndian)
    assert data == encode(ds, ImplicitVRLittleEndian)


def test_no_acceptable_syntax(memory_archive: Archive) -> None:
    ds = make_ct("transfer")
    memory_archive.ingest_dataset(ds, CALLER)
    stored = memory_archive.instance(ds.SOPInstanceUID)
    with pytest.raises(UnsupportedTransferSyntaxError, match=ds.SOPInstanceUID):
        # 16-bit words do not fit JPEG baseline; Part 2 multi-component JPEG 2000 is not written
        memory_archive.dataset_for_transfer(stored, [JPEGBaseline8Bit, JPEG2000MC])
    with pytest.raises(UnsupportedTransferSyntaxError):
        memory_archive.dataset_for_transfer(stored, [])


def test_missing_blob_for_transfer(memory_archive: Archive) -> None:
    ds = make_ct("transfer")
    memory_archive.ingest_dataset(ds, CALLER)
    stored = memory_archive.instance(ds.SOPInstanceUID)
    memory_archive.blobs.delete(stored.blob_key)
    with pytest.raises(StorageError, match="missing"):
        memory_archive.dataset_for_transfer(stored, [ExplicitVRLittleEndian])


COMPRESSED = [
    # file, stored syntax, Photometric Interpretation after decoding
    ("JPEG2000.dcm", JPEG2000, "MONOCHROME2"),
    ("MR_small_jp2klossless.dcm", JPEG2000Lossless, "MONOCHROME2"),
    ("MR_small_RLE.dcm", RLELossless, "MONOCHROME2"),
    ("SC_rgb_rle_2frame.dcm", RLELossless, "RGB"),
    ("SC_rgb_jpeg_dcmtk.dcm", JPEGBaseline8Bit, "RGB"),  # stored as YBR_FULL
    ("SC_rgb_dcmtk_+eb+cy+np.dcm", JPEGBaseline8Bit, "RGB"),  # stored as YBR_FULL_422
]


def ingest_file(archive: Archive, name: str) -> tuple[Path, str]:
    path = PYDICOM_TEST_FILES / name
    result = archive.ingest_part10(path.read_bytes(), CALLER)
    return path, result.sop_instance_uid


@pytest.mark.parametrize(("name", "syntax", "photometric"), COMPRESSED)
def test_compressed_images_are_decoded_for_transfer(
    memory_archive: Archive, name: str, syntax: str, photometric: str
) -> None:
    path, sop = ingest_file(memory_archive, name)
    stored = memory_archive.instance(sop)
    assert stored.transfer_syntax_uid == syntax
    target, data = memory_archive.dataset_for_transfer(stored, [ExplicitVRLittleEndian])
    assert target == ExplicitVRLittleEndian
    assert well_formed(data, ExplicitVRLittleEndian)
    sent = parse(data, ExplicitVRLittleEndian)
    reference = pydicom.dcmread(path)
    assert sent.SOPInstanceUID == reference.SOPInstanceUID == sop
    assert sent.PhotometricInterpretation == photometric
    assert np.array_equal(sent.pixel_array, reference.pixel_array)
    # the stored copy is untouched
    _, offset = split_dataset(path)
    assert memory_archive.read_instance(sop).endswith(path.read_bytes()[offset:])


def test_compressed_image_to_implicit_vr(memory_archive: Archive) -> None:
    path, sop = ingest_file(memory_archive, "MR_small_RLE.dcm")
    stored = memory_archive.instance(sop)
    accepted = [JPEGBaseline8Bit, ImplicitVRLittleEndian, ExplicitVRLittleEndian]
    target, data = memory_archive.dataset_for_transfer(stored, accepted)
    assert target == ImplicitVRLittleEndian  # the first accepted syntax that can be made
    assert well_formed(data, ImplicitVRLittleEndian)
    sent = parse(data, ImplicitVRLittleEndian)
    assert np.array_equal(sent.pixel_array, pydicom.dcmread(path).pixel_array)


@pytest.mark.parametrize(("name", "syntax"), [(n, s) for n, s, _ in COMPRESSED[:3]])
def test_compressed_images_are_sent_as_stored_when_accepted(
    memory_archive: Archive, name: str, syntax: str
) -> None:
    path, sop = ingest_file(memory_archive, name)
    stored = memory_archive.instance(sop)
    _, offset = split_dataset(path)
    assert memory_archive.dataset_for_transfer(stored, [syntax, ExplicitVRLittleEndian]) == (
        syntax,
        path.read_bytes()[offset:],
    )

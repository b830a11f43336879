"""Which DICOM attributes the index keeps, at which level.

The lists cover the required and common optional keys of C-FIND
(PS3.4 C.6.1.1 and C.6.2.1) and the QIDO-RS matching and return attributes
(PS3.18 Table 10.6.1-5), so that a query can be answered from the index
without opening a blob. Every backend derives its tables from these lists.

Person names are stored decoded (Unicode, after Specific Character Set) and,
beside each, a ``*_norm`` column in NFC case-folded form for case-insensitive
matching.
"""

from __future__ import annotations

import enum
import functools
import re
import unicodedata
from dataclasses import dataclass


class Level(enum.Enum):
    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"

    # Members are singletons compared by identity: hash them by identity too, in
    # C, not by ``Enum``'s Python ``hash(self._name_)`` (a frame request looks a
    # level up in a dict some thirty times).
    __hash__ = object.__hash__


class Kind(enum.Enum):
    TEXT = "text"
    """Any string VR; multiple values joined with a backslash, as in DICOM."""
    PERSON_NAME = "pn"
    INTEGER = "int"
    """IS/US/SL values used for sorting and counting (first value only)."""


@dataclass(frozen=True, slots=True)
class Attribute:
    keyword: str
    level: Level
    kind: Kind = Kind.TEXT
    path: tuple[str, ...] = ()
    """Keywords of sequences to descend through (first item) to reach ``keyword``."""
    name: str = ""
    """Column name when the derived one would be ambiguous or unwieldy."""
    folded: bool = False
    """Also kept folded (``pacs.types.fold``) in ``<column>_fold``, for access scopes."""

    @property
    def column(self) -> str:
        return self.name or _snake(self.keyword)


@functools.cache
def _snake(keyword: str) -> str:
    keyword = keyword.replace("IDs", "Ids")
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", keyword).lower()


def norm_column(attribute: Attribute) -> str:
    return attribute.column + "_norm"


def fold_column(attribute: Attribute) -> str:
    return attribute.column + "_fold"


P, ST, SE, IM = Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE
PN, INT = Kind.PERSON_NAME, Kind.INTEGER

ATTRIBUTES: tuple[Attribute, ...] = (
    # Patient (PS3.4 C.6.1.1.2; QIDO-RS study attributes)
    Attribute("PatientName", P, PN),
    Attribute("PatientID", P),
    Attribute("IssuerOfPatientID", P, folded=True),
    Attribute("PatientBirthDate", P),
    Attribute("PatientBirthTime", P),
    Attribute("PatientSex", P),
    Attribute("OtherPatientIDs", P),
    Attribute("OtherPatientNames", P, PN),
    Attribute("EthnicGroup", P),
    Attribute("PatientComments", P),
    # Study (PS3.4 C.6.1.1.3; PS3.18 Table 10.6.1-5)
    Attribute("StudyInstanceUID", ST),
    Attribute("StudyDate", ST),
    Attribute("StudyTime", ST),
    Attribute("AccessionNumber", ST),
    Attribute("StudyID", ST),
    Attribute("ReferringPhysicianName", ST, PN),
    Attribute("StudyDescription", ST),
    Attribute("NameOfPhysiciansReadingStudy", ST, PN),
    Attribute("AdmittingDiagnosesDescription", ST),
    Attribute("PatientAge", ST),
    Attribute("PatientSize", ST),
    Attribute("PatientWeight", ST),
    Attribute("Occupation", ST),
    Attribute("AdditionalPatientHistory", ST),
    Attribute("InstitutionName", ST, folded=True),
    Attribute("TimezoneOffsetFromUTC", ST),
    Attribute(
        "LocalNamespaceEntityID",
        ST,
        path=("IssuerOfAccessionNumberSequence",),
        name="issuer_of_accession_number",
    ),
    # Series (PS3.4 C.6.1.1.4; PS3.18 Table 10.6.1-5)
    Attribute("SeriesInstanceUID", SE),
    Attribute("Modality", SE),
    Attribute("SeriesNumber", SE, INT),
    Attribute("SeriesDescription", SE),
    Attribute("SeriesDate", SE),
    Attribute("SeriesTime", SE),
    Attribute("BodyPartExamined", SE),
    Attribute("Laterality", SE),
    Attribute("ProtocolName", SE),
    Attribute("PerformedProcedureStepStartDate", SE),
    Attribute("PerformedProcedureStepStartTime", SE),
    # Request Attributes Sequence (0040,0275), first item only, as QIDO-RS matches it.
    Attribute("ScheduledProcedureStepID", SE, path=("RequestAttributesSequence",)),
    Attribute("RequestedProcedureID", SE, path=("RequestAttributesSequence",)),
    Attribute("StationName", SE),
    Attribute("Manufacturer", SE),
    Attribute("ManufacturerModelName", SE),
    Attribute("InstitutionalDepartmentName", SE),
    Attribute("OperatorsName", SE, PN),
    Attribute("PerformingPhysicianName", SE, PN),
    # Instance (PS3.4 C.6.1.1.5; PS3.18 Table 10.6.1-5)
    Attribute("SOPInstanceUID", IM),
    Attribute("SOPClassUID", IM),
    Attribute("InstanceNumber", IM, INT),
    Attribute("ContentDate", IM),
    Attribute("ContentTime", IM),
    Attribute("AcquisitionNumber", IM, INT),
    Attribute("AcquisitionDateTime", IM),
    Attribute("ImageType", IM),
    Attribute("ImageComments", IM),
    Attribute("Rows", IM, INT),
    Attribute("Columns", IM, INT),
    Attribute("BitsAllocated", IM, INT),
    Attribute("BitsStored", IM, INT),
    Attribute("PixelRepresentation", IM, INT),
    Attribute("SamplesPerPixel", IM, INT),
    Attribute("PhotometricInterpretation", IM),
    Attribute("NumberOfFrames", IM, INT),
    Attribute("CompletionFlag", IM),
    Attribute("VerificationFlag", IM),
)

# Kept by the index itself as instances come and go (PS3.4 C.6.1.1.2-C.6.1.1.4
# "additional keys"), never read from a data set.
COMPUTED_ATTRIBUTES: tuple[Attribute, ...] = (
    Attribute("NumberOfPatientRelatedStudies", P, INT),
    Attribute("NumberOfPatientRelatedSeries", P, INT),
    Attribute("NumberOfPatientRelatedInstances", P, INT),
    Attribute("NumberOfStudyRelatedSeries", ST, INT),
    Attribute("NumberOfStudyRelatedInstances", ST, INT),
    Attribute("ModalitiesInStudy", ST),
    Attribute("SOPClassesInStudy", ST),
    Attribute("NumberOfSeriesRelatedInstances", SE, INT),
)

BY_KEYWORD: dict[str, Attribute] = {a.keyword: a for a in ATTRIBUTES if not a.path}
SEARCHABLE: dict[str, Attribute] = {**BY_KEYWORD, **{a.keyword: a for a in COMPUTED_ATTRIBUTES}}
"""Every attribute a query can match on or return, by keyword."""

UNIQUE_KEYS: dict[Level, Attribute] = {
    Level.PATIENT: BY_KEYWORD["PatientID"],
    Level.STUDY: BY_KEYWORD["StudyInstanceUID"],
    Level.SERIES: BY_KEYWORD["SeriesInstanceUID"],
    Level.IMAGE: BY_KEYWORD["SOPInstanceUID"],
}
LEVELS = (Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE)


def normalise_name(value: str) -> str:
    """Fold a person name for case-insensitive matching, keeping diacritics (NFC).

    Character by character, so that the folded name has as many characters as
    the original and ``?`` still stands for one: ``casefold`` would turn ``ß``
    into ``ss`` and ``Wei?`` would no longer find ``Weiß``.
    """
    text = unicodedata.normalize("NFC", value)
    folded = text.lower()
    if len(folded) == len(text):
        return folded
    return "".join(c.lower() if len(c.lower()) == 1 else c for c in text)


def attributes_at(level: Level) -> tuple[Attribute, ...]:
    return tuple(a for a in ATTRIBUTES if a.level is level)

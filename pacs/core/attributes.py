"""Turning a parsed data set into the values the index keeps."""

from __future__ import annotations

import re
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

from pacs.errors import DatasetMismatchError, InvalidDatasetError
from pacs.index.schema import ATTRIBUTES, Kind


def _tag(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise LookupError(f"{keyword} is not a DICOM keyword")
    return tag


# (column, kind, sequence tags to descend, tag) for each indexed attribute,
# resolved once: ingest runs this for every instance.
_PLAN = tuple(
    (a.column, a.kind, tuple(_tag(k) for k in a.path), _tag(a.keyword)) for a in ATTRIBUTES
)

# PS3.5 9.1: digits and dots, no empty component, at most 64 characters. Leading
# zeros inside a component are tolerated, as Orthanc and dcm4chee do, because
# some modalities emit them; anything that could form a path is not.
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")

REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")


def is_uid(text: str) -> bool:
    """Whether ``text`` is a well-formed UID (PS3.5 9.1, as ``check_uid`` takes it)."""
    return len(text) <= 64 and _UID.fullmatch(text) is not None


def check_uid(name: str, value: Any) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise InvalidDatasetError(f"{name} is missing")
    if isinstance(value, MultiValue):
        raise InvalidDatasetError(f"{name} has several values")
    text = str(value).rstrip("\x00 ")
    if not is_uid(text):
        raise InvalidDatasetError(f"{name} {text[:80]!r} is not a valid UID")
    return text


def required_uids(dataset: Dataset) -> dict[str, str]:
    """The four UIDs the archive needs, validated (PS3.4 B.4.1, PS3.5 9.1)."""
    uids = {}
    for keyword in REQUIRED_UIDS:
        try:
            value = dataset.get(keyword)
        except Exception as exc:  # pydicom raises assorted types on a corrupt value
            raise InvalidDatasetError(f"{keyword} cannot be read: {exc}") from None
        uids[keyword] = check_uid(keyword, value)
    return uids


def check_request(
    uids: dict[str, str],
    sop_class_uid: str | None,
    sop_instance_uid: str | None,
    study_instance_uid: str | None = None,
) -> None:
    """PS3.4 B.2.3: the data set must be the one the C-STORE request announced
    (PS3.18 10.5: and of the study a STOW-RS request is addressed to)."""
    if study_instance_uid and uids["StudyInstanceUID"] != study_instance_uid:
        raise DatasetMismatchError(
            f"Study Instance UID {uids['StudyInstanceUID']} differs from"
            f" {study_instance_uid} in the request"
        )
    if sop_class_uid and uids["SOPClassUID"] != sop_class_uid:
        raise DatasetMismatchError(
            f"SOP Class UID {uids['SOPClassUID']} in the data set differs from"
            f" {sop_class_uid} in the request"
        )
    if sop_instance_uid and uids["SOPInstanceUID"] != sop_instance_uid:
        raise DatasetMismatchError(
            f"SOP Instance UID {uids['SOPInstanceUID']} in the data set differs from"
            f" {sop_instance_uid} in the request"
        )


def index_values(dataset: Dataset) -> dict[str, Any]:
    """Column name to value for every schema attribute present in ``dataset``.

    Strings are decoded with the data set's Specific Character Set, so names in
    Vietnamese (ISO_IR 192) or any other repertoire are stored as Unicode.
    """
    values: dict[str, Any] = {}
    for column, kind, path, tag in _PLAN:
        try:
            container: Dataset | None = dataset
            for sequence_tag in path:
                assert container is not None
                sequence = container[sequence_tag].value if sequence_tag in container else None
                container = sequence[0] if sequence else None
                if container is None:
                    break
            if container is None or tag not in container:
                continue
            value = container[tag].value
        except Exception as exc:  # a corrupt value in one element
            raise InvalidDatasetError(f"{column} cannot be decoded: {exc}") from None
        if value is None or value == "":
            continue
        converted = _convert(value, kind)
        if converted is not None and converted != "":
            values[column] = converted
    return values


def _convert(value: Any, kind: Kind) -> Any:
    if kind is Kind.INTEGER:
        first = value[0] if isinstance(value, MultiValue) else value
        try:
            return int(first)
        except (TypeError, ValueError):
            return None
    if isinstance(value, MultiValue):
        return "\\".join(_text(v) for v in value)
    return _text(value)


def _text(value: Any) -> str:
    if isinstance(value, PersonName):
        return str(value).rstrip()
    if isinstance(value, bytes):
        return value.decode("latin-1").rstrip("\x00 ")
    return str(value).strip()

"""Turning a parsed data set into the values the index keeps."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

from pacs.core.encoding import shared_tag
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
    (a.column, a.kind, tuple(shared_tag(_tag(k)) for k in a.path), shared_tag(_tag(a.keyword)))
    for a in ATTRIBUTES
)

# The same for the attributes read straight from their encoded bytes (see
# ``_raw_value``): not inside a sequence, and with their dictionary VR.
_RAW_PLAN = tuple(
    (column, kind, tag, dictionary_VR(tag)) for column, kind, path, tag in _PLAN if not path
)
_NESTED_PLAN = tuple(item for item in _PLAN if item[2])

# Text VRs whose bytes, when ASCII, are their value in any of the character sets
# below; binary integer VRs as (size, signed). Everything else is left to pydicom.
_TEXT_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UT"}
)
_SINGLE_VALUED_VRS = frozenset({"LT", "ST", "UT"})  # a backslash there is text
_BINARY_INTEGERS = {"US": (2, False), "SS": (2, True), "UL": (4, False), "SL": (4, True)}
# Character sets in which ASCII bytes mean ASCII text (not ISO_IR 13, whose 0x5C
# is a yen sign, nor the ISO 2022 ones, whose escape sequences are ASCII bytes).
_ASCII_CHARSETS = frozenset({"", "ISO_IR 6", "ISO_IR 100", "ISO_IR 192"})
_SPECIFIC_CHARACTER_SET = shared_tag(0x00080005)

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


_REQUIRED_UID_TAGS = tuple((keyword, _tag(keyword)) for keyword in REQUIRED_UIDS)


def plain_required_uids(encoded: Mapping[int, bytes | None]) -> dict[str, str] | None:
    """The four UIDs from their encoded values (``encoding.Layout.uid_values``),
    when each is plainly one valid UID: then they are what ``required_uids``
    would return, without parsing the data set. ``None`` otherwise (a UID
    missing, malformed, multi-valued...): ``required_uids`` says what is wrong.
    """
    uids = {}
    for keyword, tag in _REQUIRED_UID_TAGS:
        raw = encoded.get(tag)
        if raw is None or not raw.isascii():
            return None
        text = raw.decode("ascii").rstrip("\x00 ")
        if not is_uid(text):
            return None
        uids[keyword] = text
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

    Ingest runs this for every instance, so plain values (ASCII text, binary
    integers) are read from their encoded bytes, as pydicom would decode them
    (``tests/unit/test_attributes.py`` compares the two on every test file);
    pydicom decodes the rest.
    """
    values: dict[str, Any] = {}
    elements = dataset._dict
    ascii_text = _ascii_charset(dataset)
    for column, kind, tag, vr in _RAW_PLAN:
        element = elements.get(tag)
        if element is None:
            continue
        converted = (
            _raw_value(element, kind, vr, ascii_text) if type(element) is RawDataElement else None
        )
        if converted is None:
            converted = decoded_value(dataset, (), tag, column, kind)
        if converted is not None and converted != "":
            values[column] = converted
    for column, kind, path, nested_tag in _NESTED_PLAN:
        converted = decoded_value(dataset, path, nested_tag, column, kind)
        if converted is not None and converted != "":
            values[column] = converted
    return values


def decoded_value(
    dataset: Dataset, path: tuple[int, ...], tag: int, column: str, kind: Kind
) -> Any:
    """The index value of ``tag`` in the first item of each sequence of
    ``path`` in turn, as pydicom decodes it (``None`` or ``""`` when it has none)."""
    container = dataset
    try:
        for sequence_tag in path:
            sequence = container[sequence_tag].value if sequence_tag in container else None
            if not sequence:
                return None
            container = sequence[0]
        if tag not in container:
            return None
        value = container[tag].value
    except Exception as exc:  # a corrupt value or sequence
        raise InvalidDatasetError(f"{column} cannot be decoded: {exc}") from None
    if value is None or value == "":
        return None
    return _convert(value, kind)


def _ascii_charset(dataset: Dataset) -> bool:
    """Whether ASCII bytes of this data set's text are that ASCII text."""
    element = dataset._dict.get(_SPECIFIC_CHARACTER_SET)
    if element is None:
        return True
    if type(element) is RawDataElement:
        raw = element.value or b""
        if not raw.isascii():
            return False
        names: list[object] = list(raw.decode("ascii").split("\\"))
    else:
        value = element.value
        names = list(value) if isinstance(value, MultiValue) else [value or ""]
    # Several values are ISO 2022 code extensions: pydicom's to decode.
    return len(names) == 1 and str(names[0]).strip() in _ASCII_CHARSETS


def _raw_value(element: RawDataElement, kind: Kind, vr: str, ascii_text: bool) -> Any:
    """The index value of a not yet decoded element, or ``None`` to let
    pydicom decode it (anything but plain ASCII text and binary integers).
    An empty value is ``""``, which the caller skips as it skips pydicom's."""
    raw = element.value
    if raw is None or element.VR not in (None, vr):
        return None  # no bytes (deferred), or a VR other than the dictionary's
    if not raw:
        return ""
    if kind is Kind.INTEGER:
        size_signed = _BINARY_INTEGERS.get(vr)
        if size_signed is not None:
            size, signed = size_signed
            if len(raw) < size:
                return None
            if element.is_little_endian:
                return int.from_bytes(raw[:size], "little", signed=signed)
            return int.from_bytes(raw[:size], "big", signed=signed)
        if vr != "IS" or not raw.isascii():
            return None
        first = raw.decode("ascii").split("\\", 1)[0].strip(" \x00")
        return (
            int(first) if first.isdigit() or (first[:1] in "+-" and first[1:].isdigit()) else None
        )
    if vr not in _TEXT_VRS or not raw.isascii() or not ascii_text:
        return None
    text = raw.decode("ascii")
    if vr in _SINGLE_VALUED_VRS:
        return text.rstrip(" \x00").strip()
    parts = text.split("\\")
    if kind is Kind.PERSON_NAME:
        return "\\".join(part.rstrip(" \x00") for part in parts)
    return "\\".join(part.strip(" \x00").strip() for part in parts)


def _convert(value: Any, kind: Kind) -> Any:
    if kind is Kind.INTEGER:
        # First value only; pydicom gives several binary ones as a list.
        first = value[0] if isinstance(value, (MultiValue, list)) and value else value
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

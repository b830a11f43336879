"""The DICOM JSON Model (PS3.18 Annex F), written fast.

Used twice: at ingest, to precompute each instance's metadata once (so that
WADO-RS metadata is a concatenation of stored JSON, never a parse), and by
QIDO-RS for index rows. Unlike pydicom's ``to_json_dict`` it never reads a
bulk data value it would not inline, writes an empty value inside a list as
``null`` (PS3.18 F.2.5), and lets orjson do the writing.

Bulk data (pixel data, and any binary value over ``INLINE_LIMIT`` bytes) is
never inlined: it gets a ``BulkDataURI`` relative to the instance's WADO-RS
URL, prefixed with ``BASE_PLACEHOLDER``, which the HTTP front end replaces
with the request's base URL when it serves the JSON. Inside sequences the
path names each level as tag and item number (1-based), as dcm4chee does:
``bulkdata/54000100/1/54001010``.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable
from typing import Any

import orjson
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName
from pydicom.values import convert_value

BASE_PLACEHOLDER = "\u0000BASE\u0000"
"""Stands for the DICOMweb root URL inside precomputed metadata."""

BASE_PLACEHOLDER_JSON = orjson.dumps(BASE_PLACEHOLDER)[1:-1]
"""The placeholder as it appears inside encoded JSON (its NULs escaped)."""

INLINE_LIMIT = 1024
"""Binary values up to this size are inlined (base64); larger ones are bulk data."""

_BINARY_VRS = frozenset(("OB", "OD", "OF", "OL", "OV", "OW", "UN"))
_NUMBER_VRS = frozenset(("FL", "FD", "SL", "SS", "UL", "US", "SV", "UV"))
_TEXT_AS_NUMBER = frozenset(("DS", "IS"))


def instance_metadata(
    dataset: Dataset,
    bulk_prefix: str,
    pixel_data: bool,
    transfer_syntax_uid: str | None = None,
) -> bytes:
    """An instance's metadata as DICOM JSON bytes (one object).

    ``bulk_prefix`` is the instance path below the DICOMweb root
    (``studies/S/series/R/instances/I``); ``pixel_data`` says whether the
    instance has Pixel Data (read separately, never part of ``dataset``).
    ``transfer_syntax_uid``, the stored one, is given as Available Transfer
    Syntax UID (0008,3002), as dcm4chee-arc does: a viewer learns from it
    whether frames it asks for uncompressed were decoded by the server
    (colour then comes as RGB whatever the stored Photometric Interpretation).
    """
    model = _dataset(dataset, f"{BASE_PLACEHOLDER}/{bulk_prefix}/bulkdata", "")
    if transfer_syntax_uid:
        model["00083002"] = {"vr": "UI", "Value": [transfer_syntax_uid]}
    if pixel_data:
        model["7FE00010"] = {
            "vr": "OB",
            "BulkDataURI": f"{BASE_PLACEHOLDER}/{bulk_prefix}/bulkdata/7FE00010",
        }
    return orjson.dumps(model)


def attributes(values: Iterable[tuple[int, str, Any]]) -> dict[str, Any]:
    """DICOM JSON for (tag, VR, value) triples, as QIDO-RS builds from index rows."""
    model: dict[str, Any] = {}
    for tag, vr, value in values:
        model[f"{tag:08X}"] = _attribute(vr, value)
    return model


def _dataset(dataset: Dataset, bulk_base: str, path: str) -> dict[str, Any]:
    model: dict[str, Any] = {}
    elements = dataset._dict
    encodings = dataset._character_set
    for tag in sorted(elements):
        if tag >> 16 == 0x0002 or tag & 0xFFFF == 0:
            continue  # file meta and group lengths are not part of the model
        key = f"{tag:08X}"
        raw = elements[tag]
        if type(raw) is RawDataElement:
            # Not decoded yet (every element of a data set just parsed): decode
            # the value with pydicom's own converter, without building and
            # keeping a DataElement through the dataset's hooks, which costs
            # twice the conversion. Whatever is not plain goes the usual way.
            vr = _plain_vr(raw)
            if vr is not None:
                try:
                    value = convert_value(vr, raw, encodings)
                except Exception:  # pydicom's hooks decide what a bad value becomes
                    pass
                else:
                    model[key] = _value(vr, value, bulk_base, f"{path}{key}")
                    continue
        model[key] = _element(dataset[tag], bulk_base, f"{path}{key}")
    return model


def _plain_vr(raw: RawDataElement) -> str | None:
    """The VR to decode ``raw`` with directly, or ``None`` to leave it to
    pydicom's hooks: a sequence, a value not read (deferred), an unknown or
    ambiguous VR (implicit VR private tags, ``US or SS``, ``UN``)."""
    if raw.value is None:
        return None
    vr = raw.VR
    if vr is None:
        if raw.tag & 0x10000:  # odd group: private, its VR depends on its creator
            return None
        try:
            vr = dictionary_VR(raw.tag)
        except KeyError:
            return None
    if vr in ("SQ", "UN") or " or " in vr:
        return None
    return str(vr)


def _element(element: DataElement, bulk_base: str, path: str) -> dict[str, Any]:
    vr = element.VR
    if " or " in vr:  # ambiguous VR left unresolved: say OB/US as PS3.5 would default
        vr = vr.split(" or ")[0]
    if vr == "SQ":
        items = [
            _dataset(item, bulk_base, f"{path}/{number}/")
            for number, item in enumerate(element.value or (), start=1)
        ]
        return {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
    return _value(vr, element.value, bulk_base, path)


def _value(vr: str, value: Any, bulk_base: str, path: str) -> dict[str, Any]:
    """An attribute that is not a sequence; binary values over ``INLINE_LIMIT``
    as bulk data."""
    if vr in _BINARY_VRS:
        if value is None or value == b"":
            return {"vr": vr}
        if isinstance(value, bytes) and len(value) <= INLINE_LIMIT:
            return {"vr": vr, "InlineBinary": base64.b64encode(value).decode("ascii")}
        return {"vr": vr, "BulkDataURI": f"{bulk_base}/{path}"}
    return _attribute(vr, value)


def json_attribute(vr: str, value: Any) -> dict[str, Any]:
    """One attribute of the model: ``{"vr": ..., "Value": [...]}``."""
    return _attribute(vr, value)


def _attribute(vr: str, value: Any) -> dict[str, Any]:
    if value is None or value == "" or value == b"":
        return {"vr": vr}
    values = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    if vr == "PN":
        names = [_person_name(v) for v in values]
        return {"vr": vr, "Value": names}
    if vr in _TEXT_AS_NUMBER:
        return {"vr": vr, "Value": [_number(v) for v in values]}
    if vr in _NUMBER_VRS:
        return {"vr": vr, "Value": [v if isinstance(v, int) else float(v) for v in values]}
    if vr == "AT":
        return {"vr": vr, "Value": [f"{int(v):08X}" for v in values]}
    if vr in _BINARY_VRS:
        return {"vr": vr, "InlineBinary": base64.b64encode(bytes(value)).decode("ascii")}
    # PS3.18 F.2.5: an empty value inside a multi-valued string is null.
    return {"vr": vr, "Value": [None if v in ("", None) else str(v) for v in values]}


def _number(value: Any) -> Any:
    if value in ("", None):
        return None
    if isinstance(value, int):
        return int(value)  # pydicom's IS is an int subclass; orjson wants the real thing
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else str(value)
    text = str(value).strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return text  # malformed IS/DS: keep the text rather than lose the value
    return number if math.isfinite(number) else text


def _person_name(value: Any) -> dict[str, str] | None:
    if value in ("", None):
        return None
    name = value if isinstance(value, PersonName) else PersonName(str(value))
    groups = str(name).split("=")
    model: dict[str, str] = {}
    for label, group in zip(("Alphabetic", "Ideographic", "Phonetic"), groups, strict=False):
        if group:
            model[label] = group
    return model or None

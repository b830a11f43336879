"""QIDO-RS: search for studies, series and instances (PS3.18 10.6).

Matching goes through the archive's query engine, the one C-FIND uses.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from pacs.config import Settings
from pacs.core import Archive
from pacs.core.dicomjson import BASE_PLACEHOLDER_JSON, json_attribute
from pacs.core.query import search_key
from pacs.dicomweb.errors import DicomWebError
from pacs.dicomweb.media import require_json
from pacs.dicomweb.responses import base_url, json_response
from pacs.http.auth import principal_of
from pacs.index.schema import LEVELS, SEARCHABLE, UNIQUE_KEYS, Level

# PS3.18 Tables 10.6.3-3 to 10.6.3-5: returned when no includefield asks for more.
_DEFAULT_KEYS = {
    Level.STUDY: (
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "ModalitiesInStudy",
        "ReferringPhysicianName",
        "TimezoneOffsetFromUTC",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyID",
        "StudyDescription",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ),
    Level.SERIES: (
        "Modality",
        "TimezoneOffsetFromUTC",
        "SeriesDescription",
        "SeriesInstanceUID",
        "SeriesNumber",
        "NumberOfSeriesRelatedInstances",
        "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime",
        "StudyInstanceUID",
    ),
    Level.IMAGE: (
        "SOPClassUID",
        "SOPInstanceUID",
        "TimezoneOffsetFromUTC",
        "InstanceNumber",
        "Rows",
        "Columns",
        "BitsAllocated",
        "NumberOfFrames",
        "SeriesInstanceUID",
        "StudyInstanceUID",
    ),
}
_CONTROL = frozenset(("limit", "offset", "includefield", "fuzzymatching"))
_MAX_NUMBER = 2**31 - 1
MAX_RESULTS = 10_000
"""Most matches one response holds; clients page past it with ``offset``."""


async def search(
    request: Request, archive: Archive, settings: Settings, level: Level, **path_uids: str
) -> Response:
    require_json(request.headers.get("accept"))
    params = request.query_params
    keys, include_all, included = _keys(params.multi_items())
    keys.update(path_uids)
    limit = _integer(params.get("limit"), "limit")
    offset = _integer(params.get("offset"), "offset") or 0
    fuzzy = params.get("fuzzymatching", "false").lower() == "true"
    if fuzzy:
        # Fuzzy person-name matching (PS3.18 8.3.4.2.1): a name matches when it
        # starts with the given one, in any case.
        for keyword, value in list(keys.items()):
            key = search_key(keyword)
            if key and key.attribute.kind.value == "pn" and value and "*" not in value:
                keys[keyword] = value + "*"
    depth = LEVELS.index(level)
    if include_all:
        wanted = [a.keyword for a in SEARCHABLE.values() if LEVELS.index(a.level) <= depth]
    else:
        wanted = list(_DEFAULT_KEYS[level]) + [k for k in included if k not in _DEFAULT_KEYS[level]]
    wanted += [keyword for keyword in keys if keyword not in wanted]
    cap = MAX_RESULTS if limit is None else min(limit, MAX_RESULTS)
    sequences = [k for k in wanted if dictionary_VR(k) == "SQ"]
    own_key = UNIQUE_KEYS[level].keyword

    def run() -> list[dict[str, Any]]:
        rows = list(
            archive.search(
                level,
                keys,
                [k for k in wanted if k not in sequences],
                case_insensitive_names=settings.case_insensitive_names or fuzzy,
                limit=cap + 1,
                offset=offset,
                scope=principal_of(request).scope,
            )
        )
        # Sequences asked for by includefield: the stored items (the index keeps none).
        for row in rows[:cap] if sequences else ():
            found = archive.sequences(level, str(row.get(own_key) or ""), sequences)
            row.update({keyword: found.get(keyword) for keyword in sequences})
        return rows

    rows = await run_in_threadpool(run)
    headers = {}
    if len(rows) > cap:
        rows = rows[:cap]
        headers["Warning"] = '299 pacs "There are additional results that can be requested"'
    root = base_url(request)
    plan = _json_plan(wanted)
    body = orjson.dumps([_model(row, level, plan, root) for row in rows])
    if sequences:  # stored items name their bulk data from the root, as metadata does
        body = body.replace(BASE_PLACEHOLDER_JSON, root.encode())
    return json_response(request, body=body, headers=headers)


def _keys(items: list[tuple[str, str]]) -> tuple[dict[str, str], bool, list[str]]:
    keys: dict[str, str] = {}
    included: list[str] = []
    include_all = False
    for name, value in items:
        if name.lower() in _CONTROL:
            if name.lower() == "includefield":
                for field in value.split(","):
                    field = field.strip()
                    if field.lower() == "all":
                        include_all = True
                    elif field:
                        included.append(_keyword(field))
            continue
        keyword = _keyword(name)
        # Repeated keys, or a comma-separated value, list alternatives
        # (PS3.18 8.3.4.1), as a DICOM backslash list does.
        value = value.replace(",", "\\")
        keys[keyword] = f"{keys[keyword]}\\{value}" if keyword in keys else value
    return keys, include_all, included


def _keyword(name: str) -> str:
    """A query key as given: a keyword or a tag (``00100010``)."""
    name = name.strip()
    if len(name) == 8 and all(c in "0123456789abcdefABCDEF" for c in name):
        keyword = keyword_for_tag(int(name, 16))
        if keyword:
            return str(keyword)
    elif tag_for_keyword(name) is not None:
        return name
    raise DicomWebError(400, f"{name!r} is not a DICOM attribute keyword or tag")


def _integer(value: str | None, name: str) -> int | None:
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        raise DicomWebError(400, f"{name} must be a whole number, not {value!r}") from None
    if not 0 <= number <= _MAX_NUMBER:
        raise DicomWebError(400, f"{name} must be between 0 and {_MAX_NUMBER}")
    return number


def _json_plan(wanted: list[str]) -> list[tuple[str, str, str]]:
    """(keyword, JSON tag, VR) per returned key, looked up once per request."""
    plan = []
    for keyword in wanted:
        tag = tag_for_keyword(keyword)
        assert tag is not None
        plan.append((keyword, f"{tag:08X}", dictionary_VR(keyword).split(" or ")[0]))
    return plan


def _model(
    row: Mapping[str, Any], level: Level, plan: list[tuple[str, str, str]], root: str
) -> dict[str, Any]:
    model = {
        tag: _items(row[keyword]) if vr == "SQ" else json_attribute(vr, row[keyword])
        for keyword, tag, vr in plan
        if keyword in row
    }
    study = row.get("StudyInstanceUID")
    url = f"{root}/studies/{study}"
    if level is not Level.STUDY:
        url += f"/series/{row.get('SeriesInstanceUID')}"
    if level is Level.IMAGE:
        url += f"/instances/{row.get('SOPInstanceUID')}"
    model["00080056"] = {"vr": "CS", "Value": ["ONLINE"]}
    model["00081190"] = {"vr": "UR", "Value": [url]}
    return dict(sorted(model.items()))


def _items(items: Any) -> dict[str, Any]:
    """A sequence's stored items (DICOM JSON)."""
    return {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}

"""The query engine shared by C-FIND and QIDO-RS: keys in, index query out.

Each query key is a keyword and its value as DICOM text (several values joined
by a backslash). Its VR decides the matching kind, per PS3.4 C.2.2.2:

- empty, or ``*`` alone: universal matching (no condition);
- UI with several values: list of UID matching;
- DA, TM, DT with a hyphen: range matching;
- a value with ``*`` or ``?`` (not for UI, dates, times, numbers): wildcard matching;
- otherwise single value matching.

Person names match case-insensitively unless told otherwise (PS3.4 C.2.2.2.1.1
allows it; hospitals type names in any case), after Unicode NFC, so a name sent
in any Specific Character Set is compared as text, not as bytes. Keys the
index does not hold are ignored for matching and returned empty, as PS3.4
C.2.2.1.2 prescribes for unsupported optional keys.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import dictionary_VM, dictionary_VR

from pacs.core.attributes import check_uid
from pacs.errors import InvalidDatasetError, InvalidQueryError
from pacs.index.query import AnyOf, Condition, Match, Query, Range, SingleValue, UidList, Wildcard
from pacs.index.schema import (
    LEVELS,
    SEARCHABLE,
    Attribute,
    Kind,
    Level,
    norm_column,
    normalise_name,
)

_RANGE_VRS = frozenset(("DA", "TM", "DT"))
_NO_WILDCARD_VRS = frozenset(("UI", "DA", "TM", "DT", "IS", "DS", "US", "UL", "SS", "SL"))
# PS3.5 Table 6.2-1, with the calendar's and the clock's limits (leap second allowed).
_MONTH, _DAY = r"(0[1-9]|1[0-2])", r"(0[1-9]|[12]\d|3[01])"
_HOUR, _MINUTE, _SECOND = r"([01]\d|2[0-3])", r"[0-5]\d", r"([0-5]\d|60)"
_OFFSET = r"([+-](0\d|1[0-4])[0-5]\d)"  # UTC offsets run from -1200 to +1400
_DA = re.compile(rf"\d{{4}}{_MONTH}{_DAY}")
_TM = re.compile(rf"{_HOUR}({_MINUTE}({_SECOND}(\.\d{{1,6}})?)?)?")
_DT = re.compile(
    rf"\d{{4}}({_MONTH}({_DAY}({_HOUR}({_MINUTE}({_SECOND}(\.\d{{1,6}})?)?)?)?)?)?{_OFFSET}?"
)
# Upper bounds of partial times are padded to the end of the period they name,
# so "-1200" includes 12:00:30 (a lower bound is already the period's start).
_TM_END = "235959.999999"
_DT_END = "99991231235959.999999"


@dataclass(frozen=True, slots=True)
class SearchKey:
    keyword: str
    attribute: Attribute
    multi_valued: bool


@functools.lru_cache(maxsize=1024)
def search_key(keyword: str) -> SearchKey | None:
    """The indexed attribute for ``keyword``, or ``None`` when the index lacks it."""
    attribute = SEARCHABLE.get(keyword)
    if attribute is None:
        return None
    return SearchKey(keyword, attribute, dictionary_VM(keyword) != "1")


def build_query(
    level: Level,
    keys: Mapping[str, str],
    return_keys: Iterable[str] = (),
    *,
    case_insensitive_names: bool = True,
    limit: int | None = None,
    offset: int = 0,
) -> Query:
    """An index query for entities at ``level`` matching ``keys``.

    Keys of ``level`` and the levels above it match; keys of lower levels are
    ignored, as in a hierarchical query (PS3.4 C.4.1.3.1). ``return_keys``
    (keywords) become the columns returned when the index holds them.
    Raises ``InvalidQueryError`` for a value that cannot be matched (a malformed
    UID, date or range).
    """
    depth = LEVELS.index(level)
    conditions = []
    for keyword, value in keys.items():
        key = search_key(keyword)
        if key is None or LEVELS.index(key.attribute.level) > depth:
            continue
        condition = _condition(key, value, case_insensitive_names)
        if condition is not None:
            conditions.append(condition)
    columns = []
    for keyword in dict.fromkeys(return_keys):
        key = search_key(keyword)
        if key is not None and LEVELS.index(key.attribute.level) <= depth:
            columns.append((key.attribute.level, key.attribute.column))
    return Query(level, tuple(conditions), tuple(columns), limit, offset)


def row_values(row: Mapping[str, Any], return_keys: Iterable[str]) -> dict[str, Any]:
    """Keyword -> value for one index row: ``str``, ``int``, a list of ``str`` for
    multi-valued attributes, or ``None`` when the entity has no value."""
    return row_reader(tuple(return_keys))(row)


RowReader = Callable[[Mapping[str, Any]], dict[str, Any]]


@functools.lru_cache(maxsize=256)
def row_reader(return_keys: tuple[str, ...]) -> RowReader:
    """``row_values`` for a fixed list of keys, with every lookup done once."""
    plan = []
    for keyword in return_keys:
        key = search_key(keyword)
        if key is not None:
            plan.append((keyword, key.attribute.column, key.multi_valued))

    def read(row: Mapping[str, Any]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for keyword, column, multi_valued in plan:
            value = row.get(column)
            if multi_valued and isinstance(value, str):
                value = value.split("\\")
            values[keyword] = value
        return values

    return read


def _condition(key: SearchKey, value: str, case_insensitive_names: bool) -> Condition | None:
    value = value.strip(" ")
    if value in ("", "*"):
        return None
    attribute = key.attribute
    column = attribute.column
    vr = dictionary_VR(key.keyword)
    if attribute.kind is Kind.PERSON_NAME and case_insensitive_names:
        column = norm_column(attribute)
        value = normalise_name(value)
    parts = [part.strip(" ") for part in value.split("\\") if part.strip(" ")]
    if not parts:
        return None  # only separators: no value to match, as if empty
    if vr == "UI":
        try:
            uids = tuple(check_uid(key.keyword, part) for part in parts)
        except InvalidDatasetError as exc:
            raise InvalidQueryError(str(exc)) from None
        match: Match = UidList(uids) if len(uids) > 1 else SingleValue(uids[0])
    elif len(parts) > 1:
        if vr in _RANGE_VRS and any("-" in part for part in parts):
            raise InvalidQueryError(f"{key.keyword}: a list of values cannot hold a range")
        match = AnyOf(tuple(_single(key, vr, part) for part in parts))
    elif vr in _RANGE_VRS and _is_range(vr, parts[0]):
        match = _range(key.keyword, vr, parts[0])
    else:
        match = _single(key, vr, parts[0])
    return Condition(attribute.level, column, match, key.multi_valued)


def _single(key: SearchKey, vr: str, value: str) -> SingleValue | Wildcard:
    if ("*" in value or "?" in value) and vr not in _NO_WILDCARD_VRS:
        return Wildcard(value)
    if key.attribute.kind is Kind.INTEGER:
        try:
            int(value)
        except ValueError:
            raise InvalidQueryError(f"{key.keyword}: {value!r} is not an integer") from None
    elif vr in _RANGE_VRS:
        value = _checked_moment(key.keyword, vr, value)
    return SingleValue(value)


def _is_range(vr: str, value: str) -> bool:
    # A DT may end in a UTC offset ("20240101120000-0500") and still be one value.
    return "-" in value and (vr != "DT" or not _DT.fullmatch(value))


def _range(keyword: str, vr: str, value: str) -> Range:
    """C.2.2.2.5: ``A-B``, ``A-`` or ``-B``."""
    if vr == "DT":
        lower, upper = _split_dt_range(keyword, value)
    else:
        lower, _, upper = value.partition("-")
    lower_bound = _checked_moment(keyword, vr, lower) if lower else None
    upper_bound = _checked_moment(keyword, vr, upper) if upper else None
    if lower_bound is None and upper_bound is None:
        raise InvalidQueryError(f"{keyword}: {value!r} is not a range")
    if upper_bound is not None and vr in ("TM", "DT"):
        end = _TM_END if vr == "TM" else _DT_END
        digits = upper_bound.split("+")[0].split("-")[0]
        upper_bound = digits + end[len(digits) :] if len(digits) < len(end) else digits
    if lower_bound is not None and upper_bound is not None and lower_bound > upper_bound:
        raise InvalidQueryError(f"{keyword}: range {value!r} ends before it starts")
    return Range(lower_bound, upper_bound)


def _split_dt_range(keyword: str, value: str) -> tuple[str, str]:
    for position in (i for i, c in enumerate(value) if c == "-"):
        lower, upper = value[:position], value[position + 1 :]
        if (not lower or _DT.fullmatch(lower)) and (not upper or _DT.fullmatch(upper)):
            return lower, upper
    raise InvalidQueryError(f"{keyword}: {value!r} is not a date-time range")


def _checked_moment(keyword: str, vr: str, value: str) -> str:
    if vr == "DA":
        value = value.replace(".", "")  # ACR-NEMA style YYYY.MM.DD still arrives
        pattern = _DA
    elif vr == "TM":
        value = value.replace(":", "")
        pattern = _TM
    else:
        pattern = _DT
    if not pattern.fullmatch(value):
        raise InvalidQueryError(f"{keyword}: {value!r} is not a valid {vr} value")
    return value


__all__ = ["SearchKey", "build_query", "row_reader", "row_values", "search_key"]

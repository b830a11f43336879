"""A query on the index, as the matching kinds of PS3.4 C.2.2.2 over columns.

The archive core turns C-FIND identifiers and QIDO-RS parameters into a
``Query``; each backend turns a ``Query`` into its own SQL. Values here are
already normalised (person names folded when matching ignores case), so a
backend only compares.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pacs.index.schema import Level
from pacs.types import Scope


@dataclass(frozen=True, slots=True)
class SingleValue:
    """C.2.2.2.1: the value equals the key (for multi-valued columns: one of the values does)."""

    value: str


@dataclass(frozen=True, slots=True)
class UidList:
    """C.2.2.2.2: the value is one of the UIDs."""

    values: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Wildcard:
    """C.2.2.2.4: ``*`` matches any run of characters, ``?`` any one character."""

    pattern: str


@dataclass(frozen=True, slots=True)
class Range:
    """C.2.2.2.5: ``lower <= value <= upper`` on DA/TM/DT text; a missing bound is open."""

    lower: str | None
    upper: str | None


@dataclass(frozen=True, slots=True)
class AnyOf:
    """Several values for a key (``CT\\MR``): an entity matches when any one matches.

    PS3.4 allows value lists only for UIDs; dcm4chee and Orthanc accept them for
    any key, and so do we, as QIDO-RS clients send them for Modality.
    """

    alternatives: tuple[SingleValue | Wildcard, ...]


Match = SingleValue | UidList | Wildcard | Range | AnyOf


@dataclass(frozen=True, slots=True)
class Condition:
    level: Level
    column: str
    match: Match
    multi_valued: bool = False
    """The column holds several values joined by a backslash."""


@dataclass(frozen=True, slots=True)
class Query:
    """Entities of ``level`` (joined with the levels above) meeting every condition."""

    level: Level
    conditions: tuple[Condition, ...] = ()
    columns: tuple[tuple[Level, str], ...] = field(default=())
    """What to return, as (level, column); the level may be ``level`` or above."""
    limit: int | None = None
    offset: int = 0
    """With ``limit`` or ``offset``, results come in storage order so pages are stable."""
    scope: Scope | None = None
    """Only studies (and their patients, series, instances) the caller may see."""

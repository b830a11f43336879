"""Query/Retrieve information models and request identifiers (PS3.4 C.3, C.4, C.6).

Shared by the C-FIND, C-MOVE and C-GET SCPs: which levels each model has,
how an identifier becomes the archive's query keys, and who may ask.
"""

from __future__ import annotations

import functools
import socket
from dataclasses import dataclass
from io import BytesIO

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID
from pynetdicom.dsutils import decode

from pacs.config import Settings
from pacs.dimse.status import NOT_AUTHORIZED as NOT_AUTHORIZED
from pacs.index.schema import Level
from pacs.types import Scope

PATIENT_ROOT = "Patient Root"
STUDY_ROOT = "Study Root"
PATIENT_STUDY_ONLY = "Patient/Study Only"

_LEVELS = {
    PATIENT_ROOT: (Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE),
    STUDY_ROOT: (Level.STUDY, Level.SERIES, Level.IMAGE),
    PATIENT_STUDY_ONLY: (Level.PATIENT, Level.STUDY),  # retired, still sent by old workstations
}

FIND_MODELS = {
    "1.2.840.10008.5.1.4.1.2.1.1": PATIENT_ROOT,
    "1.2.840.10008.5.1.4.1.2.2.1": STUDY_ROOT,
    "1.2.840.10008.5.1.4.1.2.3.1": PATIENT_STUDY_ONLY,
}
MOVE_MODELS = {
    "1.2.840.10008.5.1.4.1.2.1.2": PATIENT_ROOT,
    "1.2.840.10008.5.1.4.1.2.2.2": STUDY_ROOT,
    "1.2.840.10008.5.1.4.1.2.3.2": PATIENT_STUDY_ONLY,
}
GET_MODELS = {
    "1.2.840.10008.5.1.4.1.2.1.3": PATIENT_ROOT,
    "1.2.840.10008.5.1.4.1.2.2.3": STUDY_ROOT,
    "1.2.840.10008.5.1.4.1.2.3.3": PATIENT_STUDY_ONLY,
}

# Not query keys: the level itself, the character set, and what the SCP adds.
_NOT_KEYS = frozenset((0x00080005, 0x00080052, 0x00080054, 0x00080056))

# Statuses shared by C-FIND, C-MOVE and C-GET (PS3.4 C.4.1.1.4, C.4.2.1.5, C.4.3.1.4).
SUCCESS = 0x0000
PENDING = 0xFF00
CANCEL = 0xFE00
ERROR_COMMENT_LENGTH = 64  # Error Comment is LO
IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
UNABLE_TO_PROCESS = 0xC000


class IdentifierError(Exception):
    """The identifier cannot be served; carries the failure status to answer."""

    def __init__(self, status: int, comment: str) -> None:
        super().__init__(comment)
        self.status = status


@dataclass(frozen=True, slots=True)
class QueryRequest:
    level: Level
    keys: dict[str, str]
    """Keyword -> value as DICOM text, for every element of the identifier."""
    elements: tuple[DataElement, ...]
    """The identifier's elements, in order, for building responses."""


def parse_identifier(identifier: Dataset, model: str) -> QueryRequest:
    """Read the Query/Retrieve Level and keys of a request identifier (PS3.4 C.4.1.1.3)."""
    raw_level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    try:
        level = Level(raw_level)
    except ValueError:
        raise IdentifierError(
            IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
            f"Query/Retrieve Level {raw_level!r} is not one of PATIENT, STUDY, SERIES, IMAGE"
            if raw_level
            else "Query/Retrieve Level (0008,0052) is missing",
        ) from None
    if level not in _LEVELS[model]:
        raise IdentifierError(
            IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
            f"level {level.value} is not part of the {model} model",
        )
    keys: dict[str, str] = {}
    elements = []
    for element in identifier:
        if element.tag.group in (0x0000, 0x0002) or element.tag in _NOT_KEYS:
            continue
        elements.append(element)
        if element.VR == "SQ" or element.tag.is_private or not element.keyword:
            continue  # sequence matching is not supported: returned empty
        keys[element.keyword] = query_text(element)
    return QueryRequest(level, keys, tuple(elements))


def read_identifier(encoded: BytesIO | None, transfer_syntax: str, model: str) -> QueryRequest:
    """Decode a request's identifier (in its context's transfer syntax) and parse it."""
    syntax = UID(transfer_syntax)
    try:
        identifier = decode(
            encoded or BytesIO(),
            syntax.is_implicit_VR,
            syntax.is_little_endian,
            syntax.is_deflated,
        )
    except Exception as exc:  # pydicom signals bad encodings with assorted types
        raise IdentifierError(UNABLE_TO_PROCESS, f"identifier cannot be decoded: {exc}") from None
    return parse_identifier(identifier, model)


def query_text(element: DataElement) -> str:
    value = element.value
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    if isinstance(value, bytes):
        return value.decode("ascii", "replace")
    return str(value)


def permitted(settings: Settings, calling_ae_title: str, service: str, address: str = "") -> bool:
    """May this calling AE use ``service`` (store, find, move, get)?

    A known node may do what its ``allow`` list says (and, with
    ``check_node_address``, only from its configured host); an unknown one
    anything, unless ``known_nodes_only`` is on (then it never gets an
    association).
    """
    node = settings.node(calling_ae_title)
    if node is None:
        return not settings.known_nodes_only
    if settings.check_node_address and address and not node_address_matches(node.host, address):
        return False
    return service in node.allow


def node_scope(settings: Settings, calling_ae_title: str) -> Scope:
    """The studies a calling AE may find and retrieve (every one for unknown AEs:
    ``known_nodes_only`` keeps those out when the archive is restricted)."""
    node = settings.node(calling_ae_title)
    return node.scope if node is not None else Scope.all()


@functools.lru_cache(maxsize=256)
def _addresses(host: str) -> frozenset[str]:
    try:
        return frozenset(str(info[4][0]) for info in socket.getaddrinfo(host, None))
    except OSError:
        return frozenset((host,))


def node_address_matches(host: str, address: str) -> bool:
    """Whether a connection from ``address`` comes from a node configured as ``host``."""
    return address == host or address in _addresses(host)

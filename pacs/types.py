"""Plain value types shared by the core and the front ends."""

from __future__ import annotations

import enum
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking: a DICOM peer (AE title and address) or an HTTP principal."""

    ae_title: str = ""
    address: str = ""
    user: str = ""

    def __str__(self) -> str:
        who = self.user or self.ae_title or "anonymous"
        return f"{who}@{self.address}" if self.address else who


class StoreOutcome(enum.Enum):
    """What ingest did with an instance."""

    STORED = "stored"
    """New instance, now durable in blob store and index."""
    DUPLICATE = "duplicate"
    """Same SOP Instance UID with identical content was already stored: nothing written."""
    REPLACED = "replaced"
    """Same SOP Instance UID with different content; replaced by policy ``replace``."""
    KEPT_EXISTING = "kept-existing"
    """Same SOP Instance UID with different content; the first copy kept (policy ``keep``)."""


@dataclass(frozen=True, slots=True)
class StoreResult:
    outcome: StoreOutcome
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    size: int


@dataclass(frozen=True, slots=True)
class Frames:
    """Frames of one instance as a client is sent them (``Archive.frames``)."""

    syntax: str
    """Their transfer syntax: Explicit VR Little Endian for uncompressed ones."""
    data: Sequence[Any]
    """Each frame's bytes (bytes, bytearray or memoryview), in the order asked."""
    decoded_crc32: Sequence[int | None] = ()
    """Per frame, for a frame the archive converted losslessly to JPEG 2000 or
    HTJ2K: the CRC-32 of the samples it decodes to (``codecs.decoded_crc32``),
    for the client to check its decoder against; ``None`` (or empty) otherwise."""


@dataclass(frozen=True, slots=True)
class Deletion:
    """What ``Archive.delete`` removed."""

    study_uid: str
    patient_id: str
    instances: int


@dataclass(frozen=True, slots=True)
class ArchiveStatistics:
    patients: int
    studies: int
    series: int
    instances: int
    stored_bytes: int


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One entry of the audit trail (see ``pacs.core.audit``)."""

    action: str
    """A key of ``pacs.core.audit.ATNA``: login, logout, query, retrieve, store, share..."""
    outcome: str
    """success, denied or failure."""
    actor: str
    """User name or AE title ("" when anonymous)."""
    actor_kind: str
    """user, node, share-link, anonymous or system."""
    address: str = ""
    patient_id: str = ""
    study_uid: str = ""
    detail: str = ""
    """What was asked (a path, a query, a service) and, on failure, why."""
    count: int = 1
    """How many identical retrievals in one batch this event stands for."""
    time: str = ""
    """UTC, ISO 8601 with milliseconds; set when recorded."""


@dataclass(frozen=True, slots=True)
class Scope:
    """The studies a caller may see.

    ``everything`` for admins, radiologists and unrestricted nodes; otherwise
    the studies whose Institution Name is one of ``institutions``, whose
    patient's Issuer of Patient ID is one of ``issuers``, or whose UID is one
    of ``study_uids`` (shares, a share link). Matching of names is exact
    after trimming and case folding, as hospitals type them in any case.
    """

    everything: bool = False
    institutions: frozenset[str] = frozenset()
    issuers: frozenset[str] = frozenset()
    study_uids: frozenset[str] = frozenset()

    @classmethod
    def all(cls) -> Scope:
        return cls(everything=True)

    @classmethod
    def nothing(cls) -> Scope:
        return cls()

    def with_studies(self, study_uids: Iterable[str]) -> Scope:
        return Scope(
            self.everything,
            self.institutions,
            self.issuers,
            self.study_uids | frozenset(study_uids),
        )

    def allows(self, study_uid: str, institution: str | None, issuer: str | None) -> bool:
        if self.everything or study_uid in self.study_uids:
            return True
        return (bool(institution) and fold(institution or "") in self.institutions) or (
            bool(issuer) and fold(issuer or "") in self.issuers
        )

    @property
    def empty(self) -> bool:
        return not (self.everything or self.institutions or self.issuers or self.study_uids)


def fold(name: str) -> str:
    """How institution names and issuers are compared: NFC, runs of spaces as one,
    lower case character by character (as person names are folded for matching)."""
    text = unicodedata.normalize("NFC", " ".join(name.split()))
    return "".join(c.lower() if len(c.lower()) == 1 else c for c in text)

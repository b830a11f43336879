"""Plain value types shared by the core and the front ends."""

from __future__ import annotations

import enum
from dataclasses import dataclass


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
class ArchiveStatistics:
    patients: int
    studies: int
    series: int
    instances: int
    stored_bytes: int

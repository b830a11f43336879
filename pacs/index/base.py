"""The index protocol and the records it exchanges with the core."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pacs.index.query import Query
from pacs.index.schema import Level
from pacs.types import ArchiveStatistics


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    """Everything the index keeps about one stored instance."""

    values: Mapping[str, Any]
    """Column name (see ``schema.ATTRIBUTES``) to value; missing attributes are absent."""
    blob_key: str
    transfer_syntax_uid: str
    size: int
    content_hash: str
    """SHA-256 of the encoded data set (without file meta), hex."""
    pixel_data_offset: int | None
    """Offset in the blob of the Pixel Data value, when it can be read in place."""
    pixel_data_length: int | None
    """Length of that value; 0xFFFFFFFF for encapsulated (undefined length) data."""
    source_ae_title: str
    stored_at: str
    """UTC time of storage, ISO 8601."""

    @property
    def sop_instance_uid(self) -> str:
        return str(self.values["sop_instance_uid"])


@dataclass(frozen=True, slots=True)
class StoredInstance:
    """The index's answer about an instance that is already stored."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    blob_key: str
    size: int
    content_hash: str
    stored_at: str = ""
    """UTC time of storage, ISO 8601 (HTTP's Last-Modified)."""


class Index(Protocol):
    """Thread-safe store of the archive's metadata.

    Each write method is one transaction: either all of an instance's rows and
    counters change, or none do.
    """

    def find_instance(self, sop_instance_uid: str) -> StoredInstance | None: ...

    def add_instance(self, record: InstanceRecord) -> StoredInstance | None:
        """Insert the instance and any new patient/study/series rows.

        Returns ``None`` when inserted, or the instance already stored under the
        same SOP Instance UID (then nothing changes).
        """
        ...

    def add_instances(self, records: Sequence[InstanceRecord]) -> list[StoredInstance | None]:
        """``add_instance`` for many records in one transaction, for bulk loading."""
        ...

    def replace_instance(self, record: InstanceRecord) -> StoredInstance | None:
        """Replace the instance with the same SOP Instance UID; return the old one."""
        ...

    def remove_instance(self, sop_instance_uid: str) -> StoredInstance | None:
        """Delete the instance, and its series/study/patient when left empty."""
        ...

    def entity(self, level: Level, uid: str) -> dict[str, Any] | None:
        """One row with its computed counts, or ``None``.

        ``uid`` is the Patient ID at PATIENT level, else the entity's instance UID.
        """
        ...

    def find(self, query: Query) -> Iterator[dict[str, Any]]:
        """Column name -> value for each matching entity, lazily (see ``pacs.index.query``)."""
        ...

    def find_now(self, query: Query) -> list[dict[str, Any]] | None:
        """The rows of a small ``query`` (unique keys) if the index can answer
        without waiting on the network or a lock, else ``None``: the caller
        then uses ``find`` off its event loop."""
        ...

    def version_now(self) -> int | None:
        """A number that changes whenever the index has changed since the last
        call, if it can be had without waiting, else ``None``. Answers kept
        from ``find_now`` are good while it stays the same."""
        ...

    def set_metadata(self, items: Sequence[tuple[str, bytes]]) -> None:
        """Record the DICOM JSON of instances, as (SOP Instance UID, JSON), in one transaction.

        ``find`` returns it as the column ``metadata`` at IMAGE level (``None``
        when absent).
        """
        ...

    def instances_without_metadata(
        self, after: int, limit: int, stored_before: str
    ) -> list[tuple[int, StoredInstance]]:
        """Up to ``limit`` instances with no DICOM JSON yet, after position ``after``
        and stored before ``stored_before`` (a ``stored_at`` value), as
        (position, instance), in storage order."""
        ...

    def count(self, query: Query) -> int:
        """How many entities ``find`` would return, ignoring limit and offset."""
        ...

    def study_access(self, study_uid: str) -> tuple[str, str, str] | None:
        """(Institution Name, Issuer of Patient ID, Patient ID) of a stored study, or ``None``."""
        ...

    def statistics(self) -> ArchiveStatistics: ...

    def close(self) -> None: ...

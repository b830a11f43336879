"""The archive: the one object every front end calls.

It owns the rules that keep the blob store and the index in agreement. It
never imports a network library: DIMSE and DICOMweb translate their requests
into these calls and the results back into statuses.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import hashlib
import logging
import resource
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import numpy as np
import orjson
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from pacs.core import dicomjson, digest, encoding
from pacs.core.attributes import (
    check_request,
    index_values,
    is_uid,
    plain_required_uids,
    required_uids,
)
from pacs.core.audit import AuditTrail, now_iso
from pacs.core.metadata import MetadataWarmer
from pacs.core.query import build_query, row_reader
from pacs.core.rendering import Picture, RenderRequest, SizeBoundedCache
from pacs.errors import (
    ConflictError,
    CorruptDataError,
    InvalidDatasetError,
    InvalidQueryError,
    NotFoundError,
    OutsideScopeError,
    StorageError,
    StorageFullError,
    UnsupportedTransferSyntaxError,
)
from pacs.index.base import Index, InstanceRecord, StoredInstance
from pacs.index.query import Condition, Query, SingleValue
from pacs.index.schema import LEVELS, UNIQUE_KEYS, Level
from pacs.pixels import (
    NATIVE_SYNTAXES,
    UNCOMPRESSED_TARGETS,
    LossyQuality,
    bulk_value,
    can_transcode,
    decode_frames,
    frame_format,
    refusal,
    transcode,
)
from pacs.pixels.codecs import (
    FrameFormat,
    can_decode,
    decode_codestream,
    decoded_crc32,
    encode_frame,
)
from pacs.pixels.frames import FrameSpan, frame_spans, grey_frame, span_bytes, span_length
from pacs.pixels.render import (
    JsonHeader,
    animated_gif,
    decode_frame,
    display_array,
    encode_picture,
)
from pacs.types import (
    ArchiveStatistics,
    Caller,
    Deletion,
    Frames,
    Scope,
    StoreOutcome,
    StoreResult,
)
from storage import (
    BlobNotFoundError,
    BlobStore,
    BlobStoreError,
    BlobStoreFullError,
    SpooledBlobStore,
)

log = logging.getLogger(__name__)


class DuplicatePolicy(enum.Enum):
    """What to do when a SOP Instance UID arrives again with *different* content.

    Identical content is always accepted as a no-op success, since modalities
    re-send after a lost acknowledgement. For different content:

    - ``KEEP`` (default): keep the first copy and answer success, as Orthanc does
      with ``OverwriteInstances: false``; the event is logged. No acknowledged
      image is ever overwritten.
    - ``REPLACE``: the new copy replaces the old, as dcm4chee-arc does when its
      checksum differs and the archive is set to overwrite.
    - ``REJECT``: refuse the new copy with a failure status, so the sender knows.
    """

    KEEP = "keep"
    REPLACE = "replace"
    REJECT = "reject"


def _parsed_header(plain: bytes, layout: encoding.Layout, enc: encoding.Encoding) -> Dataset:
    """The data set up to its pixel data: built from the walk's elements
    where it can be, else parsed by pydicom."""
    dataset = encoding.header_dataset(plain, layout, enc)
    if dataset is not None:
        return dataset
    try:
        return read_dataset(
            encoding.header_stream(plain, layout), enc.implicit_vr, enc.little_endian
        )
    except Exception as exc:  # pydicom signals bad encodings with assorted types
        raise InvalidDatasetError(f"data set cannot be parsed: {exc}") from None


def _hashed_and_indexed(
    dataset_bytes: bytes,
    dataset: Dataset | None,
    plain: bytes,
    layout: encoding.Layout,
    enc: encoding.Encoding,
) -> tuple[str, Dataset, dict[str, Any]]:
    """The content hash, the parsed header and the index values of a data set."""
    content_hash = digest.content_hash(dataset_bytes)
    if dataset is None:
        dataset = _parsed_header(plain, layout, enc)
    return content_hash, dataset, index_values(dataset)


def blob_key(study_instance_uid: str, series_instance_uid: str, sop_instance_uid: str) -> str:
    """Layout by study/series/instance. The random part gives every stored copy
    its own key, so that two different copies of one UID arriving at once never
    overwrite each other; the index says which copy is the instance."""
    token = secrets.token_hex(8)
    return f"{study_instance_uid}/{series_instance_uid}/{sop_instance_uid}.{token}.dcm"


class Archive:
    """Ingest and retrieve DICOM instances. Thread-safe."""

    def __init__(
        self,
        index: Index,
        blobs: BlobStore,
        *,
        duplicate_policy: DuplicatePolicy = DuplicatePolicy.KEEP,
        lossy_quality: LossyQuality | None = None,
        ingest_helpers: int = 16,
    ) -> None:
        self.index = index
        self.blobs = blobs
        self.duplicate_policy = duplicate_policy
        self.lossy_quality = lossy_quality or LossyQuality()
        self._ingest_helper = ThreadPoolExecutor(
            max_workers=ingest_helpers, thread_name_prefix="ingest-helper"
        )
        self._metadata = MetadataWarmer(index, self._backfill_metadata)
        self._prefetcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch")
        # Every front end records through the archive's trail, in every process.
        append = getattr(index, "append_audit", None)
        self.audit = AuditTrail(
            append if append is not None else (lambda events: None), self.patient_of
        )
        # Decoded frames (a J2K frame costs tens of ms to decode) and pictures.
        self._decoded: SizeBoundedCache[tuple[Dataset | JsonHeader, Any]] = SizeBoundedCache(
            256 << 20
        )
        self._pictures: SizeBoundedCache[Picture] = SizeBoundedCache(64 << 20)
        # Frames converted for a client (HTJ2K for the viewer), by content hash,
        # frame and syntax, with their decoded CRC-32 (``Frames``): a 300-slice
        # CT in HTJ2K is ~55 MB, so two studies.
        self._converted: SizeBoundedCache[tuple[bytes, int | None]] = SizeBoundedCache(128 << 20)
        # Where each frame of an encapsulated Pixel Data lies, by content hash:
        # a few bytes a frame, so a whole archive's multi-frame instances.
        self._frame_spans: SizeBoundedCache[list[FrameSpan]] = SizeBoundedCache(64 << 20)
        self.at_once_budget = _AT_ONCE_BUDGET
        """Seconds an answer given on an event loop may take (see ``_at_once``)."""
        self._at_once_paused_until = 0.0
        # Instance rows for answers on the event loop, by (study, series,
        # instance), and the index's version they hold for (see
        # ``_instance_rows_now``). One tuple, replaced whole: a metadata request
        # fills it from a worker thread.
        self._rows_now: tuple[int | None, dict[tuple[str | None, ...], dict[str, Any]]] = (
            None,
            {},
        )

    def close(self) -> None:
        """Wait for writes in flight, then close the index and the blob store."""
        self._ingest_helper.shutdown(wait=True)
        self._prefetcher.shutdown(wait=True, cancel_futures=True)
        self._metadata.close()
        self.audit.close()
        self.index.close()
        close_blobs = getattr(self.blobs, "close", None)  # a spool stops its uploads
        if close_blobs is not None:
            close_blobs()

    def uploads_pending(self) -> int | None:
        """Blobs acknowledged but not yet in S3 (``None`` without a spool)."""
        return self.blobs.pending() if isinstance(self.blobs, SpooledBlobStore) else None

    def wait_for_metadata(self, timeout: float | None = None) -> bool:
        """Wait until the metadata of every stored instance is precomputed."""
        return self._metadata.wait_idle(timeout)

    # -- ingest --------------------------------------------------------------

    def ingest(
        self,
        dataset_bytes: bytes,
        transfer_syntax_uid: str,
        caller: Caller,
        *,
        sop_class_uid: str | None = None,
        sop_instance_uid: str | None = None,
        study_instance_uid: str | None = None,
    ) -> StoreResult:
        """Store one encoded data set (as a C-STORE request carries it).

        The bytes are kept exactly as received, in ``transfer_syntax_uid``, behind
        a new File Meta Information group. The instance is acknowledged (this
        method returns) only once the blob is fsynced and the index transaction
        committed (PS3.4 B.2.3 requires success to mean stored).

        Parameters
        ----------
        sop_class_uid, sop_instance_uid
            The Affected SOP Class/Instance UIDs of the request, if any: a data
            set that disagrees with them is rejected (``DatasetMismatchError``).

        Raises
        ------
        InvalidDatasetError
            Truncated or malformed encoding, missing or malformed UIDs.
        ConflictError
            Same SOP Instance UID with different content under policy ``REJECT``.
        StorageError, StorageFullError
            The blob store or index could not make the instance durable.
        """
        enc = encoding.Encoding.of(transfer_syntax_uid)
        plain = encoding.inflate(dataset_bytes) if enc.deflated else dataset_bytes
        layout = encoding.walk(plain, enc)
        # The UIDs as encoded name the blob, which can then be on its way to
        # the disk while pydicom parses the header (~0.2 ms a C-STORE). Where
        # they are not plainly valid, the parsed data set says what is wrong.
        uids = plain_required_uids(layout.uid_values)
        dataset: Dataset | None = None
        if uids is None:
            dataset = _parsed_header(plain, layout, enc)
            uids = required_uids(dataset)
        check_request(uids, sop_class_uid, sop_instance_uid, study_instance_uid)
        existing = self.index.find_instance(uids["SOPInstanceUID"])
        meta = encoding.file_meta_bytes(
            uids["SOPClassUID"], uids["SOPInstanceUID"], transfer_syntax_uid, caller.ae_title
        )
        key = blob_key(uids["StudyInstanceUID"], uids["SeriesInstanceUID"], uids["SOPInstanceUID"])
        if existing is None:
            # The usual case, a new instance: this thread writes and fsyncs the
            # blob while a helper hashes, parses and extracts the index values
            # (hashing and file I/O release the GIL), which takes ~1 ms off
            # every C-STORE on one association. The helper has the short task:
            # a thread woken on this VM sometimes runs only ~0.5 ms later, and
            # the write must not wait for that. A header pydicom cannot parse
            # is refused as before, its blob deleted.
            header = self._ingest_helper.submit(
                _hashed_and_indexed, dataset_bytes, dataset, plain, layout, enc
            )
            try:
                self._put_blob(key, meta, dataset_bytes)
            except BaseException:
                with contextlib.suppress(Exception):
                    header.result()
                raise
            try:
                content_hash, dataset, values = header.result()
            except BaseException:
                self._delete_blob_quietly(key)
                raise
        else:
            if dataset is None:
                dataset = _parsed_header(plain, layout, enc)
            content_hash = digest.content_hash(dataset_bytes)
            early = self._resolve_duplicate(existing, content_hash, dataset_bytes)
            if early is not None:
                return early
            values = index_values(dataset)
            self._put_blob(key, meta, dataset_bytes)
        # Offsets only make sense where the blob holds the data set uncompressed.
        pixel_offset = (
            None
            if enc.deflated or layout.pixel_data_offset is None
            else (len(meta) + layout.pixel_data_offset)
        )
        record = InstanceRecord(
            values=values,
            blob_key=key,
            transfer_syntax_uid=transfer_syntax_uid,
            size=len(meta) + len(dataset_bytes),
            content_hash=content_hash,
            pixel_data_offset=pixel_offset,
            pixel_data_length=None if pixel_offset is None else layout.pixel_data_length,
            source_ae_title=caller.ae_title,
            stored_at=now_iso(),
        )
        try:
            if existing is not None and self.duplicate_policy is DuplicatePolicy.REPLACE:
                outcome = self._replace(record)
            else:
                raced = self.index.add_instance(record)
                outcome = StoreOutcome.STORED
                if raced is not None:
                    # Another association stored the same UID between our lookup
                    # and our insert: settle it as if it had been there first.
                    early = self._resolve_duplicate(raced, content_hash, dataset_bytes)
                    if early is not None:
                        self._delete_blob_quietly(key)
                        return early
                    # Policy REPLACE: ours replaces the copy that won the race.
                    outcome = self._replace(record)
        except Exception as exc:
            # Never leave a blob the index does not know: the sender was not told
            # "success", so the instance must not half-exist.
            self._delete_blob_quietly(key)
            if isinstance(exc, (StorageError, ConflictError)):
                raise
            raise _index_error(exc) from exc
        self._metadata.submit(
            uids["SOPInstanceUID"],
            functools.partial(_metadata, dataset, uids, layout, transfer_syntax_uid),
        )
        # At debug: a line per instance costs a C-STORE ~0.3 ms of CPU; the
        # front ends log one per association or request (``StoreTallies``).
        log.debug("stored %s from %s (%s)", uids["SOPInstanceUID"], caller, outcome.value)
        return self._result(outcome, uids, transfer_syntax_uid, record.size)

    def ingest_part10(
        self, data: bytes, caller: Caller, *, study_instance_uid: str | None = None
    ) -> StoreResult:
        """Store a Part 10 file (or a bare Implicit VR Little Endian data set).

        With ``study_instance_uid`` (STOW-RS to a study), an instance of
        another study is refused (``DatasetMismatchError``).
        """
        meta, offset = encoding.split_part10(data)
        if meta:
            raw_ts = meta.get(0x00020010)
            if not raw_ts:
                raise InvalidDatasetError("file meta information has no Transfer Syntax UID")
            transfer_syntax_uid = encoding.uid_value(raw_ts)
        else:
            # Pre-Part-10 files (ACR-NEMA style, still found in old archives) are
            # Implicit VR Little Endian by definition (PS3.5 10.1).
            transfer_syntax_uid = ImplicitVRLittleEndian
        if not caller.ae_title and 0x00020016 in meta:
            caller = Caller(
                ae_title=encoding.uid_value(meta[0x00020016]),
                address=caller.address,
                user=caller.user,
            )
        return self.ingest(
            data[offset:], transfer_syntax_uid, caller, study_instance_uid=study_instance_uid
        )

    def ingest_dataset(self, dataset: Dataset, caller: Caller) -> StoreResult:
        """Encode a pydicom data set in its file meta's transfer syntax and store it."""
        meta = getattr(dataset, "file_meta", None)
        transfer_syntax_uid = str(
            getattr(meta, "TransferSyntaxUID", None) or ExplicitVRLittleEndian
        )
        enc = encoding.Encoding.of(transfer_syntax_uid)
        if enc.deflated:
            raise InvalidDatasetError("encode deflated data sets with pydicom before ingest")
        buffer = DicomBytesIO()
        buffer.is_little_endian = enc.little_endian
        buffer.is_implicit_VR = enc.implicit_vr
        write_dataset(buffer, dataset)
        return self.ingest(buffer.getvalue(), transfer_syntax_uid, caller)

    def _replace(self, record: InstanceRecord) -> StoreOutcome:
        old = self.index.replace_instance(record)
        # Every stored copy has its own key (see blob_key): the old blob is now unreferenced.
        if old is not None:
            self._delete_blob_quietly(old.blob_key)
        return StoreOutcome.REPLACED

    def _resolve_duplicate(
        self, existing: StoredInstance, content_hash: str, dataset_bytes: bytes
    ) -> StoreResult | None:
        """Answer for a UID already stored, or ``None`` to go on and store."""
        uids = {
            "StudyInstanceUID": existing.study_instance_uid,
            "SeriesInstanceUID": existing.series_instance_uid,
            "SOPInstanceUID": existing.sop_instance_uid,
            "SOPClassUID": existing.sop_class_uid,
        }
        if digest.same_content(existing.content_hash, dataset_bytes, content_hash):
            return self._result(
                StoreOutcome.DUPLICATE, uids, existing.transfer_syntax_uid, existing.size
            )
        if self.duplicate_policy is DuplicatePolicy.REJECT:
            raise ConflictError(
                f"SOP Instance UID {existing.sop_instance_uid} is already stored"
                " with different content"
            )
        if self.duplicate_policy is DuplicatePolicy.KEEP:
            log.warning(
                "kept the stored copy of %s; the new copy differs and was not stored",
                existing.sop_instance_uid,
            )
            return self._result(
                StoreOutcome.KEPT_EXISTING, uids, existing.transfer_syntax_uid, existing.size
            )
        return None

    @staticmethod
    def _result(
        outcome: StoreOutcome, uids: dict[str, str], transfer_syntax_uid: str, size: int
    ) -> StoreResult:
        return StoreResult(
            outcome=outcome,
            study_instance_uid=uids["StudyInstanceUID"],
            series_instance_uid=uids["SeriesInstanceUID"],
            sop_instance_uid=uids["SOPInstanceUID"],
            sop_class_uid=uids["SOPClassUID"],
            transfer_syntax_uid=transfer_syntax_uid,
            size=size,
        )

    def _put_blob(self, key: str, meta: bytes, dataset_bytes: bytes) -> None:
        try:
            self.blobs.put(key, (meta, dataset_bytes))
        except BlobStoreFullError as exc:
            # The reason first: a DIMSE error comment keeps only 64 characters.
            raise StorageFullError(f"storage full: {exc}") from exc
        except BlobStoreError as exc:
            raise StorageError(str(exc)) from exc

    def _delete_blob_quietly(self, key: str) -> None:
        try:
            self.blobs.delete(key)
        except BlobStoreError:
            log.exception("could not remove blob %s; it is unreferenced", key)

    # -- retrieve ------------------------------------------------------------

    def instance(self, sop_instance_uid: str) -> StoredInstance:
        stored = self.index.find_instance(sop_instance_uid)
        if stored is None:
            raise NotFoundError(f"no instance {sop_instance_uid}")
        return stored

    def read_instance(self, sop_instance_uid: str) -> bytes:
        """The stored Part 10 file, whole. Prefer ``iter_instance`` for large objects."""
        return self._read_blob(self.instance(sop_instance_uid))

    def iter_instance(self, sop_instance_uid: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        return self._iter_blob(self.instance(sop_instance_uid), chunk_size)

    def dataset_for_transfer(
        self, stored: StoredInstance, accepted: Sequence[str]
    ) -> tuple[str, bytes]:
        """The data set (no file meta) in the first of ``accepted`` syntaxes we can make.

        ``accepted`` is in the caller's order of preference. The stored syntax
        gives the stored bytes unchanged; others are made by ``pacs.pixels``.
        Returns (transfer syntax UID, bytes). Raises
        ``UnsupportedTransferSyntaxError`` when no accepted syntax can be made.
        Reads one instance into memory, never more.
        """
        targets = [ts for ts in accepted if can_transcode(stored.transfer_syntax_uid, ts)]
        if not targets:
            raise UnsupportedTransferSyntaxError(
                f"{stored.sop_instance_uid} is stored as {stored.transfer_syntax_uid},"
                f" which cannot be converted to any of {', '.join(accepted)}"
            )
        part10 = self._read_blob(stored)
        _, offset = encoding.split_part10(part10)
        dataset = part10[offset:] if offset else part10
        for number, target in enumerate(targets, start=1):
            try:
                return target, transcode(
                    dataset, stored.transfer_syntax_uid, target, self.lossy_quality
                )
            except UnsupportedTransferSyntaxError as exc:
                # An encoder may refuse this image (32-bit data for JPEG 2000):
                # the next accepted syntax, usually uncompressed, will do.
                if number == len(targets):
                    raise UnsupportedTransferSyntaxError(
                        f"{stored.sop_instance_uid}: {exc}"
                    ) from exc
        raise AssertionError("unreachable")

    # -- query ---------------------------------------------------------------

    def search(
        self,
        level: Level,
        keys: Mapping[str, str],
        return_keys: Iterable[str],
        *,
        case_insensitive_names: bool = True,
        limit: int | None = None,
        offset: int = 0,
        scope: Scope | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Entities at ``level`` matching ``keys``, as keyword -> value (PS3.4 C.2.2.2).

        Lazy: rows are read from the index as the caller consumes them, so a
        cancelled C-FIND stops reading. See ``pacs.core.query`` for the rules.
        With ``scope``, only the studies it allows (and their patients, series
        and instances) exist: a caller never learns of the others, not even
        through counts.
        """
        self._metadata.touch()
        return_keys = list(return_keys)
        query = build_query(
            level,
            keys,
            return_keys,
            case_insensitive_names=case_insensitive_names,
            limit=limit,
            offset=offset,
        )
        read = row_reader(tuple(return_keys))
        for row in self.index.find(replace(query, scope=scope)):
            yield read(row)

    def count(
        self,
        level: Level,
        keys: Mapping[str, str],
        *,
        case_insensitive_names: bool = True,
        scope: Scope | None = None,
    ) -> int:
        query = build_query(level, keys, case_insensitive_names=case_insensitive_names)
        return self.index.count(replace(query, scope=scope))

    def sequences(
        self, level: Level, uid: str, keywords: Sequence[str]
    ) -> dict[str, list[dict[str, Any]]]:
        """Items (DICOM JSON objects) of sequence attributes of a study, series
        or instance, for C-FIND and QIDO-RS return keys; keywords it does not
        hold are absent.

        The index keeps no sequences: they come from the precomputed metadata
        of the entity's first instance, as Orthanc answers them from a stored
        file. A study's or series' sequences (Procedure Code, Referenced
        Study, Request Attributes) are those of each of its instances.
        """
        if level is Level.PATIENT or not keywords:
            return {}
        query = replace(
            self._unique_key_query(
                Level.IMAGE, {UNIQUE_KEYS[level].keyword: uid}, (Level.IMAGE, "metadata")
            ),
            limit=1,
        )
        rows = list(self.index.find(query))
        if not rows:
            return {}
        metadata = rows[0].pop("metadata")
        if metadata is None:
            metadata = self._compute_metadata(StoredInstance(**rows[0]))
        stored = orjson.loads(metadata)
        found = {}
        for keyword in keywords:
            tag = tag_for_keyword(keyword)
            element = stored.get(f"{tag:08X}") if tag is not None else None
            if element is not None and element.get("vr") == "SQ":
                found[keyword] = list(element.get("Value") or [])
        return found

    def instances_to_retrieve(
        self, level: Level, keys: Mapping[str, str], scope: Scope | None = None
    ) -> list[StoredInstance]:
        """The instances a C-MOVE or C-GET at ``level`` names (PS3.4 C.4.2.2.1).

        The identifier must hold the unique key of ``level`` (one UID or a list);
        unique keys of the levels above narrow the match. Other keys are
        ignored, as retrieval matches on unique keys only. ``scope`` leaves out
        what the caller may not see.
        """
        unique = {UNIQUE_KEYS[above].keyword for above in LEVELS[: LEVELS.index(level) + 1]}
        own_key = UNIQUE_KEYS[level].keyword
        if not str(keys.get(own_key) or "").strip():
            raise InvalidQueryError(f"a {level.value} retrieval needs {own_key}")
        if any("*" in value or "?" in value for name, value in keys.items() if name in unique):
            raise InvalidQueryError("retrieval keys cannot hold wildcards")
        self._metadata.touch()
        query = replace(self._unique_key_query(level, keys), scope=scope)
        return [StoredInstance(**row) for row in self.index.find(query)]

    def delete(self, level: Level, keys: Mapping[str, str], scope: Scope | None = None) -> Deletion:
        """Remove the study, series or instance that ``keys`` name (its UIDs).

        Each instance's index row goes first, in its own transaction, so that
        from then on no query or retrieval finds it; its blob after. A crash
        between the two leaves a file no row points to (wasted space, never a
        row without its file). Counts, ModalitiesInStudy and SOPClassesInStudy
        of what remains are kept right by the index; empty series, studies and
        patients go. Shares of a deleted study stay on record (the audit says
        what they were) and grant nothing. Raises ``NotFoundError`` when
        nothing matches (or nothing the caller may see).
        """
        instances = self.instances_to_retrieve(level, keys, scope)
        if not instances:
            raise NotFoundError(f"no {level.value.lower()} {dict(keys)}")
        patient_id = self.patient_of(instances[0].study_instance_uid)
        # Events waiting for the writer find their patient from the study:
        # written now, while it is still there.
        self.audit.flush()
        removed = 0
        for stored in instances:
            old = self.index.remove_instance(stored.sop_instance_uid)
            if old is not None:
                removed += 1
                self._delete_blob_quietly(old.blob_key)
        log.info("deleted %d instances of %s %s", removed, level.value.lower(), dict(keys))
        return Deletion(instances[0].study_instance_uid, patient_id, removed)

    def require_visible(self, scope: Scope | None, study_instance_uid: str) -> None:
        """Raise ``NotFoundError`` unless ``scope`` lets its caller see the study.

        Not found rather than forbidden: whether a study exists is itself
        patient information (PS3.18 leaves the status to the server; a hospital
        asking for another hospital's study learns nothing).
        """
        if scope is None or scope.everything:
            return
        if study_instance_uid in scope.study_uids:
            return
        access = self.index.study_access(study_instance_uid)
        if access is None:
            raise NotFoundError(f"no study {study_instance_uid}")
        if not scope.allows(study_instance_uid, access[0], access[1]):
            raise OutsideScopeError(f"no study {study_instance_uid}")

    def patient_of(self, study_instance_uid: str) -> str:
        access = self.index.study_access(study_instance_uid)
        return access[2] if access else ""

    def metadata(self, level: Level, keys: Mapping[str, str]) -> list[bytes]:
        """The DICOM JSON of every instance at ``level`` named by ``keys`` (PS3.18 10.4.1.1.2).

        Each is one JSON object whose bulk data URIs start with
        ``dicomjson.BASE_PLACEHOLDER``. Precomputed at ingest; an instance
        stored before that existed is computed now, once, and kept.
        """
        self._metadata.touch()
        query = self._unique_key_query(level, keys, (Level.IMAGE, "metadata"))
        found = []
        blobs, size = [], 0
        for row in self.index.find(query):
            metadata = row.pop("metadata")
            if metadata is None:
                metadata = self._compute_metadata(StoredInstance(**row))
            found.append(bytes(metadata))
            if size < _PREFETCH_BYTES:
                blobs.append(row["blob_key"])
                size += int(row["size"] or 0)
        if not found:
            raise NotFoundError(f"no {level.value.lower()} matches {dict(keys)}")
        # A viewer asks for the metadata, then for every frame: keep their rows
        # for the frames' look-ups, and start reading the files.
        self._prefetcher.submit(self._keep_rows_of, level, dict(keys))
        self._prefetcher.submit(self.blobs.prefetch, blobs)
        return found

    def _keep_rows_of(self, level: Level, keys: Mapping[str, str]) -> None:
        """Keep the rows of the instances ``keys`` name for answers on the event
        loop (see ``_instance_rows_now``), off the request that asked."""
        version = self.index.version_now()  # before the rows are read: see _keep_rows
        if version is None:
            return
        rows: dict[tuple[str | None, ...], dict[str, Any]] = {}
        found = self.index.find(self._unique_key_query(level, keys, *_FRAME_COLUMNS))
        try:
            for row in found:
                name = (row["study_instance_uid"], row["series_instance_uid"])
                rows[(*name, row["sop_instance_uid"])] = row
                if len(rows) >= _ROWS_NOW_KEPT:
                    break
        except Exception as exc:  # nothing kept: the frames look themselves up
            log.debug("rows of %s not kept: %s", dict(keys), exc)
            return
        finally:
            close = getattr(found, "close", None)
            if close is not None:
                close()  # hand the index connection back now
        self._keep_rows(version, rows)

    def _backfill_metadata(
        self, after: int, limit: int, stored_before: str
    ) -> tuple[int, int, int]:
        """Make the JSON of up to ``limit`` instances lacking it, stored before
        ``stored_before``.

        Returns (last position seen, how many were made, how many were looked
        at), or (-1, 0, 0) when none are left; instances whose file cannot be
        read are skipped.
        """
        missing = self.index.instances_without_metadata(after, limit, stored_before)
        if not missing:
            return -1, 0, 0
        made = []
        for _, stored in missing:
            try:
                made.append((stored.sop_instance_uid, self._make_metadata(stored)))
            except Exception as exc:  # skipped; a request for it will say why
                log.debug("no metadata for %s: %s", stored.sop_instance_uid, exc)
        if made:
            self.index.set_metadata(made)
        return missing[-1][0], len(made), len(missing)

    def _compute_metadata(self, stored: StoredInstance) -> bytes:
        metadata = self._make_metadata(stored)
        self.index.set_metadata([(stored.sop_instance_uid, metadata)])
        return metadata

    def _make_metadata(self, stored: StoredInstance) -> bytes:
        part10 = self._read_blob(stored)
        _, offset = encoding.split_part10(part10)
        enc = encoding.Encoding.of(stored.transfer_syntax_uid)
        plain = part10[offset:]
        if enc.deflated:
            plain = encoding.inflate(plain)
        layout = encoding.walk(plain, enc)
        dataset = _parsed_header(plain, layout, enc)
        uids = {
            "StudyInstanceUID": stored.study_instance_uid,
            "SeriesInstanceUID": stored.series_instance_uid,
            "SOPInstanceUID": stored.sop_instance_uid,
        }
        return _metadata(dataset, uids, layout, stored.transfer_syntax_uid)

    def convertible(self, instances: Sequence[StoredInstance], target: str) -> list[str]:
        """SOP Instance UIDs among ``instances`` that cannot be sent as ``target``.

        Answered from the index (codecs installed, and the image's Image
        Pixel attributes), without reading a blob.
        """
        refused = []
        for stored in instances:
            if not can_transcode(stored.transfer_syntax_uid, target):
                refused.append(stored.sop_instance_uid)
            elif target != stored.transfer_syntax_uid and target not in UNCOMPRESSED_TARGETS:
                row = self.index.entity(Level.IMAGE, stored.sop_instance_uid) or {}
                if row.get("rows") is None:
                    continue  # no pixel data: the rest of the data set converts as is
                fmt = frame_format(
                    row.get("bits_allocated"),
                    row.get("bits_stored"),
                    row.get("pixel_representation"),
                    row.get("samples_per_pixel"),
                    row.get("photometric_interpretation"),
                )
                if refusal(target, fmt) is not None:
                    refused.append(stored.sop_instance_uid)
        return refused

    def part10_for_transfer(
        self, stored: StoredInstance, transfer_syntax_uid: str | None, chunk_size: int = 1 << 20
    ) -> tuple[str, Iterator[bytes | memoryview]]:
        """The instance as a Part 10 file, in chunks, as stored (``None``) or converted.

        As stored, the chunks are views of the file's pages where the store
        can map them (``_mapped_blob``), else the blob is read ``chunk_size``
        bytes at a time; either way an instance of any size streams in
        bounded memory. A conversion holds one instance. Raises
        ``UnsupportedTransferSyntaxError``.
        """
        target = transfer_syntax_uid or stored.transfer_syntax_uid
        if target == stored.transfer_syntax_uid:
            return target, self._mapped_blob(stored, chunk_size)
        syntax, dataset = self.dataset_for_transfer(stored, [target])
        meta = encoding.file_meta_bytes(stored.sop_class_uid, stored.sop_instance_uid, syntax, "")
        return syntax, iter((meta, dataset))

    def frames(
        self,
        keys: Mapping[str, str],
        numbers: Sequence[int],
        choose: Callable[[str], Sequence[str | None]],
    ) -> Frames:
        """Frames (1-based) of the instance ``keys`` names (its UIDs, PS3.18 10.4.1.1.3).

        ``choose`` gets the stored transfer syntax and returns the syntaxes
        wanted, best first (``None``: as stored); it may raise to refuse. The
        first one this image can be sent in is used. Uncompressed frames of
        native pixel data are byte ranges of the blob, never decoded;
        compressed frames as stored are the fragments of the encapsulated
        value; anything else is decoded, and encoded again when a compressed
        syntax is wanted (and then kept, bounded in bytes: a viewer that opens
        the study again gets them without a conversion; a lossless JPEG 2000
        or HTJ2K one comes with the CRC-32 of what it decodes to). One index
        lookup in all. Raises ``NotFoundError`` (no such instance, or a frame
        number out of range) and ``UnsupportedTransferSyntaxError``.
        """
        self._metadata.touch()
        row = self._instance_row(keys, *_FRAME_COLUMNS)
        found = self._frames(row, keys, numbers, choose, at_once=False)
        assert found is not None
        return found

    def frames_now(
        self,
        keys: Mapping[str, str],
        numbers: Sequence[int],
        choose: Callable[[str], Sequence[str | None]],
    ) -> Frames | None:
        """``frames`` if they can be had without waiting (an in-process index,
        uncompressed frames in the page cache, converted frames already kept),
        else ``None``: the caller then calls ``frames`` off its event loop.
        Worth it because the hop to a worker thread and back costs more than
        such a request's own work (0.25-0.3 ms against ~0.15 ms here)."""
        with self._at_once() as allowed:
            if not allowed:
                return None
            rows = self._instance_rows_now(keys)
            if rows is None:
                return None
            if not rows:
                raise NotFoundError(
                    f"no instance {keys.get('SOPInstanceUID')} in that study and series"
                )
            self._metadata.touch()
            return self._frames(rows[0], keys, numbers, choose, at_once=True)

    def _instance_rows_now(self, keys: Mapping[str, str]) -> list[dict[str, Any]] | None:
        """``find_now`` of the instance with its frame columns, kept while the
        index's version (``Index.version_now``) stays the same: a viewer asks
        for a series' metadata (which keeps its rows, see ``metadata``), then
        for every frame, and scrolls back; a dictionary look-up costs a fifth
        of the SQL. Any commit, by this process or another (a store, a
        deletion, a correction), makes what is kept stale."""
        version = self.index.version_now()
        kept_version, kept = self._rows_now
        name = (
            keys.get("StudyInstanceUID"),
            keys.get("SeriesInstanceUID"),
            keys.get("SOPInstanceUID"),
        )
        if version is not None and version == kept_version:
            row = kept.get(name)
            if row is not None:
                return [row]
        rows = self.index.find_now(self._unique_key_query(Level.IMAGE, keys, *_FRAME_COLUMNS))
        if rows and version is not None:
            self._keep_rows(version, {name: rows[0]})
        return rows

    def _keep_rows(self, version: int, rows: dict[tuple[str | None, ...], dict[str, Any]]) -> None:
        """Add ``rows``, read at or after ``version``, to those kept for the event loop.

        Rows are only ever read back while the index is at the version they
        are kept under, so a thread that keeps rows of an older version than
        the last seen at worst keeps them for nothing."""
        kept_version, kept = self._rows_now
        if kept_version != version or len(kept) + len(rows) > _ROWS_NOW_KEPT:
            kept = {}
        self._rows_now = (version, {**kept, **rows} if kept else rows)

    @contextlib.contextmanager
    def _at_once(self) -> Iterator[bool]:
        """Whether to answer on the caller's event loop now. An answer that
        waited longer than ``at_once_budget`` (an index or folder cold on a
        slow disk: the index read and the file's open can still wait) sends
        the next ones to worker threads for ``_AT_ONCE_PAUSE`` seconds.

        Waiting is wall time less this thread's CPU time, and counts only if
        the thread blocked (a voluntary context switch): a garbage collection,
        a slow moment of Python, or the thread preempted by other work on a
        busy machine is not a disk, and threads would not be faster for it."""
        started = time.monotonic()
        if started < self._at_once_paused_until:
            yield False
            return
        cpu, blocked = _thread_clock()
        try:
            yield True
        finally:
            cpu_after, blocked_after = _thread_clock()
            waited = (time.monotonic() - started) - (cpu_after - cpu)
            if waited > self.at_once_budget and blocked_after > blocked:
                self._at_once_paused_until = time.monotonic() + _AT_ONCE_PAUSE
                log.info(
                    "event-loop answer waited %.1f ms (blocked %d times): threads for now",
                    waited * 1e3,
                    blocked_after - blocked,
                )

    def _frames(
        self,
        row: Mapping[str, Any],
        keys: Mapping[str, str],
        numbers: Sequence[int],
        choose: Callable[[str], Sequence[str | None]],
        at_once: bool,
    ) -> Frames | None:
        sop_instance_uid = keys.get("SOPInstanceUID", "")
        stored = StoredInstance(**{name: row[name] for name in _STORED_NAMES})
        count = int(row.get("number_of_frames") or 1)
        offset = row.get("pixel_data_offset")
        if offset is None and row.get("rows") is None:
            raise NotFoundError(f"instance {sop_instance_uid} has no pixel data")
        bad = [n for n in numbers if not 1 <= n <= count]
        if bad:
            raise NotFoundError(f"instance {sop_instance_uid} has {count} frames, not {bad[0]}")
        native = stored.transfer_syntax_uid in NATIVE_SYNTAXES
        fmt = _frame_format(row)
        reasons = []
        for wanted in choose(stored.transfer_syntax_uid):
            target = wanted or stored.transfer_syntax_uid
            if native and target in NATIVE_SYNTAXES:
                if at_once:
                    ranges = self._native_frames_now(stored, row, numbers)
                    return None if ranges is None else Frames(ExplicitVRLittleEndian, ranges)
                return Frames(ExplicitVRLittleEndian, self._native_frames(stored, row, numbers))
            if target == stored.transfer_syntax_uid and isinstance(offset, int):
                if at_once:
                    ready = self._stored_frames_now(stored, offset, numbers)
                    return None if ready is None else Frames(target, ready)
                return Frames(target, self._stored_frames(stored, offset, count, numbers))
            if target == ExplicitVRLittleEndian:
                if at_once:
                    return None
                grey = self._grey_codestream_frames(stored, row, numbers, fmt)
                if grey is not None:
                    return Frames(target, [frame.tobytes() for frame in grey])
                return Frames(
                    target, decode_frames(self._read_blob(stored), [n - 1 for n in numbers])
                )
            reason = (
                refusal(target, fmt)
                if can_transcode(stored.transfer_syntax_uid, target)
                else f"no codec converts {stored.transfer_syntax_uid} to it"
            )
            if reason is None:
                found = [self._converted.get((stored.content_hash, n, target)) for n in numbers]
                kept = [frame for frame in found if frame is not None]
                if len(kept) < len(numbers):
                    if at_once:
                        return None
                    kept = self._encoded_frames(stored, row, numbers, target, fmt)
                return Frames(target, [k[0] for k in kept], [k[1] for k in kept])
            reasons.append(f"{target}: {reason}")
        raise UnsupportedTransferSyntaxError(
            f"frames of {sop_instance_uid} (stored as {stored.transfer_syntax_uid})"
            f" cannot be sent as asked: {'; '.join(reasons) or 'no syntax named'}"
        )

    def _native_frames(
        self, stored: StoredInstance, row: Mapping[str, Any], numbers: Sequence[int]
    ) -> list[bytes]:
        offset = row.get("pixel_data_offset")
        frame_size = _native_frame_size(row)
        if (
            isinstance(offset, int)
            and frame_size
            and stored.transfer_syntax_uid != (ExplicitVRBigEndian)
        ):
            return [
                self._read_range(stored, offset + (n - 1) * frame_size, frame_size) for n in numbers
            ]
        return decode_frames(self._read_blob(stored), [n - 1 for n in numbers])

    def _native_frames_now(
        self, stored: StoredInstance, row: Mapping[str, Any], numbers: Sequence[int]
    ) -> list[bytes | bytearray] | None:
        offset = row.get("pixel_data_offset")
        frame_size = _native_frame_size(row)
        if (
            not isinstance(offset, int)
            or not frame_size
            or stored.transfer_syntax_uid == ExplicitVRBigEndian
            or len(numbers) * frame_size > _AT_ONCE_BYTES
        ):
            return None
        ranges = []
        for n in numbers:
            try:
                data = self.blobs.get_range_now(
                    stored.blob_key, offset + (n - 1) * frame_size, frame_size
                )
            except BlobStoreError:
                return None  # the thread path says what is wrong
            if data is None:
                return None
            ranges.append(data)
        return ranges

    def _encoded_frames(
        self,
        stored: StoredInstance,
        row: Mapping[str, Any],
        numbers: Sequence[int],
        target: str,
        fmt: FrameFormat,
    ) -> list[tuple[bytes, int | None]]:
        """Frames decoded (or read in place) and encoded as ``target``, one
        codestream each with its decoded CRC-32 when lossless (see ``Frames``),
        and kept for the next request."""
        grey = fmt.samples_per_pixel == 1
        if grey and stored.transfer_syntax_uid in NATIVE_SYNTAXES and _native_frame_size(row):
            shape = (int(row["rows"]), int(row["columns"]))
            pixels = [
                grey_frame(data, shape, fmt) for data in self._native_frames(stored, row, numbers)
            ]
        else:
            grey_frames = self._grey_codestream_frames(stored, row, numbers, fmt)
            if grey_frames is not None:
                pixels = grey_frames
            else:
                part10 = self._read_blob(stored)
                pixels = [decode_frame(part10, n - 1)[1] for n in numbers]
        converted = []
        for n, frame in zip(numbers, pixels, strict=True):
            encoded = encode_frame(frame, target, fmt, self.lossy_quality)
            check = None if encoded.lossy else decoded_crc32(frame, encoded.codestream)
            kept = (encoded.codestream, check)
            self._converted.put((stored.content_hash, n, target), kept, len(encoded.codestream))
            converted.append(kept)
        return converted

    def rendered(self, keys: Mapping[str, str], frame: int, request: RenderRequest) -> Picture:
        """A frame (0-based) of the instance ``keys`` names, as a picture (PS3.18 10.4.1.1.4).

        Pictures and decoded frames are cached (bounded in bytes), keyed by the
        instance's content hash and everything in ``request``. A grey frame
        stored uncompressed is read in place (one ranged read) and its
        attributes come from the precomputed metadata, so no file is parsed.
        """
        self._metadata.touch()
        row = self._instance_row(keys, *_FRAME_COLUMNS, (Level.IMAGE, "metadata"))
        stored = StoredInstance(**{name: row[name] for name in _STORED_NAMES})
        return self._picture(stored, row, frame, request)

    def rendered_now(
        self, keys: Mapping[str, str], frame: int, request: RenderRequest
    ) -> Picture | None:
        """``rendered`` if the picture is already made and the index answers at
        once, else ``None`` (the caller then calls ``rendered`` off its event
        loop): a viewer's re-render is then a dictionary look-up."""
        with self._at_once() as allowed:
            rows = self._instance_rows_now(keys) if allowed else None
            if not rows:
                return None  # none: let ``rendered`` say what is missing
            stored = StoredInstance(**{name: rows[0][name] for name in _STORED_NAMES})
            self._metadata.touch()
            key = ((stored.sop_instance_uid, stored.content_hash, frame), request)
            return self._pictures.get(key)

    def rendered_instance(self, keys: Mapping[str, str], request: RenderRequest) -> Picture:
        """The instance as one picture: its first frame, or, as GIF, every frame in turn.

        A multi-frame instance (a cine loop, a tomosynthesis stack) becomes an
        animated GIF at its Frame Time (or Recommended Display Frame Rate);
        JPEG and PNG hold one frame, so those show the first, as Orthanc does.
        """
        self._metadata.touch()
        row = self._instance_row(keys, *_FRAME_COLUMNS, (Level.IMAGE, "metadata"))
        stored = StoredInstance(**{name: row[name] for name in _STORED_NAMES})
        count = int(row.get("number_of_frames") or 1)
        if request.media_type != "image/gif" or count <= 1:
            return self._picture(stored, row, 0, request)
        key = ((stored.sop_instance_uid, stored.content_hash, "all"), request)
        cached = self._pictures.get(key)
        if cached is not None:
            return cached
        displays = [self._display(stored, row, n, request) for n in range(count)]
        header = JsonHeader(orjson.loads(row["metadata"])) if row.get("metadata") else None
        data = animated_gif(displays, _frame_ms(header))
        rendered = Picture(data, request.media_type, _etag(key), stored.stored_at)
        self._pictures.put(key, rendered, len(data))
        return rendered

    def _picture(
        self, stored: StoredInstance, row: Mapping[str, Any], frame: int, request: RenderRequest
    ) -> Picture:
        key = ((stored.sop_instance_uid, stored.content_hash, frame), request)
        cached = self._pictures.get(key)
        if cached is not None:
            return cached
        display = self._display(stored, row, frame, request)
        data = encode_picture(display, request.media_type, request.quality)
        rendered = Picture(data, request.media_type, _etag(key), stored.stored_at)
        self._pictures.put(key, rendered, len(data))
        return rendered

    def _display(
        self, stored: StoredInstance, row: Mapping[str, Any], frame: int, request: RenderRequest
    ) -> Any:
        """One frame through the display pipeline (8-bit grey or RGB), decoded at most once."""
        frame_key = (stored.sop_instance_uid, stored.content_hash, frame)
        decoded = self._decoded.get(frame_key)
        if decoded is None:
            in_place = self._frame_in_place(stored, row, frame)
            decoded = in_place or decode_frame(self._read_blob(stored), frame)
            self._decoded.put(frame_key, decoded, int(decoded[1].nbytes))
        header, pixels = decoded
        return display_array(header, pixels, request.window, request.viewport)

    def _frame_in_place(
        self, stored: StoredInstance, row: Mapping[str, Any], frame: int
    ) -> tuple[JsonHeader, Any] | None:
        """(header, frame) of a grey frame read as a byte range (and, when
        compressed, decoded straight from its codestream), its attributes from
        the precomputed metadata; or ``None`` when the instance needs the
        general path (colour, LUT sequences, no metadata yet, a codec called
        through pydicom only). No file is parsed: for an HTJ2K slice that is
        half the decode (1.3 of 2.6 ms)."""
        syntax = stored.transfer_syntax_uid
        native = syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
        offset, metadata = row.get("pixel_data_offset"), row.get("metadata")
        frame_size = _native_frame_size(row)
        if (
            not (native or can_decode(syntax))
            or not isinstance(offset, int)
            or metadata is None
            or not frame_size
            or int(row.get("samples_per_pixel") or 1) != 1
        ):
            return None
        header = JsonHeader(orjson.loads(metadata))
        if (
            str(header.get("PhotometricInterpretation", "")).strip()
            not in ("MONOCHROME1", "MONOCHROME2")
            or "ModalityLUTSequence" in header
            or "VOILUTSequence" in header
        ):
            return None
        count = int(row.get("number_of_frames") or 1)
        if not 0 <= frame < count:
            raise NotFoundError(f"frame {frame + 1} is out of range (1-{count})")
        fmt = _frame_format(row)
        if not native:
            decoded = self._grey_codestream_frames(stored, row, [frame + 1], fmt)
            return None if decoded is None else (header, decoded[0])
        data = self._read_large_range(stored, offset + frame * frame_size, frame_size)
        if len(data) != frame_size:
            return None  # a short Pixel Data value: let pydicom say what is wrong
        return header, grey_frame(data, (int(row["rows"]), int(row["columns"])), fmt)

    def _grey_codestream_frames(
        self,
        stored: StoredInstance,
        row: Mapping[str, Any],
        numbers: Sequence[int],
        fmt: FrameFormat,
    ) -> list[Any] | None:
        """Frames (1-based) of a compressed grey image decoded from their
        codestreams (see ``_decoded_in_place``), or ``None``: pydicom's path."""
        offset, count = row.get("pixel_data_offset"), int(row.get("number_of_frames") or 1)
        if (
            fmt.samples_per_pixel != 1
            or not isinstance(offset, int)
            or not can_decode(stored.transfer_syntax_uid)
            or row.get("rows") is None
        ):
            return None
        shape = (int(row["rows"]), int(row["columns"]))
        found = self._decoded_in_place(stored, offset, count, [n - 1 for n in numbers], shape, fmt)
        return None if found is None else [grey_frame(data, shape, fmt) for data in found]

    def _decoded_in_place(
        self,
        stored: StoredInstance,
        offset: int,
        count: int,
        frames: Sequence[int],
        shape: tuple[int, int],
        fmt: FrameFormat,
    ) -> list[memoryview] | None:
        """Compressed grey frames' (0-based) samples from their fragments (read
        by their places, see ``_stored_frames``), or ``None`` for anything
        unexpected: pydicom's path then decides, and explains."""
        samples = []
        try:
            codestreams = self._stored_frames(stored, offset, count, [f + 1 for f in frames])
            for codestream in codestreams:
                decoded = decode_codestream(codestream, stored.transfer_syntax_uid)
                if decoded.shape != shape or decoded.dtype.itemsize * 8 != fmt.bits_allocated:
                    return None  # an 8-bit codestream in a 16-bit container: pydicom's call
                samples.append(np.ascontiguousarray(decoded).data.cast("B"))
        except Exception as exc:  # a corrupt codestream, an odd container
            log.debug("%s: frames left to pydicom: %s", stored.sop_instance_uid, exc)
            return None
        return samples

    def _stored_frames(
        self, stored: StoredInstance, offset: int, count: int, numbers: Sequence[int]
    ) -> list[bytes]:
        """Frames (1-based) of an encapsulated Pixel Data value at ``offset``, as
        stored. The value is read and walked once per instance; the frames'
        places are kept (``_frame_spans``), so the next frames of a cine loop or
        a multi-frame CT are ranged reads of themselves alone."""
        spans = self._frame_spans.get(stored.content_hash)
        if spans is not None:
            _check_frames(stored, spans, numbers)
            frames = []
            for n in numbers:
                span = spans[n - 1]
                data = self._read_range(stored, offset + span[0], span_length(span))
                frames.append(span_bytes(span, data, span[0]))
            return frames
        value = self._read_range(stored, offset, max(0, stored.size - offset))
        try:
            spans = frame_spans(value, count)
        except ValueError as exc:  # an odd container: pydicom's reading, every time
            log.debug("%s: frames found by pydicom: %s", stored.sop_instance_uid, exc)
            frames = list(generate_frames(value, number_of_frames=count))
            _check_frames(stored, frames, numbers)
            return [frames[n - 1] for n in numbers]
        self._frame_spans.put(stored.content_hash, spans, 64 + 48 * len(spans))
        _check_frames(stored, spans, numbers)
        return [span_bytes(spans[n - 1], value) for n in numbers]

    def _stored_frames_now(
        self, stored: StoredInstance, offset: int, numbers: Sequence[int]
    ) -> list[bytes] | None:
        """``_stored_frames`` when the frames' places are kept and their bytes
        are in the page cache (see ``BlobStore.get_range_now``), else ``None``."""
        spans = self._frame_spans.get(stored.content_hash)
        if (
            spans is None
            or max(numbers) > len(spans)
            or sum(span_length(spans[n - 1]) for n in numbers) > _AT_ONCE_BYTES
        ):
            return None
        frames = []
        for n in numbers:
            span = spans[n - 1]
            try:
                data = self.blobs.get_range_now(
                    stored.blob_key, offset + span[0], span_length(span)
                )
            except BlobStoreError:
                return None  # the thread path says what is wrong
            if data is None:
                return None
            frames.append(span_bytes(span, data, span[0]))
        return frames

    def representative(self, level: Level, keys: Mapping[str, str]) -> dict[str, str]:
        """The UIDs of the instance that stands for a study or series in a thumbnail:
        the middle one of its instances as stored."""
        instances = self.instances_to_retrieve(level, keys)
        if not instances:
            raise NotFoundError(f"no {level.value.lower()} matches {dict(keys)}")
        chosen = instances[len(instances) // 2]
        return {
            "StudyInstanceUID": chosen.study_instance_uid,
            "SeriesInstanceUID": chosen.series_instance_uid,
            "SOPInstanceUID": chosen.sop_instance_uid,
        }

    def bulkdata(self, sop_instance_uid: str, path: Sequence[str]) -> tuple[str, bytes]:
        """The value at a BulkDataURI path (tag, item number, tag, ...) of an instance.

        Returns (transfer syntax UID of the value, bytes): Pixel Data as
        stored, compressed or not, like Orthanc and dcm4chee.
        """
        stored = self.instance(sop_instance_uid)
        part10 = self._read_blob(stored)
        value = bulk_value(part10, path)
        if value is None:
            raise NotFoundError(f"instance {sop_instance_uid} has no bulk data at {'/'.join(path)}")
        return stored.transfer_syntax_uid, value

    def _read_blob(self, stored: StoredInstance) -> bytes:
        try:
            return self.blobs.get(stored.blob_key)
        except BlobNotFoundError:
            raise StorageError(f"blob of {stored.sop_instance_uid} is missing") from None
        except BlobStoreError as exc:
            raise StorageError(f"cannot read {stored.sop_instance_uid}: {exc}") from exc

    def _iter_blob(self, stored: StoredInstance, chunk_size: int) -> Iterator[bytes]:
        try:
            yield from self.blobs.iter_chunks(stored.blob_key, chunk_size)
        except BlobNotFoundError:
            raise StorageError(f"blob of {stored.sop_instance_uid} is missing") from None
        except BlobStoreError as exc:
            raise StorageError(f"cannot read {stored.sop_instance_uid}: {exc}") from exc

    def _mapped_blob(self, stored: StoredInstance, chunk_size: int) -> Iterator[bytes | memoryview]:
        """The blob in ``chunk_size`` views of its file mapped into memory, or
        read (``_iter_blob``) where the store cannot map it or it is large.

        Study retrieval is bound by the server's CPU copying bytes: read into
        new memory, then into the socket. From a mapping only the second copy
        is left: the 300-slice CT went from 1.0-1.4 to 1.6-2.4 GB/s (0.63-0.95
        -> 0.32-0.70 ms of server CPU per MB, alternating servers on the same
        files). The mapping is made whole, once (an open file, as a read would
        keep), in the worker thread that reads ahead, populated there, so the
        event loop's sends find the pages in memory.
        """
        mapped = None
        if 0 < stored.size <= _MAPPED_STREAM:
            with contextlib.suppress(BlobStoreError):  # the read says what is wrong
                mapped = self.blobs.map_range(stored.blob_key, 0, stored.size)
        if mapped is None:
            yield from self._iter_blob(stored, chunk_size)
            return
        for start in range(0, len(mapped), chunk_size):
            yield mapped[start : start + chunk_size]

    def _read_large_range(
        self, stored: StoredInstance, offset: int, length: int
    ) -> bytes | memoryview:
        """``_read_range``, mapped instead where the store can and the range is
        large (a radiograph's frame: new memory for it is a page fault per page)."""
        if length >= _MAPPED_READ:
            try:
                mapped = self.blobs.map_range(stored.blob_key, offset, length)
            except BlobStoreError:
                mapped = None  # the read says what is wrong
            if mapped is not None:
                return mapped
        return self._read_range(stored, offset, length)

    def _read_range(self, stored: StoredInstance, offset: int, length: int) -> bytes:
        try:
            return self.blobs.get_range(stored.blob_key, offset, length)
        except BlobStoreError as exc:
            raise StorageError(f"cannot read {stored.sop_instance_uid}: {exc}") from exc

    def _instance_row(self, keys: Mapping[str, str], *extra: tuple[Level, str]) -> dict[str, Any]:
        """The stored-instance columns (and ``extra``) of the one instance ``keys`` name."""
        rows = self.index.find(self._unique_key_query(Level.IMAGE, keys, *extra))
        try:
            for row in rows:
                return row
        finally:
            close = getattr(rows, "close", None)
            if close is not None:
                close()  # hand the index connection back now, not at garbage collection
        raise NotFoundError(f"no instance {keys.get('SOPInstanceUID')} in that study and series")

    def _unique_key_query(
        self, level: Level, keys: Mapping[str, str], *extra: tuple[Level, str]
    ) -> Query:
        unique = {UNIQUE_KEYS[above].keyword for above in LEVELS[: LEVELS.index(level) + 1]}
        wanted = {k: v for k, v in keys.items() if k in unique}
        if all(k in _UID_COLUMNS and is_uid(v) for k, v in wanted.items()):
            # UIDs from a WADO path or a retrieve: plain equality, without the
            # general query parser (a third of a frame request's archive time).
            conditions = tuple(
                Condition(_UID_COLUMNS[k][0], _UID_COLUMNS[k][1], SingleValue(v))
                for k, v in wanted.items()
            )
        else:
            conditions = build_query(Level.IMAGE, wanted).conditions
        return Query(Level.IMAGE, conditions, _STORED_COLUMNS + extra)

    def entity(self, level: Level, uid: str) -> dict[str, object]:
        row = self.index.entity(level, uid)
        if row is None:
            raise NotFoundError(f"no {level.value.lower()} {uid}")
        return row

    def statistics(self) -> ArchiveStatistics:
        return self.index.statistics()


_STORED_COLUMNS = (
    (Level.STUDY, "study_instance_uid"),
    (Level.SERIES, "series_instance_uid"),
    (Level.IMAGE, "sop_instance_uid"),
    (Level.IMAGE, "sop_class_uid"),
    (Level.IMAGE, "transfer_syntax_uid"),
    (Level.IMAGE, "blob_key"),
    (Level.IMAGE, "size"),
    (Level.IMAGE, "content_hash"),
    (Level.IMAGE, "stored_at"),
)


_STORED_NAMES = tuple(column for _, column in _STORED_COLUMNS)
_UID_COLUMNS = {
    UNIQUE_KEYS[level].keyword: (level, UNIQUE_KEYS[level].column)
    for level in (Level.STUDY, Level.SERIES, Level.IMAGE)
}
# Blobs read ahead for one metadata request, at most: a large CT series, not a
# whole 2 GB study (a viewer may look at one series of it).
_PREFETCH_BYTES = 512 << 20
# An answer on the event loop waits for nothing when it comes from memory; one
# that blocked for over 5 ms (a disk seek) sends the next ones to threads for 10 s.
_AT_ONCE_BUDGET = 0.005
_AT_ONCE_PAUSE = 10.0
# Ranges from this size up are mapped, not read (``Archive._read_large_range``).
_MAPPED_READ = 2 << 20
# Blobs up to this size are streamed from a mapping (``Archive._mapped_blob``);
# a larger one is read piece by piece, not populated whole before its first byte.
_MAPPED_STREAM = 64 << 20
# Instance rows kept for answers on the event loop: a few studies' worth.
_ROWS_NOW_KEPT = 4096
# Frames read on the event loop, at most: a page-cache copy of 8 MB is ~1 ms.
_AT_ONCE_BYTES = 8 << 20

_FRAME_COLUMNS = tuple(
    (Level.IMAGE, column)
    for column in (
        "pixel_data_offset",
        "number_of_frames",
        "rows",
        "columns",
        "samples_per_pixel",
        "bits_allocated",
        "bits_stored",
        "pixel_representation",
        "photometric_interpretation",
    )
)


def _frame_format(row: Mapping[str, Any]) -> FrameFormat:
    return frame_format(
        row.get("bits_allocated"),
        row.get("bits_stored"),
        row.get("pixel_representation"),
        row.get("samples_per_pixel"),
        row.get("photometric_interpretation"),
    )


def _thread_clock() -> tuple[float, int]:
    """This thread's CPU time, and how many times it has blocked (voluntary
    context switches; Linux's ``RUSAGE_THREAD``, elsewhere every call counts)."""
    if _RUSAGE_THREAD is None:
        return time.thread_time(), time.monotonic_ns()
    usage = resource.getrusage(_RUSAGE_THREAD)
    return usage.ru_utime + usage.ru_stime, usage.ru_nvcsw


_RUSAGE_THREAD: int | None = getattr(resource, "RUSAGE_THREAD", None)


def _check_frames(stored: StoredInstance, frames: Sequence[object], numbers: Sequence[int]) -> None:
    """A frame the instance says it has (Number of Frames) but its Pixel Data lacks."""
    if max(numbers) > len(frames):
        raise CorruptDataError(
            f"the Pixel Data of {stored.sop_instance_uid} holds {len(frames)} frames,"
            f" not frame {max(numbers)}"
        )


def _native_frame_size(row: Mapping[str, Any]) -> int | None:
    try:
        rows, columns = int(row["rows"]), int(row["columns"])
        samples, bits = int(row.get("samples_per_pixel") or 1), int(row["bits_allocated"])
    except (KeyError, TypeError, ValueError):
        return None
    if bits % 8:
        return None  # 1-bit data packs frames across byte boundaries: decode instead
    return rows * columns * samples * bits // 8


def instance_path(study_instance_uid: str, series_instance_uid: str, sop_instance_uid: str) -> str:
    """The instance's resource path below the DICOMweb root (PS3.18 10.4.1)."""
    return f"studies/{study_instance_uid}/series/{series_instance_uid}/instances/{sop_instance_uid}"


def _metadata(
    dataset: Dataset, uids: dict[str, str], layout: encoding.Layout, transfer_syntax_uid: str
) -> bytes:
    # WADO-RS metadata then never parses a file (see pacs.core.metadata).
    path = instance_path(
        uids["StudyInstanceUID"], uids["SeriesInstanceUID"], uids["SOPInstanceUID"]
    )
    return dicomjson.instance_metadata(
        dataset, path, layout.pixel_data_offset is not None, transfer_syntax_uid
    )


def _etag(key: object) -> str:
    """A strong validator for a rendered picture, from what it was made of."""
    return '"' + hashlib.blake2b(repr(key).encode(), digest_size=12).hexdigest() + '"'


def _frame_ms(header: JsonHeader | None) -> float:
    """Milliseconds per frame of a cine loop: Frame Time, else the recommended rate, else 10/s."""
    if header is not None:
        for keyword, per_second in (("FrameTime", False), ("RecommendedDisplayFrameRate", True)):
            try:
                value = float(header.get(keyword) or 0)
            except (TypeError, ValueError):
                continue
            if value > 0:
                return 1000.0 / value if per_second else value
    return 100.0


def _index_error(exc: Exception) -> StorageError:
    # SQLite says SQLITE_FULL (13) when the disk or the database is full;
    # PostgreSQL says disk_full (SQLSTATE 53100).
    if getattr(exc, "sqlite_errorcode", None) == 13 or getattr(exc, "sqlstate", None) == "53100":
        return StorageFullError(f"index cannot record the instance: {exc}")
    return StorageError(f"index cannot record the instance: {exc}")

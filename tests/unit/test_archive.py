"""The archive core over the in-memory index and blob store."""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import sqlite3
import subprocess
import sys
import time
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from blake3 import blake3
from pydicom import uid
from pydicom.encaps import generate_frames
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    ImplicitVRLittleEndian,
    MRImageStorage,
)
from pynetdicom.dsutils import split_dataset

from pacs.core import Archive
from pacs.core import archive as archive_module
from pacs.core.archive import _FRAME_COLUMNS, DuplicatePolicy, _thread_clock
from pacs.core.encoding import file_meta_bytes, split_part10
from pacs.core.rendering import RenderRequest
from pacs.errors import (
    ConflictError,
    DatasetMismatchError,
    InvalidDatasetError,
    NotFoundError,
    StorageError,
    StorageFullError,
)
from pacs.index import SqliteIndex
from pacs.index.base import InstanceRecord, StoredInstance
from pacs.index.schema import Level
from pacs.pixels.codecs import decode_codestream, load_imagecodecs
from pacs.pixels.frames import decode_frames
from pacs.pixels.render import decode_frame, picture
from pacs.pixels.transcode import transcode
from pacs.types import Caller, Frames, StoreOutcome
from storage import BlobStoreError, BlobStoreFullError, FilesystemBlobStore, MemoryBlobStore
from tests.conftest import PYDICOM_TEST_FILES, bundled_dicom_files
from tests.dicom_factory import encode, make_ct, well_formed
from tests.page_cache import cached_pages, drop_from_page_cache, nowait_reads
from tests.unit.test_transcode import source as transcode_source

CALLER = Caller(ae_title="MODALITY", address="10.0.0.9")
REQUIRED = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")


def archive_with(policy: DuplicatePolicy, index: Any = None, blobs: Any = None) -> Archive:
    return Archive(
        index if index is not None else SqliteIndex(":memory:"),
        blobs if blobs is not None else MemoryBlobStore(),
        duplicate_policy=policy,
    )


def blob_keys(archive: Archive) -> list[str]:
    return sorted(archive.blobs.keys())


def stored_data_set(archive: Archive, sop_instance_uid: str) -> bytes:
    blob = archive.read_instance(sop_instance_uid)
    _, offset = split_part10(blob)
    return blob[offset:]


# -- Part 10 files -------------------------------------------------------------------


def part10_expectation(path: Path) -> tuple[str, bytes, str | None]:
    """('ok'|'invalid', data set bytes, SOP Instance UID) as ingest_part10 should see it."""
    data = path.read_bytes()
    if data[128:132] != b"DICM":
        raw, ts = data, ImplicitVRLittleEndian  # pre-Part-10: implicit VR by definition
    else:
        meta, offset = split_dataset(path)
        raw, ts = data[offset:], meta.get("TransferSyntaxUID")
        if not ts:
            return "invalid", raw, None
    if not well_formed(raw, ts):
        return "invalid", raw, None
    ds = pydicom.dcmread(path, force=True)
    if any(not str(ds.get(k) or "") for k in REQUIRED):
        return "invalid", raw, None
    return "ok", raw, str(ds.SOPInstanceUID)


def test_ingest_part10_of_every_bundled_file(memory_archive: Archive) -> None:
    first: dict[str, bytes] = {}
    outcomes: dict[StoreOutcome, int] = {}
    for path in bundled_dicom_files():
        expected, raw, sop = part10_expectation(path)
        if expected == "invalid":
            with pytest.raises(InvalidDatasetError):
                memory_archive.ingest_part10(path.read_bytes(), CALLER)
            continue
        result = memory_archive.ingest_part10(path.read_bytes(), CALLER)
        outcomes[result.outcome] = outcomes.get(result.outcome, 0) + 1
        assert result.sop_instance_uid == sop
        if sop not in first:
            assert result.outcome is StoreOutcome.STORED, path.name
            first[sop] = raw
        elif hashlib.sha256(raw).digest() == hashlib.sha256(first[sop]).digest():
            assert result.outcome is StoreOutcome.DUPLICATE, path.name
        else:
            assert result.outcome is StoreOutcome.KEPT_EXISTING, path.name
    assert set(outcomes) == {
        StoreOutcome.STORED,
        StoreOutcome.DUPLICATE,
        StoreOutcome.KEPT_EXISTING,
    }
    assert memory_archive.statistics().instances == len(first)
    assert len(blob_keys(memory_archive)) == len(first)
    for sop, raw in first.items():
        assert stored_data_set(memory_archive, sop) == raw


def test_bare_data_sets_are_implicit_vr(memory_archive: Archive) -> None:
    result = memory_archive.ingest_part10(
        (PYDICOM_TEST_FILES / "rtstruct.dcm").read_bytes(), CALLER
    )
    assert result.outcome is StoreOutcome.STORED
    assert result.transfer_syntax_uid == ImplicitVRLittleEndian
    with pytest.raises(InvalidDatasetError):
        memory_archive.ingest_part10(
            (PYDICOM_TEST_FILES / "ExplVR_LitEndNoMeta.dcm").read_bytes(), CALLER
        )


def test_part10_source_ae_title_is_used_when_the_caller_has_none(memory_archive: Archive) -> None:
    ds = make_ct("archive", 1, 1)
    data = file_meta_bytes(
        CTImageStorage, ds.SOPInstanceUID, ExplicitVRLittleEndian, "OLDPACS"
    ) + encode(ds)
    memory_archive.ingest_part10(data, Caller(address="import"))
    assert memory_archive.entity(Level.IMAGE, ds.SOPInstanceUID)["source_ae_title"] == "OLDPACS"
    other = make_ct("archive", 1, 2)
    data = file_meta_bytes(
        CTImageStorage, other.SOPInstanceUID, ExplicitVRLittleEndian, "OLDPACS"
    ) + encode(other)
    memory_archive.ingest_part10(data, CALLER)  # a caller with an AE title keeps it
    assert memory_archive.entity(Level.IMAGE, other.SOPInstanceUID)["source_ae_title"] == "MODALITY"


def test_part10_meta_without_transfer_syntax(memory_archive: Archive) -> None:
    with pytest.raises(InvalidDatasetError, match="Transfer Syntax"):
        memory_archive.ingest_part10(
            (PYDICOM_TEST_FILES / "meta_missing_tsyntax.dcm").read_bytes(), CALLER
        )


# -- what is stored -----------------------------------------------------------------------


def test_stored_blob_is_meta_plus_the_bytes_received(memory_archive: Archive) -> None:
    ds = make_ct("archive", 1, 1, size=16)
    raw = encode(ds, ImplicitVRLittleEndian)
    result = memory_archive.ingest(raw, ImplicitVRLittleEndian, CALLER)
    assert result.outcome is StoreOutcome.STORED
    blob = memory_archive.read_instance(ds.SOPInstanceUID)
    assert blob.endswith(raw)
    assert b"".join(memory_archive.iter_instance(ds.SOPInstanceUID, 100)) == blob
    parsed = pydicom.dcmread(pydicom.filebase.DicomBytesIO(blob))
    assert parsed.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert parsed.file_meta.SourceApplicationEntityTitle == "MODALITY"
    row = memory_archive.entity(Level.IMAGE, ds.SOPInstanceUID)
    assert row["size"] == len(blob) == result.size
    assert row["content_hash"] == "blake3:" + blake3(raw).hexdigest()
    offset, length = row["pixel_data_offset"], row["pixel_data_length"]
    assert length == 16 * 16 * 2
    assert blob[offset : offset + length] == ds.PixelData
    study = memory_archive.entity(Level.STUDY, ds.StudyInstanceUID)
    assert study["number_of_study_related_instances"] == 1
    assert study["modalities_in_study"] == "CT"


def test_deflated_data_set_is_stored_deflated(memory_archive: Archive) -> None:
    ds = make_ct("archive", 1, 1)
    raw = encode(ds, DeflatedExplicitVRLittleEndian)
    memory_archive.ingest(raw, DeflatedExplicitVRLittleEndian, CALLER)
    assert stored_data_set(memory_archive, ds.SOPInstanceUID) == raw
    row = memory_archive.entity(Level.IMAGE, ds.SOPInstanceUID)
    assert row["pixel_data_offset"] is None and row["pixel_data_length"] is None


def test_ingest_dataset(memory_archive: Archive) -> None:
    ds = make_ct("archive", 1, 1)
    result = memory_archive.ingest_dataset(ds, CALLER)
    assert result.outcome is StoreOutcome.STORED
    assert stored_data_set(memory_archive, ds.SOPInstanceUID) == encode(ds)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    with pytest.raises(InvalidDatasetError, match="deflated"):
        memory_archive.ingest_dataset(ds, CALLER)


def test_request_mismatch_is_refused_before_anything_is_written(memory_archive: Archive) -> None:
    ds = make_ct("archive", 1, 1)
    with pytest.raises(DatasetMismatchError):
        memory_archive.ingest(
            encode(ds), ExplicitVRLittleEndian, CALLER, sop_class_uid=MRImageStorage
        )
    with pytest.raises(DatasetMismatchError):
        memory_archive.ingest(
            encode(ds),
            ExplicitVRLittleEndian,
            CALLER,
            sop_class_uid=CTImageStorage,
            sop_instance_uid=ds.SOPInstanceUID + ".1",
        )
    memory_archive.ingest(
        encode(ds),
        ExplicitVRLittleEndian,
        CALLER,
        sop_class_uid=CTImageStorage,
        sop_instance_uid=ds.SOPInstanceUID,
    )
    assert len(blob_keys(memory_archive)) == 1


def test_truncated_data_set_is_refused(memory_archive: Archive) -> None:
    raw = encode(make_ct("archive", 1, 1))
    with pytest.raises(InvalidDatasetError, match="past the end"):
        memory_archive.ingest(raw[:-10], ExplicitVRLittleEndian, CALLER)
    assert blob_keys(memory_archive) == []
    assert memory_archive.statistics().instances == 0


def test_unknown_instances(memory_archive: Archive) -> None:
    with pytest.raises(NotFoundError):
        memory_archive.read_instance("1.2.3")
    with pytest.raises(NotFoundError):
        memory_archive.iter_instance("1.2.3")
    with pytest.raises(NotFoundError):
        memory_archive.instance("1.2.3")
    with pytest.raises(NotFoundError):
        memory_archive.entity(Level.STUDY, "1.2.3")


def test_missing_blob_is_a_storage_error(memory_archive: Archive) -> None:
    ds = make_ct("archive", 1, 1)
    memory_archive.ingest_dataset(ds, CALLER)
    memory_archive.blobs.delete(blob_keys(memory_archive)[0])
    with pytest.raises(StorageError, match="missing"):
        memory_archive.read_instance(ds.SOPInstanceUID)


# -- duplicate policies ----------------------------------------------------------------------


@pytest.mark.parametrize("policy", list(DuplicatePolicy))
def test_identical_copy_is_always_a_duplicate(policy: DuplicatePolicy) -> None:
    archive = archive_with(policy)
    ds = make_ct("dup", 1, 1)
    assert archive.ingest_dataset(ds, CALLER).outcome is StoreOutcome.STORED
    keys = blob_keys(archive)
    assert archive.ingest_dataset(ds, CALLER).outcome is StoreOutcome.DUPLICATE
    assert blob_keys(archive) == keys
    assert archive.statistics().instances == 1


def test_keep_policy() -> None:
    archive = archive_with(DuplicatePolicy.KEEP)
    first, second = make_ct("dup", 1, 1), make_ct("dup", 1, 1, variant=1)
    archive.ingest_dataset(first, CALLER)
    result = archive.ingest_dataset(second, CALLER)
    assert result.outcome is StoreOutcome.KEPT_EXISTING
    assert len(blob_keys(archive)) == 1
    assert stored_data_set(archive, first.SOPInstanceUID) == encode(first)


@pytest.mark.parametrize("policy", list(DuplicatePolicy))
def test_copies_of_instances_hashed_with_sha256_are_still_recognised(
    tmp_path: Path, policy: DuplicatePolicy
) -> None:
    """Archives written before BLAKE3 content hashes hold SHA-256 digests."""
    first, second = make_ct("legacy", 1, 1), make_ct("legacy", 1, 1, variant=1)
    archive = Archive(SqliteIndex(tmp_path / "index.sqlite"), FilesystemBlobStore(tmp_path / "b"))
    archive.ingest_dataset(first, CALLER)
    archive.close()
    with sqlite3.connect(tmp_path / "index.sqlite") as connection:
        connection.execute(
            "UPDATE instances SET content_hash = ?", (hashlib.sha256(encode(first)).hexdigest(),)
        )
    connection.close()
    archive = Archive(
        SqliteIndex(tmp_path / "index.sqlite"),
        FilesystemBlobStore(tmp_path / "b"),
        duplicate_policy=policy,
    )
    try:
        assert archive.ingest_dataset(first, CALLER).outcome is StoreOutcome.DUPLICATE
        if policy is DuplicatePolicy.REJECT:
            with pytest.raises(ConflictError):
                archive.ingest_dataset(second, CALLER)
        else:
            assert archive.ingest_dataset(second, CALLER).outcome is (
                StoreOutcome.KEPT_EXISTING
                if policy is DuplicatePolicy.KEEP
                else StoreOutcome.REPLACED
            )
    finally:
        archive.close()


def test_replace_policy() -> None:
    archive = archive_with(DuplicatePolicy.REPLACE)
    first, second = make_ct("dup", 1, 1), make_ct("dup", 1, 1, variant=1)
    archive.ingest_dataset(first, CALLER)
    old_keys = blob_keys(archive)
    result = archive.ingest_dataset(second, CALLER)
    assert result.outcome is StoreOutcome.REPLACED
    assert len(blob_keys(archive)) == 1 and blob_keys(archive) != old_keys
    assert stored_data_set(archive, first.SOPInstanceUID) == encode(second)
    assert archive.statistics().instances == 1
    assert (
        archive.entity(Level.STUDY, first.StudyInstanceUID)["number_of_study_related_instances"]
        == 1
    )


def test_reject_policy() -> None:
    archive = archive_with(DuplicatePolicy.REJECT)
    first, second = make_ct("dup", 1, 1), make_ct("dup", 1, 1, variant=1)
    archive.ingest_dataset(first, CALLER)
    keys = blob_keys(archive)
    with pytest.raises(ConflictError, match=first.SOPInstanceUID):
        archive.ingest_dataset(second, CALLER)
    assert blob_keys(archive) == keys
    assert stored_data_set(archive, first.SOPInstanceUID) == encode(first)


# -- failures roll back ------------------------------------------------------------------------


class FailingIndex:
    """A real SqliteIndex whose chosen write method raises (a fake, not a mock)."""

    def __init__(self, error: Exception, method: str = "add_instance") -> None:
        self.inner = SqliteIndex(":memory:")
        self.error = error
        self.method = method
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def add_instance(self, record: InstanceRecord) -> StoredInstance | None:
        return self._maybe_fail("add_instance", record)

    def replace_instance(self, record: InstanceRecord) -> StoredInstance | None:
        return self._maybe_fail("replace_instance", record)

    def _maybe_fail(self, method: str, record: InstanceRecord) -> StoredInstance | None:
        if method == self.method:
            self.calls += 1
            raise self.error
        result: StoredInstance | None = getattr(self.inner, method)(record)
        return result


def _sqlite_error(message: str, code: int) -> sqlite3.OperationalError:
    """An error as SQLite raises it, with its result code (which the archive reads)."""
    error = sqlite3.OperationalError(message)
    error.sqlite_errorcode = code
    return error


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (_sqlite_error("database or disk is full", sqlite3.SQLITE_FULL), StorageFullError),
        (_sqlite_error("disk I/O error", sqlite3.SQLITE_IOERR), StorageError),
        (sqlite3.OperationalError("database is locked"), StorageError),
        (RuntimeError("index exploded"), StorageError),
        (StorageError("already translated"), StorageError),
    ],
)
def test_index_failure_removes_the_blob(error: Exception, expected: type[Exception]) -> None:
    index = FailingIndex(error)
    archive = archive_with(DuplicatePolicy.KEEP, index=index)
    ds = make_ct("rollback", 1, 1)
    with pytest.raises(expected) as info:
        archive.ingest_dataset(ds, CALLER)
    if expected is StorageError:
        assert not isinstance(info.value, StorageFullError)
    assert index.calls == 1
    assert blob_keys(archive) == []  # the blob was written, then removed
    assert index.inner.statistics().instances == 0


def test_failed_replace_keeps_the_old_copy() -> None:
    index = FailingIndex(sqlite3.OperationalError("database is locked"), method="replace_instance")
    archive = archive_with(DuplicatePolicy.REPLACE, index=index)
    first, second = make_ct("rollback", 1, 1), make_ct("rollback", 1, 1, variant=1)
    archive.ingest_dataset(first, CALLER)
    keys = blob_keys(archive)
    with pytest.raises(StorageError):
        archive.ingest_dataset(second, CALLER)
    assert blob_keys(archive) == keys
    assert stored_data_set(archive, first.SOPInstanceUID) == encode(first)


class FailingBlobs(MemoryBlobStore):
    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    def put(self, key: str, chunks: Iterable[bytes]) -> int:
        raise self.error


@pytest.mark.parametrize(
    ("error", "expected"),
    [(BlobStoreFullError("full"), StorageFullError), (BlobStoreError("io"), StorageError)],
)
def test_blob_store_failure(error: Exception, expected: type[Exception]) -> None:
    archive = archive_with(DuplicatePolicy.KEEP, blobs=FailingBlobs(error))
    with pytest.raises(expected):
        archive.ingest_dataset(make_ct("rollback", 1, 1), CALLER)
    assert archive.statistics().instances == 0


class RacingIndex:
    """An index where another association stores the same UID between the
    archive's lookup and its insert: the first lookup misses, the insert finds it."""

    def __init__(self, already_stored: bytes, archive_for_setup: Archive) -> None:
        self.inner = archive_for_setup.index
        self.raced = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def find_instance(self, sop_instance_uid: str) -> StoredInstance | None:
        if not self.raced:
            self.raced = True
            return None
        return self.inner.find_instance(sop_instance_uid)  # type: ignore[no-any-return]


def racing_archive(policy: DuplicatePolicy, first: bytes) -> Archive:
    setup = archive_with(DuplicatePolicy.KEEP)
    setup.ingest(first, ExplicitVRLittleEndian, Caller(ae_title="OTHER"))
    return Archive(RacingIndex(first, setup), setup.blobs, duplicate_policy=policy)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("policy", "outcome"),
    [
        (DuplicatePolicy.KEEP, StoreOutcome.KEPT_EXISTING),
        (DuplicatePolicy.REPLACE, StoreOutcome.REPLACED),
    ],
)
def test_concurrent_copy_follows_the_policy(policy: DuplicatePolicy, outcome: StoreOutcome) -> None:
    first, second = encode(make_ct("race", 1, 1)), encode(make_ct("race", 1, 1, variant=1))
    archive = racing_archive(policy, first)
    sop = make_ct("race", 1, 1).SOPInstanceUID
    assert archive.ingest(second, ExplicitVRLittleEndian, CALLER).outcome is outcome
    assert len(blob_keys(archive)) == 1
    kept = first if policy is DuplicatePolicy.KEEP else second
    assert stored_data_set(archive, sop) == kept


def test_concurrent_identical_copy_is_a_duplicate() -> None:
    first = encode(make_ct("race", 1, 1))
    archive = racing_archive(DuplicatePolicy.REJECT, first)
    assert archive.ingest(first, ExplicitVRLittleEndian, CALLER).outcome is StoreOutcome.DUPLICATE
    assert len(blob_keys(archive)) == 1


def test_concurrent_different_copy_under_reject_is_a_conflict() -> None:
    first, second = encode(make_ct("race", 1, 1)), encode(make_ct("race", 1, 1, variant=1))
    archive = racing_archive(DuplicatePolicy.REJECT, first)
    with pytest.raises(ConflictError):
        archive.ingest(second, ExplicitVRLittleEndian, CALLER)
    assert len(blob_keys(archive)) == 1
    assert stored_data_set(archive, make_ct("race", 1, 1).SOPInstanceUID) == first


# -- answers given on the event loop (frames_now, rendered_now) ------------------------


@pytest.fixture
def file_archive(tmp_path: Path) -> Iterable[Archive]:
    """As ``pacs serve`` runs by default: SQLite in a file, blobs in a folder."""
    archive = Archive(SqliteIndex(tmp_path / "index.sqlite"), FilesystemBlobStore(tmp_path / "b"))
    # A pause of a test machine (a garbage collection) must not send the
    # answers of the tests below to threads; one test checks the budget.
    archive.at_once_budget = 10.0
    yield archive
    archive.close()


def _stored_keys(archive: Archive, name: str) -> dict[str, str]:
    ds = pydicom.dcmread(PYDICOM_TEST_FILES / name)
    archive.ingest_part10((PYDICOM_TEST_FILES / name).read_bytes(), CALLER)
    return {
        "StudyInstanceUID": ds.StudyInstanceUID,
        "SeriesInstanceUID": ds.SeriesInstanceUID,
        "SOPInstanceUID": ds.SOPInstanceUID,
    }


def _as(*syntaxes: str | None) -> Any:
    return lambda stored_syntax: list(syntaxes)


def test_stored_instance_streams_from_its_mapped_file(file_archive: Archive) -> None:
    """As stored, a blob goes out as views of its file's pages, chunk by chunk,
    byte for byte the stored file; still whole if the instance is deleted
    while it is being sent (the mapping outlives the file)."""
    keys = _stored_keys(file_archive, "MR_small.dcm")
    stored = file_archive.instance(keys["SOPInstanceUID"])
    whole = file_archive.read_instance(keys["SOPInstanceUID"])
    syntax, chunks = file_archive.part10_for_transfer(stored, None, chunk_size=4096)
    assert syntax == stored.transfer_syntax_uid
    first = next(chunks)
    assert isinstance(first, memoryview) and len(first) == 4096
    file_archive.delete(Level.IMAGE, keys)
    rest = list(chunks)
    assert all(isinstance(chunk, memoryview) and len(chunk) <= 4096 for chunk in rest)
    assert b"".join([first, *rest]) == whole


def test_large_stored_instance_is_read_piece_by_piece(
    file_archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A blob over the mapping limit is read a chunk at a time, not populated
    whole before its first byte leaves."""
    monkeypatch.setattr(archive_module, "_MAPPED_STREAM", 1024)
    keys = _stored_keys(file_archive, "MR_small.dcm")
    stored = file_archive.instance(keys["SOPInstanceUID"])
    _, chunks = file_archive.part10_for_transfer(stored, None, chunk_size=4096)
    parts = list(chunks)
    assert parts and all(isinstance(chunk, bytes) for chunk in parts)
    assert b"".join(parts) == file_archive.read_instance(keys["SOPInstanceUID"])


@pytest.mark.parametrize(("name", "numbers"), [("CT_small.dcm", [1]), ("rtdose.dcm", [3, 1])])
def test_uncompressed_frames_at_once_are_the_frames(
    file_archive: Archive, name: str, numbers: list[int]
) -> None:
    keys = _stored_keys(file_archive, name)
    expected = file_archive.frames(keys, numbers, _as(ExplicitVRLittleEndian))
    assert isinstance(file_archive.blobs, FilesystemBlobStore)
    if not nowait_reads(file_archive.blobs.root.parent / "index.sqlite"):
        assert file_archive.frames_now(keys, numbers, _as(ExplicitVRLittleEndian)) is None
        pytest.skip("this filesystem takes no RWF_NOWAIT reads (tmpfs?): frames come from a thread")
    for _ in range(5):  # the kernel may drop the pages between two calls: a few tries
        found = file_archive.frames_now(keys, numbers, _as(ExplicitVRLittleEndian))
        if found is not None:
            break
        file_archive.frames(keys, numbers, _as(ExplicitVRLittleEndian))
    assert found is not None
    assert found.syntax == expected.syntax
    assert [bytes(f) for f in found.data] == expected.data
    with pytest.raises(NotFoundError):
        file_archive.frames_now(keys, [99], _as(ExplicitVRLittleEndian))
    with pytest.raises(NotFoundError):
        file_archive.frames_now({**keys, "SeriesInstanceUID": "1.2.3"}, [1], _as(None))


def test_what_needs_decoding_or_a_whole_file_is_not_done_at_once(file_archive: Archive) -> None:
    keys = _stored_keys(file_archive, "JPEG2000.dcm")
    assert file_archive.frames_now(keys, [1], _as(None)) is None  # fragments: the whole value
    assert file_archive.frames_now(keys, [1], _as(ExplicitVRLittleEndian)) is None  # a decode
    assert file_archive.frames(keys, [1], _as(ExplicitVRLittleEndian)).data


def test_converted_frames_are_kept_and_then_given_at_once(file_archive: Archive) -> None:
    keys = _stored_keys(file_archive, "CT_small.dcm")
    assert file_archive.frames_now(keys, [1], _as(HTJ2KLossless)) is None  # not converted yet
    converted = file_archive.frames(keys, [1], _as(HTJ2KLossless))
    assert converted.syntax == HTJ2KLossless
    again = file_archive.frames_now(keys, [1], _as(HTJ2KLossless))
    assert again == converted
    assert again.data[0] is converted.data[0]  # the same bytes, not a new conversion
    assert file_archive.frames(keys, [1], _as(HTJ2KLossless)).data[0] is converted.data[0]


def test_a_rendered_picture_is_given_at_once_once_made(file_archive: Archive) -> None:
    keys = _stored_keys(file_archive, "CT_small.dcm")
    wanted = RenderRequest(media_type="image/png", window=None, viewport=None, quality=90)
    assert file_archive.rendered_now(keys, 0, wanted) is None
    picture = file_archive.rendered(keys, 0, wanted)
    assert file_archive.rendered_now(keys, 0, wanted) is picture
    # another window is another picture, not yet made
    other = RenderRequest(media_type="image/png", window=None, viewport=(64, 64), quality=90)
    assert file_archive.rendered_now(keys, 0, other) is None
    # an instance that is not there is for ``rendered`` to report
    assert file_archive.rendered_now({**keys, "SOPInstanceUID": "1.2.3.4"}, 0, wanted) is None


def test_asking_for_the_metadata_reads_the_frames_ahead(file_archive: Archive) -> None:
    keys = _stored_keys(file_archive, "CT_small.dcm")
    assert isinstance(file_archive.blobs, FilesystemBlobStore)
    path = file_archive.blobs.root / file_archive.instance(keys["SOPInstanceUID"]).blob_key
    drop_from_page_cache(path)
    time.sleep(0.2)
    assert cached_pages(path) == 0  # nothing reads it by itself
    file_archive.metadata(Level.SERIES, keys)
    deadline = time.monotonic() + 10
    while cached_pages(path) < -(-path.stat().st_size // mmap.PAGESIZE):
        assert time.monotonic() < deadline, "the instance was not read ahead"
        time.sleep(0.01)
    assert file_archive.frames_now(keys, [1], _as(ExplicitVRLittleEndian)) is not None


@pytest.mark.parametrize("signed", [False, True])
def test_a_large_uncompressed_grey_frame_is_rendered_from_its_mapped_pages(
    file_archive: Archive, signed: bool
) -> None:
    """A radiograph-sized native frame is mapped from the file, not read into
    new memory: the picture is the one pydicom's decoding gives."""
    from pacs.core.archive import _MAPPED_READ

    ds = make_ct("mapped", 1, 1)
    ds.Rows, ds.Columns = 1400, 1100  # 3 MB at 16 bits: over _MAPPED_READ
    ds.BitsStored, ds.HighBit = 12, 11
    ds.PixelRepresentation = int(signed)
    rng = np.random.default_rng(3)
    low, high = (-2048, 2047) if signed else (0, 4095)
    pixels = rng.integers(low, high, size=(1400, 1100), endpoint=True)
    ds.PixelData = pixels.astype("<i2" if signed else "<u2").tobytes()
    assert len(ds.PixelData) >= _MAPPED_READ
    file_archive.ingest_dataset(ds, CALLER)
    assert file_archive.wait_for_metadata(30)
    keys = {
        "StudyInstanceUID": ds.StudyInstanceUID,
        "SeriesInstanceUID": ds.SeriesInstanceUID,
        "SOPInstanceUID": ds.SOPInstanceUID,
    }
    rendered = file_archive.rendered(keys, 0, RenderRequest(media_type="image/png"))
    stored = file_archive.instance(ds.SOPInstanceUID)
    header, decoded = decode_frame(file_archive.read_instance(ds.SOPInstanceUID), 0)
    assert rendered.data == picture(header, decoded, "image/png")
    kept = file_archive._decoded.get((stored.sop_instance_uid, stored.content_hash, 0))
    assert kept is not None and not isinstance(kept[0], pydicom.Dataset)  # the in-place path
    assert np.array_equal(kept[1], decoded)
    if not signed:  # unsigned values are the file's bytes themselves: a view of the mapping
        base = kept[1]
        while isinstance(base, np.ndarray):
            base = base.base
        assert isinstance(base, memoryview) and isinstance(base.obj, mmap.mmap)


_GREY_SYNTAXES = [
    uid.JPEGLossless,
    uid.JPEGLosslessSV1,
    uid.JPEGLSLossless,
    uid.JPEGLSNearLossless,
    uid.JPEG2000Lossless,
    uid.JPEG2000,
    uid.HTJ2KLossless,
    uid.HTJ2KLosslessRPCL,
    uid.HTJ2K,
]


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
@pytest.mark.parametrize("syntax", _GREY_SYNTAXES)
def test_a_compressed_grey_frame_decoded_in_place_is_what_pydicom_decodes(
    file_archive: Archive, name: str, syntax: str
) -> None:
    """The render path decodes a grey codestream itself, with the attributes of
    the precomputed metadata (no file parsed): the same values as pydicom's
    ``pixel_array``, so the same picture."""
    original = (PYDICOM_TEST_FILES / name).read_bytes()
    source = pydicom.dcmread(PYDICOM_TEST_FILES / name, stop_before_pixels=True)
    _, offset = split_part10(original)
    converted = transcode(original[offset:], source.file_meta.TransferSyntaxUID, syntax)
    meta = file_meta_bytes(source.SOPClassUID, source.SOPInstanceUID, syntax, "")
    file_archive.ingest_part10(meta + converted, CALLER)
    assert file_archive.wait_for_metadata(30)
    keys = {
        "StudyInstanceUID": source.StudyInstanceUID,
        "SeriesInstanceUID": source.SeriesInstanceUID,
        "SOPInstanceUID": source.SOPInstanceUID,
    }
    wanted = RenderRequest(media_type="image/png")
    rendered = file_archive.rendered(keys, 0, wanted)
    header, pixels = decode_frame(meta + converted, 0)
    assert rendered.data == picture(header, pixels, "image/png")
    # and it was the in-place path: the frame kept with the metadata's header
    stored = file_archive.instance(source.SOPInstanceUID)
    kept = file_archive._decoded.get((stored.sop_instance_uid, stored.content_hash, 0))
    assert kept is not None and not isinstance(kept[0], pydicom.Dataset)
    assert kept[1].dtype == pixels.dtype and np.array_equal(kept[1], pixels)


@pytest.mark.parametrize("syntax", [uid.JPEGLSLossless, uid.JPEG2000Lossless, uid.HTJ2KLossless])
def test_frames_of_a_compressed_grey_multiframe_decoded_in_place(
    file_archive: Archive, syntax: str
) -> None:
    """Frames asked uncompressed, or in another syntax, of a compressed grey
    multi-frame image: decoded from their codestreams as pydicom decodes them."""
    data, stored_as = transcode_source("10-bit grey 3 frames")
    ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data), force=True)
    converted = transcode(data, stored_as, syntax)
    part10 = file_meta_bytes(ds.SOPClassUID, ds.SOPInstanceUID, syntax, "") + converted
    file_archive.ingest_part10(part10, CALLER)
    keys = {
        "StudyInstanceUID": ds.StudyInstanceUID,
        "SeriesInstanceUID": ds.SeriesInstanceUID,
        "SOPInstanceUID": ds.SOPInstanceUID,
    }
    expected = decode_frames(part10, [2, 0])
    assert file_archive.frames(keys, [3, 1], _as(ExplicitVRLittleEndian)) == Frames(
        ExplicitVRLittleEndian, expected
    )
    htj2k = file_archive.frames(keys, [3, 1], _as(uid.HTJ2KLosslessRPCL)).data
    for codestream, frame in zip(htj2k, expected, strict=True):
        decoded = decode_codestream(codestream, uid.HTJ2KLosslessRPCL)
        assert decoded.tobytes() == frame


@pytest.mark.parametrize(
    "name",
    ["CT_small.dcm", "image_dfl.dcm", "SC_rgb_rle.dcm", "GDCMJ2K_TextGBR.dcm", "MR_small_RLE.dcm"],
)
def test_lossless_conversions_come_with_the_crc_of_what_they_decode_to(
    file_archive: Archive, name: str
) -> None:
    """A client checks its decoder against ``decoded_crc32``: it must be the
    CRC-32 of what an independent decoder (imagecodecs' OpenJPH and OpenJPEG)
    makes of the codestream, for signed, 8-bit and colour images alike; a lossy conversion
    and frames sent as they are have none."""
    codecs = load_imagecodecs()
    keys = _stored_keys(file_archive, name)
    decoders = {
        uid.HTJ2KLossless: codecs.htj2k_decode,
        uid.HTJ2KLosslessRPCL: codecs.htj2k_decode,
        uid.JPEG2000Lossless: codecs.jpeg2k_decode,
    }
    stored_as = pydicom.dcmread(PYDICOM_TEST_FILES / name).file_meta.TransferSyntaxUID
    for syntax, decode in decoders.items():
        converted = file_archive.frames(keys, [1], _as(syntax))
        if syntax == stored_as:
            assert converted.decoded_crc32 == ()  # sent as stored: the archive decoded nothing
            continue
        (codestream,), (check,) = converted.data, converted.decoded_crc32
        decoded = np.ascontiguousarray(decode(codestream))
        assert check == zlib.crc32(decoded.data), syntax
        assert file_archive.frames_now(keys, [1], _as(syntax)) == converted  # kept with it
    assert file_archive.frames(keys, [1], _as(uid.HTJ2K)).decoded_crc32 == [None]  # lossy
    assert file_archive.frames(keys, [1], _as(ExplicitVRLittleEndian)).decoded_crc32 == ()


def test_rows_kept_for_the_event_loop_follow_every_change_to_the_index(
    file_archive: Archive, tmp_path: Path
) -> None:
    """Answers on the event loop keep instance rows while the index is
    unchanged; a change made elsewhere (another process on the same folder)
    must not leave a deleted instance answering from what was kept."""
    keys = _stored_keys(file_archive, "CT_small.dcm")
    htj2k = file_archive.frames(keys, [1], _as(uid.HTJ2KLossless))
    assert file_archive.frames_now(keys, [1], _as(uid.HTJ2KLossless)) == htj2k
    assert file_archive.rendered_now(keys, 0, RenderRequest(media_type="image/png")) is None
    assert file_archive._rows_now  # kept, and used by the next answers
    assert file_archive.frames_now(keys, [1], _as(uid.HTJ2KLossless)) == htj2k
    other = Archive(SqliteIndex(tmp_path / "index.sqlite"), FilesystemBlobStore(tmp_path / "b"))
    try:
        other.delete(Level.IMAGE, keys)
    finally:
        other.close()
    with pytest.raises(NotFoundError):
        file_archive.frames_now(keys, [1], _as(uid.HTJ2KLossless))
    assert file_archive.rendered_now(keys, 0, RenderRequest(media_type="image/png")) is None


def test_a_metadata_request_keeps_the_rows_its_frames_are_looked_up_by(
    file_archive: Archive,
) -> None:
    """A viewer asks for a series' metadata, then for each frame: the rows
    read for the metadata serve the frames' look-ups, as ``find_now`` would."""
    keys = _stored_keys(file_archive, "CT_small.dcm")
    file_archive.wait_for_metadata(30)  # its commit would make what is kept stale
    series = {k: v for k, v in keys.items() if k != "SOPInstanceUID"}
    file_archive.metadata(Level.SERIES, series)
    file_archive._prefetcher.submit(lambda: None).result()  # kept in the background
    version, rows = file_archive._rows_now
    assert version is not None and version == file_archive.index.version_now()
    name = (keys["StudyInstanceUID"], keys["SeriesInstanceUID"], keys["SOPInstanceUID"])
    query = file_archive._unique_key_query(Level.IMAGE, keys, *_FRAME_COLUMNS)
    assert [rows[name]] == file_archive.index.find_now(query)


def test_the_index_version_changes_with_each_commit_of_another_connection(
    tmp_path: Path,
) -> None:
    index = SqliteIndex(tmp_path / "index.sqlite")
    try:
        first = index.version_now()
        assert first is not None and index.version_now() == first
        archive = Archive(index, FilesystemBlobStore(tmp_path / "b"))
        _stored_keys(archive, "CT_small.dcm")  # the writer's commit
        assert index.version_now() != first
    finally:
        archive.close()
    in_memory = SqliteIndex(":memory:")
    try:
        assert in_memory.version_now() is None
    finally:
        in_memory.close()


class _RangeCountingStore(FilesystemBlobStore):
    """A folder that notes the length of every ranged read."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.reads: list[int] = []

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        self.reads.append(length)
        return super().get_range(key, offset, length)


def test_frames_of_a_compressed_multi_frame_instance_are_read_alone_once_placed(
    tmp_path: Path,
) -> None:
    """A cine loop or a multi-frame CT stored compressed: the first frame asked
    reads the Pixel Data once and notes where each frame lies; the next ones
    read just their own bytes, from a thread or, cached, on the event loop."""
    store = _RangeCountingStore(tmp_path / "b")
    archive = Archive(SqliteIndex(tmp_path / "index.sqlite"), store)
    archive.at_once_budget = 10.0
    try:
        keys = _stored_keys(archive, "rtdose_rle.dcm")
        ds = pydicom.dcmread(PYDICOM_TEST_FILES / "rtdose_rle.dcm")
        expected = list(generate_frames(ds.PixelData, number_of_frames=ds.NumberOfFrames))
        assert archive.frames_now(keys, [2], _as(None)) is None  # not placed yet
        syntax = ds.file_meta.TransferSyntaxUID
        assert archive.frames(keys, [2], _as(None)) == Frames(syntax, [expected[1]])
        store.reads.clear()
        assert archive.frames(keys, [15, 1], _as(None)).data == [expected[14], expected[0]]
        assert store.reads == [len(expected[14]), len(expected[0])]
        with pytest.raises(NotFoundError):
            archive.frames(keys, [16], _as(None))
        if not nowait_reads(tmp_path / "index.sqlite"):
            pytest.skip("this filesystem takes no RWF_NOWAIT reads (tmpfs?)")
        for _ in range(5):  # the kernel may drop the pages between two calls: a few tries
            found = archive.frames_now(keys, [3, 4], _as(None))
            if found is not None:
                break
            archive.frames(keys, [3, 4], _as(None))
        assert found is not None
        assert [bytes(f) for f in found.data] == expected[2:4]
    finally:
        archive.close()


class _SlowDiskIndex(SqliteIndex):
    """An index on a slow disk: every read on the event loop waits 20 ms."""

    def find_now(self, query: Any) -> Any:
        time.sleep(0.02)  # the thread blocks, as on a disk read
        return super().find_now(query)


def test_an_answer_on_the_event_loop_that_blocked_sends_the_next_ones_to_threads(
    tmp_path: Path,
) -> None:
    """A read that waited (an index or a folder cold on a slow disk) must not
    stall the loop again and again: the first answer is given, but the next
    ones are left to ``frames``/``rendered`` for a while."""
    archive = Archive(_SlowDiskIndex(tmp_path / "index.sqlite"), FilesystemBlobStore(tmp_path))
    try:
        keys = _stored_keys(archive, "CT_small.dcm")
        wanted = RenderRequest(media_type="image/png")
        archive.rendered(keys, 0, wanted)
        archive.frames(keys, [1], _as(uid.HTJ2KLossless))  # kept: an answer from memory
        assert archive.frames_now(keys, [1], _as(uid.HTJ2KLossless)) is not None  # it waited
        assert archive.frames_now(keys, [1], _as(uid.HTJ2KLossless)) is None
        assert archive.rendered_now(keys, 0, wanted) is None
        assert archive.frames(keys, [1], _as(uid.HTJ2KLossless)).data  # the thread path works
        archive._at_once_paused_until = 0.0  # the pause is over
        archive.at_once_budget = 1.0
        assert archive.rendered_now(keys, 0, wanted) is not None
    finally:
        archive.close()


def test_an_answer_on_the_event_loop_that_took_long_without_blocking_keeps_the_loop(
    file_archive: Archive,
) -> None:
    """Time the thread did not spend blocked (a garbage collection, Python, or
    the core taken by other work) is no reason to go to threads."""
    keys = _stored_keys(file_archive, "CT_small.dcm")
    file_archive.frames(keys, [1], _as(uid.HTJ2KLossless))
    file_archive.wait_for_metadata(30)
    file_archive.at_once_budget = -1.0  # any answer took too long
    for _attempt in range(3):  # another thread of the tests may make one wait for the GIL
        file_archive._at_once_paused_until = 0.0
        assert file_archive.frames_now(keys, [1], _as(uid.HTJ2KLossless)) is not None
        if file_archive.frames_now(keys, [1], _as(uid.HTJ2KLossless)) is not None:
            break
    else:
        pytest.fail("answers that did not block sent the next ones to threads")


_PREEMPTED = """
import json, os, sys, time
from pacs.core.archive import _thread_clock
os.sched_setaffinity(0, {int(sys.argv[1])})
time.sleep(0.3)  # the spinner is running
started = time.monotonic()
cpu, blocked = _thread_clock()
while _thread_clock()[0] - cpu < 0.03:
    pass  # 30 ms of CPU, shared with the spinner
cpu_after, blocked_after = _thread_clock()
print(json.dumps([time.monotonic() - started - (cpu_after - cpu), blocked_after - blocked]))
"""


def test_a_thread_clock_counts_blocking_not_preemption() -> None:
    """What the event-loop pause counts: a sleep (as a disk read) blocks the
    thread; CPU work slowed by another process on the same core does not.
    Measured in a process of its own: the threads of other tests would make
    this one wait for the GIL, which is blocking."""
    _, blocked = _thread_clock()
    time.sleep(0.01)
    assert _thread_clock()[1] > blocked
    core = min(os.sched_getaffinity(0))
    spinner = subprocess.Popen(
        [sys.executable, "-c", f"import os\nos.sched_setaffinity(0, {{{core}}})\nwhile True: pass"]
    )
    try:
        measured = subprocess.run(
            [sys.executable, "-c", _PREEMPTED, str(core)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    finally:
        spinner.kill()
        spinner.wait()
    waited, blocked_times = json.loads(measured.stdout)
    assert waited > 0.005  # the spinner had the core for part of the time
    assert blocked_times == 0


def test_a_header_refused_while_its_blob_is_written_leaves_nothing(
    memory_archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The blob is named from the UIDs as encoded and written while pydicom
    parses the header: a header it then refuses must take its blob with it.
    (pydicom is lenient with what the walk lets through, so it is made to
    refuse here, given the header to read.)"""

    def refuse(*args: object, **kwargs: object) -> None:
        raise ValueError("unreadable")

    monkeypatch.setattr("pacs.core.encoding.header_dataset", lambda *args: None)
    monkeypatch.setattr("pacs.core.archive.read_dataset", refuse)
    with pytest.raises(InvalidDatasetError, match="cannot be parsed: unreadable"):
        memory_archive.ingest(encode(make_ct("archive", 1, 1)), ExplicitVRLittleEndian, CALLER)
    assert blob_keys(memory_archive) == []
    assert memory_archive.statistics().instances == 0

"""``pacs migrate-storage``: copy an archive's blobs from one store to another.

For moving from the filesystem to S3 (or back, or between buckets). Blob keys
stay the same, so the index needs no change: once the copy is verified, point
``storage_url`` at the new store. Each blob is streamed (never held whole),
its SHA-256 taken on the way, then read back from the target and compared. A
blob already in the target with the same bytes is left alone, so an
interrupted migration is resumed by running it again. Finally every instance
the index knows is looked up in the target with its recorded size.

Run it with the server stopped, or accept that instances stored during the
copy are not in it (run it again afterwards: it copies only what is new).
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TextIO

from pacs.index.base import Index
from pacs.index.query import Query
from pacs.index.schema import Level
from pacs.progress import ProgressLine
from storage import BlobNotFoundError, BlobStore, BlobStoreError


@dataclass
class MigrationSummary:
    copied: int = 0
    already_there: int = 0
    bytes_copied: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    """(key, reason) of blobs that could not be copied or did not verify."""
    missing: list[tuple[str, str]] = field(default_factory=list)
    """(SOP Instance UID, reason) of indexed instances the target does not hold."""
    checked_instances: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed and not self.missing


def _sha256(chunks: Iterable[bytes]) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


class _Hashing:
    """Pass chunks through, hashing them."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self.digest = hashlib.sha256()

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._chunks:
            self.digest.update(chunk)
            yield chunk


def _copy_one(source: BlobStore, target: BlobStore, key: str, verify: bool) -> tuple[str, int]:
    """('copied' | 'already there', bytes copied); raises ``BlobStoreError`` or ``ValueError``."""
    size = source.size(key)
    same = target.exists(key) and target.size(key) == size
    if same and (
        not verify or _sha256(target.iter_chunks(key)) == _sha256(source.iter_chunks(key))
    ):
        return "already there", 0
    hashing = _Hashing(source.iter_chunks(key))
    written = target.put(key, hashing)
    if written != size:
        raise ValueError(f"{written} bytes written, the source has {size}")
    if verify:
        digest, read_back = _sha256(target.iter_chunks(key))
        if digest != hashing.digest.hexdigest() or read_back != size:
            raise ValueError("the copy read back differs from the source")
    return "copied", size


def migrate_blobs(
    source: BlobStore,
    target: BlobStore,
    *,
    index: Index | None = None,
    workers: int = 4,
    verify: bool = True,
    progress: TextIO | None = sys.stderr,
) -> MigrationSummary:
    summary = MigrationSummary()
    report = ProgressLine(
        progress,
        lambda elapsed: (
            f"{summary.copied} copied, {summary.already_there} already there,"
            f" {len(summary.failed)} failed | {summary.bytes_copied / 1e6:.1f} MB,"
            f" {summary.bytes_copied / elapsed / 1e6:.1f} MB/s"
        ),
    ).report

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending: dict[Future[tuple[str, int]], str] = {}

        def collect(done: Iterable[Future[tuple[str, int]]]) -> None:
            for future in done:
                key = pending.pop(future)
                try:
                    outcome, size = future.result()
                except (BlobStoreError, ValueError) as exc:
                    summary.failed.append((key, str(exc)))
                    continue
                if outcome == "copied":
                    summary.copied += 1
                    summary.bytes_copied += size
                else:
                    summary.already_there += 1
            report()

        for key in source.keys(""):
            pending[pool.submit(_copy_one, source, target, key, verify)] = key
            if len(pending) >= workers * 4:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                collect(done)
        collect(list(pending))
    report(final=True)
    if index is not None:
        _check_against_index(index, target, summary)
    return summary


def _check_against_index(index: Index, target: BlobStore, summary: MigrationSummary) -> None:
    """Every instance the index knows must be in the target, with its recorded size."""
    columns = ((Level.IMAGE, "sop_instance_uid"), (Level.IMAGE, "blob_key"), (Level.IMAGE, "size"))
    for row in index.find(Query(Level.IMAGE, (), columns)):
        summary.checked_instances += 1
        try:
            size = target.size(row["blob_key"])
        except BlobNotFoundError:
            summary.missing.append((row["sop_instance_uid"], "not in the target"))
            continue
        except BlobStoreError as exc:
            summary.missing.append((row["sop_instance_uid"], str(exc)))
            continue
        if size != row["size"]:
            summary.missing.append(
                (row["sop_instance_uid"], f"{size} bytes in the target, {row['size']} indexed")
            )


def print_summary(summary: MigrationSummary, target_url: str, out: TextIO = sys.stdout) -> None:
    out.write(
        f"Copied {summary.copied} blobs ({summary.bytes_copied / 1e6:.1f} MB),"
        f" {summary.already_there} already in the target, {len(summary.failed)} failed;"
        f" {summary.checked_instances} indexed instances checked,"
        f" {len(summary.missing)} missing from the target.\n"
    )
    out.writelines(f"  {key}: {reason}\n" for key, reason in summary.failed)
    out.writelines(f"  instance {uid}: {reason}\n" for uid, reason in summary.missing)
    if summary.ok:
        out.write(f"Verified. Set storage_url = {target_url!r} to serve from the new store.\n")

"""``pacs import``: load files and folders into the archive, as a migration would.

Runs the same ingest as C-STORE, directly against the archive (no network),
with a few threads so that one file's fsync overlaps the next file's parsing.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from pacs.core import Archive
from pacs.errors import PacsError
from pacs.progress import ProgressLine
from pacs.types import Caller, StoreOutcome


@dataclass
class ImportSummary:
    counts: Counter[str] = field(default_factory=Counter)
    rejected: list[tuple[Path, str]] = field(default_factory=list)
    bytes_read: int = 0

    @property
    def files(self) -> int:
        return sum(self.counts.values())


def iter_files(paths: Iterable[str | os.PathLike[str]]) -> Iterator[Path]:
    for path in map(Path, paths):
        if path.is_dir():
            for directory, subdirs, files in os.walk(path):
                subdirs.sort()
                for name in sorted(files):
                    yield Path(directory) / name
        else:
            yield path


def _import_one(archive: Archive, path: Path, caller: Caller) -> tuple[str, str, int]:
    """Return (category, reason, size) for one file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return "rejected", f"cannot read: {exc.strerror}", 0
    if path.name.upper() == "DICOMDIR":
        return "skipped", "DICOMDIR (media index, not an image)", len(data)
    try:
        result = archive.ingest_part10(data, caller)
    except PacsError as exc:
        return "rejected", str(exc), len(data)
    category = {
        StoreOutcome.STORED: "stored",
        StoreOutcome.REPLACED: "stored",
        StoreOutcome.DUPLICATE: "duplicate",
        StoreOutcome.KEPT_EXISTING: "conflict",
    }[result.outcome]
    reason = "same UID with different content; stored copy kept" if category == "conflict" else ""
    return category, reason, len(data)


def import_paths(
    archive: Archive,
    paths: Iterable[str | os.PathLike[str]],
    *,
    workers: int = 4,
    progress: TextIO | None = sys.stderr,
) -> ImportSummary:
    summary = ImportSummary()
    caller = Caller(ae_title="", address="import")
    progress_line = ProgressLine(
        progress,
        lambda elapsed: (
            f"{summary.files} files, {summary.counts['stored']} stored,"
            f" {summary.counts['duplicate']} duplicate, {summary.counts['rejected']} rejected"
            f" | {summary.files / elapsed:.0f} files/s,"
            f" {summary.bytes_read / elapsed / 1e6:.1f} MB/s"
        ),
    )
    report = progress_line.report

    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: dict[Future[tuple[str, str, int]], Path] = {}

        def collect(done: Iterable[Future[tuple[str, str, int]]]) -> None:
            for future in done:
                path = pending.pop(future)
                category, reason, size = future.result()
                summary.counts[category] += 1
                summary.bytes_read += size
                if category in ("rejected", "conflict", "skipped"):
                    summary.rejected.append((path, f"{category}: {reason}"))
            report()

        for path in iter_files(paths):
            pending[pool.submit(_import_one, archive, path, caller)] = path
            if len(pending) >= workers * 4:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                collect(done)
        collect(list(pending))
    report(final=True)
    return summary


def print_summary(summary: ImportSummary, out: TextIO = sys.stdout) -> None:
    counts = summary.counts
    out.write(
        f"Imported {summary.files} files: {counts['stored']} stored,"
        f" {counts['duplicate']} duplicate (already stored, identical),"
        f" {counts['conflict']} conflicting (same UID, different content, not stored),"
        f" {counts['skipped']} skipped, {counts['rejected']} rejected.\n"
    )
    out.writelines(f"  {path}: {reason}\n" for path, reason in summary.rejected)

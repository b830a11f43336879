"""Precomputing WADO-RS metadata after an instance is acknowledged.

Making an instance's DICOM JSON costs about half a millisecond of CPU; done
inside C-STORE it added that to every acknowledgement (3.0 -> 3.5 ms per CT
slice in one process). Done by a thread *while* images arrive it was worse
(5.6 ms): the thread holds the GIL in 5 ms slices while the ingest thread,
back from its fsync, waits. So the thread waits for a lull: it starts once no
instance has arrived for ``quiet`` seconds (or a job has waited ``max_delay``),
works from the header the ingest already parsed, and records a batch per
index transaction. Whatever it missed (a full queue during a bulk import, a
crash, instances older than this feature, a write of it that failed) it fills
in from the stored files when the archive is quiet: once at start-up, and again
after it dropped a job or failed to record one. Until then ``Archive.metadata``
computes what it needs on request.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from pacs.core.audit import now_iso
from pacs.index.base import Index

log = logging.getLogger(__name__)

Job = tuple[str, Callable[[], bytes]]
Backfill = Callable[[int, int, str], tuple[int, int, int]]
"""(after, limit, stored before) -> (last position seen, instances done, instances
looked at)."""


class MetadataWarmer:
    def __init__(
        self,
        index: Index,
        backfill: Backfill | None = None,
        *,
        max_pending: int = 1000,
        batch: int = 200,
        quiet: float = 0.1,
        max_delay: float = 5.0,
        retry_delay: float = 30.0,
    ) -> None:
        self._index = index
        # Bounded: each job holds a parsed header (tens of kB).
        self._jobs: queue.Queue[Job | None] = queue.Queue(maxsize=max_pending)
        self._batch = batch
        self._quiet = quiet
        self._max_delay = max_delay
        # After a failed write (a full disk, an index that is down) the
        # backfill waits this long before it tries again, so as not to spin.
        self._retry_delay = retry_delay
        self._last_submit = 0.0
        self._closing = threading.Event()
        self._backfill = backfill
        self._backfill_needed = backfill is not None
        self._backfill_not_before = 0.0
        self._idle = threading.Event()
        self._idle.set()
        self._thread = threading.Thread(target=self._run, name="metadata-warmer", daemon=True)
        self._thread.start()

    def submit(self, sop_instance_uid: str, make: Callable[[], bytes]) -> None:
        """Queue ``make`` (returns the JSON); dropped when the queue is full."""
        self._idle.clear()
        self._last_submit = time.monotonic()
        try:
            self._jobs.put_nowait((sop_instance_uid, make))
        except queue.Full:
            self._backfill_needed = self._backfill is not None
            log.debug("metadata of %s left for later", sop_instance_uid)

    def touch(self) -> None:
        """Note activity (a query, a retrieval): the backfill waits for a lull."""
        self._last_submit = time.monotonic()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every queued job is recorded (tests, shutdown)."""
        return self._idle.wait(timeout)

    def close(self) -> None:
        """Record what is queued, without waiting for a lull, and stop."""
        self._closing.set()
        self._jobs.put(None)
        self._thread.join()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            try:
                first = self._jobs.get(timeout=1.0)
            except queue.Empty:
                self._fill_in()
                self._idle.set()
                continue
            jobs = [] if first is None else [first]
            stopping = first is None
            waited_since = time.monotonic()
            while (
                not stopping
                and not self._closing.is_set()
                and time.monotonic() - self._last_submit < self._quiet
                and time.monotonic() - waited_since < self._max_delay
            ):
                self._closing.wait(self._quiet / 2)
            while not stopping and len(jobs) < self._batch:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stopping = True
                else:
                    jobs.append(job)
            self._record(jobs)
            if self._jobs.empty():
                self._idle.set()
        self._idle.set()

    def _fill_in(self) -> None:
        """Backfill in small steps, giving way as soon as new instances arrive."""
        if not self._backfill_needed or self._backfill is None:
            return
        if time.monotonic() < self._backfill_not_before:
            return
        self._backfill_needed = False
        # Only what was stored before now: what arrives later is the warmer's
        # of the process that stores it. Several processes share an index, and
        # one that receives nothing is always quiet: unbounded, it followed
        # another's ingest, remaking each instance's JSON from its file (1.7 ms
        # of CPU per CT slice, on the same cores as that ingest).
        stored_before = now_iso()
        position, total, seen = 0, 0, 0
        while not self._closing.is_set():
            if time.monotonic() - self._last_submit < self._quiet or not self._jobs.empty():
                self._backfill_needed = True  # resume when quiet again
                break
            try:
                position, done, examined = self._backfill(position, 50, stored_before)
            except Exception as exc:
                log.warning(
                    "metadata backfill failed (%s); tried again in %g s", exc, self._retry_delay
                )
                self._backfill_needed = True
                self._retry_later()
                break
            if position < 0:
                break
            total += done
            seen += examined
            # At most about half a core: the archive has other work.
            self._closing.wait(0.02)
        if total:
            log.info("metadata filled in for %d stored instances", total)
        if seen > total and position < 0:
            log.warning(
                "metadata backfill: some stored instances could not be read (log level"
                " debug names them)"
            )

    def _record(self, jobs: list[Job]) -> None:
        done = []
        for sop_instance_uid, make in jobs:
            try:
                done.append((sop_instance_uid, make()))
            except Exception:  # one odd header must not stop the others
                log.exception("metadata of %s could not be made", sop_instance_uid)
        if not done:
            return
        try:
            self._index.set_metadata(done)
        except Exception as exc:
            # A full disk, say: the instances are stored, only their JSON is
            # not; the backfill makes it from their files once it can.
            self._backfill_needed = self._backfill is not None
            self._retry_later()
            log.warning(
                "metadata of %d instances could not be recorded (%s); left for later",
                len(done),
                exc,
            )

    def _retry_later(self) -> None:
        self._backfill_not_before = time.monotonic() + self._retry_delay


__all__ = ["MetadataWarmer"]

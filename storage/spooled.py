"""A local spool in front of a remote blob store: fast, durable puts; uploads later.

``put`` writes the blob to the spool (a ``FilesystemBlobStore``: fsynced and
renamed into place) and returns; background threads copy it to the remote
store (S3), then remove it from the spool. So a put is as durable as a local
disk the moment it returns, and as durable as the remote store once uploaded.

- Reads look in the spool first, then in the remote store, so a blob is
  readable from the moment ``put`` returns, uploaded or not.
- The spool survives restarts: whatever is in it when the store is opened is
  queued for upload. Several processes may share one spool folder (the DICOM
  worker processes): each uploads what it put, and a blob left behind by a
  process that died is adopted by another at its next sweep.
- A blob leaves the spool only after the remote store acknowledged the whole
  of it. Uploading the same key twice (a crash between the upload and the
  removal, two processes adopting one blob) writes the same bytes under the
  same name again: never a lost blob, never a second copy.
- While the remote store is down, uploads wait and retry with a growing delay
  (up to ``max_retry_delay``); the spool grows meanwhile and drains by itself
  when the store is back.
- Uploads give way to arriving blobs: they start once no put has come for
  ``quiet`` seconds, or once the oldest waiting blob has waited ``give_way``
  seconds. On a machine shared with the S3 client's work (signing, sending),
  a modality's burst is then acknowledged at local-disk speed and uploaded
  right after it; under a load longer than ``give_way`` both go on together.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

from storage.base import BlobNotFoundError, BlobStore, BlobStoreError
from storage.filesystem import FilesystemBlobStore

log = logging.getLogger(__name__)

_DONE, _AGAIN, _FAILED = object(), object(), object()  # how an upload ended


class SpooledBlobStore:
    def __init__(
        self,
        spool: FilesystemBlobStore,
        remote: BlobStore,
        *,
        uploaders: int = 4,
        min_retry_delay: float = 0.2,
        max_retry_delay: float = 5.0,
        sweep_interval: float = 30.0,
        quiet: float = 0.2,
        give_way: float = 5.0,
    ) -> None:
        if uploaders < 1:
            raise ValueError("at least one uploader is needed")
        self.spool = spool
        self.remote = remote
        self._min_delay = min_retry_delay
        self._max_delay = max_retry_delay
        self._sweep_interval = sweep_interval
        self._condition = threading.Condition()
        self._queue: deque[str] = deque()
        self._queued: dict[str, float] = {}  # key -> when it was queued
        self._quiet = quiet
        self._give_way = give_way
        self._last_put = 0.0
        self._in_flight: set[str] = set()
        # A put, a delete and the end of an upload of one key exclude each other.
        self._key_locks: dict[str, list[Any]] = {}
        self._key_locks_guard = threading.Lock()
        self._replaced: set[str] = set()  # put again while being uploaded
        self._deleted: set[str] = set()  # deleted while being uploaded
        self._retry_at = 0.0  # monotonic time before which no upload starts (remote down)
        self._delay = 0.0
        self._closing = False
        self._failing = False
        self._seen_by_last_sweep: set[str] = set()
        # What a previous life left in the spool goes first.
        with self._condition:
            for key in self.spool.keys(""):
                self._enqueue_locked(key)
        self._threads = [
            threading.Thread(target=self._upload_loop, name=f"blob-uploader-{n}", daemon=True)
            for n in range(uploaders)
        ]
        self._threads.append(
            threading.Thread(target=self._sweep_loop, name="blob-spool-sweeper", daemon=True)
        )
        for thread in self._threads:
            thread.start()

    def __repr__(self) -> str:
        return f"SpooledBlobStore({self.spool.root} -> {self.remote!r})"

    # -- the protocol --------------------------------------------------------

    def put(self, key: str, chunks: Iterable[bytes]) -> int:
        with self._locked(key):
            size = self.spool.put(key, chunks)
            with self._condition:
                self._last_put = time.monotonic()
                if key in self._in_flight:
                    # Replaced while the old content goes up: upload it again after.
                    self._replaced.add(key)
                else:
                    self._enqueue_locked(key)
        return size

    def get(self, key: str) -> bytes:
        try:
            return self.spool.get(key)
        except BlobNotFoundError:
            return self.remote.get(key)

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        try:
            return self.spool.get_range(key, offset, length)
        except BlobNotFoundError:
            return self.remote.get_range(key, offset, length)

    def get_range_now(self, key: str, offset: int, length: int) -> bytes | bytearray | None:
        try:
            return self.spool.get_range_now(key, offset, length)
        except BlobNotFoundError:
            return None  # uploaded: only the remote store has it

    def map_range(self, key: str, offset: int, length: int) -> memoryview | None:
        try:
            return self.spool.map_range(key, offset, length)
        except BlobNotFoundError:
            return None  # uploaded: only the remote store has it

    def prefetch(self, keys: Iterable[str]) -> None:
        self.spool.prefetch(keys)  # those not uploaded yet; the others are remote

    def iter_chunks(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        local = self.spool.iter_chunks(key, chunk_size)
        try:
            # The file is opened here; once open it stays readable even if the
            # uploader removes it meanwhile.
            first = next(local)
        except StopIteration:
            return  # an empty blob, in the spool
        except BlobNotFoundError:
            yield from self.remote.iter_chunks(key, chunk_size)
            return
        yield first
        yield from local

    def size(self, key: str) -> int:
        try:
            return self.spool.size(key)
        except BlobNotFoundError:
            return self.remote.size(key)

    def exists(self, key: str) -> bool:
        return self.spool.exists(key) or self.remote.exists(key)

    def delete(self, key: str) -> None:
        with self._locked(key):
            with self._condition:
                if key in self._queued:
                    del self._queued[key]
                    self._queue.remove(key)
                if key in self._in_flight:
                    # Its upload may finish after this: the uploader deletes it again.
                    self._deleted.add(key)
            self.spool.delete(key)
            self.remote.delete(key)

    def keys(self, prefix: str = "") -> Iterator[str]:
        seen = set()
        for key in self.spool.keys(prefix):
            seen.add(key)
            yield key
        for key in self.remote.keys(prefix):
            if key not in seen:
                yield key

    # -- the uploads ---------------------------------------------------------

    def pending(self) -> int:
        """Blobs in the spool not yet uploaded, by any process sharing the spool."""
        return sum(1 for _ in self.spool.keys(""))

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every blob queued here is uploaded; ``False`` on time-out."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._condition:
            while self._queue or self._in_flight:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._condition.wait(remaining if remaining is not None else 1.0)
        return True

    def close(self) -> None:
        """Stop uploading after the uploads in progress; the rest waits in the spool."""
        with self._condition:
            self._closing = True
            self._condition.notify_all()
        for thread in self._threads:
            thread.join(timeout=30)
        close = getattr(self.remote, "close", None)
        if close is not None:
            close()

    def _enqueue_locked(self, key: str) -> None:
        if key not in self._queued and key not in self._in_flight:
            self._queued[key] = time.monotonic()
            self._queue.append(key)
            self._condition.notify()

    def _next_start(self) -> float | None:
        """When the next upload may start (under the condition); ``None``: none queued."""
        if not self._queue:
            return None
        oldest = self._queued[self._queue[0]]
        lull = min(self._last_put + self._quiet, oldest + self._give_way)
        return max(self._retry_at, lull)

    @contextlib.contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        with self._key_locks_guard:
            entry = self._key_locks.setdefault(key, [threading.Lock(), 0])
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._key_locks_guard:
                entry[1] -= 1
                if entry[1] == 0:
                    del self._key_locks[key]

    def _upload_loop(self) -> None:
        while True:
            with self._condition:
                while not self._closing:
                    start = self._next_start()
                    now = time.monotonic()
                    if start is not None and now >= start:
                        break
                    self._condition.wait(None if start is None else start - now)
                if self._closing:
                    return
                key = self._queue.popleft()
                del self._queued[key]
                self._in_flight.add(key)
            outcome = _FAILED
            try:
                outcome = self._upload(key)
            finally:
                with self._condition:
                    self._in_flight.discard(key)
                    self._replaced.discard(key)
                    self._deleted.discard(key)
                    if outcome is _FAILED and self.spool.exists(key):
                        # The remote store failed: back off, all uploaders together.
                        self._delay = min(self._max_delay, max(self._min_delay, self._delay * 2))
                        self._retry_at = time.monotonic() + self._delay
                        self._enqueue_locked(key)
                    elif outcome is _AGAIN:
                        self._enqueue_locked(key)
                    else:
                        self._delay = 0.0
                    self._condition.notify_all()

    def _upload(self, key: str) -> object:
        try:
            self.remote.put(key, self.spool.iter_chunks(key))
        except BlobNotFoundError:
            return _DONE  # deleted meanwhile, or uploaded by another process
        except BlobStoreError as exc:
            # Once per outage, not once per retry.
            level = logging.DEBUG if self._failing else logging.WARNING
            log.log(level, "uploads wait: %s (retrying with back-off)", exc)
            self._failing = True
            return _FAILED
        except Exception:
            log.exception("upload of %s failed, will retry", key)
            return _FAILED
        if self._failing:
            self._failing = False
            log.warning("uploads resumed; %d blob(s) waiting in the spool", len(self._queue))
        with self._locked(key):
            with self._condition:
                deleted = key in self._deleted
                replaced = key in self._replaced
            try:
                if deleted:
                    self.remote.delete(key)  # what we just put back
                if replaced:
                    return _AGAIN  # the spool holds newer content than what went up
                if not deleted:
                    self.spool.delete(key)
            except BlobStoreError as exc:
                # Uploaded: the spool copy is now redundant; a later sweep retries.
                log.warning("uploaded %s but cannot tidy up after it: %s", key, exc)
        return _DONE

    def _sweep_loop(self) -> None:
        """Adopt blobs that sat in the spool through a whole sweep interval
        without being queued here: left by a process that died, or by an upload
        that gave up."""
        while True:
            with self._condition:
                self._condition.wait_for(lambda: self._closing, self._sweep_interval)
                if self._closing:
                    return
            try:
                present = set(self.spool.keys(""))
            except OSError as exc:
                log.warning("cannot list the spool: %s", exc)
                continue
            with self._condition:
                for key in present & self._seen_by_last_sweep:
                    self._enqueue_locked(key)
                self._seen_by_last_sweep = present - set(self._queued) - self._in_flight

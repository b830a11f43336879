"""In-memory blob store for tests and throw-away archives."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator

from storage.base import BlobNotFoundError, validate_key


class MemoryBlobStore:
    def __init__(self) -> None:
        self._blobs: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def put(self, key: str, chunks: Iterable[bytes]) -> int:
        data = b"".join(chunks)
        with self._lock:
            self._blobs[validate_key(key)] = data
        return len(data)

    def get(self, key: str) -> bytes:
        try:
            return self._blobs[validate_key(key)]
        except KeyError:
            raise BlobNotFoundError(key) from None

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError("offset and length must not be negative")
        return self.get(key)[offset : offset + length]

    def get_range_now(self, key: str, offset: int, length: int) -> bytes:
        return self.get_range(key, offset, length)

    def map_range(self, key: str, offset: int, length: int) -> memoryview | None:
        data = self.get(key)
        if offset < 0 or length < 0 or offset + length > len(data):
            return None
        return memoryview(data)[offset : offset + length]

    def prefetch(self, keys: Iterable[str]) -> None:
        pass  # in memory already

    def iter_chunks(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        data = self.get(key)
        for start in range(0, len(data), chunk_size):
            yield data[start : start + chunk_size]

    def size(self, key: str) -> int:
        return len(self.get(key))

    def exists(self, key: str) -> bool:
        return validate_key(key) in self._blobs

    def delete(self, key: str) -> None:
        with self._lock:
            self._blobs.pop(validate_key(key), None)

    def keys(self, prefix: str = "") -> Iterator[str]:
        with self._lock:
            snapshot = list(self._blobs)
        return (key for key in snapshot if key.startswith(prefix))

"""The blob store protocol and its errors.

::

    BlobStoreError
     ├── InvalidBlobKeyError   key could escape its namespace or is malformed
     ├── BlobNotFoundError     no blob under that key
     ├── BlobStoreFullError    no space left
     ├── BlobStoreUnavailableError  the store cannot be reached now (retries spent);
     │                              the same call may work later
     └── BlobStoreAccessError  the store refused our credentials or permissions
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Protocol, runtime_checkable

# Keys are '/'-separated segments of a conservative alphabet, so that no backend
# (a filesystem, an S3 bucket) can be led outside its root by a crafted key.
_SEGMENT = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9._\-]{0,127}")
MAX_KEY_LENGTH = 512


class BlobStoreError(Exception):
    """A blob store operation failed."""


class InvalidBlobKeyError(BlobStoreError, ValueError):
    """The key is empty, too long, absolute, or contains a forbidden segment."""


class BlobNotFoundError(BlobStoreError, KeyError):
    """No blob is stored under the key."""

    def __str__(self) -> str:
        return f"no blob under key {self.args[0]!r}" if self.args else "blob not found"


class BlobStoreFullError(BlobStoreError):
    """The store has no space left for the blob."""


class BlobStoreUnavailableError(BlobStoreError):
    """The store did not answer, or answered that it is busy, after every retry."""


class BlobStoreAccessError(BlobStoreError):
    """The store refused the request: wrong credentials or missing permissions."""


def validate_key(key: str) -> str:
    """Return ``key`` if it is safe to use as a path or object name, else raise."""
    if not key or len(key) > MAX_KEY_LENGTH:
        raise InvalidBlobKeyError(f"invalid blob key length: {len(key)}")
    for segment in key.split("/"):
        # '..' and '.' are excluded because a segment may not start with a dot.
        if not _SEGMENT.fullmatch(segment):
            raise InvalidBlobKeyError(f"invalid blob key segment {segment!r} in {key!r}")
    return key


@runtime_checkable
class BlobStore(Protocol):
    """Durable storage of immutable byte strings under opaque keys.

    ``put`` is atomic and durable: once it returns, the whole blob survives a
    crash; readers never see a partial blob. Putting an existing key replaces it
    atomically.
    """

    def put(self, key: str, chunks: Iterable[bytes]) -> int:
        """Store the concatenation of ``chunks`` under ``key``; return its size."""
        ...

    def get(self, key: str) -> bytes: ...

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """Return at most ``length`` bytes from ``offset`` (fewer at the end of the blob)."""
        ...

    def get_range_now(self, key: str, offset: int, length: int) -> bytes | bytearray | None:
        """``get_range`` if it can be answered without waiting on a disk or the
        network (a blob in memory, a file's pages in the page cache), else
        ``None``: the caller then reads with ``get_range`` off its event loop."""
        ...

    def map_range(self, key: str, offset: int, length: int) -> memoryview | None:
        """Exactly ``length`` bytes from ``offset`` as a read-only view of the
        blob where it already lies (a file mapped into memory: no copy, no
        fresh memory), or ``None`` where the store cannot (the caller then
        reads with ``get_range``). Worth it for large ranges only."""
        ...

    def prefetch(self, keys: Iterable[str]) -> None:
        """Hint that these blobs are about to be read (a viewer that asked for a
        series' metadata asks for every frame next): a local store starts
        reading them into the page cache; a remote one ignores it. Never
        raises; may take a while (call it off the request path)."""
        ...

    def iter_chunks(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """Yield the blob in chunks, so that large blobs are never held whole in memory."""
        ...

    def size(self, key: str) -> int: ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None:
        """Remove the blob; deleting a missing key is not an error."""
        ...

    def keys(self, prefix: str = "") -> Iterator[str]:
        """Iterate over the keys that start with ``prefix``, in no particular order."""
        ...

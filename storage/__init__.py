"""Object storage for the archive's blobs: opaque keys to bytes.

Nothing here knows about DICOM; the archive core chooses the keys.
"""

from storage.base import (
    BlobNotFoundError,
    BlobStore,
    BlobStoreError,
    BlobStoreFullError,
    InvalidBlobKeyError,
    validate_key,
)
from storage.filesystem import FilesystemBlobStore
from storage.memory import MemoryBlobStore

__all__ = [
    "BlobNotFoundError",
    "BlobStore",
    "BlobStoreError",
    "BlobStoreFullError",
    "FilesystemBlobStore",
    "InvalidBlobKeyError",
    "MemoryBlobStore",
    "validate_key",
]

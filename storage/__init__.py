"""Object storage for the archive's blobs: opaque keys to bytes.

Nothing here knows about DICOM; the archive core chooses the keys.
``S3BlobStore`` lives in ``storage.s3`` (imported on demand, as it needs the
minio client); ``open_blob_store`` opens whichever a URL names.
"""

from storage.base import (
    BlobNotFoundError,
    BlobStore,
    BlobStoreAccessError,
    BlobStoreError,
    BlobStoreFullError,
    BlobStoreUnavailableError,
    InvalidBlobKeyError,
    validate_key,
)
from storage.filesystem import FilesystemBlobStore, space_kept_free
from storage.memory import MemoryBlobStore
from storage.spooled import SpooledBlobStore
from storage.url import (
    S3Credentials,
    S3Location,
    StorageUrlError,
    open_blob_store,
    parse_storage_url,
)

__all__ = [
    "BlobNotFoundError",
    "BlobStore",
    "BlobStoreAccessError",
    "BlobStoreError",
    "BlobStoreFullError",
    "BlobStoreUnavailableError",
    "FilesystemBlobStore",
    "InvalidBlobKeyError",
    "MemoryBlobStore",
    "S3Credentials",
    "S3Location",
    "SpooledBlobStore",
    "StorageUrlError",
    "open_blob_store",
    "parse_storage_url",
    "space_kept_free",
    "validate_key",
]

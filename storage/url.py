"""Blob store locations written as URLs, as ``--storage-url`` takes them.

- ``file:///var/lib/pacs/blobs`` or a plain path: ``FilesystemBlobStore``.
- ``s3://BUCKET/PREFIX?endpoint=HOST:PORT&secure=false&region=REGION``:
  ``S3BlobStore``. Without ``endpoint``, AWS S3; ``secure`` defaults to true
  (HTTPS). Credentials never go in the URL (it ends up in logs and process
  lists): they are passed to ``open_blob_store`` separately.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from storage.base import BlobStore, InvalidBlobKeyError, validate_key
from storage.filesystem import FilesystemBlobStore

# S3 bucket naming rules (3-63 characters: lower-case letters, digits, dots, hyphens).
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")
_ENDPOINT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-_]+)(:\d{1,5})?")


class StorageUrlError(ValueError):
    """The storage URL cannot be understood; the message says why, in one line."""


@dataclass(frozen=True, slots=True)
class S3Location:
    bucket: str
    prefix: str = ""
    endpoint: str = "s3.amazonaws.com"
    secure: bool = True
    region: str = "us-east-1"

    def __str__(self) -> str:
        scheme = "https" if self.secure else "http"
        return f"s3://{self.bucket}/{self.prefix} ({scheme}://{self.endpoint}, {self.region})"


@dataclass(frozen=True, slots=True)
class S3Credentials:
    access_key: str | None = None
    secret_key: str | None = None
    session_token: str | None = None

    def __repr__(self) -> str:
        return "S3Credentials(...)"  # never the secrets


def parse_storage_url(url: str) -> Path | S3Location:
    """A folder for the filesystem store, or where in S3; raises ``StorageUrlError``."""
    text = url.strip()
    if not text:
        raise StorageUrlError("storage URL is empty")
    if "://" not in text:
        return Path(text).expanduser()
    parts = urlsplit(text)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise StorageUrlError(f"file URL {url!r} names a host; use file:///path")
        return Path(parts.path)
    if parts.scheme != "s3":
        raise StorageUrlError(f"storage URL {url!r}: unknown scheme {parts.scheme!r} (file, s3)")
    if "@" in parts.netloc:
        raise StorageUrlError(
            "storage URL must not hold credentials; set s3_access_key and s3_secret_key"
            " (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
        )
    bucket = parts.netloc
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise StorageUrlError(f"{bucket!r} is not a valid S3 bucket name")
    prefix = parts.path.strip("/")
    if prefix:
        try:
            validate_key(prefix)
        except InvalidBlobKeyError:
            raise StorageUrlError(f"S3 prefix {prefix!r} is not a valid key prefix") from None
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(options) - {"endpoint", "secure", "region"})
    if unknown:
        raise StorageUrlError(
            f"storage URL: unknown option {unknown[0]!r} (endpoint, secure, region)"
        )
    endpoint = options.get("endpoint", "s3.amazonaws.com")
    if not _ENDPOINT.fullmatch(endpoint):
        raise StorageUrlError(f"storage URL: endpoint {endpoint!r} is not HOST or HOST:PORT")
    secure_text = options.get("secure", "true").lower()
    if secure_text not in ("true", "false", "1", "0", "yes", "no"):
        raise StorageUrlError(f"storage URL: secure must be true or false, not {secure_text!r}")
    region = options.get("region", "us-east-1")
    if not re.fullmatch(r"[a-z0-9\-]{1,32}", region):
        raise StorageUrlError(f"storage URL: {region!r} is not a region name")
    return S3Location(
        bucket=bucket,
        prefix=prefix,
        endpoint=endpoint,
        secure=secure_text in ("true", "1", "yes"),
        region=region,
    )


def open_blob_store(
    url: str,
    credentials: S3Credentials | None = None,
    *,
    direct_io: bool = False,
    keep_free_bytes: int = 0,
    keep_free_percent: float = 0.0,
) -> BlobStore:
    """The store ``url`` names. An S3 store does not contact the service yet
    (see ``S3BlobStore.ensure_bucket``); the space kept free is a folder's."""
    location = parse_storage_url(url)
    if isinstance(location, Path):
        return FilesystemBlobStore(
            location,
            direct_io=direct_io,
            keep_free_bytes=keep_free_bytes,
            keep_free_percent=keep_free_percent,
        )
    from storage.s3 import S3BlobStore  # the minio client only when S3 is used

    credentials = credentials or S3Credentials()
    return S3BlobStore(
        location.bucket,
        location.prefix,
        endpoint=location.endpoint,
        secure=location.secure,
        region=location.region,
        access_key=credentials.access_key,
        secret_key=credentials.secret_key,
        session_token=credentials.session_token,
    )

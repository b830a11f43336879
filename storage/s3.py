"""Blob store on an S3 bucket (MinIO, AWS S3 or any S3-compatible service).

One object per blob, named ``PREFIX + key``. S3 makes each object visible
only once its upload is complete, so readers never see a partial blob, and an
acknowledged PUT is durable by the service's own guarantee. Blobs up to
``part_size`` go up in one PUT; larger ones as a multipart upload, one part in
memory at a time, aborted if the chunks' producer fails half-way.

Transient failures (connection refused or reset, timeouts, HTTP 500/502/503/504,
``SlowDown``) are retried a bounded number of times with exponential backoff by
the HTTP pool; when they are spent the call raises
``BlobStoreUnavailableError``. Refused credentials or permissions raise
``BlobStoreAccessError``, whose message names the bucket but never the keys.
"""

from __future__ import annotations

import contextlib
import io
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, BinaryIO, TypeVar, cast

import urllib3
from minio import Minio
from minio.error import MinioException, S3Error, ServerError
from urllib3.util import Retry, Timeout

from storage.base import (
    BlobNotFoundError,
    BlobStoreAccessError,
    BlobStoreError,
    BlobStoreFullError,
    BlobStoreUnavailableError,
    validate_key,
)

DEFAULT_PART_SIZE = 16 << 20
MIN_PART_SIZE = 5 << 20  # S3's smallest part but the last

_ACCESS_CODES = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "ExpiredToken",
        "InvalidAccessKeyId",
        "InvalidToken",
        "SignatureDoesNotMatch",
        "InvalidSecurity",
    }
)
_FULL_CODES = frozenset({"XMinioStorageFull", "QuotaExceeded", "XMinioAdminBucketQuotaExceeded"})
_BUSY_CODES = frozenset({"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout"})
_MISSING_CODES = frozenset({"NoSuchKey", "NoSuchObject", "ResourceNotFound"})

T = TypeVar("T")


class S3BlobStore:
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint: str = "s3.amazonaws.com",
        access_key: str | None = None,
        secret_key: str | None = None,
        session_token: str | None = None,
        secure: bool = True,
        region: str = "us-east-1",
        part_size: int = DEFAULT_PART_SIZE,
        attempts: int = 4,
        backoff: float = 0.2,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        connections: int = 32,
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        if prefix:
            validate_key(prefix.rstrip("/"))
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint = endpoint
        self.part_size = part_size
        # Our own pool: minio's default waits five minutes to connect and
        # retries only some methods. Every S3 call here is idempotent (a PUT of
        # the same key and bytes, a multipart step, a GET), so all may be retried.
        retry = Retry(
            total=attempts - 1,
            connect=attempts - 1,
            read=attempts - 1,
            status=attempts - 1,
            backoff_factor=backoff,
            backoff_max=5.0,
            status_forcelist=(500, 502, 503, 504),
            allowed_methods=None,
            raise_on_status=False,  # the last answer is parsed by minio into an S3Error
        )
        self._http = urllib3.PoolManager(
            num_pools=4,
            maxsize=connections,
            timeout=Timeout(connect=connect_timeout, read=read_timeout),
            retries=retry,
        )
        self._client = Minio(
            endpoint,
            access_key=access_key,
            secret_key=secret_key,
            session_token=session_token,
            secure=secure,
            region=region,
            http_client=self._http,
        )
        self._region = region
        self._bucket_checked = False
        self._bucket_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"S3BlobStore(s3://{self.bucket}/{self.prefix} at {self.endpoint})"

    # -- the bucket ----------------------------------------------------------

    def ensure_bucket(self) -> None:
        """Create the bucket if it is missing; check that our credentials work."""
        with self._bucket_lock:
            if self._bucket_checked:
                return
            exists = self._call("check bucket", lambda: self._client.bucket_exists(self.bucket))
            if not exists:
                try:
                    self._call(
                        "create bucket",
                        lambda: self._client.make_bucket(self.bucket, location=self._region),
                    )
                except BlobStoreError as exc:
                    # Another process may have created it in the meantime.
                    cause = exc.__cause__
                    if not (
                        isinstance(cause, S3Error)
                        and cause.code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists")
                    ):
                        raise
            self._bucket_checked = True

    # -- the protocol --------------------------------------------------------

    def put(self, key: str, chunks: Iterable[bytes]) -> int:
        name = self._name(key)
        self.ensure_bucket()
        reader = _ChunkReader(chunks)
        # The first part decides: a small blob is one PUT with a known length.
        first = reader.read(self.part_size + 1)
        if len(first) <= self.part_size:
            self._call(
                f"store {key!r}",
                lambda: self._client.put_object(self.bucket, name, io.BytesIO(first), len(first)),
            )
            return len(first)
        reader.push_back(first)
        # minio uploads the parts from the reader and aborts the upload on any error.
        self._call(
            f"store {key!r}",
            lambda: self._client.put_object(
                self.bucket, name, cast(BinaryIO, reader), -1, part_size=self.part_size
            ),
        )
        return reader.consumed

    def get(self, key: str) -> bytes:
        return self._read(key)

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError("offset and length must not be negative")
        if length == 0:
            self.size(key)  # a missing blob is still an error
            return b""
        return self._read(key, offset, length)

    def get_range_now(self, key: str, offset: int, length: int) -> None:
        return None  # a round trip to the store, always

    def map_range(self, key: str, offset: int, length: int) -> None:
        return None  # nothing local to map

    def prefetch(self, keys: Iterable[str]) -> None:
        pass  # nothing local to warm

    def iter_chunks(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        name = self._name(key)
        response = self._call(
            f"read {key!r}",
            lambda: self._client.get_object(self.bucket, name),
            missing=key,
        )
        try:
            while True:
                try:
                    chunk = response.read(chunk_size)
                except (urllib3.exceptions.HTTPError, OSError) as exc:
                    raise BlobStoreUnavailableError(
                        f"S3 connection lost while reading {key!r}: {exc}"
                    ) from exc
                if not chunk:
                    return
                yield chunk
        finally:
            response.close()
            response.release_conn()

    def size(self, key: str) -> int:
        name = self._name(key)
        stat = self._call(
            f"look up {key!r}", lambda: self._client.stat_object(self.bucket, name), missing=key
        )
        return int(stat.size or 0)

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except BlobNotFoundError:
            return False
        return True

    def delete(self, key: str) -> None:
        name = self._name(key)
        with contextlib.suppress(BlobNotFoundError):  # no bucket: nothing to delete
            self._call(
                f"delete {key!r}",
                lambda: self._client.remove_object(self.bucket, name),
                missing=key,
            )

    def keys(self, prefix: str = "") -> Iterator[str]:
        listing = self._client.list_objects(
            self.bucket, prefix=self.prefix + prefix, recursive=True
        )
        strip = len(self.prefix)
        while True:
            try:
                item = self._call("list keys", lambda: next(listing, None), missing_bucket_ok=True)
            except _NoBucket:
                return
            if item is None:
                return
            name = item.object_name or ""
            if not item.is_dir and name.startswith(self.prefix):
                yield name[strip:]

    def close(self) -> None:
        self._http.clear()

    # -- helpers -------------------------------------------------------------

    def _name(self, key: str) -> str:
        return self.prefix + validate_key(key)

    def _read(self, key: str, offset: int = 0, length: int = 0) -> bytes:
        name = self._name(key)

        def fetch() -> bytes:
            response = self._client.get_object(self.bucket, name, offset=offset, length=length)
            try:
                return bytes(response.read())
            finally:
                response.close()
                response.release_conn()

        try:
            return self._call(f"read {key!r}", fetch, missing=key)
        except BlobStoreError as exc:
            cause = exc.__cause__
            if isinstance(cause, S3Error) and cause.code == "InvalidRange":
                return b""  # the range starts past the end: fewer (no) bytes, as a file gives
            raise

    def _call(
        self,
        what: str,
        operation: Callable[[], T],
        *,
        missing: str | None = None,
        missing_bucket_ok: bool = False,
    ) -> T:
        """Run one S3 operation and translate its failure into a ``BlobStoreError``.

        Retries of transient failures happen inside the HTTP pool (see
        ``__init__``); what reaches here is final.
        """
        try:
            return operation()
        except S3Error as exc:
            code = exc.code or ""
            if missing is not None and code in _MISSING_CODES:
                raise BlobNotFoundError(missing) from None
            if code == "NoSuchBucket":
                if missing_bucket_ok:
                    raise _NoBucket from exc
                with self._bucket_lock:
                    self._bucket_checked = False
                if missing is not None:
                    raise BlobNotFoundError(missing) from None
            if code in _ACCESS_CODES:
                raise BlobStoreAccessError(
                    f"S3 at {self.endpoint} refused access to bucket {self.bucket!r} ({code}):"
                    " check the access key, secret key and the bucket's policy"
                ) from exc
            if code in _FULL_CODES:
                raise BlobStoreFullError(f"S3 bucket {self.bucket!r} is full ({code})") from exc
            if code in _BUSY_CODES:
                raise BlobStoreUnavailableError(
                    f"S3 at {self.endpoint} is unavailable: cannot {what} ({code})"
                ) from exc
            raise BlobStoreError(f"S3 cannot {what}: {code}: {exc.message}") from exc
        except ServerError as exc:
            raise BlobStoreUnavailableError(
                f"S3 at {self.endpoint} is unavailable: cannot {what} (HTTP {exc.status_code})"
            ) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise BlobStoreUnavailableError(
                f"S3 at {self.endpoint} cannot be reached: cannot {what}: {_reason(exc)}"
            ) from exc
        except MinioException as exc:
            raise BlobStoreError(f"S3 cannot {what}: {exc}") from exc


class _NoBucket(Exception):
    """The bucket does not exist (yet): it holds no keys."""


def _reason(exc: BaseException) -> str:
    # MaxRetryError wraps the last low-level error; its own text repeats the URL.
    inner: Any = getattr(exc, "reason", None)
    return str(inner or exc).split(": ", 1)[-1][:200]


class _ChunkReader:
    """``read(n)`` over an iterable of byte chunks, reading only as far as asked."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._buffer = bytearray()
        self.consumed = 0

    def push_back(self, data: bytes) -> None:
        self._buffer[:0] = data
        self.consumed -= len(data)

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            try:
                chunk = next(self._chunks)
            except StopIteration:
                break
            self._buffer += chunk
        if size < 0:
            size = len(self._buffer)
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        self.consumed += len(data)
        return data

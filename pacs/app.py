"""Wiring: settings → backends → Archive → front ends."""

from __future__ import annotations

import logging
import socket
import sqlite3

import psycopg
import pydicom.config
import uvicorn
from pynetdicom import _config as pynetdicom_config

from pacs.config import Settings, redact_url
from pacs.core import Archive
from pacs.dimse import DicomNode
from pacs.errors import ConfigError
from pacs.http import create_http_app
from pacs.index import Index, open_index
from pacs.pixels import LossyQuality
from pacs.workers import DicomWorkers
from storage import (
    BlobStore,
    BlobStoreAccessError,
    BlobStoreError,
    FilesystemBlobStore,
    SpooledBlobStore,
    open_blob_store,
)
from storage.s3 import S3BlobStore

log = logging.getLogger("pacs")


def configure_libraries() -> None:
    """Library-wide switches, set here and nowhere else."""
    # Real-world data sets carry values that break VR rules (an IS of '1A'); the
    # archive stores them as they came, so pydicom should neither warn nor raise.
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    # pynetdicom formats every C-FIND/C-MOVE identifier for a log line we do not
    # keep (about 15% of a C-FIND's time per match).
    pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
    pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False


def build_archive(settings: Settings) -> Archive:
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"data directory {settings.data_dir} cannot be created: {exc}") from None
    index = build_index(settings)
    try:
        blobs = build_blob_store(settings)
    except BaseException:
        index.close()
        raise
    return Archive(
        index,
        blobs,
        duplicate_policy=settings.duplicate_policy,
        lossy_quality=LossyQuality(
            jpeg_quality=settings.jpeg_quality,
            compression_ratio=settings.lossy_compression_ratio,
            jpegls_near=settings.jpegls_near,
        ),
    )


def build_index(settings: Settings) -> Index:
    location = settings.index_location
    try:
        return open_index(location, pool_size=settings.index_pool_size)
    except (RuntimeError, OSError, psycopg.Error, sqlite3.Error) as exc:
        raise ConfigError(f"index {redact_url(location)}: {exc}".splitlines()[0]) from None


def build_blob_store(settings: Settings, *, spool: bool | None = None) -> BlobStore:
    """The blob store ``storage_url`` names; S3 behind the local spool unless
    ``upload_spool`` (or ``spool``) is off."""
    try:
        store = open_blob_store(settings.blob_store_url, settings.s3_credentials())
    except OSError as exc:
        raise ConfigError(f"blob store {settings.blob_store_url}: {exc}") from None
    if not isinstance(store, S3BlobStore):
        return store
    spooled = settings.upload_spool if spool is None else spool
    try:
        store.ensure_bucket()
    except BlobStoreAccessError as exc:
        raise ConfigError(str(exc)) from None
    except BlobStoreError as exc:
        # Not fatal: the archive recovers by itself when S3 is back.
        log.warning(
            "%s; until it is back, %s",
            exc,
            "stores wait in the spool" if spooled else "stores fail",
        )
    if not spooled:
        return store
    return SpooledBlobStore(
        FilesystemBlobStore(settings.spool_dir), store, uploaders=settings.upload_workers
    )


def _bind(host: str, port: int, what: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen for {what} on {host}:{port}: {exc.strerror}") from None
    return sock


def configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s",
    )
    # pynetdicom logs every PDU at INFO; keep its chatter for debugging.
    if settings.log_level != "debug":
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)


def serve(settings: Settings) -> None:
    """Run the DICOM node and the HTTP server until interrupted."""
    configure_logging(settings)
    configure_libraries()
    # Bind HTTP first and check the DICOM port, so a port in use is one clear line.
    http_socket = _bind(settings.host, settings.http_port, "HTTP")
    _bind(settings.host, settings.dicom_port, "DICOM").close()
    archive = build_archive(settings)
    log.info("index: %s; blobs: %r", redact_url(settings.index_location), archive.blobs)
    workers = DicomWorkers(settings)
    node = DicomNode(archive, settings, dispatch=workers.dispatch)

    def start() -> None:
        workers.start()
        node.start()

    def stop() -> None:
        node.stop()
        workers.stop()

    app = create_http_app(archive, settings, on_startup=start, on_shutdown=stop)
    config = uvicorn.Config(
        app,
        log_level=settings.log_level,
        access_log=settings.log_level == "debug",
        lifespan="on",
    )
    server = uvicorn.Server(config)
    log.info("HTTP listening on http://%s:%d", settings.host, settings.http_port)
    try:
        server.run(sockets=[http_socket])
    finally:
        archive.close()

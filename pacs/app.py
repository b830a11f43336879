"""Wiring: settings → backends → Archive → front ends."""

from __future__ import annotations

import logging
import socket

import pydicom.config
import uvicorn
from pynetdicom import _config as pynetdicom_config

from pacs.config import Settings
from pacs.core import Archive
from pacs.dimse import DicomNode
from pacs.errors import ConfigError
from pacs.http import create_http_app
from pacs.index import SqliteIndex
from pacs.pixels import LossyQuality
from pacs.workers import DicomWorkers
from storage import FilesystemBlobStore

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
    return Archive(
        SqliteIndex(settings.index_path),
        FilesystemBlobStore(settings.blob_dir),
        duplicate_policy=settings.duplicate_policy,
        lossy_quality=LossyQuality(
            jpeg_quality=settings.jpeg_quality,
            compression_ratio=settings.lossy_compression_ratio,
            jpegls_near=settings.jpegls_near,
        ),
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

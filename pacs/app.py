"""Wiring: settings → backends → Archive → front ends."""

from __future__ import annotations

import ipaddress
import logging
import socket
import sqlite3
import ssl
from typing import cast

import psycopg
import pydicom.config
import uvicorn
from pynetdicom import _config as pynetdicom_config

from pacs.config import Settings, redact_url
from pacs.core import Archive
from pacs.dimse import DicomNode
from pacs.errors import ConfigError
from pacs.http.app import create_http_app
from pacs.index import Index, open_index
from pacs.index.access import AccessStore
from pacs.pixels import LossyQuality
from pacs.types import AuditEvent
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
    if not settings.index_url:
        try:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"data directory {settings.data_dir} cannot be created: {exc}"
            ) from None
    try:
        return open_index(location, pool_size=settings.index_pool_size)
    except (RuntimeError, OSError, psycopg.Error, sqlite3.Error) as exc:
        raise ConfigError(f"index {redact_url(location)}: {exc}".splitlines()[0]) from None


def build_blob_store(settings: Settings, *, spool: bool | None = None) -> BlobStore:
    """The blob store ``storage_url`` names; S3 behind the local spool unless
    ``upload_spool`` (or ``spool``) is off."""
    try:
        keep_free_bytes, keep_free_percent = settings.keep_free()
        store = open_blob_store(
            settings.blob_store_url,
            settings.s3_credentials(),
            direct_io=settings.direct_io,
            keep_free_bytes=keep_free_bytes,
            keep_free_percent=keep_free_percent,
        )
    except OSError as exc:
        raise ConfigError(f"blob store {settings.blob_store_url}: {exc}") from None
    if isinstance(store, FilesystemBlobStore):
        _warn_if_short_of_space(store)
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
        FilesystemBlobStore(
            settings.spool_dir,
            direct_io=settings.direct_io,
            keep_free_bytes=keep_free_bytes,
            keep_free_percent=keep_free_percent,
        ),
        store,
        uploaders=settings.upload_workers,
    )


def _warn_if_short_of_space(store: FilesystemBlobStore) -> None:
    free = store.free_space()
    if free < store.keep_free:
        log.warning(
            "%s has %.1f MB free, under the %.1f MB kept free (min_free_space):"
            " images are refused until there is more",
            store.root,
            free / 1e6,
            store.keep_free / 1e6,
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
    debug = settings.log_level == "debug"
    if not debug:
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    # Its standard handlers make those INFO and DEBUG lines on every PDU and
    # DIMSE message even when nothing shows them (the one for a C-STORE
    # request copies the whole data set to see whether there is one): not
    # bound at all unless debugging. Set before any association is made.
    pynetdicom_config.LOG_HANDLER_LEVEL = "standard" if debug else "none"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it could resolve to anything


def check_exposure(settings: Settings, authentication: bool) -> None:
    """Secure defaults: beyond loopback only with accounts (HTTP) and, warned, known nodes.

    Raises ``ConfigError`` for a non-loopback ``host`` while no user exists:
    DICOMweb, the viewer and every patient's images would be open to anyone
    who can reach the address.
    """
    if is_loopback(settings.host):
        return
    if not authentication:
        raise ConfigError(
            f"refusing to listen on {settings.host} without authentication: no user exists."
            " Add one first (pacs user add NAME --role admin), or listen on 127.0.0.1"
        )
    if not settings.known_nodes_only:
        log.warning(
            "listening on %s with known_nodes_only off: any DICOM peer that reaches this"
            " address may store, query and retrieve",
            settings.host,
        )
    if not settings.tls_cert:
        log.warning(
            "listening on %s without TLS: passwords and images cross in the clear", settings.host
        )


def tls_contexts(settings: Settings) -> tuple[ssl.SSLContext | None, ssl.SSLContext | None]:
    """(HTTPS, DICOM TLS) server contexts from ``tls_cert``/``tls_key``.

    DICOM TLS follows PS3.15 B.1 (the Basic TLS Secure Transport Connection
    Profile, TLS 1.2 or later); with ``tls_client_ca`` the peer must show a
    certificate it signed, as a node's identity.
    """
    if not settings.tls_cert:
        return None, None

    def context(client_ca: str = "") -> ssl.SSLContext:
        made = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        made.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            made.load_cert_chain(settings.tls_cert, settings.tls_key)
            if client_ca:
                made.load_verify_locations(client_ca)
                made.verify_mode = ssl.CERT_REQUIRED
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"TLS certificate or key cannot be used: {exc}") from None
        return made

    return context(), context(settings.tls_client_ca) if settings.dicom_tls_port else None


def serve(settings: Settings) -> None:
    """Run the DICOM node and the HTTP server until interrupted."""
    configure_logging(settings)
    configure_libraries()
    https, dicom_tls = tls_contexts(settings)
    # Bind HTTP first and check the DICOM ports, so a port in use is one clear line.
    http_socket = _bind(settings.host, settings.http_port, "HTTP")
    _bind(settings.host, settings.dicom_port, "DICOM").close()
    if settings.dicom_tls_port:
        _bind(settings.host, settings.dicom_tls_port, "DICOM TLS").close()
    archive = build_archive(settings)
    try:
        check_exposure(settings, cast(AccessStore, archive.index).has_users())
    except ConfigError:
        archive.close()
        http_socket.close()
        raise
    log.info("index: %s; blobs: %r", redact_url(settings.index_location), archive.blobs)
    # Application start, with what bears on who may do what (PS3.15 A.5.3.1).
    archive.audit.record(
        AuditEvent(
            "config",
            "success",
            settings.ae_title,
            "system",
            settings.host,
            detail=f"started: http {settings.http_port}{' (TLS)' if https else ''},"
            f" dicom {settings.dicom_port}"
            f"{f', dicom tls {settings.dicom_tls_port}' if settings.dicom_tls_port else ''},"
            f" known_nodes_only={settings.known_nodes_only},"
            f" nodes={','.join(n.ae_title for n in settings.nodes) or '-'}",
        )
    )
    workers = DicomWorkers(settings)
    node = DicomNode(archive, settings, dispatch=workers.dispatch)
    tls_node = (
        DicomNode(archive, settings, port=settings.dicom_tls_port, ssl_context=dicom_tls)
        if dicom_tls is not None
        else None
    )

    def start() -> None:
        workers.start()
        node.start()
        if tls_node is not None:
            tls_node.start()

    def stop() -> None:
        if tls_node is not None:
            tls_node.stop()
        node.stop()
        workers.stop()

    app = create_http_app(archive, settings, on_startup=start, on_shutdown=stop)
    config = uvicorn.Config(
        app,
        log_level=settings.log_level,
        access_log=settings.log_level == "debug",
        lifespan="on",
        ssl_certfile=settings.tls_cert or None,
        ssl_keyfile=settings.tls_key or None,
    )
    server = uvicorn.Server(config)
    scheme = "https" if https else "http"
    log.info("HTTP listening on %s://%s:%d", scheme, settings.host, settings.http_port)
    try:
        server.run(sockets=[http_socket])
    finally:
        archive.close()

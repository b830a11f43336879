"""Shared fixtures: real servers on free loopback ports, and the bundled DICOM corpus."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom.data
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from pacs.app import configure_libraries
from pacs.core import Archive
from pacs.index import SqliteIndex
from storage import MemoryBlobStore
from tests.services import PostgresCluster, S3Endpoint, free_port

configure_libraries()

# pydicom's own test files, shipped inside the package (no download needed).
PYDICOM_TEST_FILES = Path(pydicom.data.__path__[0]) / "test_files"


def bundled_dicom_files() -> list[Path]:
    return sorted(PYDICOM_TEST_FILES.glob("*.dcm"))


get_port = free_port  # the name the tests import


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    data_dir: Path
    dicom_port: int
    http_port: int
    ae_title: str
    log_path: Path

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def system(self) -> dict[str, object]:
        response = httpx.get(self.http_url + "/system", timeout=10)
        response.raise_for_status()
        result: dict[str, object] = response.json()
        return result

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _echo_ok(port: int) -> bool:
    ae = AE(ae_title="PROBE")
    ae.add_requested_context(Verification)
    ae.acse_timeout = 2
    ae.network_timeout = 2
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status and status.Status == 0)


def start_server(data_dir: Path, *extra: str, env: dict[str, str] | None = None) -> ServerProcess:
    dicom_port, http_port = get_port(), get_port()
    log_path = data_dir.parent / f"{data_dir.name}-server.log"
    command = [
        sys.executable,
        "-m",
        "pacs",
        "serve",
        "--data-dir",
        str(data_dir),
        "--dicom-port",
        str(dicom_port),
        "--http-port",
        str(http_port),
        "--log-level",
        "warning",
        *extra,
    ]
    with log_path.open("wb") as log_file:  # the child keeps its own descriptor
        process = subprocess.Popen(
            command,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    server = ServerProcess(process, data_dir, dicom_port, http_port, "PACS", log_path)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"pacs serve exited with {process.returncode}:\n{server.log()}")
        try:
            httpx.get(server.http_url + "/health", timeout=1)
            if _echo_ok(dicom_port):
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    stop_server(server)
    raise RuntimeError(f"pacs serve did not come up:\n{server.log()}")


def stop_server(server: ServerProcess) -> None:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGINT)
        try:
            server.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


@contextlib.contextmanager
def mounted_tmpfs(mount_point: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at ``mount_point`` with ``options`` ("size=64k,..."), to fill.

    Mounting needs root (CI runs as root); the test is skipped otherwise.
    """
    mount_point.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill (needs root): {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def resize_tmpfs(mount_point: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(mount_point)], check=True)


@pytest.fixture
def pacs_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A real `pacs serve` process on free ports with its own data folder."""
    server = start_server(tmp_path / "pacs-data")
    try:
        yield server
    finally:
        stop_server(server)


@pytest.fixture
def memory_archive() -> Iterator[Archive]:
    """The archive core over an in-memory index and blob store (Orthanc-style fakes)."""
    archive = Archive(SqliteIndex(":memory:"), MemoryBlobStore())
    yield archive
    archive.close()


# -- PostgreSQL and S3, started once per session (see tests/services.py) ----------------


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A private PostgreSQL server (Debian's, installed by `make test`)."""
    cluster = PostgresCluster().start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def postgres_url(postgres_cluster: PostgresCluster) -> str:
    """A new empty database on the session's PostgreSQL server."""
    return postgres_cluster.create_database("test")


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[S3Endpoint]:
    """A real S3 HTTP endpoint: the MinIO that PACS_TEST_S3_ENDPOINT names, else moto's server."""
    endpoint = S3Endpoint().start()
    try:
        yield endpoint
    finally:
        endpoint.stop()

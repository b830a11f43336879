"""Throw-away servers for the tests and the benchmarks: PostgreSQL, an S3 endpoint, a relay.

- ``PostgresCluster``: a private cluster made with Debian's ``initdb`` in a
  temporary folder, listening on a free loopback port, stopped and deleted at
  the end. PostgreSQL refuses to run as root, so as root it runs as the
  unprivileged user ``pacs-postgres`` (created when missing). With
  ``PACS_TEST_POSTGRES_URL`` set, that server is used instead.
- ``S3Endpoint``: the MinIO (or other S3) server ``PACS_TEST_S3_ENDPOINT``
  names, or else moto's standalone S3 server, started as a separate process.
- ``TcpRelay``: a process forwarding a port to another, which a test kills to
  cut the S3 endpoint off (moto keeps its objects in memory, so killing moto
  itself would also lose what S3 had acknowledged, which a real S3 never does).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

POSTGRES_USER = "pacs-postgres"


_PORTS_GIVEN: set[int] = set()


def free_port() -> int:
    """A free TCP port on loopback (the kernel picks it), never one given before
    in this run: the kernel may offer a just-closed port again before the server
    it was given for has bound it (two servers were once given the same one)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _PORTS_GIVEN:
            _PORTS_GIVEN.add(port)
            return port


def _wait_for_port(port: int, process: subprocess.Popen[bytes] | None, what: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not open port {port} within 60 s")


def _stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- PostgreSQL -------------------------------------------------------------------------


def postgres_bin_dir() -> Path:
    """Where Debian's ``postgresql`` package put the server (the newest version)."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/postgres"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("postgres")
    if found:
        return Path(found).resolve().parent
    raise RuntimeError(
        "no PostgreSQL server is installed: `make test` installs Debian's postgresql package"
    )


def _unprivileged_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(POSTGRES_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                POSTGRES_USER,
            ],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(POSTGRES_USER)


@dataclass
class PostgresCluster:
    """A private PostgreSQL server. ``durable=False`` turns off fsync: test data is
    thrown away, and the suite runs faster; the benchmarks keep it on."""

    durable: bool = False
    port: int = 0
    external_url: str | None = None
    _root: Path | None = None
    _process: subprocess.Popen[bytes] | None = None
    _databases: list[str] = field(default_factory=list)
    _demote: list[str] = field(default_factory=list)
    _data: Path | None = None

    def start(self) -> PostgresCluster:
        self.external_url = os.environ.get("PACS_TEST_POSTGRES_URL") or None
        if self.external_url:
            return self
        bin_dir = postgres_bin_dir()
        self._root = Path(tempfile.mkdtemp(prefix="pacs-pg-"))
        data = self._root / "data"
        demote: list[str] = []
        if os.geteuid() == 0:
            user = _unprivileged_user()
            os.chown(self._root, user.pw_uid, user.pw_gid)
            demote = [
                "setpriv",
                f"--reuid={user.pw_uid}",
                f"--regid={user.pw_gid}",
                "--clear-groups",
                "--",
            ]
        subprocess.run(
            [
                *demote,
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            cwd=self._root,
        )
        self.port = free_port()
        self._demote = demote
        self._data = data
        self._launch()
        return self

    def _launch(self) -> None:
        assert self._root is not None
        bin_dir = postgres_bin_dir()
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self._root),
            "max_connections": "200",
            "shared_buffers": "128MB",
            "fsync": "on" if self.durable else "off",
            "synchronous_commit": "on" if self.durable else "off",
            "full_page_writes": "on" if self.durable else "off",
            "log_min_messages": "warning",
        }
        options = [arg for name, value in settings.items() for arg in ("-c", f"{name}={value}")]
        log = open(self._root / "server.log", "ab")
        self._process = subprocess.Popen(
            [*self._demote, str(bin_dir / "postgres"), "-D", str(self._data), *options],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self._root,
        )
        log.close()
        self._wait_ready()

    def restart(self, down: float = 0.0) -> None:
        """Stop the server (its connections cut), wait ``down`` seconds, start it again."""
        assert self._process is not None and not self.external_url
        _stop(self._process, signal.SIGINT)
        time.sleep(down)
        self._launch()

    def kill(self) -> None:
        """Stop the server, to be started again with ``resume``."""
        assert self._process is not None
        _stop(self._process, signal.SIGINT)

    def resume(self) -> None:
        self._launch()

    def _wait_ready(self) -> None:
        import psycopg

        deadline = time.monotonic() + 60
        while True:
            try:
                psycopg.connect(self.url("postgres"), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                assert self._process is not None
                if self._process.poll() is not None or time.monotonic() > deadline:
                    log = (self._root / "server.log").read_text(errors="replace")  # type: ignore[operator]
                    raise RuntimeError(f"PostgreSQL did not start:\n{log}") from None
                time.sleep(0.1)

    def url(self, database: str) -> str:
        if self.external_url:
            base, _, _ = self.external_url.rpartition("/")
            return f"{base}/{database}"
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, prefix: str = "pacs") -> str:
        """A new empty database; returns its URL."""
        import psycopg

        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        admin = self.external_url or self.url("postgres")
        with psycopg.connect(admin, autocommit=True) as db:
            db.execute(f'CREATE DATABASE "{name}"')
        self._databases.append(name)
        return self.url(name)

    def stop(self) -> None:
        if self.external_url:
            import psycopg

            with psycopg.connect(self.external_url, autocommit=True) as db:
                for name in self._databases:
                    db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            return
        if self._process is not None:
            _stop(self._process, signal.SIGINT)  # "fast" shutdown
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)


# -- S3 -------------------------------------------------------------------------------


@dataclass
class S3Endpoint:
    """Where the tests' S3 is: ``host:port`` with credentials."""

    endpoint: str = ""
    access_key: str = "pacs-test"
    secret_key: str = "pacs-test-secret"
    secure: bool = False
    kind: str = "moto"
    authenticate: bool = False
    """moto only: check credentials (then only moto's built-in root keys pass)."""
    _process: subprocess.Popen[bytes] | None = None
    _root: Path | None = None

    def start(self) -> S3Endpoint:
        given = os.environ.get("PACS_TEST_S3_ENDPOINT")
        if given and not self.authenticate:
            self.endpoint = given
            self.access_key = os.environ.get("PACS_TEST_S3_ACCESS_KEY", "minioadmin")
            self.secret_key = os.environ.get("PACS_TEST_S3_SECRET_KEY", "minioadmin")
            self.secure = os.environ.get("PACS_TEST_S3_SECURE", "false").lower() == "true"
            self.kind = "external"
            return self
        port = free_port()
        self._root = Path(tempfile.mkdtemp(prefix="pacs-s3-"))
        environment = {**os.environ, "MOTO_ALLOW_NONEXISTENT_REGION": "true"}
        if self.authenticate:
            environment["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
        log = open(self._root / "moto.log", "wb")
        self._process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment,
        )
        log.close()
        _wait_for_port(port, self._process, "moto's S3 server")
        self.endpoint = f"127.0.0.1:{port}"
        return self

    @property
    def port(self) -> int:
        return int(self.endpoint.rsplit(":", 1)[1])

    def url(self, bucket: str, prefix: str = "", endpoint: str | None = None) -> str:
        secure = "true" if self.secure else "false"
        path = f"/{prefix}" if prefix else ""
        return f"s3://{bucket}{path}?endpoint={endpoint or self.endpoint}&secure={secure}"

    def environment(self) -> dict[str, str]:
        """How a ``pacs serve`` process gets the credentials."""
        return {"PACS_S3_ACCESS_KEY": self.access_key, "PACS_S3_SECRET_KEY": self.secret_key}

    def stop(self) -> None:
        if self._process is not None:
            _stop(self._process)
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)


def new_bucket_name(prefix: str = "pacs-test") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


# -- a relay to cut off ---------------------------------------------------------------------


class TcpRelay:
    """``127.0.0.1:port`` forwarded to ``target_port``, in its own process so that
    a test can kill it outright (SIGKILL) and start it again on the same port."""

    def __init__(self, target_port: int, port: int | None = None) -> None:
        self.target_port = target_port
        self.port = port or free_port()
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> TcpRelay:
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.services",
                "relay",
                str(self.port),
                str(self.target_port),
            ],
            cwd=Path(__file__).resolve().parent.parent,
        )
        _wait_for_port(self.port, self._process, "the TCP relay")
        return self

    def kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def stop(self) -> None:
        if self._process is not None:
            _stop(self._process)
            self._process = None


def _relay_main(port: int, target_port: int) -> None:
    listener = socket.create_server(("127.0.0.1", port), backlog=64)  # SO_REUSEADDR set

    def pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(1 << 16):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    while True:
        client, _ = listener.accept()
        try:
            upstream = socket.create_connection(("127.0.0.1", target_port))
        except OSError:
            client.close()
            continue
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=pipe, args=(a, b), daemon=True).start()


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(200 <= response.status < 500)
    except OSError:
        return False


if __name__ == "__main__" and sys.argv[1:2] == ["relay"]:
    _relay_main(int(sys.argv[2]), int(sys.argv[3]))

"""Reference DICOM nodes and senders for benchmarks.

* ``start_orthanc`` / ``stop_process``: run a throw-away Orthanc (Debian package) as the
  baseline archive to compare the pacs server against.
* ``send_files``: a C-STORE load generator built on pynetdicom, able to spread the load
  over several concurrent associations.
* ``send_files_storescu``: the same measurement with DCMTK's ``storescu``, a sender
  written in C, to tell sender-side limits from server-side ones.
* ``ScaleBackends``: PostgreSQL and an S3 endpoint for pacs "at scale".

All senders return the same result dictionary (see ``_result``), so benchmarks can put
them side by side: ``instances``, ``seconds``, ``instances_per_s``, ``mb_per_s``,
``failures`` (plus ``bytes``, ``associations``, ``sender`` and ``errors``).  MB are 10^6
bytes of Part 10 file size; both rates count successfully stored instances only
(MB/s scales the total size by the stored fraction).
"""

from __future__ import annotations

import glob
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from pacs.dimse.transport import guard_reactor

__all__ = [
    "OrthancProcess",
    "free_port",
    "orthanc_config",
    "orthanc_get",
    "send_files",
    "send_files_storescu",
    "start_orthanc",
    "stop_process",
    "wait_for_echo",
]

LOCALHOST = "127.0.0.1"


def free_port(host: str = LOCALHOST) -> int:
    """Return a TCP port that was free a moment ago (the OS picks it).

    There is an unavoidable race between closing the probe socket and the server
    binding the port; it is harmless on a benchmark machine.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _set_nodelay(assoc: Any) -> None:
    """Disable Nagle's algorithm on an established pynetdicom association's socket.

    pynetdicom leaves Nagle on for the sockets it opens and writes every PDU with its
    own send().  With Nagle on, a small write (the last fragment of a dataset, a
    command set) waits until the previous segment is acknowledged, and the peer may
    delay that ACK: against Orthanc on the 2-core dev box this cut one association
    from ~90 to ~35 instances/s, measuring the TCP stack rather than the server.
    """
    sock = assoc.dul.socket.socket if assoc.dul.socket is not None else None
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def wait_for_echo(
    host: str,
    port: int,
    called_ae: str,
    timeout: float = 30.0,
    proc: subprocess.Popen[Any] | None = None,
) -> None:
    """Poll with C-ECHO until the SCP answers successfully or ``timeout`` expires.

    If ``proc`` is given and exits meanwhile, fail at once rather than waiting out the
    timeout.
    """
    ae = AE(ae_title="PACSBENCH")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 5
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server process exited with code {proc.returncode}")
        # Probe with a plain connect first: pynetdicom leaks its socket (an unraisable
        # ResourceWarning, an error under pytest's -W error) when a connect is refused.
        if _port_open(host, port):
            assoc = ae.associate(host, port, ae_title=called_ae)
            if assoc.is_established:
                status = assoc.send_c_echo()
                assoc.release()
                if status is not None and getattr(status, "Status", None) == 0x0000:
                    return
        if time.monotonic() > deadline:
            raise TimeoutError(f"no C-ECHO answer from {called_ae}@{host}:{port}")
        time.sleep(0.1)


class OrthancProcess(subprocess.Popen[bytes]):
    """A running Orthanc together with where to reach it."""

    ae_title: str
    dicom_port: int
    http_port: int
    workdir: Path
    log_path: Path


def orthanc_config(workdir: Path, ae_title: str, dicom_port: int, http_port: int) -> dict[str, Any]:
    """Orthanc configuration for a private, unauthenticated benchmark instance.

    Only what differs from the defaults, or what the benchmark relies on, is set, so
    the measured Orthanc is as close to a stock install as possible.
    """
    return {
        "Name": f"bench-{ae_title}",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "index"),
        # No plugins and no Lua: the stock Debian config would load the plugins from
        # /usr/share/orthanc/plugins, which are not part of the baseline.
        "Plugins": [],
        "LuaScripts": [],
        "DicomServerEnabled": True,
        "DicomAet": ae_title,
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowEcho": True,
        # Accept C-STORE from any calling AE without declaring it as a modality.
        "DicomAlwaysAllowStore": True,
        "DicomCheckModalityHost": False,
        "DicomModalities": {},
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "SslEnabled": False,
        "OrthancPeers": {},
        "SaveJobs": False,
        "DefaultEncoding": "Utf8",
    }


DICOMWEB_PLUGIN_PATHS = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/libOrthancDicomWeb.so*",
    "/usr/local/share/orthanc/plugins/libOrthancDicomWeb.so",
)


def dicomweb_plugin() -> str | None:
    """Where Debian's orthanc-dicomweb put Orthanc's DICOMweb plugin, if it is installed."""
    for pattern in DICOMWEB_PLUGIN_PATHS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


def start_orthanc(
    workdir: str | os.PathLike[str],
    ae_title: str = "ORTHANC",
    dicom_port: int | None = None,
    http_port: int | None = None,
    *,
    timeout: float = 30.0,
    executable: str = "Orthanc",
    overrides: Mapping[str, Any] | None = None,
) -> OrthancProcess:
    """Start Orthanc with its storage under ``workdir`` and wait until C-ECHO works.

    Ports default to free ones; the returned process carries ``dicom_port``,
    ``http_port``, ``ae_title`` and ``log_path``.  ``overrides`` replaces top-level
    keys of ``orthanc_config`` (e.g. ``{"Plugins": [...]}``).  Use ``stop_process``
    to end it.
    """
    work = Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    dicom_port = dicom_port or free_port()
    http_port = http_port or free_port()
    config = work / "config.json"
    settings = {**orthanc_config(work, ae_title, dicom_port, http_port), **(overrides or {})}
    config.write_text(json.dumps(settings, indent=2))

    env = dict(os.environ)
    # Debian's Orthanc (through DCMTK) reads TCP_NODELAY to disable Nagle on its DICOM
    # sockets; see _set_nodelay for why that matters for C-STORE throughput.
    env["TCP_NODELAY"] = "1"
    log_path = work / "orthanc.log"
    with open(log_path, "wb") as log:
        proc = OrthancProcess(
            [executable, str(config)],
            cwd=work,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    proc.ae_title, proc.dicom_port, proc.http_port = ae_title, dicom_port, http_port
    proc.workdir, proc.log_path = work, log_path
    try:
        wait_for_echo(LOCALHOST, dicom_port, ae_title, timeout=timeout, proc=proc)
    except BaseException as exc:
        stop_process(proc)
        tail = log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"Orthanc did not come up: {exc}\n--- {log_path} ---\n{tail}") from exc
    return proc


def process_tree_cpu(pid: int) -> float:
    """Seconds of CPU (user and system) used so far by a process and its
    living descendants: a server's share of a run, whatever its sender costs.
    Linux only (``/proc``); 0.0 elsewhere."""
    total = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            # Each thread lists the children it started.
            for task in Path(f"/proc/{current}/task").iterdir():
                pending.extend(int(child) for child in (task / "children").read_text().split())
        except OSError:
            continue  # gone, or not Linux
        total += int(fields[11]) + int(fields[12])  # utime, stime in clock ticks
    return total / os.sysconf("SC_CLK_TCK")


def stop_process(proc: subprocess.Popen[Any], timeout: float = 15.0) -> int:
    """Stop ``proc`` gracefully (SIGTERM), killing it if it lingers; return its exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode)


def orthanc_get(proc: OrthancProcess, path: str) -> Any:
    """GET a JSON resource from Orthanc's REST API, e.g. ``/statistics``."""
    url = f"http://{LOCALHOST}:{proc.http_port}{path}"
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def _result(
    instances: int, seconds: float, size: int, failures: int, **extra: Any
) -> dict[str, Any]:
    # Rates count only what was stored, so a run that fails fast cannot look fast.
    stored = (instances - failures) / instances if instances else 0.0
    return {
        "instances": instances,
        "seconds": seconds,
        "instances_per_s": instances * stored / seconds if seconds > 0 else 0.0,
        "mb_per_s": size * stored / 1e6 / seconds if seconds > 0 else 0.0,
        "failures": failures,
        "bytes": size,
        **extra,
    }


def send_files(
    host: str,
    port: int,
    called_ae: str,
    files: Sequence[str | os.PathLike[str]],
    associations: int = 1,
    *,
    calling_ae: str = "PACSBENCH",
) -> dict[str, Any]:
    """C-STORE ``files`` with pynetdicom over ``associations`` concurrent associations.

    The files are read into memory first so the disk is not measured.  They are dealt
    round-robin to one thread per association; each thread opens its association,
    all threads then start together, and each sends its share over its single
    association.  The clock covers the first C-STORE request to the last response,
    excluding association set-up and release.

    ``failures`` counts instances whose status was not 0x0000 (warnings included) or
    that got no response, including those of an association that could not be opened.
    """
    paths = [Path(f) for f in files]
    datasets: list[Dataset] = [dcmread(p) for p in paths]
    size = sum(p.stat().st_size for p in paths)
    n_assoc = max(1, min(associations, len(datasets) or 1))
    shares: list[list[Dataset]] = [datasets[i::n_assoc] for i in range(n_assoc)]
    # One presentation context per SOP class present (CT Image Storage for the
    # phantom); Explicit VR LE first, Implicit VR LE as the universal fallback.
    sop_classes = sorted({str(ds.SOPClassUID) for ds in datasets})

    failures = [0] * n_assoc
    finished = [0.0] * n_assoc
    errors: list[str] = []
    started: list[float] = []
    # Associations are set up before the barrier so the clock starts with every
    # association ready; the barrier action stamps the start time exactly once.
    barrier = threading.Barrier(n_assoc, action=lambda: started.append(time.perf_counter()))

    def worker(index: int) -> None:
        ae = AE(ae_title=calling_ae)
        for uid in sop_classes:
            ae.add_requested_context(uid, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        ae.acse_timeout = 30
        ae.dimse_timeout = 120
        # No idle timeout: an association may sit idle at the barrier while others are
        # still being negotiated (single-threaded SCPs accept them one at a time).
        ae.network_timeout = None
        assoc = ae.associate(host, port, ae_title=called_ae)
        if assoc.is_established:
            _set_nodelay(assoc)
            # Else pynetdicom now and then drops a C-STORE response, waits out the
            # DIMSE timeout and aborts (pacs/dimse/transport.py).
            guard_reactor(assoc)
        barrier.wait()
        if not assoc.is_established:
            failures[index] = len(shares[index])
            errors.append(f"association {index} rejected or aborted")
            finished[index] = time.perf_counter()
            return
        try:
            for ds in shares[index]:
                status = assoc.send_c_store(ds)
                if status is None or getattr(status, "Status", None) != 0x0000:
                    failures[index] += 1
            finished[index] = time.perf_counter()
        finally:
            if assoc.is_established:
                assoc.release()

    threads = [
        threading.Thread(target=worker, args=(i,), name=f"cstore-{i}") for i in range(n_assoc)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = max(finished) - started[0]
    return _result(
        len(datasets),
        seconds,
        size,
        sum(failures),
        associations=n_assoc,
        sender="pynetdicom",
        errors=errors,
    )


def _files_in(directory: Path) -> Iterable[Path]:
    # What `storescu +sd` (without +r) sends: the regular files directly inside.
    return (p for p in sorted(directory.iterdir()) if p.is_file())


def send_files_storescu(
    host: str,
    port: int,
    called_ae: str,
    directory: str | os.PathLike[str],
    associations: int = 1,
    *,
    calling_ae: str = "STORESCU",
    executable: str = "storescu",
) -> dict[str, Any]:
    """C-STORE every file in ``directory`` with DCMTK's storescu.

    With one association this is ``storescu +sd DIR``.  With more, the files are dealt
    round-robin to that many concurrent storescu processes (one association each):
    separate processes, because a single Python sender is capped by the GIL well
    below what a server can take on several associations.

    The clock is the wall time from starting the first process to the exit of the
    last, so unlike ``send_files`` it includes process start, association set-up and
    reading the files (normally from the page cache right after they were written).
    """
    folder = Path(directory)
    files = list(_files_in(folder))
    size = sum(p.stat().st_size for p in files)
    n_proc = max(1, min(associations, len(files) or 1))
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"  # DCMTK honours it too; keep both ends Nagle-free
    base = [
        executable,
        "--log-level",
        "info",  # one "Received Store Response" line per instance
        "--required",  # propose only the contexts the files need, like send_files
        "-aet",
        calling_ae,
        "-aec",
        called_ae,
        host,
        str(port),
    ]
    if n_proc == 1:
        commands = [[*base, "--scan-directories", str(folder)]]
    else:
        commands = [[*base, *map(str, files[i::n_proc])] for i in range(n_proc)]

    # Output goes to files, not pipes: a pipe nobody is reading yet could fill up and
    # stall a sender in the middle of the measurement.
    logs = [tempfile.TemporaryFile() for _ in commands]
    try:
        start = time.perf_counter()
        procs = [
            subprocess.Popen(
                cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
            for cmd, log in zip(commands, logs, strict=True)
        ]
        codes = [proc.wait() for proc in procs]
        seconds = time.perf_counter() - start
        outputs = []
        for log, code in zip(logs, codes, strict=True):
            log.seek(0)
            outputs.append((log.read().decode(errors="replace"), code))
    finally:
        for log in logs:
            log.close()

    ok = sum(len(re.findall(r"Received Store Response \(Success\)", out)) for out, _ in outputs)
    errors = [out[-2000:] for out, code in outputs if code != 0]
    return _result(
        len(files),
        seconds,
        size,
        len(files) - ok,
        associations=n_proc,
        sender="storescu",
        errors=errors,
    )


def pacs_serve(
    data_dir: Path,
    dicom_port: int,
    http_port: int,
    log: IO[bytes],
    *extra: str,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[Any]:
    """Start ``pacs serve`` on ``data_dir`` and the given ports (not waiting for it)."""
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
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)


def revision() -> str:
    """The commit measured, flagged when pacs/ or storage/ differ from it."""
    git = ["git", "-C", str(Path(__file__).resolve().parent.parent)]
    try:
        commit = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            [*git, "status", "--porcelain", "--", "pacs", "storage"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "commit unknown"
    return f"commit {commit}" + (
        " with uncommitted changes in pacs/ or storage/" if changed else ""
    )


class ScaleBackends:
    """PostgreSQL and S3 for the "S3 + PostgreSQL" columns: a private PostgreSQL
    cluster with fsync on (as in production), and the S3 endpoint of the tests
    (PACS_TEST_S3_ENDPOINT's MinIO, else moto's server), started once per run."""

    def __init__(self) -> None:
        from tests.services import PostgresCluster, S3Endpoint

        self.postgres = PostgresCluster(durable=True).start()
        try:
            self.s3 = S3Endpoint().start()
        except BaseException:
            self.postgres.stop()
            raise

    @property
    def s3_kind(self) -> str:
        return "MinIO" if self.s3.kind == "external" else "moto's S3 server (Python)"

    def fresh(self) -> tuple[list[str], dict[str, str], str]:
        """(``pacs`` options, environment, index URL) for a new database and bucket."""
        from tests.services import new_bucket_name

        index_url = self.postgres.create_database("bench")
        storage_url = self.s3.url(new_bucket_name("pacs-bench"), "archive")
        options = ["--index-url", index_url, "--storage-url", storage_url]
        return options, {**os.environ, **self.s3.environment()}, index_url

    def close(self) -> None:
        self.s3.stop()
        self.postgres.stop()


def uploads_pending(http_port: int) -> int:
    """Acknowledged instances a pacs server has not yet put in S3."""
    with urllib.request.urlopen(f"http://{LOCALHOST}:{http_port}/system", timeout=10) as reply:
        storage = json.load(reply)["storage"]
    return int(storage.get("uploads_pending") or 0)


def wait_uploaded(http_port: int, timeout: float = 600) -> float:
    """Wait until the server's spool is empty; returns the seconds waited."""
    start = time.monotonic()
    while uploads_pending(http_port):
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"uploads still pending after {timeout:.0f} s")
        time.sleep(0.05)
    return time.monotonic() - start

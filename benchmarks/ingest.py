"""C-STORE ingest: pacs beside Orthanc, same data, same senders, same run.

Generates the deterministic 300-slice CT phantom (512x512, 16-bit), then for each
server and sender starts the server on empty storage, sends the series, checks
that every instance is really stored, and prints instances/s and MB/s (median of
``--repeat`` runs) with the pacs/Orthanc ratio, and the CPU each server's
processes used per instance (a machine's load moves the rates of both; the CPU
a server needs for an instance moves less).

    python benchmarks/ingest.py [--slices N] [--repeat R] [--workdir DIR] [--no-orthanc]

Both servers write durably: pacs fsyncs every blob and every index commit
before answering; Orthanc is run with its defaults (SQLite index, files).
Needs Debian's ``dcmtk`` (storescu) and ``orthanc`` for the baseline rows.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.dicom_nodes import (
    LOCALHOST,
    ScaleBackends,
    free_port,
    orthanc_get,
    pacs_serve,
    process_tree_cpu,
    revision,
    send_files,
    send_files_storescu,
    start_orthanc,
    stop_process,
    wait_for_echo,
    wait_uploaded,
)
from benchmarks.phantom import generate_ct_series


@dataclass
class Server:
    name: str
    dicom_port: int
    ae_title: str
    process: subprocess.Popen[Any]
    count: Callable[[], int]


def start_pacs(workdir: Path) -> Server:
    dicom_port, http_port = free_port(), free_port()
    data_dir = workdir / "pacs-data"
    log = (workdir / "pacs.log").open("wb")
    process = pacs_serve(data_dir, dicom_port, http_port, log)
    log.close()
    wait_for_echo(LOCALHOST, dicom_port, "PACS", timeout=30)

    def count() -> int:
        with sqlite3.connect(data_dir / "index.sqlite") as db:
            return int(db.execute("SELECT count(*) FROM instances").fetchone()[0])

    return Server("pacs", dicom_port, "PACS", process, count)


def start_pacs_at_scale(backends: ScaleBackends) -> Callable[[Path], Server]:
    """pacs over PostgreSQL and S3 (with its upload spool, the default), a new
    database and bucket each run. ``count`` also waits for the spool to drain,
    and records how long that took."""

    def start(workdir: Path) -> Server:
        import psycopg

        dicom_port, http_port = free_port(), free_port()
        options, environment, index_url = backends.fresh()
        log = (workdir / "pacs.log").open("wb")
        process = pacs_serve(
            workdir / "pacs-data", dicom_port, http_port, log, *options, env=environment
        )
        log.close()
        wait_for_echo(LOCALHOST, dicom_port, "PACS", timeout=60)

        def count() -> int:
            DRAINED.append(wait_uploaded(http_port))
            with psycopg.connect(index_url) as db:
                row = db.execute("SELECT count(*) FROM instances").fetchone()
            return int(row[0]) if row else 0

        return Server("pacs S3+PG", dicom_port, "PACS", process, count)

    return start


DRAINED: list[float] = []
"""Seconds each S3 run's spool took to drain after the last acknowledgement."""


# A pynetdicom SCP that acknowledges and discards: the ceiling any pynetdicom-based
# archive can reach on this machine, whatever it does with the data.
_DISCARDING_SCP = """
import sys, time
from pydicom.uid import AllTransferSyntaxes
from pynetdicom import AE, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification
ae = AE("PACS")
ae.maximum_pdu_size = 1 << 20
ae.add_supported_context(Verification)
for context in AllStoragePresentationContexts:
    ae.add_supported_context(context.abstract_syntax, AllTransferSyntaxes)
count = [0]
def on_store(event):
    count[0] += 1
    return 0
def on_conn(event):
    import socket
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
ae.start_server(("127.0.0.1", int(sys.argv[1])), block=False,
                evt_handlers=[(evt.EVT_C_STORE, on_store), (evt.EVT_CONN_OPEN, on_conn)])
while True:
    time.sleep(0.2)
    open(sys.argv[2], "w").write(str(count[0]))
"""


def start_discarding_scp(workdir: Path) -> Server:
    port = free_port()
    counter = workdir / "count"
    process = subprocess.Popen(
        [sys.executable, "-c", _DISCARDING_SCP, str(port), str(counter)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_echo(LOCALHOST, port, "PACS", timeout=30)

    def count() -> int:
        time.sleep(0.3)
        return int(counter.read_text() or 0) if counter.exists() else 0

    return Server("discard", port, "PACS", process, count)


def start_orthanc_server(workdir: Path) -> Server:
    process = start_orthanc(workdir)
    return Server(
        "Orthanc",
        process.dicom_port,
        process.ae_title,
        process,
        lambda: len(orthanc_get(process, "/instances")),
    )


Sender = Callable[[Server], dict[str, Any]]


def run_once(
    workdir: Path, start: Callable[[Path], Server], send: Sender, expected: int
) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    server = start(workdir)
    try:
        cpu_before = process_tree_cpu(server.process.pid)
        result = send(server)
        # Before the count: Orthanc answers it over HTTP, which costs it CPU too.
        result["cpu_ms_per_instance"] = (
            1000 * (process_tree_cpu(server.process.pid) - cpu_before) / expected
        )
        deadline = time.monotonic() + 5
        stored = server.count()
        while stored < expected and time.monotonic() < deadline:
            time.sleep(0.25)
            stored = server.count()
        if stored != expected:
            result["failures"] = max(result["failures"], expected - stored)
        if result["failures"]:
            print(f"  {server.name}: {result['failures']} failures; {stored} stored", flush=True)
            for line in result.get("errors", [])[:5]:
                print(f"    sender: {line}", flush=True)
            for log in workdir.glob("*.log"):
                tail = log.read_text(errors="replace").splitlines()[-40:]
                print("\n".join(f"    {log.name}: {line}" for line in tail), flush=True)
        return result
    finally:
        stop_process(server.process)
        shutil.rmtree(workdir, ignore_errors=True)


README = Path(__file__).resolve().parent / "README.md"
BEGIN, END = "<!-- ingest:begin -->", "<!-- ingest:end -->"


def record(lines: list[str]) -> None:
    """Replace the ingest figures between the markers in benchmarks/README.md."""
    text = README.read_text()
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    README.write_text(head + BEGIN + "\n" + "\n".join(lines) + "\n" + END + tail)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, help="file system under test (default: /tmp)")
    parser.add_argument("--no-orthanc", action="store_true", help="measure pacs only")
    parser.add_argument("--no-scale", action="store_true", help="skip pacs over S3 and PostgreSQL")
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also measure a pynetdicom SCP that discards every instance (the ceiling)",
    )
    parser.add_argument("--senders", default="storescu1,storescu4,pynetdicom1,pynetdicom4")
    parser.add_argument(
        "--record", action="store_true", help="write the table into benchmarks/README.md"
    )
    args = parser.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="pacs-ingest-", dir=args.workdir))
    backends: ScaleBackends | None = None
    try:
        files = generate_ct_series(root / "phantom", slices=args.slices)
        megabytes = sum(f.stat().st_size for f in files) / 1e6
        phantom = root / "phantom"
        senders: dict[str, tuple[str, Sender]] = {
            "storescu1": (
                "storescu, 1 association",
                lambda s: send_files_storescu(LOCALHOST, s.dicom_port, s.ae_title, phantom),
            ),
            "storescu4": (
                "storescu, 4 associations",
                lambda s: send_files_storescu(LOCALHOST, s.dicom_port, s.ae_title, phantom, 4),
            ),
            "pynetdicom1": (
                "pynetdicom, 1 association",
                lambda s: send_files(LOCALHOST, s.dicom_port, s.ae_title, files, 1),
            ),
            "pynetdicom4": (
                "pynetdicom, 4 associations",
                lambda s: send_files(LOCALHOST, s.dicom_port, s.ae_title, files, 4),
            ),
        }
        servers: list[tuple[str, Callable[[Path], Server]]] = [("pacs", start_pacs)]
        backends = None if args.no_scale else ScaleBackends()
        if backends is not None:
            servers.append(("pacs S3+PG", start_pacs_at_scale(backends)))
        if not args.no_orthanc and shutil.which("Orthanc"):
            servers.append(("Orthanc", start_orthanc_server))
        if args.floor:
            servers.append(("discard", start_discarding_scp))

        table: dict[tuple[str, str], tuple[float, float, int]] = {}
        cpu_table: dict[tuple[str, str], float] = {}
        drained: dict[str, float] = {}
        for key in args.senders.split(","):
            label, send = senders[key]
            # The servers take turns run by run, so that a change in the machine's
            # load weighs on each alike.
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in servers}
            DRAINED.clear()
            for _ in range(args.repeat):
                for server_name, start in servers:
                    runs[server_name].append(run_once(root / "server", start, send, len(files)))
            if DRAINED:
                drained[label] = statistics.median(DRAINED)
            for server_name, _ in servers:
                results = runs[server_name]
                rate = statistics.median(r["instances_per_s"] for r in results)
                mbps = statistics.median(r["mb_per_s"] for r in results)
                failures = sum(r["failures"] for r in results)
                cpu = statistics.median(r["cpu_ms_per_instance"] for r in results)
                table[(label, server_name)] = (rate, mbps, failures)
                cpu_table[(label, server_name)] = cpu
                print(
                    f"  {server_name:8} {label:28} {rate:7.1f} inst/s {mbps:7.1f} MB/s"
                    f" {cpu:5.2f} ms CPU/instance failures={failures}",
                    flush=True,
                )

        lines = [
            f"C-STORE of a {len(files)}-slice CT ({megabytes:.1f} MB), median of"
            f" {args.repeat} runs, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')},"
            f" {revision()}"
            + (f"; S3: {backends.s3_kind}, PostgreSQL with fsync on" if backends else ""),
            "",
            "| sender | pacs inst/s | pacs MB/s | Orthanc inst/s | Orthanc MB/s | pacs/Orthanc"
            " | server CPU ms/instance, pacs / Orthanc"
            " | pynetdicom discarding inst/s | pacs S3+PG inst/s | S3+PG / filesystem+SQLite"
            " | S3+PG, all in S3 inst/s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for key in args.senders.split(","):
            label = senders[key][0]
            pacs = table.get((label, "pacs"))
            orthanc = table.get((label, "Orthanc"))
            if pacs is None:
                continue
            ratio = f"{pacs[0] / orthanc[0]:.2f}" if orthanc else "-"
            o_rate = f"{orthanc[0]:.0f}" if orthanc else "-"
            o_mb = f"{orthanc[1]:.0f}" if orthanc else "-"
            floor = table.get((label, "discard"))
            f_rate = f"{floor[0]:.0f}" if floor else "-"
            scale = table.get((label, "pacs S3+PG"))
            s_rate = f"{scale[0]:.0f}" if scale else "-"
            s_ratio = f"{scale[0] / pacs[0]:.2f}" if scale else "-"
            # Until the last upload: the spool's drain after the last acknowledgement.
            s_all = (
                f"{len(files) / (len(files) / scale[0] + drained[label]):.0f}"
                if scale and label in drained
                else "-"
            )
            o_cpu = cpu_table.get((label, "Orthanc"))
            cpu = f"{cpu_table[(label, 'pacs')]:.1f} / " + (f"{o_cpu:.1f}" if o_cpu else "-")
            lines.append(
                f"| {label} | {pacs[0]:.0f} | {pacs[1]:.0f} | {o_rate} | {o_mb} | {ratio}"
                f" | {cpu} | {f_rate} | {s_rate} | {s_ratio} | {s_all} |"
            )
        print("\n" + "\n".join(lines))
        if args.record:
            record(lines)
        return 1 if any(v[2] for v in table.values()) else 0
    finally:
        if backends is not None:
            backends.close()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

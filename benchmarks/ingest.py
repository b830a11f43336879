"""C-STORE ingest: pacs beside Orthanc, same data, same senders, same run.

Generates the deterministic 300-slice CT phantom (512x512, 16-bit), then for each
server and sender starts the server on empty storage, sends the series, checks
that every instance is really stored, and prints instances/s and MB/s (median of
``--repeat`` runs) with the pacs/Orthanc ratio.

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
    free_port,
    orthanc_get,
    send_files,
    send_files_storescu,
    start_orthanc,
    stop_process,
    wait_for_echo,
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
    process = subprocess.Popen(
        [
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
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    wait_for_echo(LOCALHOST, dicom_port, "PACS", timeout=30)

    def count() -> int:
        with sqlite3.connect(data_dir / "index.sqlite") as db:
            return int(db.execute("SELECT count(*) FROM instances").fetchone()[0])

    return Server("pacs", dicom_port, "PACS", process, count)


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
        result = send(server)
        deadline = time.monotonic() + 5
        stored = server.count()
        while stored < expected and time.monotonic() < deadline:
            time.sleep(0.25)
            stored = server.count()
        if stored != expected:
            result["failures"] = max(result["failures"], expected - stored)
        return result
    finally:
        stop_process(server.process)
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, help="file system under test (default: /tmp)")
    parser.add_argument("--no-orthanc", action="store_true", help="measure pacs only")
    parser.add_argument("--senders", default="storescu1,storescu4,pynetdicom1,pynetdicom4")
    args = parser.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="pacs-ingest-", dir=args.workdir))
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
        if not args.no_orthanc and shutil.which("Orthanc"):
            servers.append(("Orthanc", start_orthanc_server))

        table: dict[tuple[str, str], tuple[float, float, int]] = {}
        for key in args.senders.split(","):
            label, send = senders[key]
            for server_name, start in servers:
                results = [
                    run_once(root / "server", start, send, len(files)) for _ in range(args.repeat)
                ]
                rate = statistics.median(r["instances_per_s"] for r in results)
                mbps = statistics.median(r["mb_per_s"] for r in results)
                failures = sum(r["failures"] for r in results)
                table[(label, server_name)] = (rate, mbps, failures)
                print(
                    f"  {server_name:8} {label:28} {rate:7.1f} inst/s {mbps:7.1f} MB/s"
                    f" failures={failures}",
                    flush=True,
                )

        print(
            f"\nC-STORE of a {len(files)}-slice CT ({megabytes:.1f} MB), median of"
            f" {args.repeat}, {os.cpu_count()} cores"
        )
        print("| sender | pacs inst/s | pacs MB/s | Orthanc inst/s | Orthanc MB/s | ratio |")
        print("|---|---:|---:|---:|---:|---:|")
        for key in args.senders.split(","):
            label = senders[key][0]
            pacs = table.get((label, "pacs"))
            orthanc = table.get((label, "Orthanc"))
            if pacs is None:
                continue
            ratio = f"{pacs[0] / orthanc[0]:.2f}" if orthanc else "-"
            o_rate = f"{orthanc[0]:.0f}" if orthanc else "-"
            o_mb = f"{orthanc[1]:.0f}" if orthanc else "-"
            print(f"| {label} | {pacs[0]:.0f} | {pacs[1]:.0f} | {o_rate} | {o_mb} | {ratio} |")
        return 1 if any(v[2] for v in table.values()) else 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

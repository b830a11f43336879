"""Measure Orthanc's C-STORE ingest rate on the CT phantom (the baseline for pacs).

Generates the phantom series in a temporary directory, then for each sender
configuration starts a fresh Orthanc (empty storage, so every run stores the same
300 new instances), sends the series, checks Orthanc really holds every instance, and
prints a table of instances/s and MB/s (median over ``--repeat`` runs).

    python benchmarks/ingest_orthanc_check.py [--slices N] [--repeat R] [--workdir DIR]

``--workdir`` chooses the file system under test (Orthanc's storage and index go
there; compare the pacs server on the same one) and keeps the phantom files.

Requires the Debian packages ``orthanc`` and ``dcmtk`` (for the storescu row).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# Runnable both as `python benchmarks/ingest_orthanc_check.py` and as a module.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.dicom_nodes import (
    LOCALHOST,
    OrthancProcess,
    orthanc_get,
    send_files,
    send_files_storescu,
    start_orthanc,
    stop_process,
)
from benchmarks.phantom import generate_ct_series

Sender = Callable[[OrthancProcess], dict[str, Any]]


def stored_instances(proc: OrthancProcess, expected: int, patience: float = 5.0) -> int:
    """Number of instances Orthanc lists, polled briefly in case indexing lags."""
    deadline = time.monotonic() + patience
    while True:
        count = len(orthanc_get(proc, "/instances"))
        if count >= expected or time.monotonic() > deadline:
            return count
        time.sleep(0.5)


def run_once(workdir: Path, send: Sender, expected: int) -> dict[str, Any]:
    """Start an empty Orthanc in ``workdir``, run ``send`` against it, verify, stop.

    Success statuses are not taken on trust: the instances Orthanc actually lists are
    counted, and on a shortfall the tail of its log is kept with the errors.
    """
    proc = start_orthanc(workdir)
    try:
        result = send(proc)
        stored = stored_instances(proc, expected)
        if stored != expected:
            result["failures"] = max(result["failures"], expected - stored)
            log = proc.log_path.read_text(errors="replace").splitlines()[-20:]
            result.setdefault("errors", []).append(
                f"Orthanc lists {stored}/{expected} instances; log tail:\n" + "\n".join(log)
            )
        return result
    finally:
        stop_process(proc)
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Measure Orthanc C-STORE ingest on the CT phantom."
    )
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3, help="runs per configuration")
    parser.add_argument(
        "--workdir", type=Path, help="work here (default: a temporary directory, removed after)"
    )
    args = parser.parse_args(argv)

    root = args.workdir or Path(tempfile.mkdtemp(prefix="orthanc-ingest-"))
    try:
        start = time.perf_counter()
        files = generate_ct_series(root / "phantom", slices=args.slices)
        print(f"generated {len(files)} slices in {time.perf_counter() - start:.2f} s")

        configs: list[tuple[str, Sender]] = [
            (
                "pynetdicom, 1 association",
                lambda p: send_files(LOCALHOST, p.dicom_port, p.ae_title, files, 1),
            ),
            (
                "pynetdicom, 4 associations",
                lambda p: send_files(LOCALHOST, p.dicom_port, p.ae_title, files, 4),
            ),
            (
                "storescu, 1 association",
                lambda p: send_files_storescu(
                    LOCALHOST, p.dicom_port, p.ae_title, root / "phantom"
                ),
            ),
            (
                "storescu, 4 processes",
                lambda p: send_files_storescu(
                    LOCALHOST, p.dicom_port, p.ae_title, root / "phantom", 4
                ),
            ),
        ]
        if shutil.which("storescu") is None:
            configs = [c for c in configs if not c[0].startswith("storescu")]
            print("storescu not found: skipping the DCMTK rows")

        rows = []
        for name, send in configs:
            results = []
            for i in range(args.repeat):
                r = run_once(root / "orthanc", send, len(files))
                results.append(r)
                print(
                    f"  {name} run {i + 1}: {r['instances_per_s']:.1f} inst/s, "
                    f"{r['seconds']:.2f} s, {r['failures']} failed",
                    flush=True,
                )
                for error in r.get("errors", []):
                    print(f"    {error}", file=sys.stderr)
            rates = [r["instances_per_s"] for r in results]
            rows.append(
                (
                    name,
                    statistics.median(rates),
                    statistics.median(r["mb_per_s"] for r in results),
                    min(rates),
                    max(rates),
                    sum(r["failures"] for r in results),
                )
            )

        mb = sum(f.stat().st_size for f in files) / 1e6
        print(
            f"\nOrthanc C-STORE ingest, {len(files)} instances ({mb:.1f} MB), "
            f"median of {args.repeat} run(s), fresh storage per run in {root}"
        )
        header = f"{'sender':<28} {'inst/s':>8} {'MB/s':>8} {'min':>8} {'max':>8} {'fail':>5}"
        print(header)
        print("-" * len(header))
        for name, rate, mbps, low, high, fail in rows:
            print(f"{name:<28} {rate:>8.1f} {mbps:>8.1f} {low:>8.1f} {high:>8.1f} {fail:>5}")
        return 1 if any(row[-1] for row in rows) else 0
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

"""Several processes serve one DICOM port: connections are dealt between them."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from tests.conftest import start_server, stop_server
from tests.dicom_factory import make_ct


def _store_one(port: int, index: int) -> int:
    dataset = make_ct(study=1, series=1, instance=index)
    ae = AE(ae_title=f"MOD{index % 10}")
    ae.add_requested_context(CTImageStorage, dataset.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
    assert assoc.is_established
    status = assoc.send_c_store(dataset)
    assoc.release()
    return int(status.Status)


def _children(pid: int, pattern: str = "") -> list[int]:
    command = ["pgrep", "-P", str(pid), *(["-f", pattern] if pattern else [])]
    found = subprocess.run(command, capture_output=True, text=True)
    return [int(child) for child in found.stdout.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _instance_count(data_dir: Path) -> int:
    with sqlite3.connect(data_dir / "index.sqlite") as db:
        return int(db.execute("SELECT count(*) FROM instances").fetchone()[0])


def test_associations_are_shared_between_processes(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", "--dicom-processes", "3", "--log-level", "info")
    try:
        workers = _children(server.process.pid, "spawn_main")
        assert len(workers) == 2
        statuses = [_store_one(server.dicom_port, i) for i in range(1, 13)]
        assert statuses == [0] * 12
        assert _instance_count(server.data_dir) == 12
        # Each association is one line when it closes, from the process that served it.
        summary = re.compile(r" (MainProcess|pacs-dicom-worker-\d) pacs\.dimse\.scp: C-STORE from")
        deadline = time.monotonic() + 10
        while len(summary.findall(server.log())) < 12 and time.monotonic() < deadline:
            time.sleep(0.05)
        serving = summary.findall(server.log())
        assert len(serving) == 12, server.log()
        assert set(serving) == {"MainProcess", "pacs-dicom-worker-1", "pacs-dicom-worker-2"}
    finally:
        stop_server(server)
    # Workers leave with the main process.
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in workers)


def test_a_dead_worker_is_replaced_and_nothing_is_lost(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", "--dicom-processes", "2")
    try:
        workers = _children(server.process.pid, "spawn_main")
        assert workers, "expected a worker process"
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
        statuses = [_store_one(server.dicom_port, i) for i in range(1, 7)]
        assert statuses == [0] * 6
        assert _instance_count(server.data_dir) == 6
        replacements = _children(server.process.pid, "spawn_main")
        assert replacements and not set(replacements) & set(workers)
        assert "was replaced" in server.log()
    finally:
        stop_server(server)

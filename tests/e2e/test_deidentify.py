"""``pacs deidentify``, run as the operator runs it, against a running ``pacs serve``.

The study goes in over C-STORE; the command reads it from the server's data
folder (while the server runs) and writes files that DCMTK's ``dcmdump`` reads,
or sends them to DCMTK's ``storescp``.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import SecondaryCaptureImageStorage

from pacs.index import SqliteIndex
from pacs.index.access import AuditQuery
from tests.conftest import (
    PYDICOM_TEST_FILES,
    ServerProcess,
    get_port,
    start_server,
    stop_server,
)
from tests.dicom_clients import association, store_all
from tests.e2e.test_query_retrieve import Storescp
from tests.unit.test_deidentify import representative

SECRETS = ("Doe", "PID-12345", "Provincial", "Smith", "19700315")
COMPRESSED = "MR_small_jp2klossless.dcm"  # JPEG 2000 lossless


def run_deidentify(
    server: ServerProcess, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PACS_")}
    return subprocess.run(
        [sys.executable, "-m", "pacs", "deidentify", "--data-dir", str(server.data_dir), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**clean, **(env or {})},
    )


def study() -> list[Dataset]:
    """Two series of two slices, each referring to the first slice of the study."""
    return [representative(instance=i, series=s, study="e2e") for s in (1, 2) for i in (1, 2)]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_server(tmp_path_factory.mktemp("deid") / "pacs-data")
    try:
        store_all(server, study(), ae_title="CT_NORTH")
        capture = representative(study="capture")
        capture.SOPClassUID = SecondaryCaptureImageStorage
        del capture.BurnedInAnnotation  # a screen capture that does not vouch for its pixels
        store_all(server, [capture], ae_title="WORKSTATION")
        compressed = pydicom.dcmread(PYDICOM_TEST_FILES / COMPRESSED)
        syntax = str(compressed.file_meta.TransferSyntaxUID)
        contexts = [(str(compressed.SOPClassUID), syntax)]
        with association(server, contexts, ae_title="MR_SOUTH") as assoc:
            assert assoc.send_c_store(compressed).Status == 0
        yield server
    finally:
        stop_server(server)


def read_all(folder: Path) -> list[Dataset]:
    return [pydicom.dcmread(path) for path in sorted(folder.rglob("*.dcm"))]


def test_a_study_to_a_folder_then_to_a_node_with_the_same_map(
    server: ServerProcess, tmp_path: Path
) -> None:
    originals = study()
    uid = originals[0].StudyInstanceUID
    out, mapping = tmp_path / "out", tmp_path / "keep" / "map.json"
    result = run_deidentify(
        server, "--study", uid, "--to", str(out), "--mapping", str(mapping), "--dates", "shift"
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert "4 of 4 instances written" in result.stdout and "0 failed" in result.stdout
    # The export is in the audit trail, with the study's patient.
    index = SqliteIndex(server.data_dir / "index.sqlite")
    try:
        (export,) = index.audit(AuditQuery(action="deidentify", study_uid=uid))
    finally:
        index.close()
    assert export.outcome == "success" and export.patient_id == "PID-12345"
    assert str(out) in export.detail

    files = sorted(out.rglob("*.dcm"))
    assert len(files) == 4
    written = read_all(out)
    (new_study,) = {ds.StudyInstanceUID for ds in written}
    assert len({ds.SeriesInstanceUID for ds in written}) == 2
    for path, ds in zip(files, written, strict=True):
        # DIR/STUDY/SERIES/INSTANCE.dcm, named by the new UIDs
        assert path.relative_to(out).parts == (
            new_study,
            ds.SeriesInstanceUID,
            f"{ds.SOPInstanceUID}.dcm",
        )
        dump = subprocess.run(["dcmdump", str(path)], capture_output=True, text=True, timeout=30)
        assert dump.returncode == 0 and "E:" not in dump.stderr, dump.stderr
        assert "PatientIdentityRemoved" in dump.stdout
        data = path.read_bytes()
        for secret in (*SECRETS, uid):
            assert secret.encode() not in data, (secret, path)
        assert ds.LongitudinalTemporalInformationModified == "MODIFIED"

    # The map re-identifies: it names the originals and their replacements.
    assert stat.S_IMODE(mapping.stat().st_mode) == 0o600
    kept = json.loads(mapping.read_text())
    assert kept["uids"][uid] == new_study
    assert kept["patients"]["PID-12345"]["patient_id"] == written[0].PatientID
    by_original = {ds.SOPInstanceUID: ds for ds in originals}
    by_new = {ds.SOPInstanceUID: ds for ds in written}
    for original_uid, original in by_original.items():
        copy = by_new[kept["uids"][original_uid]]
        assert copy.PixelData == original.PixelData
        # Every slice refers to the study's first slice: the reference follows it.
        reference = copy.ReferencedImageSequence[0].ReferencedSOPInstanceUID
        assert reference == kept["uids"][originals[0].SOPInstanceUID]

    # To a configured node, with the same map: the same UIDs arrive.
    port = get_port()
    received = tmp_path / "received"
    received.mkdir()
    storescp = Storescp(port, received, "+xa")
    try:
        result = run_deidentify(
            server,
            "--study",
            uid,
            "--node",
            "DEST",
            "--mapping",
            str(mapping),
            "--dates",
            "shift",
            env={"PACS_NODES": f"DEST@127.0.0.1:{port}"},
        )
    finally:
        storescp.stop()
    assert result.returncode == 0, result.stderr + result.stdout
    assert result.stdout.count("status 0x0000") == 4
    assert "4 of 4 instances sent to DEST@127.0.0.1" in result.stdout
    # storescp names its files MODALITY.UID, without a suffix
    arrived = {ds.SOPInstanceUID: ds for ds in map(pydicom.dcmread, received.iterdir())}
    assert set(arrived) == set(by_new)
    for sop_uid, ds in arrived.items():
        assert ds.PixelData == by_new[sop_uid].PixelData
        assert ds.PatientIdentityRemoved == "YES"


def test_burned_in_annotation_refuses_the_study_unless_allowed(
    server: ServerProcess, tmp_path: Path
) -> None:
    uid = representative(study="capture").StudyInstanceUID
    out = tmp_path / "out"
    result = run_deidentify(server, "--study", uid, "--to", str(out))
    assert result.returncode == 1
    assert "refused" in result.stderr and "Secondary Capture" in result.stderr
    assert "--allow-burned-in" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists() or not list(out.rglob("*"))

    result = run_deidentify(server, "--study", uid, "--to", str(out), "--allow-burned-in")
    assert result.returncode == 0, result.stderr
    assert "warning: pixel data may show patient identity" in result.stdout
    (written,) = read_all(out)
    assert written.PixelData == representative(study="capture").PixelData


def test_a_node_that_takes_only_uncompressed_gets_the_image_decoded(
    server: ServerProcess, tmp_path: Path
) -> None:
    original = pydicom.dcmread(PYDICOM_TEST_FILES / COMPRESSED)
    port, received = get_port(), tmp_path / "received"
    received.mkdir()
    storescp = Storescp(port, received)  # DCMTK's default: uncompressed syntaxes only
    try:
        result = run_deidentify(
            server, "--study", original.StudyInstanceUID, "--node", f"DEST@127.0.0.1:{port}"
        )
    finally:
        storescp.stop()
    assert result.returncode == 0, result.stderr + result.stdout
    (path,) = received.iterdir()
    arrived = pydicom.dcmread(path)
    assert not arrived.file_meta.TransferSyntaxUID.is_compressed
    assert (arrived.pixel_array == original.pixel_array).all()  # lossless: the same values
    assert arrived.PatientIdentityRemoved == "YES"
    assert arrived.SOPInstanceUID != original.SOPInstanceUID


def test_errors_are_one_line_and_exit_non_zero(server: ServerProcess, tmp_path: Path) -> None:
    result = run_deidentify(server, "--study", "1.2.3.4", "--to", str(tmp_path / "out"))
    assert result.returncode == 1 and "no study 1.2.3.4" in result.stderr
    uid = study()[0].StudyInstanceUID
    dead = f"DEST@127.0.0.1:{get_port()}"
    result = run_deidentify(server, "--study", uid, "--node", dead)
    assert result.returncode == 1 and "cannot associate with" in result.stderr
    assert "Traceback" not in result.stderr

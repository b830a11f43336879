"""``pacs import``: the bulk loader, run as the operator runs it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pydicom

from tests.conftest import PYDICOM_TEST_FILES, start_server, stop_server
from tests.dicom_factory import blob_files, incoming_files, query

GOOD = ["CT_small.dcm", "rtplan.dcm", "waveform_ecg.dcm"]


def run_import(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACS_")}
    return subprocess.run(
        [sys.executable, "-m", "pacs", "import", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=env,
    )


def summary_counts(stdout: str) -> dict[str, int]:
    first = stdout.splitlines()[0]
    match = re.fullmatch(
        r"Imported (\d+) files: (\d+) stored, (\d+) duplicate \(.*\), (\d+) conflicting \(.*\),"
        r" (\d+) skipped, (\d+) rejected\.",
        first,
    )
    assert match, first
    keys = ("files", "stored", "duplicate", "conflicting", "skipped", "rejected")
    return dict(zip(keys, map(int, match.groups()), strict=True))


def detail_lines(stdout: str) -> dict[str, str]:
    """File name to its reason line, for every file the summary lists."""
    lines = {}
    for line in stdout.splitlines()[1:]:
        path, _, reason = line.strip().partition(": ")
        lines[Path(path).name] = reason
    return lines


def make_folder(root: Path) -> Path:
    folder = root / "incoming"
    (folder / "more").mkdir(parents=True)
    for name in GOOD:
        shutil.copy(PYDICOM_TEST_FILES / name, folder / name)
    shutil.copy(PYDICOM_TEST_FILES / "CT_small.dcm", folder / "more" / "CT_small_again.dcm")
    (folder / "notes.txt").write_text("Patient arrived at 10:15.\nNot a DICOM file.\n")
    data = (PYDICOM_TEST_FILES / "rtstruct.dcm").read_bytes()
    (folder / "more" / "cut.dcm").write_bytes(data[: len(data) // 2])
    return folder


def test_import_reports_every_file_and_stores_the_good_ones(tmp_path: Path) -> None:
    folder = make_folder(tmp_path)
    data_dir = tmp_path / "pacs-data"
    result = run_import(str(folder), "--data-dir", str(data_dir), cwd=tmp_path)

    assert result.returncode == 1, result  # some files were rejected
    assert "Traceback" not in result.stderr
    assert summary_counts(result.stdout) == {
        "files": 6,
        "stored": 3,
        "duplicate": 1,
        "conflicting": 0,
        "skipped": 0,
        "rejected": 2,
    }
    details = detail_lines(result.stdout)
    assert set(details) == {"notes.txt", "cut.dcm"}  # only the problems are listed
    assert details["notes.txt"].startswith("rejected: ") and "malformed" in details["notes.txt"]
    assert details["cut.dcm"].startswith("rejected: malformed data set at byte ")
    assert str(folder / "more" / "cut.dcm") in result.stdout  # full path, to find the file

    expected = {pydicom.dcmread(PYDICOM_TEST_FILES / n).SOPInstanceUID for n in GOOD}
    rows = query(
        data_dir / "index.sqlite", "SELECT sop_instance_uid, source_ae_title FROM instances"
    )
    assert {r[0] for r in rows} == expected
    assert len(blob_files(data_dir / "blobs")) == 3
    assert incoming_files(data_dir / "blobs") == []

    # Importing again changes nothing: every good file is now a duplicate.
    again = run_import(str(folder), "--data-dir", str(data_dir), "--workers", "1", cwd=tmp_path)
    assert again.returncode == 1
    assert summary_counts(again.stdout)["stored"] == 0
    assert summary_counts(again.stdout)["duplicate"] == 4
    assert len(blob_files(data_dir / "blobs")) == 3

    # and a server opened on the folder serves what was imported
    server = start_server(data_dir)
    try:
        assert server.system()["counts"] == {
            "patients": 3,
            "studies": 3,
            "series": 3,
            "instances": 3,
        }
    finally:
        stop_server(server)


def test_import_of_good_files_exits_0_and_names_conflicts(tmp_path: Path) -> None:
    folder = tmp_path / "good"
    folder.mkdir()
    # same SOP Instance UID, different encoding: one is stored, the other reported
    shutil.copy(PYDICOM_TEST_FILES / "MR_small.dcm", folder / "MR_small.dcm")
    shutil.copy(PYDICOM_TEST_FILES / "MR_small_implicit.dcm", folder / "MR_small_implicit.dcm")
    shutil.copy(PYDICOM_TEST_FILES / "CT_small.dcm", folder / "CT_small.dcm")
    data_dir = tmp_path / "pacs-data"
    result = run_import(str(folder), "--data-dir", str(data_dir), cwd=tmp_path)
    assert result.returncode == 0, result
    assert summary_counts(result.stdout) == {
        "files": 3,
        "stored": 2,
        "duplicate": 0,
        "conflicting": 1,
        "skipped": 0,
        "rejected": 0,
    }
    details = detail_lines(result.stdout)
    assert len(details) == 1
    ((name, reason),) = details.items()
    assert name in {"MR_small.dcm", "MR_small_implicit.dcm"}
    assert reason.startswith("conflict: ")
    assert len(query(data_dir / "index.sqlite", "SELECT 1 FROM instances")) == 2


def test_import_of_a_missing_path_is_a_rejection(tmp_path: Path) -> None:
    result = run_import(
        str(tmp_path / "nowhere.dcm"), "--data-dir", str(tmp_path / "d"), cwd=tmp_path
    )
    assert result.returncode == 1
    assert summary_counts(result.stdout)["rejected"] == 1
    assert "nowhere.dcm: rejected: cannot read" in result.stdout

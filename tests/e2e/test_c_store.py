"""C-STORE end to end: a real ``pacs serve`` process, pynetdicom and DCMTK as clients.

Every check looks at what the server actually left behind: the SQLite index
(read with ``sqlite3``), the blob files (read with pydicom) and ``GET /system``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import re
import shutil
import socket
import struct
import subprocess
import threading
import time
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from blake3 import blake3
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
    SecondaryCaptureImageStorage,
)
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import split_dataset
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from tests import dicom_clients
from tests.conftest import (
    PYDICOM_TEST_FILES,
    ServerProcess,
    bundled_dicom_files,
    mounted_tmpfs,
    resize_tmpfs,
    start_server,
    stop_server,
)
from tests.dicom_clients import raw_sending
from tests.dicom_factory import (
    blob_files,
    encode,
    incoming_files,
    lenient_values,
    make_ct,
    query,
    uid,
    well_formed,
    write_part10,
)

CALLING_AE = "TESTSCU"
SUCCESS = 0x0000
DUPLICATE_SOP_INSTANCE = 0x0111
DATA_SET_DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
STORAGE_CLASSES = frozenset(c.abstract_syntax for c in AllStoragePresentationContexts)
# PS3.5 9.1 shape, with leading zeros tolerated (the archive's documented policy).
UID_SHAPE = re.compile(r"[0-9]+(\.[0-9]+)*")
REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")


# -- helpers -------------------------------------------------------------------


association = functools.partial(dicom_clients.association, ae_title=CALLING_AE)


def store(server: ServerProcess, dataset: Dataset) -> int:
    """One C-STORE of ``dataset`` (encoded by pynetdicom) in its own association."""
    ts = dataset.file_meta.TransferSyntaxUID
    with association(server, [(dataset.SOPClassUID, ts)]) as assoc:
        status = assoc.send_c_store(dataset)
    assert "Status" in status, "no C-STORE response"
    return int(status.Status)


def store_raw(
    server: ServerProcess,
    tmp_path: Path,
    raw: bytes,
    *,
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax_uid: str = ExplicitVRLittleEndian,
) -> int:
    return int(
        send_raw(
            server,
            tmp_path,
            raw,
            sop_class_uid=sop_class_uid,
            sop_instance_uid=sop_instance_uid,
            transfer_syntax_uid=transfer_syntax_uid,
        ).Status
    )


def send_raw(
    server: ServerProcess,
    tmp_path: Path,
    raw: bytes,
    *,
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax_uid: str = ExplicitVRLittleEndian,
) -> Dataset:
    """Send arbitrary encoded bytes as the data set of a C-STORE request."""
    path = write_part10(
        tmp_path / f"raw-{hashlib.sha256(raw).hexdigest()[:12]}.dcm",
        sop_class_uid,
        sop_instance_uid,
        transfer_syntax_uid,
        raw,
    )
    with raw_sending(), association(server, [(sop_class_uid, transfer_syntax_uid)]) as assoc:
        response = assoc.send_c_store(path)
    assert "Status" in response, "no C-STORE response"
    return response


def echo(server: ServerProcess) -> int:
    with association(server, [(Verification, None)]) as assoc:
        status = assoc.send_c_echo()
    return int(status.Status)


def index_path(server: ServerProcess) -> Path:
    return server.data_dir / "index.sqlite"


def blob_dir(server: ServerProcess) -> Path:
    return server.data_dir / "blobs"


def instance_row(server: ServerProcess, sop_instance_uid: str) -> dict[str, object]:
    rows = query(
        index_path(server),
        "SELECT * FROM instances WHERE sop_instance_uid = ?",
        (sop_instance_uid,),
    )
    assert len(rows) == 1, f"{len(rows)} index rows for {sop_instance_uid}"
    return dict(rows[0])


def stored_blob(server: ServerProcess, sop_instance_uid: str) -> Path:
    path = blob_dir(server) / str(instance_row(server, sop_instance_uid)["blob_key"])
    assert path.is_file()
    return path


def blobs_of(server: ServerProcess, sop_instance_uid: str) -> list[Path]:
    """Blob files on disk that belong to one SOP Instance UID, whatever their key."""
    return [p for p in blob_files(blob_dir(server)) if p.name.startswith(sop_instance_uid + ".")]


def table_counts(server: ServerProcess) -> dict[str, int]:
    db = index_path(server)
    return {
        table: int(query(db, f"SELECT count(*) FROM {table}")[0][0])
        for table in ("patients", "studies", "series", "instances")
    }


def dataset_bytes(part10: Path) -> bytes:
    """Everything after the file meta of a Part 10 file."""
    _, offset = split_dataset(part10)
    return part10.read_bytes()[offset:]


TRAILING_PADDING = 0xFFFCFFFC


def assert_same_dataset(
    stored: Dataset, original: Dataset, what: str, *, resent_by_dcmtk: bool = False
) -> None:
    """Every element except the file meta, then the pixel data bytes.

    DCMTK, when it re-encodes a file to send it, drops Data Set Trailing Padding
    and writes encapsulated Pixel Data as OB where some files say OW (PS3.5
    A.4 requires OB): those two differences are storescu's, not the archive's.
    """
    original_tags = set(original.keys())
    if resent_by_dcmtk:
        original_tags.discard(TRAILING_PADDING)
    assert sorted(stored.keys()) == sorted(original_tags), what
    for tag in original_tags:
        element = original[tag]
        if resent_by_dcmtk and element.keyword == "PixelData":
            continue  # compared by value below
        assert stored[tag] == element, f"{what}: {element.tag} differs"
    if "PixelData" in original:
        assert stored.PixelData == original.PixelData, f"{what}: pixel data differs"


def expected_study_rows(first_copies: list[Dataset]) -> dict[str, dict[str, object]]:
    """Study counters and summaries as the index should hold them.

    A series keeps the Modality of the instance that created it; the
    instances are the stored (first) copies.
    """
    series_modality: dict[str, str] = {}
    instances: dict[str, int] = {}
    series: dict[str, set[str]] = {}
    classes: dict[str, set[str]] = {}
    for ds in first_copies:
        study = ds.StudyInstanceUID
        series_modality.setdefault(ds.SeriesInstanceUID, str(ds.get("Modality", "") or "").strip())
        instances[study] = instances.get(study, 0) + 1
        series.setdefault(study, set()).add(ds.SeriesInstanceUID)
        classes.setdefault(study, set()).add(str(ds.SOPClassUID))
    result: dict[str, dict[str, object]] = {}
    for study, count in instances.items():
        modalities = sorted({series_modality[s] for s in series[study]} - {""})
        result[study] = {
            "number_of_study_related_instances": count,
            "number_of_study_related_series": len(series[study]),
            "modalities_in_study": "\\".join(modalities) or None,
            "sop_classes_in_study": "\\".join(sorted(classes[study])),
        }
    return result


def _run_server(
    tmp_path_factory: pytest.TempPathFactory, name: str, *extra: str
) -> Iterator[ServerProcess]:
    server = start_server(tmp_path_factory.mktemp(name) / "pacs-data", *extra)
    try:
        yield server
    finally:
        stop_server(server)


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Default settings; tests on it only look at their own UIDs."""
    yield from _run_server(tmp_path_factory, "shared")


# -- every bundled pydicom file, with pynetdicom ---------------------------------


@dataclass
class Case:
    """One bundled file, what to send for it and what the archive must answer."""

    path: Path
    send_path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    raw: bytes
    dataset: Dataset | None
    expected: int
    why: str


def _detected_syntax(ds: Dataset) -> str:
    implicit, little = ds.original_encoding
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def _valid_uid(value: object) -> bool:
    text = str(value or "")
    return 0 < len(text) <= 64 and bool(UID_SHAPE.fullmatch(text))


def classify(path: Path, scratch: Path) -> Case:
    """Work out, from the file alone, what the request is and which status is due."""
    data = path.read_bytes()
    try:
        meta, offset = split_dataset(path)
    except Exception:  # no preamble: a bare data set
        meta, offset = None, 0
    raw = data[offset:]
    try:
        dataset: Dataset | None = pydicom.dcmread(path, force=True)
    except Exception:
        dataset = None

    complete_meta = meta is not None and all(
        meta.get(keyword)
        for keyword in (
            "MediaStorageSOPClassUID",
            "MediaStorageSOPInstanceUID",
            "TransferSyntaxUID",
        )
    )
    if complete_meta:
        assert meta is not None
        sop_class = str(meta.MediaStorageSOPClassUID)
        sop_instance = str(meta.MediaStorageSOPInstanceUID)
        ts = str(meta.TransferSyntaxUID)
        send_path = path
    else:
        # No usable meta: wrap the data set's own bytes in one, so that it is sent
        # in the encoding it is stored in, under the SOP class it claims.
        ts = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
        if not ts:
            ts = _detected_syntax(dataset) if dataset is not None else ImplicitVRLittleEndian
        claimed = str(dataset.get("SOPClassUID", "") or "") if dataset is not None else ""
        sop_class = claimed if claimed in STORAGE_CLASSES else SecondaryCaptureImageStorage
        claimed_instance = (
            str(dataset.get("SOPInstanceUID", "") or "") if dataset is not None else ""
        )
        sop_instance = (
            claimed_instance if _valid_uid(claimed_instance) else uid("unnamed", path.name)
        )
        send_path = write_part10(scratch / path.name, sop_class, sop_instance, ts, raw)

    if not well_formed(raw, ts) or dataset is None:
        expected, why = CANNOT_UNDERSTAND, "malformed or truncated encoding"
    elif missing := [k for k in REQUIRED_UIDS if not _valid_uid(dataset.get(k))]:
        expected, why = CANNOT_UNDERSTAND, f"missing or invalid {', '.join(missing)}"
    elif dataset.SOPClassUID != sop_class or dataset.SOPInstanceUID != sop_instance:
        expected, why = DATA_SET_DOES_NOT_MATCH, "data set UIDs differ from the request"
    else:
        expected, why = SUCCESS, "valid"
    return Case(path, send_path, sop_class, sop_instance, ts, raw, dataset, expected, why)


@pytest.fixture
def bulk_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from _run_server(tmp_path_factory, "bulk")


def test_every_bundled_file_over_pynetdicom(bulk_server: ServerProcess, tmp_path: Path) -> None:
    files = bundled_dicom_files()
    assert len(files) > 50, "pydicom's bundled test files are missing"
    cases = [classify(path, tmp_path) for path in files]
    # The corpus must exercise every branch, or the test proves less than it claims.
    assert {c.expected for c in cases} >= {SUCCESS, CANNOT_UNDERSTAND}
    names = {c.path.name: c for c in cases}
    assert names["MR_truncated.dcm"].expected == CANNOT_UNDERSTAND
    assert names["rtplan_truncated.dcm"].expected == CANNOT_UNDERSTAND
    assert names["JPEGLSNearLossless_08.dcm"].expected == CANNOT_UNDERSTAND

    contexts = sorted({(c.sop_class_uid, c.transfer_syntax_uid) for c in cases})
    assert len(contexts) <= 128
    statuses: dict[str, int] = {}
    with raw_sending(), association(bulk_server, [(a, t) for a, t in contexts]) as assoc:
        for case in cases:
            response = assoc.send_c_store(case.send_path)
            assert "Status" in response, f"no response for {case.path.name}"
            statuses[case.path.name] = int(response.Status)

    wrong = {
        c.path.name: (hex(statuses[c.path.name]), hex(c.expected), c.why)
        for c in cases
        if statuses[c.path.name] != c.expected
    }
    assert not wrong, f"unexpected statuses (got, expected, why): {wrong}\n{bulk_server.log()}"

    # The first valid copy of each SOP Instance UID is the one kept.
    first: dict[str, Case] = {}
    for case in cases:
        if case.expected == SUCCESS:
            first.setdefault(case.sop_instance_uid, case)
    assert len(first) < sum(c.expected == SUCCESS for c in cases), "no shared UIDs in corpus"

    db = index_path(bulk_server)
    rows = {r["sop_instance_uid"]: dict(r) for r in query(db, "SELECT * FROM instances")}
    assert set(rows) == set(first)
    assert len(blob_files(blob_dir(bulk_server))) == len(first)
    assert incoming_files(blob_dir(bulk_server)) == []

    for sop_instance_uid, case in first.items():
        row = rows[sop_instance_uid]
        assert row["transfer_syntax_uid"] == case.transfer_syntax_uid, case.path.name
        assert row["content_hash"] == "blake3:" + blake3(case.raw).hexdigest(), case.path.name
        assert row["source_ae_title"] == CALLING_AE
        blob = blob_dir(bulk_server) / str(row["blob_key"])
        assert row["size"] == blob.stat().st_size
        # Stored exactly as received: the bytes after the new file meta are the file's.
        assert dataset_bytes(blob) == case.raw, case.path.name
        stored = pydicom.dcmread(blob)
        assert stored.file_meta.MediaStorageSOPInstanceUID == sop_instance_uid
        assert stored.file_meta.MediaStorageSOPClassUID == case.sop_class_uid
        assert stored.file_meta.TransferSyntaxUID == case.transfer_syntax_uid
        assert stored.file_meta.SourceApplicationEntityTitle == CALLING_AE
        assert case.dataset is not None
        assert_same_dataset(stored, case.dataset, case.path.name)
        # Later copies with other content did not replace it.
        assert blobs_of(bulk_server, sop_instance_uid) == [blob]

    first_copies = [c.dataset for c in first.values() if c.dataset is not None]
    study_rows = {r["study_instance_uid"]: dict(r) for r in query(db, "SELECT * FROM studies")}
    expected_studies = expected_study_rows(first_copies)
    assert set(study_rows) == set(expected_studies)
    for study, expected in expected_studies.items():
        actual = {key: study_rows[study][key] for key in expected}
        assert actual == expected, study

    per_series: dict[str, int] = {}
    for ds in first_copies:
        per_series[ds.SeriesInstanceUID] = per_series.get(ds.SeriesInstanceUID, 0) + 1
    series_rows = {
        r["series_instance_uid"]: r["number_of_series_related_instances"]
        for r in query(db, "SELECT * FROM series")
    }
    assert series_rows == per_series

    # A study belongs to the patient of the instance that created it.
    patients = set()
    seen_studies: set[str] = set()
    for ds in first_copies:
        if ds.StudyInstanceUID not in seen_studies:
            seen_studies.add(ds.StudyInstanceUID)
            patients.add(
                (
                    str(ds.get("PatientID", "") or "").strip(),
                    str(ds.get("IssuerOfPatientID", "") or "").strip(),
                )
            )
    expected_counts = {
        "patients": len(patients),
        "studies": len(expected_studies),
        "series": len(per_series),
        "instances": len(first),
    }
    assert table_counts(bulk_server) == expected_counts
    assert bulk_server.system()["counts"] == expected_counts
    assert echo(bulk_server) == SUCCESS


# -- DCMTK's storescu ------------------------------------------------------------

# One file per transfer syntax, all with distinct SOP Instance UIDs, and the
# storescu option that makes it propose that syntax (so nothing is transcoded).
STORESCU_FILES = [
    ("-xi", "rtplan.dcm"),
    ("-xb", "ExplVR_BigEnd.dcm"),
    ("-xy", "SC_rgb_small_odd_jpeg.dcm"),
    ("-xx", "JPEG-lossy.dcm"),
    ("-xs", "SC_rgb_jpeg_gdcm.dcm"),
    ("-xv", "examples_jpeg2k.dcm"),
    ("-xw", "JPEG2000.dcm"),
    ("-xt", "MR_small_jpeg_ls_lossless.dcm"),
    ("-xd", "image_dfl.dcm"),
]
# Sent with +sd (directory scan), default proposal (uncompressed syntaxes).
STORESCU_FOLDER = ["CT_small.dcm", "examples_overlay.dcm", "test-SR.dcm", "waveform_ecg.dcm"]

needs_storescu = pytest.mark.skipif(
    shutil.which("storescu") is None, reason="DCMTK's storescu is not installed"
)


@pytest.fixture(scope="module")
def storescu_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from _run_server(tmp_path_factory, "storescu")


def storescu(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [
            "storescu",
            "-aet",
            "DCMTKSCU",
            "-aec",
            server.ae_title,
            *args[:-1],
            "127.0.0.1",
            str(server.dicom_port),
            args[-1],
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"storescu {args}: {result.stderr}\n{server.log()}"
    return result


def assert_stored_like(server: ServerProcess, original_path: Path) -> None:
    original = pydicom.dcmread(original_path)
    row = instance_row(server, original.SOPInstanceUID)
    # storescu proposed the file's own syntax: nothing was transcoded.
    assert row["transfer_syntax_uid"] == original.file_meta.TransferSyntaxUID, original_path.name
    assert row["source_ae_title"] == "DCMTKSCU"
    stored = pydicom.dcmread(stored_blob(server, original.SOPInstanceUID))
    assert stored.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert_same_dataset(stored, original, original_path.name, resent_by_dcmtk=True)


@needs_storescu
@pytest.mark.parametrize(("option", "name"), STORESCU_FILES, ids=[n for _, n in STORESCU_FILES])
def test_storescu_stores_each_transfer_syntax_unchanged(
    storescu_server: ServerProcess, option: str, name: str
) -> None:
    path = PYDICOM_TEST_FILES / name
    storescu(storescu_server, "-R", option, str(path))
    assert_stored_like(storescu_server, path)


@needs_storescu
def test_storescu_scans_a_directory(storescu_server: ServerProcess, tmp_path: Path) -> None:
    folder = tmp_path / "scan" / "nested"
    folder.mkdir(parents=True)
    for name in STORESCU_FOLDER:
        shutil.copy(PYDICOM_TEST_FILES / name, folder / name)
    storescu(storescu_server, "+sd", "+r", str(tmp_path / "scan"))
    for name in STORESCU_FOLDER:
        assert_stored_like(storescu_server, PYDICOM_TEST_FILES / name)


def test_storescu_corpus_has_distinct_instances() -> None:
    # The storescu tests share one server: overlapping UIDs would make them
    # depend on their order.
    names = [n for _, n in STORESCU_FILES] + STORESCU_FOLDER
    uids = [pydicom.dcmread(PYDICOM_TEST_FILES / n).SOPInstanceUID for n in names]
    assert len(set(uids)) == len(uids)
    syntaxes = [
        pydicom.dcmread(PYDICOM_TEST_FILES / n).file_meta.TransferSyntaxUID
        for _, n in STORESCU_FILES
    ]
    assert len(set(syntaxes)) == len(syntaxes)


# -- character sets ----------------------------------------------------------------


def test_utf8_patient_name_is_indexed_as_unicode(shared_server: ServerProcess) -> None:
    name = unicodedata.normalize("NFC", "Nguyễn^Văn An")
    ds = make_ct("utf8", 1, 1, patient_id="VN-0001", patient_name=name)
    ds.SpecificCharacterSet = "ISO_IR 192"
    assert b"Nguy\xe1\xbb\x85n" in encode(ds)  # really sent as UTF-8
    assert store(shared_server, ds) == SUCCESS

    rows = query(
        index_path(shared_server),
        "SELECT patient_name, patient_name_norm FROM patients WHERE patient_id = ?",
        ("VN-0001",),
    )
    assert len(rows) == 1
    assert rows[0]["patient_name"] == "Nguyễn^Văn An"
    assert rows[0]["patient_name_norm"] == "nguyễn^văn an"
    stored = pydicom.dcmread(stored_blob(shared_server, ds.SOPInstanceUID))
    assert str(stored.PatientName) == name


# -- concurrency -------------------------------------------------------------------

ASSOCIATIONS = 4
PER_ASSOCIATION = 100


@pytest.fixture(scope="module")
def concurrent_batches() -> list[list[Dataset]]:
    """4 x 100 small images over 2 studies (one patient each), 2 series per study."""
    batches = []
    for a in range(ASSOCIATIONS):
        batch = []
        for i in range(PER_ASSOCIATION):
            n = a * PER_ASSOCIATION + i
            study = n % 2
            batch.append(
                make_ct(
                    f"conc{study}",
                    n // 2 % 2,
                    n,
                    patient_id=f"CONC-{study}",
                    patient_name=f"Conc^{study}",
                )
            )
        batches.append(batch)
    return batches


def test_concurrent_associations_store_each_instance_once(
    tmp_path_factory: pytest.TempPathFactory, concurrent_batches: list[list[Dataset]]
) -> None:
    server = start_server(tmp_path_factory.mktemp("concurrent") / "pacs-data")
    try:
        results: list[list[int]] = [[] for _ in concurrent_batches]
        errors: list[BaseException] = []
        barrier = threading.Barrier(len(concurrent_batches))

        def send(index: int) -> None:
            try:
                # A rare ~30 s stall of one C-STORE under load was this client's
                # pynetdicom reactor taking the response (guard_reactor, in
                # association(), now hands it back); a long wait still tells a
                # slow answer from none, should anything like it come back.
                with association(
                    server,
                    [(CTImageStorage, ExplicitVRLittleEndian)],
                    ae_title=f"SCU{index}",
                    timeout=90,
                ) as assoc:
                    barrier.wait(timeout=30)
                    for ds in concurrent_batches[index]:
                        results[index].append(int(assoc.send_c_store(ds).Status))
            except BaseException as exc:  # reported below, in the test thread
                errors.append(exc)

        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(concurrent_batches))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not errors, errors
        assert [len(r) for r in results] == [PER_ASSOCIATION] * ASSOCIATIONS
        assert {s for r in results for s in r} == {SUCCESS}

        total = ASSOCIATIONS * PER_ASSOCIATION
        sent = {ds.SOPInstanceUID for batch in concurrent_batches for ds in batch}
        assert len(sent) == total
        db = index_path(server)
        stored = [r[0] for r in query(db, "SELECT sop_instance_uid FROM instances")]
        assert len(stored) == total and set(stored) == sent
        assert len(blob_files(blob_dir(server))) == total
        assert incoming_files(blob_dir(server)) == []
        counts = {"patients": 2, "studies": 2, "series": 4, "instances": total}
        assert table_counts(server) == counts
        assert server.system()["counts"] == counts
        for row in query(db, "SELECT * FROM studies"):
            assert row["number_of_study_related_instances"] == total // 2
            assert row["number_of_study_related_series"] == 2
            assert row["modalities_in_study"] == "CT"
            assert row["sop_classes_in_study"] == CTImageStorage
        for row in query(db, "SELECT * FROM series"):
            assert row["number_of_series_related_instances"] == total // 4
        for row in query(db, "SELECT * FROM patients"):
            assert row["number_of_patient_related_instances"] == total // 2
            assert row["number_of_patient_related_studies"] == 1
            assert row["number_of_patient_related_series"] == 2
    finally:
        stop_server(server)


# -- duplicates ----------------------------------------------------------------------


def test_identical_resend_is_one_row_and_one_blob(shared_server: ServerProcess) -> None:
    ds = make_ct("resend", 1, 1)
    assert store(shared_server, ds) == SUCCESS
    blob = stored_blob(shared_server, ds.SOPInstanceUID)
    assert store(shared_server, ds) == SUCCESS
    assert stored_blob(shared_server, ds.SOPInstanceUID) == blob  # one row (checked inside)
    assert blobs_of(shared_server, ds.SOPInstanceUID) == [blob]
    assert pydicom.dcmread(blob).PixelData == ds.PixelData
    study = query(
        index_path(shared_server),
        "SELECT number_of_study_related_instances FROM studies WHERE study_instance_uid = ?",
        (ds.StudyInstanceUID,),
    )
    assert study[0][0] == 1


def test_default_policy_keeps_the_first_copy(shared_server: ServerProcess) -> None:
    first, second = make_ct("keep", 1, 1), make_ct("keep", 1, 1, variant=1)
    assert first.PixelData != second.PixelData
    assert store(shared_server, first) == SUCCESS
    assert store(shared_server, second) == SUCCESS  # Orthanc-like: acknowledged, not stored
    blob = stored_blob(shared_server, first.SOPInstanceUID)
    assert blobs_of(shared_server, first.SOPInstanceUID) == [blob]
    assert pydicom.dcmread(blob).PixelData == first.PixelData
    assert instance_row(shared_server, first.SOPInstanceUID)["content_hash"] == (
        "blake3:" + blake3(encode(first)).hexdigest()
    )


@pytest.fixture(scope="module")
def rejecting_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from _run_server(tmp_path_factory, "reject", "--duplicate-policy", "reject")


@pytest.fixture(scope="module")
def replacing_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from _run_server(tmp_path_factory, "replace", "--duplicate-policy", "replace")


def test_reject_policy_answers_duplicate_status(rejecting_server: ServerProcess) -> None:
    first, second = make_ct("reject", 1, 1), make_ct("reject", 1, 1, variant=1)
    assert store(rejecting_server, first) == SUCCESS
    assert store(rejecting_server, first) == SUCCESS  # identical: still fine
    assert store(rejecting_server, second) == DUPLICATE_SOP_INSTANCE
    blob = stored_blob(rejecting_server, first.SOPInstanceUID)
    assert blobs_of(rejecting_server, first.SOPInstanceUID) == [blob]
    assert pydicom.dcmread(blob).PixelData == first.PixelData
    assert incoming_files(blob_dir(rejecting_server)) == []
    assert table_counts(rejecting_server)["instances"] == 1


def test_replace_policy_swaps_content_and_old_blob(replacing_server: ServerProcess) -> None:
    first, second = make_ct("replace", 1, 1), make_ct("replace", 1, 1, variant=1)
    assert store(replacing_server, first) == SUCCESS
    old_blob = stored_blob(replacing_server, first.SOPInstanceUID)
    assert store(replacing_server, second) == SUCCESS
    new_blob = stored_blob(replacing_server, first.SOPInstanceUID)
    assert new_blob != old_blob and not old_blob.exists()
    assert blobs_of(replacing_server, first.SOPInstanceUID) == [new_blob]
    assert pydicom.dcmread(new_blob).PixelData == second.PixelData
    row = instance_row(replacing_server, first.SOPInstanceUID)
    assert row["content_hash"] == "blake3:" + blake3(encode(second)).hexdigest()
    assert store(replacing_server, second) == SUCCESS  # identical resend changes nothing
    assert blobs_of(replacing_server, first.SOPInstanceUID) == [new_blob]
    assert table_counts(replacing_server) == {
        "patients": 1,
        "studies": 1,
        "series": 1,
        "instances": 1,
    }
    study = query(index_path(replacing_server), "SELECT * FROM studies")[0]
    assert study["number_of_study_related_instances"] == 1
    assert study["modalities_in_study"] == "CT"


# -- malformed input -------------------------------------------------------------------


@pytest.fixture(scope="module")
def refusing_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Only refused data sets are sent here: it must stay completely empty."""
    yield from _run_server(tmp_path_factory, "refusing")


def _without(keyword: str) -> bytes:
    ds = make_ct("malformed", 1, 1)
    delattr(ds, keyword)
    return encode(ds)


def _truncated_in_pixel_data() -> bytes:
    raw = encode(make_ct("malformed", 1, 2, size=32))
    cut = len(raw) - 32 * 32  # half-way through the 2 KB of pixel data
    assert raw[cut - 1024 - 12 : cut - 1024 - 8] == b"\xe0\x7f\x10\x00"  # sanity: pixel data header
    return raw[:cut]


def _truncated_in_header() -> bytes:
    raw = encode(make_ct("malformed", 1, 3))
    return raw[: raw.index(b"\x08\x00\x18\x00") + 5]  # inside the SOP Instance UID header


def _garbage() -> bytes:
    return b"".join(hashlib.sha256(str(i).encode()).digest() for i in range(128))


MALFORMED = {
    "truncated-pixel-data": (_truncated_in_pixel_data, CTImageStorage, CANNOT_UNDERSTAND),
    "truncated-header": (_truncated_in_header, CTImageStorage, CANNOT_UNDERSTAND),
    "garbage": (_garbage, CTImageStorage, CANNOT_UNDERSTAND),
    "empty": (lambda: b"", CTImageStorage, CANNOT_UNDERSTAND),
    "no-sop-instance-uid": (lambda: _without("SOPInstanceUID"), CTImageStorage, CANNOT_UNDERSTAND),
    "no-study-instance-uid": (
        lambda: _without("StudyInstanceUID"),
        CTImageStorage,
        CANNOT_UNDERSTAND,
    ),
    "no-sop-class-uid": (lambda: _without("SOPClassUID"), CTImageStorage, CANNOT_UNDERSTAND),
    "sop-class-differs-from-request": (
        lambda: encode(make_ct("malformed", 1, 1)),
        MRImageStorage,
        DATA_SET_DOES_NOT_MATCH,
    ),
}


def assert_left_nothing(server: ServerProcess) -> None:
    blobs = blob_dir(server)
    assert [p.name for p in blobs.iterdir()] == [".incoming"]
    assert incoming_files(blobs) == []
    assert table_counts(server) == {"patients": 0, "studies": 0, "series": 0, "instances": 0}
    assert server.system()["counts"]["instances"] == 0
    assert echo(server) == SUCCESS


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_data_set_is_refused_and_leaves_nothing(
    refusing_server: ServerProcess, tmp_path: Path, case: str
) -> None:
    build, request_class, expected = MALFORMED[case]
    started = time.monotonic()
    response = send_raw(
        refusing_server,
        tmp_path,
        build(),
        sop_class_uid=request_class,
        sop_instance_uid=make_ct("malformed", 1, 1).SOPInstanceUID,
    )
    elapsed = time.monotonic() - started
    assert response.Status == expected, refusing_server.log()
    assert elapsed < 5, f"refusal took {elapsed:.1f} s"
    comment = str(response.get("ErrorComment", ""))
    assert 0 < len(comment) <= 64  # the sender is told why
    assert_left_nothing(refusing_server)


OUT_OF_RESOURCES = range(0xA700, 0xA800)


@pytest.mark.parametrize("min_free_space", ["0", "2MB"])
def test_a_full_disk_refuses_with_out_of_resources_and_loses_nothing(
    tmp_path: Path, min_free_space: str
) -> None:
    """The data folder on a small tmpfs: stores until it is full, then on.

    Each C-STORE answered with success must be whole on disk and in the index;
    each one the full disk refuses gets 0xA7xx with a reason and leaves nothing
    behind; the server stays up, and stores again once there is room. With no
    space kept free the disk really fills (the index meets it too); with 2 MB
    kept free the stores stop short of it.
    """
    with mounted_tmpfs(tmp_path / "disk", "size=6m") as disk:
        server = start_server(disk / "pacs-data", "--min-free-space", min_free_space)
        try:
            sent = [make_ct("full-disk", 1, n, size=256) for n in range(1, 81)]  # 128 kB each
            statuses: dict[str, int] = {}
            comments: dict[str, str] = {}
            with association(server, [(CTImageStorage, ExplicitVRLittleEndian)]) as assoc:
                for ds in sent:
                    response = assoc.send_c_store(ds)
                    statuses[ds.SOPInstanceUID] = int(response.Status)
                    comments[ds.SOPInstanceUID] = str(response.get("ErrorComment", ""))
            stored = [ds for ds in sent if statuses[ds.SOPInstanceUID] == SUCCESS]
            refused = [ds for ds in sent if statuses[ds.SOPInstanceUID] != SUCCESS]
            assert stored and refused, statuses  # 10 MB into 6 MB
            for ds in refused:
                assert statuses[ds.SOPInstanceUID] in OUT_OF_RESOURCES, server.log()
                comment = comments[ds.SOPInstanceUID]
                assert comment.startswith("storage full: ") and len(comment) <= 64, comment
            kept = server.system()["storage"]["kept_free_bytes"]
            assert kept == (2_000_000 if min_free_space == "2MB" else 0)
            if min_free_space == "2MB":
                assert "kept free" in comments[refused[0].SOPInstanceUID]
                # The reserve is for the index: it wrote its rows and JSON in it since.
                assert shutil.disk_usage(disk).free >= 1_000_000
                assert "could not be recorded" not in server.log()  # the index had room
            assert echo(server) == SUCCESS  # still up

            db = index_path(server)
            indexed = {r[0] for r in query(db, "SELECT sop_instance_uid FROM instances")}
            assert indexed == {ds.SOPInstanceUID for ds in stored}
            for ds in stored:
                blob = stored_blob(server, ds.SOPInstanceUID)
                assert pydicom.dcmread(blob).PixelData == ds.PixelData
            assert len(blob_files(blob_dir(server))) == len(stored)
            assert incoming_files(blob_dir(server)) == []  # the space of refused ones given back
            assert server.system()["counts"]["instances"] == len(stored)

            resize_tmpfs(disk, "64m")
            with association(server, [(CTImageStorage, ExplicitVRLittleEndian)]) as assoc:
                assert {int(assoc.send_c_store(ds).Status) for ds in refused} == {SUCCESS}
            assert table_counts(server)["instances"] == len(sent)
            assert len(blob_files(blob_dir(server))) == len(sent)
            row = query(db, "SELECT number_of_study_related_instances FROM studies")
            assert [r[0] for r in row] == [len(sent)]
            # Their JSON, whose precomputed copy met the full disk too, is served.
            response = httpx.get(
                f"{server.http_url}/dicom-web/studies/{sent[0].StudyInstanceUID}/metadata",
                headers={"Accept": "application/dicom+json"},
                timeout=30,
            )
            assert response.status_code == 200
            served = {item["00080018"]["Value"][0] for item in response.json()}
            assert served == {ds.SOPInstanceUID for ds in sent}
            assert "Traceback" not in server.log()  # a full disk is a warning, not a crash
        finally:
            stop_server(server)


A_ABORT_PDU = bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 0, 0])  # PS3.8 9.3.8, source: service user


def c_store_pdus(ds: Dataset, context_id: int, max_pdu: int) -> list[bytes]:
    """The P-DATA-TF PDUs of a C-STORE request of ``ds``, as pynetdicom would send them."""
    primitive = C_STORE()
    primitive.MessageID = 7
    primitive.AffectedSOPClassUID = ds.SOPClassUID
    primitive.AffectedSOPInstanceUID = ds.SOPInstanceUID
    primitive.DataSet = BytesIO(encode(ds))
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    pdus = []
    for p_data in message.encode_msg(context_id, max_pdu):
        pdu = P_DATA_TF()
        pdu.from_primitive(p_data)
        pdus.append(pdu.encode())
    return pdus


@pytest.mark.parametrize("goes", ["closes the connection", "aborts the association"])
def test_a_sender_that_goes_mid_data_set_leaves_nothing(
    shared_server: ServerProcess, goes: str
) -> None:
    """Half of a 128 kB image sent, then the modality is gone (switched off,
    its cable pulled, or it aborts): nothing of it is stored, and the server
    serves the next association as before."""
    server = shared_server
    ds = make_ct("goes-mid-transfer", goes, 1, size=256)
    blobs_before = blob_files(blob_dir(server))
    with association(server, [(CTImageStorage, ExplicitVRLittleEndian)]) as assoc:
        context_id = assoc.accepted_contexts[0].context_id
        pdus = c_store_pdus(ds, context_id, 16384)
        assert len(pdus) > 4
        raw = assoc.dul.socket.socket
        raw.sendall(b"".join(pdus[: len(pdus) // 2]))
        time.sleep(0.3)  # the server has read it and waits for the rest
        if goes == "aborts the association":
            raw.sendall(A_ABORT_PDU)  # the server closes; our reactor then does
        else:
            raw.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + 10
        while assoc.is_established and time.monotonic() < deadline:
            time.sleep(0.05)
        raw.close()
    sql = "SELECT 1 FROM instances WHERE sop_instance_uid = ?"
    assert not query(index_path(server), sql, (ds.SOPInstanceUID,))
    assert blob_files(blob_dir(server)) == blobs_before
    assert incoming_files(blob_dir(server)) == []
    assert store(server, ds) == SUCCESS  # the same image, sent again whole
    assert pydicom.dcmread(stored_blob(server, ds.SOPInstanceUID)).PixelData == ds.PixelData
    assert incoming_files(blob_dir(server)) == []


def test_an_association_is_one_line_in_the_log(tmp_path: Path) -> None:
    """At the default level, a modality's association is summarised once when
    it closes (stored, duplicate, refused, the study), not a line per image."""
    server = start_server(tmp_path / "pacs-data", "--log-level", "info")
    try:
        datasets = [make_ct("tally", 1, number) for number in (1, 2, 3)]
        paths = [
            write_part10(
                tmp_path / f"{number}.dcm",
                CTImageStorage,
                ds.SOPInstanceUID,
                ExplicitVRLittleEndian,
                encode(ds),
            )
            for number, ds in enumerate(datasets)
        ]
        garbage = write_part10(
            tmp_path / "garbage.dcm",
            CTImageStorage,
            uid("tally", "garbage"),
            ExplicitVRLittleEndian,
            _garbage(),
        )
        with raw_sending(), association(server, [(CTImageStorage, ExplicitVRLittleEndian)]) as a:
            statuses = [int(a.send_c_store(p).Status) for p in [*paths, paths[0], garbage]]
        assert statuses == [SUCCESS] * 4 + [CANNOT_UNDERSTAND], server.log()
        deadline = time.monotonic() + 10
        while "C-STORE from" not in server.log() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop_server(server)
    log = server.log()
    summaries = [line for line in log.splitlines() if "C-STORE from" in line]
    assert len(summaries) == 1, log
    summary = summaries[0]
    assert f"C-STORE from {CALLING_AE} (127.0.0.1): 3 stored, 1 duplicate, 1 refused" in summary
    assert f"; study {datasets[0].StudyInstanceUID}" in summary
    assert "MB stored" in summary
    # Each instance is at level debug only.
    assert not any(str(ds.SOPInstanceUID) in log for ds in datasets), log


def test_error_comment_is_a_single_conformant_value(
    refusing_server: ServerProcess, tmp_path: Path
) -> None:
    # Implicit VR bytes announced as explicit VR: the reason quotes the bad
    # "VR" as b'\x08\x00', and a backslash would split an LO value in three.
    ds = make_ct("comment", 1, 1)
    response = send_raw(
        refusing_server,
        tmp_path,
        encode(ds, ImplicitVRLittleEndian),
        sop_class_uid=CTImageStorage,
        sop_instance_uid=ds.SOPInstanceUID,
    )
    assert response.Status == CANNOT_UNDERSTAND
    comment = response.ErrorComment
    assert isinstance(comment, str) and "\\" not in comment and len(comment) <= 64
    assert re.fullmatch(r"malformed data set at byte 0: invalid VR b'.+'", comment), comment
    assert_left_nothing(refusing_server)


def test_deflated_garbage_is_refused(refusing_server: ServerProcess, tmp_path: Path) -> None:
    status = store_raw(
        refusing_server,
        tmp_path,
        _garbage(),
        sop_class_uid=CTImageStorage,
        sop_instance_uid=uid("deflated-garbage"),
        transfer_syntax_uid="1.2.840.10008.1.2.1.99",
    )
    assert status == CANNOT_UNDERSTAND
    assert_left_nothing(refusing_server)


@pytest.mark.parametrize("bad_uid", ["../../x", "1.2.3/../../etc"])
@pytest.mark.parametrize("keyword", ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
def test_path_like_uid_is_refused(
    refusing_server: ServerProcess, keyword: str, bad_uid: str
) -> None:
    ds = make_ct("path-trick", keyword, 1)
    with lenient_values():
        setattr(ds, keyword, bad_uid)
    started = time.monotonic()
    # pynetdicom puts the same UID into the request, as a hostile client would.
    assert store(refusing_server, ds) == CANNOT_UNDERSTAND
    assert time.monotonic() - started < 5
    assert_left_nothing(refusing_server)
    assert not list(refusing_server.data_dir.parent.rglob("x")) and not list(
        refusing_server.data_dir.parent.rglob("etc")
    )


@pytest.mark.parametrize(
    "bad_uid",
    ["1.2.a.3", "1.2..3", "1" * 65, "1.2.3\\1.2.4"],
    ids=["letters", "empty-part", "too-long", "two-values"],
)
def test_invalid_uid_is_refused(
    refusing_server: ServerProcess, tmp_path: Path, bad_uid: str
) -> None:
    ds = make_ct("bad-uid", 1, 1)
    with lenient_values():
        ds.SeriesInstanceUID = bad_uid
    status = store_raw(
        refusing_server,
        tmp_path,
        encode(ds),
        sop_class_uid=CTImageStorage,
        sop_instance_uid=ds.SOPInstanceUID,
    )
    assert status == CANNOT_UNDERSTAND
    assert_left_nothing(refusing_server)


# -- connections -------------------------------------------------------------------------


def _half_associate_rq() -> bytes:
    """The first bytes of an A-ASSOCIATE-RQ that announces more than it sends."""
    header = struct.pack(">BBL", 0x01, 0x00, 205)  # PDU type 1, length 205
    body = struct.pack(">HH", 0x0001, 0x0000) + b"PACS".ljust(16) + b"HALF".ljust(16)
    return header + body  # 42 bytes of 211


def test_idle_and_half_open_connections_do_not_block(shared_server: ServerProcess) -> None:
    idle = socket.create_connection(("127.0.0.1", shared_server.dicom_port), timeout=5)
    half = socket.create_connection(("127.0.0.1", shared_server.dicom_port), timeout=5)
    try:
        half.sendall(_half_associate_rq())
        time.sleep(0.2)  # let the server pick both up
        started = time.monotonic()
        assert echo(shared_server) == SUCCESS
        ds = make_ct("half-open", 1, 1)
        assert store(shared_server, ds) == SUCCESS
        elapsed = time.monotonic() - started
        assert elapsed < 2, f"C-ECHO + C-STORE took {elapsed:.2f} s beside idle connections"
        assert instance_row(shared_server, ds.SOPInstanceUID)
    finally:
        idle.close()
        half.close()
    assert echo(shared_server) == SUCCESS


def test_unknown_sop_class_is_refused_at_negotiation(shared_server: ServerProcess) -> None:
    unknown = "1.2.3.4.5.6.7"
    with association(
        shared_server, [(Verification, None), (unknown, ExplicitVRLittleEndian)]
    ) as assoc:
        accepted = {cx.abstract_syntax for cx in assoc.accepted_contexts}
        rejected = {cx.abstract_syntax: cx.result for cx in assoc.rejected_contexts}
        assert accepted == {Verification}
        assert rejected == {unknown: 0x03}  # abstract syntax not supported
        ds = make_ct("unknown-class", 1, 1, sop_class_uid=unknown)
        with pytest.raises(ValueError, match="No presentation context"):
            assoc.send_c_store(ds)
        assert assoc.send_c_echo().Status == SUCCESS
    assert not query(
        index_path(shared_server),
        "SELECT 1 FROM instances WHERE sop_class_uid = ?",
        (UID(unknown),),
    )


def test_a_store_for_a_move_is_stored_like_any_other(shared_server: ServerProcess) -> None:
    """A request naming a Move Originator is read and served by pynetdicom
    (not on arrival), with the same outcome."""
    ds = make_ct("moved-here", 1, 1)
    with association(shared_server, [(ds.SOPClassUID, ExplicitVRLittleEndian)]) as assoc:
        status = assoc.send_c_store(ds, originator_aet="MOVER", originator_id=7)
        assert status.Status == SUCCESS
        assert store_on(assoc, make_ct("moved-here", 1, 2)) == SUCCESS  # and on it goes
    assert instance_row(shared_server, ds.SOPInstanceUID)


def store_on(assoc: Any, ds: Dataset) -> int:
    return int(assoc.send_c_store(ds).Status)


def _tree_rss_kb(pid: int) -> int:
    """Resident memory of a process and its children, in kB."""
    total = 0
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    for each in [pid, *map(int, children.stdout.split())]:
        with contextlib.suppress(OSError):
            status = Path(f"/proc/{each}/status").read_text()
            total += int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
    return total


def test_a_pdu_claiming_gigabytes_ends_only_its_own_association(
    shared_server: ServerProcess,
) -> None:
    """Garbage on an established association: a P-DATA-TF header that claims
    ~4 GB. The server reads what arrives, not what is claimed, and when the
    peer goes, drops that association; others store on."""
    before = _tree_rss_kb(shared_server.process.pid)
    ds = make_ct("claims-gigabytes", 1, 1)
    with association(shared_server, [(ds.SOPClassUID, ExplicitVRLittleEndian)]) as other:
        with association(shared_server, [(Verification, None)]) as assoc:
            raw = assoc.dul.socket.socket
            raw.sendall(struct.pack(">BBL", 0x04, 0x00, 0xFFFFFFF0) + b"\x5a" * (1 << 20))
            time.sleep(0.3)
            assert store_on(other, ds) == SUCCESS
            assert _tree_rss_kb(shared_server.process.pid) - before < 256 * 1024
            raw.shutdown(socket.SHUT_RDWR)
            deadline = time.monotonic() + 10
            while assoc.is_established and time.monotonic() < deadline:
                time.sleep(0.05)
        assert store_on(other, make_ct("claims-gigabytes", 1, 2)) == SUCCESS
    assert echo(shared_server) == SUCCESS
    assert "The received PDU is shorter than expected" in shared_server.log()
    assert instance_row(shared_server, ds.SOPInstanceUID)

"""Query/Retrieve end to end: C-FIND, C-MOVE and C-GET against a real ``pacs serve``.

The clients are DCMTK's findscu, movescu and getscu and pynetdicom SCUs. Move
destinations are DCMTK's storescp, started per test with its own folder, and
a pynetdicom Storage SCP in this process. What arrives is compared with what
was sent in: the data set bytes after the File Meta group when the stored
transfer syntax was accepted, pydicom's decoding of the original otherwise.

One server serves the module: every test looks only at its own patients,
studies or instances, so they do not interfere.
"""

from __future__ import annotations

import contextlib
import functools
import queue
import re
import socket
import subprocess
import tempfile
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pydicom.config
import pytest
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLosslessSV1,
    JPEGLSLossless,
    MRImageStorage,
)
from pynetdicom import AE, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from pacs.core.encoding import split_part10
from pacs.dimse.transport import guard_reactor
from tests import dicom_clients
from tests.conftest import (
    PYDICOM_TEST_FILES,
    ServerProcess,
    get_port,
    start_server,
    stop_server,
)
from tests.dicom_clients import raw_sending
from tests.dicom_factory import encode, make_ct

CALLING_AE = "QRSCU"
DCMTK_AE = "DCMTKSCU"
SUCCESS = 0x0000
PENDING = 0xFF00
CANCEL = 0xFE00
WARNING_SUBOPERATIONS = 0xB000
NOT_AUTHORIZED = 0x0124
OUT_OF_RESOURCES = 0xA700
UNABLE_TO_PERFORM_SUBOPERATIONS = 0xA702
MOVE_DESTINATION_UNKNOWN = 0xA801
IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900

FIND = {
    "patient": PatientRootQueryRetrieveInformationModelFind,
    "study": StudyRootQueryRetrieveInformationModelFind,
}
DCMTK_MODEL = {"patient": "-P", "study": "-S"}
CLIENTS = ["findscu", "pynetdicom"]

# -- the corpus ------------------------------------------------------------------

VIETNAMESE = unicodedata.normalize("NFC", "Nguyễn^Văn An")
PATIENTS = {
    "QR-A": ("Alpha^Anna", "F", "19700101"),
    "QR-B": ("Beta^Bob", "M", "19800202"),
    "QR-V": (VIETNAMESE, "M", "19900303"),
}
# study key: patient, study date, description, series (number, modality, SOP class, instances)
STUDIES = {
    "a1": ("QR-A", "20240102", "CHEST", [(1, "CT", CTImageStorage, 3),
                                         (2, "MR", MRImageStorage, 2)]),
    "a2": ("QR-A", "20230615", "HEAD", [(1, "CT", CTImageStorage, 1)]),
    "b1": ("QR-B", "20240301", "ABDOMEN", [(1, "CT", CTImageStorage, 2)]),
    "v1": ("QR-V", "20220505", "KNEE", [(1, "CT", CTImageStorage, 1)]),
}  # fmt: skip


def build_corpus() -> list[Dataset]:
    datasets = []
    for key, (patient_id, study_date, description, series_list) in STUDIES.items():
        name, sex, birth_date = PATIENTS[patient_id]
        for number, modality, sop_class, count in series_list:
            for instance in range(1, count + 1):
                ds = make_ct(
                    f"qr-{key}",
                    number,
                    instance,
                    patient_id=patient_id,
                    patient_name=name,
                    modality=modality,
                    sop_class_uid=sop_class,
                )
                if not name.isascii():
                    ds.SpecificCharacterSet = "ISO_IR 192"
                ds.PatientSex = sex
                ds.PatientBirthDate = birth_date
                ds.StudyDate = study_date
                ds.StudyDescription = description
                datasets.append(ds)
    return datasets


CORPUS = build_corpus()
STUDY = {key: make_ct(f"qr-{key}").StudyInstanceUID for key in STUDIES}
SERIES = {
    (key, number): make_ct(f"qr-{key}", number).SeriesInstanceUID
    for key, (_, _, _, series_list) in STUDIES.items()
    for number, *_ in series_list
}
MANY = 600  # instances of one series: a C-FIND long enough to cancel under load
MANY_STUDY = make_ct("qr-many").StudyInstanceUID

# pydicom's own compressed files, one per codec family; distinct SOP Instance UIDs.
COMPRESSED = [
    "MR_small_jp2klossless.dcm",  # JPEG 2000 lossless
    "JPEG2000.dcm",  # JPEG 2000
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline, YBR_FULL
    "SC_rgb_rle.dcm",  # RLE lossless
]


def where(**conditions: str) -> list[Dataset]:
    return [ds for ds in CORPUS if all(ds.get(k) == v for k, v in conditions.items())]


def patient_truth(patient_id: str) -> dict[str, object]:
    instances = where(PatientID=patient_id)
    name, sex, birth_date = PATIENTS[patient_id]
    return {
        "PatientID": patient_id,
        "PatientName": name,
        "PatientSex": sex,
        "PatientBirthDate": birth_date,
        "NumberOfPatientRelatedStudies": len({ds.StudyInstanceUID for ds in instances}),
        "NumberOfPatientRelatedSeries": len({ds.SeriesInstanceUID for ds in instances}),
        "NumberOfPatientRelatedInstances": len(instances),
    }


def study_truth(study_uid: str) -> dict[str, object]:
    instances = where(StudyInstanceUID=study_uid)
    first = instances[0]
    return {
        **patient_truth(first.PatientID),
        "StudyInstanceUID": study_uid,
        "StudyDate": first.StudyDate,
        "StudyTime": first.StudyTime,
        "AccessionNumber": first.AccessionNumber,
        "StudyID": first.StudyID,
        "StudyDescription": first.StudyDescription,
        "NumberOfStudyRelatedSeries": len({ds.SeriesInstanceUID for ds in instances}),
        "NumberOfStudyRelatedInstances": len(instances),
        "ModalitiesInStudy": sorted({ds.Modality for ds in instances}),
        "SOPClassesInStudy": sorted({str(ds.SOPClassUID) for ds in instances}),
    }


def series_truth(series_uid: str) -> dict[str, object]:
    instances = where(SeriesInstanceUID=series_uid)
    first = instances[0]
    return {
        **study_truth(first.StudyInstanceUID),
        "SeriesInstanceUID": series_uid,
        "Modality": first.Modality,
        "SeriesNumber": int(first.SeriesNumber),
        "NumberOfSeriesRelatedInstances": len(instances),
    }


def image_truth(sop_instance_uid: str) -> dict[str, object]:
    (ds,) = where(SOPInstanceUID=sop_instance_uid)
    return {
        **series_truth(ds.SeriesInstanceUID),
        "SOPInstanceUID": sop_instance_uid,
        "SOPClassUID": str(ds.SOPClassUID),
        "InstanceNumber": int(ds.InstanceNumber),
    }


TRUTH = {
    "PATIENT": patient_truth,
    "STUDY": study_truth,
    "SERIES": series_truth,
    "IMAGE": image_truth,
}
UNIQUE = {
    "PATIENT": "PatientID",
    "STUDY": "StudyInstanceUID",
    "SERIES": "SeriesInstanceUID",
    "IMAGE": "SOPInstanceUID",
}
MULTI_VALUED = frozenset(("ModalitiesInStudy", "SOPClassesInStudy", "ImageType"))


def normalised(keyword: str, value: object) -> object:
    """A response value in the shape the truth tables use ('' when empty)."""
    if isinstance(value, MultiValue | list | DicomSequence) and not value:
        return ""
    if value is None or value == "":
        return ""
    if keyword in MULTI_VALUED:
        return [str(v) for v in value] if isinstance(value, MultiValue | list) else [str(value)]
    if isinstance(value, int):  # IS, US
        return int(value)
    return str(value)


# -- talking to the server ---------------------------------------------------------


association = functools.partial(dicom_clients.association, ae_title=CALLING_AE)
store_all = functools.partial(dicom_clients.store_all, ae_title=CALLING_AE)


def echo(server: ServerProcess, ae_title: str = CALLING_AE) -> int:
    with association(server, [(Verification, None)], ae_title=ae_title) as assoc:
        return int(assoc.send_c_echo().Status)


@contextlib.contextmanager
def any_values() -> Iterator[None]:
    """Let a test put malformed values (a bad date) into an identifier, silently."""
    settings = pydicom.config.settings
    saved = settings.reading_validation_mode, settings.writing_validation_mode
    settings.reading_validation_mode = settings.writing_validation_mode = pydicom.config.IGNORE
    try:
        yield
    finally:
        settings.reading_validation_mode, settings.writing_validation_mode = saved


def identifier(level: str, keys: dict[str, object]) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    with any_values():
        for keyword, value in keys.items():
            setattr(ds, keyword, [] if dictionary_VR(keyword) == "SQ" else value)
    return ds


def pynetdicom_find(
    server: ServerProcess,
    model: str,
    level: str,
    keys: dict[str, object],
    ae_title: str = CALLING_AE,
) -> tuple[list[Dataset], int]:
    """The matches (pending identifiers) and the final status of one C-FIND."""
    with association(server, [(FIND[model], None)], ae_title=ae_title) as assoc:
        responses = list(assoc.send_c_find(identifier(level, keys), FIND[model]))
    assert responses and all("Status" in status for status, _ in responses), "no response"
    *pending, (final, _) = responses
    assert all(status.Status == PENDING for status, _ in pending)
    return [match for _, match in pending], int(final.Status)


def dcmtk(tool: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool, *args],
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        timeout=timeout,
    )


def final_status(result: subprocess.CompletedProcess[str]) -> int:
    """The status of the last DIMSE message a DCMTK tool printed with ``-d``."""
    statuses = re.findall(r"DIMSE Status\s*:\s*0x([0-9a-fA-F]{4})", result.stdout + result.stderr)
    assert statuses, f"no DIMSE status in output:\n{result.stdout}\n{result.stderr}"
    return int(statuses[-1], 16)


def dcmtk_keys(level: str, keys: dict[str, object]) -> list[str]:
    """``-k`` options; tags in numbers, since DCMTK names some attributes differently."""
    args = ["-k", f"QueryRetrieveLevel={level}"]
    for keyword, value in keys.items():
        tag = tag_for_keyword(keyword)
        assert tag is not None, keyword
        key = f"{tag >> 16:04X},{tag & 0xFFFF:04X}"
        args += ["-k", f"{key}={value}" if value != "" else key]
    return args


def findscu(
    server: ServerProcess,
    scratch: Path,
    model: str,
    level: str,
    keys: dict[str, object],
    ae_title: str = DCMTK_AE,
) -> tuple[list[Dataset], int]:
    out = Path(tempfile.mkdtemp(prefix="findscu-", dir=scratch))
    result = dcmtk(
        "findscu",
        "-d",
        "-aet",
        ae_title,
        "-aec",
        server.ae_title,
        DCMTK_MODEL[model],
        "-X",
        "-od",
        str(out),
        *dcmtk_keys(level, keys),
        "127.0.0.1",
        str(server.dicom_port),
    )
    assert result.returncode == 0, f"findscu: {result.stderr}\n{server.log()}"
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))], final_status(result)


def find(
    client: str,
    server: ServerProcess,
    scratch: Path,
    model: str,
    level: str,
    keys: dict[str, object],
) -> tuple[list[Dataset], int]:
    if client == "findscu":
        return findscu(server, scratch, model, level, keys)
    return pynetdicom_find(server, model, level, keys)


def matched(matches: list[Dataset], level: str) -> list[str]:
    return sorted(str(m.get(UNIQUE[level], "")) for m in matches)


def assert_matches(matches: list[Dataset], level: str, keys: dict[str, object]) -> None:
    """Every requested key is in every response, with the value that was stored."""
    for match in matches:
        assert match.QueryRetrieveLevel == level
        truth = TRUTH[level](str(match[UNIQUE[level]].value))
        missing = [k for k in keys if k not in match]
        assert not missing, f"requested keys missing from the response: {missing}"
        got = {k: normalised(k, match[k].value) for k in keys}
        expected = {k: truth.get(k, "") for k in keys}
        assert got == expected


def dataset_part(data: bytes) -> bytes:
    _, offset = split_part10(data)
    assert offset, "not a Part 10 file"
    return data[offset:]


def read_raw(data: bytes, transfer_syntax_uid: str) -> Dataset:
    ts = UID(transfer_syntax_uid)
    return read_dataset(DicomBytesIO(data), ts.is_implicit_VR, ts.is_little_endian)


def files_by_uid(folder: Path) -> dict[str, Path]:
    """SOP Instance UID -> the file a DCMTK tool wrote for it."""
    return {
        str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID): path
        for path in folder.iterdir()
    }


SENT = {ds.SOPInstanceUID: encode(ds) for ds in CORPUS}
"""What the corpus looked like on the wire (Explicit VR Little Endian)."""


# -- the move destinations -----------------------------------------------------------


@dataclass(frozen=True)
class Arrival:
    transfer_syntax_uid: str
    data: bytes
    move_originator: tuple[str, int] | None


class StorageReceiver:
    """A pynetdicom Storage SCP in this process; refuses the instances in ``refuse``."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.arrivals: dict[str, Arrival] = {}
        self.refuse: set[str] = set()
        self.ae = AE(ae_title="PYDEST")
        self.ae.network_timeout = 30
        for context in AllStoragePresentationContexts:
            assert context.abstract_syntax is not None
            self.ae.add_supported_context(
                context.abstract_syntax, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
            )
        self.ae.add_supported_context(Verification)
        self.ae.start_server(
            ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )

    def _on_store(self, event: evt.Event) -> int:
        request = event.request
        sop_instance_uid = str(request.AffectedSOPInstanceUID)
        originator = request.MoveOriginatorApplicationEntityTitle
        self.arrivals[sop_instance_uid] = Arrival(
            str(event.context.transfer_syntax),
            request.DataSet.getvalue(),
            (str(originator).strip(), int(request.MoveOriginatorMessageID)) if originator else None,
        )
        return OUT_OF_RESOURCES if sop_instance_uid in self.refuse else SUCCESS

    def stop(self) -> None:
        self.ae.shutdown()


class Storescp:
    """DCMTK's storescp as a move destination, writing what it receives to ``out``."""

    def __init__(self, port: int, out: Path, *options: str) -> None:
        self.out = out
        self.log = out.parent / f"{out.name}-storescp.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                ["storescp", "-aet", "DEST", "+B", "-od", str(out), *options, str(port)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.process.poll() is None:
            # A plain connect: pynetdicom leaks its socket when the connection is refused.
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"storescp did not come up:\n{self.log.read_text(errors='replace')}")

    def files(self) -> dict[str, Path]:
        return files_by_uid(self.out)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# -- fixtures ---------------------------------------------------------------------------


@dataclass
class QR:
    server: ServerProcess
    receiver: StorageReceiver
    storescp_port: int


@pytest.fixture(scope="module")
def receiver() -> Iterator[StorageReceiver]:
    receiver = StorageReceiver(get_port())
    try:
        yield receiver
    finally:
        receiver.stop()


def write_config(path: Path, nodes: list[dict[str, object]]) -> Path:
    lines = []
    for node in nodes:
        lines.append("[[nodes]]")
        for key, value in node.items():
            text = f'"{value}"' if isinstance(value, str) else str(value)
            if isinstance(value, list):
                text = "[" + ", ".join(f'"{v}"' for v in value) + "]"
            lines.append(f"{key} = {text}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def qr(tmp_path_factory: pytest.TempPathFactory, receiver: StorageReceiver) -> Iterator[QR]:
    """One server holding the corpus, 300 instances of one study and the compressed files."""
    root = tmp_path_factory.mktemp("qr")
    storescp_port, dead_port = get_port(), get_port()
    config = write_config(
        root / "pacs.toml",
        [
            {"ae_title": "DEST", "host": "127.0.0.1", "port": storescp_port},
            {
                "ae_title": "IMPLDEST",
                "host": "127.0.0.1",
                "port": storescp_port,
                "transfer_syntaxes": [ImplicitVRLittleEndian],
            },
            {
                "ae_title": "JLSDEST",
                "host": "127.0.0.1",
                "port": storescp_port,
                "transfer_syntaxes": [JPEGLSLossless],
            },
            {
                "ae_title": "JPEGDEST",
                "host": "127.0.0.1",
                "port": storescp_port,
                "transfer_syntaxes": [JPEGLosslessSV1],
            },
            {"ae_title": "PYDEST", "host": "127.0.0.1", "port": receiver.port},
            {"ae_title": "DEAD", "host": "127.0.0.1", "port": dead_port},
            {
                "ae_title": "NOFIND",
                "host": "127.0.0.1",
                "port": dead_port,
                "allow": ["store", "move", "get"],
            },
        ],
    )
    server = start_server(root / "pacs-data", "--config", str(config))
    try:
        store_all(server, CORPUS)
        store_all(server, [make_ct("qr-many", 1, i, patient_id="MANY-1") for i in range(MANY)])
        files = [PYDICOM_TEST_FILES / name for name in COMPRESSED]
        originals = [pydicom.dcmread(path, stop_before_pixels=True) for path in files]
        contexts = [(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID) for ds in originals]
        with raw_sending(), association(server, contexts) as assoc:
            statuses = [int(assoc.send_c_store(path).Status) for path in files]
        assert statuses == [SUCCESS] * len(files), server.log()
        yield QR(server, receiver, storescp_port)
    finally:
        stop_server(server)


@pytest.fixture
def storescp(qr: QR, tmp_path: Path) -> Iterator[Callable[..., Storescp]]:
    """Start storescp on the DEST port with a fresh folder (one per test)."""
    started: list[Storescp] = []

    def start(*options: str) -> Storescp:
        assert not started, "one storescp per test: they share the DEST port"
        out = tmp_path / "received"
        out.mkdir()
        started.append(Storescp(qr.storescp_port, out, *options))
        return started[0]

    try:
        yield start
    finally:
        for process in started:
            process.stop()


# -- C-FIND ------------------------------------------------------------------------------

A1, A2, B1, V1 = STUDY["a1"], STUDY["a2"], STUDY["b1"], STUDY["v1"]
A1_CT, A1_MR, B1_CT = SERIES["a1", 1], SERIES["a1", 2], SERIES["b1", 1]
PATIENT_KEYS = {
    "PatientName": "",
    "PatientBirthDate": "",
    "PatientSex": "",
    "NumberOfPatientRelatedStudies": "",
    "NumberOfPatientRelatedSeries": "",
    "NumberOfPatientRelatedInstances": "",
}
STUDY_KEYS = {
    "StudyInstanceUID": "",
    "StudyDate": "",
    "StudyTime": "",
    "AccessionNumber": "",
    "StudyID": "",
    "StudyDescription": "",
    "NumberOfStudyRelatedSeries": "",
    "NumberOfStudyRelatedInstances": "",
    "ModalitiesInStudy": "",
    "SOPClassesInStudy": "",
}
SERIES_KEYS = {
    "SeriesInstanceUID": "",
    "Modality": "",
    "SeriesNumber": "",
    "NumberOfSeriesRelatedInstances": "",
}
IMAGE_KEYS = {"SOPInstanceUID": "", "SOPClassUID": "", "InstanceNumber": ""}


def uids_of(datasets: list[Dataset]) -> list[str]:
    return sorted(str(ds.SOPInstanceUID) for ds in datasets)


LEVEL_CASES = {
    "patient-root-PATIENT": (
        "patient",
        "PATIENT",
        {"PatientID": "QR-A", **PATIENT_KEYS},
        ["QR-A"],
    ),
    "patient-root-STUDY": (
        "patient",
        "STUDY",
        {"PatientID": "QR-A", **STUDY_KEYS},
        sorted([A1, A2]),
    ),
    "patient-root-SERIES": (
        "patient",
        "SERIES",
        {"PatientID": "QR-A", "StudyInstanceUID": A1, **SERIES_KEYS},
        sorted([A1_CT, A1_MR]),
    ),
    "patient-root-IMAGE": (
        "patient",
        "IMAGE",
        {"PatientID": "QR-A", "StudyInstanceUID": A1, "SeriesInstanceUID": A1_CT, **IMAGE_KEYS},
        uids_of(where(SeriesInstanceUID=A1_CT)),
    ),
    "study-root-STUDY": (
        "study",
        "STUDY",
        {"PatientID": "QR-B", **PATIENT_KEYS, **STUDY_KEYS},
        [B1],
    ),
    "study-root-SERIES": (
        "study",
        "SERIES",
        {"StudyInstanceUID": A1, **SERIES_KEYS},
        sorted([A1_CT, A1_MR]),
    ),
    "study-root-IMAGE": (
        "study",
        "IMAGE",
        {"StudyInstanceUID": A1, "SeriesInstanceUID": A1_MR, **IMAGE_KEYS},
        uids_of(where(SeriesInstanceUID=A1_MR)),
    ),
}


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("case", LEVEL_CASES)
def test_find_at_each_level_returns_what_was_stored(
    qr: QR, tmp_path: Path, client: str, case: str
) -> None:
    model, level, keys, expected = LEVEL_CASES[case]
    matches, status = find(client, qr.server, tmp_path, model, level, keys)
    assert status == SUCCESS
    assert matched(matches, level) == expected
    assert_matches(matches, level, keys)


@pytest.mark.parametrize("client", CLIENTS)
def test_find_adds_the_unique_keys_of_the_levels_above(qr: QR, tmp_path: Path, client: str) -> None:
    # Neither request names the patient or the study, yet each match must.
    keys = {"SeriesInstanceUID": A1_MR, "SOPInstanceUID": ""}
    matches, status = find(client, qr.server, tmp_path, "patient", "IMAGE", keys)
    assert status == SUCCESS
    assert matched(matches, "IMAGE") == uids_of(where(SeriesInstanceUID=A1_MR))
    for match in matches:
        assert (match.PatientID, match.StudyInstanceUID, match.SeriesInstanceUID) == (
            "QR-A",
            A1,
            A1_MR,
        )

    matches, status = find(
        client, qr.server, tmp_path, "study", "SERIES", {"SeriesInstanceUID": B1_CT}
    )
    assert status == SUCCESS
    assert [(m.StudyInstanceUID, m.SeriesInstanceUID) for m in matches] == [(B1, B1_CT)]
    assert "PatientID" not in matches[0]  # Study Root has no patient level


@pytest.mark.parametrize("client", CLIENTS)
def test_find_returns_keys_it_does_not_hold_empty(qr: QR, tmp_path: Path, client: str) -> None:
    keys = {
        "StudyInstanceUID": A2,
        "PatientTelephoneNumbers": "",  # not indexed
        "InstitutionName": "",  # indexed, not in the data set
        "ReferringPhysicianName": "",
        "Modality": "",  # a series attribute, in a study-level query
        "ReferencedStudySequence": "",  # a sequence the study lacks: returned empty
    }
    matches, status = find(client, qr.server, tmp_path, "study", "STUDY", keys)
    assert status == SUCCESS
    assert matched(matches, "STUDY") == [A2]
    for keyword in keys:
        assert keyword in matches[0], keyword
    assert {k: normalised(k, matches[0][k].value) for k in keys} == {
        **dict.fromkeys(keys, ""),
        "StudyInstanceUID": A2,
    }


def _coded(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "99PACS", meaning
    return item


def _with_sequences() -> list[Dataset]:
    """A study with a procedure code (its meaning in Vietnamese) and series
    with request attributes, as a RIS-driven modality writes them."""
    datasets = []
    for series in (1, 2):
        ds = make_ct("qr-seq", series, 1, patient_id="SEQ-1", patient_name="Seq^Sam")
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.ProcedureCodeSequence = DicomSequence([_coded("CTCHEST", "Chụp cắt lớp ngực")])
        request = Dataset()
        request.RequestedProcedureID = f"RP-{series}"
        request.ScheduledProcedureStepID = f"SPS-{series}"
        request.ScheduledProcedureStepDescription = "Ngực có cản quang"
        ds.RequestAttributesSequence = DicomSequence([request])
        datasets.append(ds)
    return datasets


@pytest.mark.parametrize("client", CLIENTS)
def test_find_returns_stored_sequences(qr: QR, tmp_path: Path, client: str) -> None:
    """Sequences asked for come back with their stored items (PS3.4 C.2.2.2.6,
    universal sequence matching), the text of their items in UTF-8."""
    stored = _with_sequences()
    store_all(qr.server, stored)
    keys = {"PatientID": "SEQ-1", "ProcedureCodeSequence": "", "StudyInstanceUID": ""}
    matches, status = find(client, qr.server, tmp_path, "study", "STUDY", keys)
    assert status == SUCCESS and len(matches) == 1
    assert matches[0].SpecificCharacterSet == "ISO_IR 192"
    (item,) = matches[0].ProcedureCodeSequence
    assert (item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning) == (
        "CTCHEST",
        "99PACS",
        "Chụp cắt lớp ngực",
    )
    keys = {"StudyInstanceUID": stored[0].StudyInstanceUID, "RequestAttributesSequence": ""}
    matches, status = find(client, qr.server, tmp_path, "study", "SERIES", keys)
    assert status == SUCCESS
    found = {
        m.SeriesInstanceUID: [
            (i.RequestedProcedureID, i.ScheduledProcedureStepID)
            for i in m.RequestAttributesSequence
        ]
        for m in matches
    }
    assert found == {
        ds.SeriesInstanceUID: [(f"RP-{n}", f"SPS-{n}")] for n, ds in enumerate(stored, 1)
    }
    assert all(
        m.RequestAttributesSequence[0].ScheduledProcedureStepDescription == "Ngực có cản quang"
        for m in matches
    )


@pytest.mark.parametrize(
    "syntax", [None, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian], ids=str
)
def test_find_returns_only_the_attributes_asked_for_in_a_sequence_item(
    qr: QR, syntax: str | None
) -> None:
    """In every transfer syntax of the request's context (big endian and
    deflate are encoded by pydicom, the little endian ones by pacs)."""
    stored = _with_sequences()
    store_all(qr.server, stored)
    query = identifier("SERIES", {"StudyInstanceUID": stored[0].StudyInstanceUID})
    asked = Dataset()
    asked.ScheduledProcedureStepID = ""
    query.RequestAttributesSequence = DicomSequence([asked])
    contexts = [(FIND["study"], [syntax] if syntax else None)]
    with association(qr.server, contexts) as assoc:
        responses = list(assoc.send_c_find(query, FIND["study"]))
    matches = [match for status, match in responses if status.Status == PENDING]
    assert int(responses[-1][0].Status) == SUCCESS and len(matches) == 2
    for match in matches:
        (item,) = match.RequestAttributesSequence
        assert [e.keyword for e in item] == ["ScheduledProcedureStepID"]
        assert item.ScheduledProcedureStepID.startswith("SPS-")


MATCHING_CASES = {
    "single-value": ("STUDY", {"PatientID": "QR-B"}, [B1]),
    "single-value-date": ("STUDY", {"PatientID": "QR-*", "StudyDate": "20230615"}, [A2]),
    "single-value-any-case-name": ("STUDY", {"PatientName": "ALPHA^anna"}, [A1, A2]),
    "single-value-in-multi-valued": (
        "STUDY",
        {"PatientID": "QR-*", "ModalitiesInStudy": "MR"},
        [A1],
    ),
    "wildcard-star": ("STUDY", {"PatientName": "Al*"}, [A1, A2]),
    "wildcard-question-mark": ("STUDY", {"PatientID": "QR-?", "PatientName": "?eta^B*"}, [B1]),
    "wildcard-in-multi-valued": ("STUDY", {"PatientID": "QR-*", "ModalitiesInStudy": "M*"}, [A1]),
    "date-range": ("STUDY", {"PatientID": "QR-*", "StudyDate": "20240101-20241231"}, [A1, B1]),
    "date-range-open-start": ("STUDY", {"PatientID": "QR-*", "StudyDate": "-20231231"}, [A2, V1]),
    "date-range-open-end": ("STUDY", {"PatientID": "QR-*", "StudyDate": "20240201-"}, [B1]),
    "uid-list": ("STUDY", {"StudyInstanceUID": f"{A1}\\{B1}"}, [A1, B1]),
    "uid-list-series": ("SERIES", {"SeriesInstanceUID": f"{A1_MR}\\{B1_CT}"}, [A1_MR, B1_CT]),
    "wildcard-and-range": (
        "STUDY",
        {"PatientName": "*a*", "PatientID": "QR-*", "StudyDate": "20240101-"},
        [A1, B1],
    ),
}


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("case", MATCHING_CASES)
def test_each_matching_kind(qr: QR, tmp_path: Path, client: str, case: str) -> None:
    level, keys, expected = MATCHING_CASES[case]
    matches, status = find(client, qr.server, tmp_path, "study", level, keys)
    assert status == SUCCESS
    assert matched(matches, level) == sorted(expected)
    assert_matches(matches, level, keys)


@pytest.mark.parametrize("client", CLIENTS)
def test_wildcard_matches_one_value_of_a_multi_valued_attribute(
    qr: QR, tmp_path: Path, client: str
) -> None:
    """PS3.4 C.2.2.2.4: a multi-valued attribute matches when one of its values does.

    a1 holds CT and MR: "C*R" matches neither value, only their concatenation.
    """
    keys = {"PatientID": "QR-A", "ModalitiesInStudy": "C*R"}
    matches, status = find(client, qr.server, tmp_path, "study", "STUDY", keys)
    assert status == SUCCESS
    assert matched(matches, "STUDY") == []


NAME_QUERIES = {
    "lower-case-wildcard": "nguyễn*",
    "upper-case": "NGUYỄN^VĂN AN",
    "decomposed": unicodedata.normalize("NFD", "Nguyễn^Văn An"),
}


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("query", NAME_QUERIES)
def test_vietnamese_name_is_found_in_any_case(
    qr: QR, tmp_path: Path, client: str, query: str
) -> None:
    keys = {"SpecificCharacterSet": "ISO_IR 192", "PatientName": NAME_QUERIES[query]}
    keys |= {"PatientID": "", "NumberOfPatientRelatedInstances": ""}
    matches, status = find(client, qr.server, tmp_path, "patient", "PATIENT", keys)
    assert status == SUCCESS
    assert matched(matches, "PATIENT") == ["QR-V"]
    (match,) = matches
    assert match.SpecificCharacterSet == "ISO_IR 192"
    assert str(match.PatientName) == VIETNAMESE
    assert match.NumberOfPatientRelatedInstances == 1


def test_vietnamese_name_goes_out_as_utf8(qr: QR, tmp_path: Path) -> None:
    keys = {"PatientID": "QR-V", "PatientName": ""}
    matches, status = findscu(qr.server, tmp_path, "patient", "PATIENT", keys)
    assert status == SUCCESS
    (match,) = matches
    assert match.SpecificCharacterSet == "ISO_IR 192"
    assert str(match.PatientName) == VIETNAMESE
    # findscu keeps the bytes as they came: UTF-8, as ISO_IR 192 says.
    (response,) = tmp_path.glob("findscu-*/rsp0001.dcm")
    assert pydicom.dcmread(response).get_item("PatientName").value == VIETNAMESE.encode()


@pytest.mark.parametrize("client", CLIENTS)
def test_level_outside_the_model_is_refused(qr: QR, tmp_path: Path, client: str) -> None:
    keys = {"PatientID": "QR-A", "PatientName": ""}
    matches, status = find(client, qr.server, tmp_path, "study", "PATIENT", keys)
    assert (matches, status) == ([], IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS)


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("value", ["20240x01", "2024/01/02", "20240101-2024x", "20241301"])
def test_malformed_date_is_a_failure(qr: QR, tmp_path: Path, client: str, value: str) -> None:
    keys = {"PatientID": "QR-A", "StudyDate": value, "StudyInstanceUID": ""}
    matches, status = find(client, qr.server, tmp_path, "study", "STUDY", keys)
    assert matches == []
    assert 0xC000 <= status <= 0xCFFF, hex(status)
    assert echo(qr.server) == SUCCESS


def test_c_cancel_stops_a_find_with_many_matches(qr: QR) -> None:
    model = StudyRootQueryRetrieveInformationModelFind
    request = identifier("IMAGE", {"StudyInstanceUID": MANY_STUDY, "SOPInstanceUID": ""})
    with association(qr.server, [(model, None), (Verification, None)]) as assoc:
        every = list(assoc.send_c_find(request, model, msg_id=1))
        assert [s.Status for s, _ in every] == [PENDING] * MANY + [SUCCESS]

        responses = assoc.send_c_find(request, model, msg_id=2)
        status, match = next(responses)
        assert status.Status == PENDING and match.StudyInstanceUID == MANY_STUDY
        assoc.send_c_cancel(2, query_model=model)
        rest = [int(s.Status) for s, _ in responses]
        assert rest[-1] == CANCEL
        assert set(rest[:-1]) <= {PENDING}
        assert 1 + rest.count(PENDING) < MANY, "the cancel did not stop the search"
        assert assoc.send_c_echo().Status == SUCCESS  # the association goes on
    assert echo(qr.server) == SUCCESS


@pytest.mark.parametrize("max_pdu", [256, 1024])
def test_find_responses_larger_than_the_peers_pdus_arrive_whole(qr: QR, max_pdu: int) -> None:
    """Pending responses go out as PDUs written by pacs, in batches; a client
    with small PDUs gets each identifier in fragments, and every match whole."""
    model = StudyRootQueryRetrieveInformationModelFind
    request = identifier(
        "IMAGE",
        {"StudyInstanceUID": MANY_STUDY, "SOPInstanceUID": "", "PatientName": "", "StudyDate": ""},
    )
    with association(qr.server, [(model, None)]) as assoc:
        expected = [(int(s.Status), m) for s, m in assoc.send_c_find(request, model)]
    ae = AE(ae_title=CALLING_AE)
    ae.add_requested_context(model)
    ae.maximum_pdu_size = max_pdu
    assoc = guard_reactor(
        ae.associate("127.0.0.1", qr.server.dicom_port, ae_title=qr.server.ae_title)
    )
    try:
        assert assoc.is_established
        received = [(int(s.Status), m) for s, m in assoc.send_c_find(request, model)]
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()
    assert [s for s, _ in received] == [PENDING] * MANY + [SUCCESS]
    assert received == expected
    assert len({m.SOPInstanceUID for _, m in received[:-1]}) == MANY


class LateReactorCheckpoint(threading.Event):
    """pynetdicom's reactor pause point, made late: once woken, the reactor
    goes on only when a response has arrived (or after half a second), as
    when the OS or the GIL keeps its thread waiting on a busy machine. It
    then reaches the message queue as the response does: most of the time,
    instead of one query in a hundred."""

    def __init__(self, messages: queue.Queue[object]) -> None:
        super().__init__()
        self.messages = messages

    def wait(self, timeout: float | None = None) -> bool:
        woken = super().wait(timeout)
        deadline = time.monotonic() + 0.5
        while not self.messages.queue and time.monotonic() < deadline:
            pass  # the thread holds on to the interpreter, as a busy one does
        return woken


def answers_with_a_late_reactor(server: ServerProcess, guarded: bool) -> list[tuple[int, int]]:
    """Ten C-FINDs in a row over one plain pynetdicom association, each for a
    study that is there: (matches, final status) per query, -1 for no final
    status (pynetdicom then aborts the association, and the run ends)."""
    model = StudyRootQueryRetrieveInformationModelFind
    ae = AE(ae_title=CALLING_AE)
    ae.add_requested_context(model)
    ae.dimse_timeout = ae.network_timeout = 10 if guarded else 2
    assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title=server.ae_title)
    assert assoc.is_established
    assoc._reactor_checkpoint = LateReactorCheckpoint(assoc.dimse.msg_queue)
    assoc._reactor_checkpoint.set()
    if guarded:
        guard_reactor(assoc)
    request = identifier("STUDY", {"PatientID": "QR-B", "StudyInstanceUID": ""})
    answers = []
    try:
        for _ in range(10):
            statuses = [
                int(s.Status) for s, _ in assoc.send_c_find(request, model) if "Status" in s
            ]
            final = statuses[-1] if statuses and statuses[-1] != PENDING else -1
            answers.append((statuses.count(PENDING), final))
            if not assoc.is_established:
                break
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()
    return answers


def test_consecutive_finds_lose_no_match_when_the_client_reactor_is_late(qr: QR) -> None:
    """pynetdicom's own race (pacs/dimse/transport.py, GuardedDIMSEServiceProvider):
    its reactor, woken after one request, takes a response meant for the next.
    Plain, it loses matches or final responses; guarded, as pacs's SCUs and the
    test clients are, every query gets its one match and its Success."""
    assert answers_with_a_late_reactor(qr.server, guarded=True) == [(1, SUCCESS)] * 10
    plain = answers_with_a_late_reactor(qr.server, guarded=False)
    # If this fails, pynetdicom has fixed its race and the guard may go.
    assert plain != [(1, SUCCESS)] * 10, plain


def test_node_without_find_right_is_refused_but_may_store(qr: QR, tmp_path: Path) -> None:
    keys = {"PatientID": "QR-A"}
    assert pynetdicom_find(qr.server, "patient", "PATIENT", keys, ae_title="NOFIND") == (
        [],
        NOT_AUTHORIZED,
    )
    assert findscu(qr.server, tmp_path, "patient", "PATIENT", keys, ae_title="NOFIND") == (
        [],
        NOT_AUTHORIZED,
    )
    ds = make_ct("qr-nofind", 1, 1, patient_id="NOFIND-1")
    store_all(qr.server, [ds], ae_title="NOFIND")
    # The instance is there: another AE finds it.
    matches, status = pynetdicom_find(
        qr.server, "study", "IMAGE", {"SOPInstanceUID": ds.SOPInstanceUID}
    )
    assert (matched(matches, "IMAGE"), status) == ([ds.SOPInstanceUID], SUCCESS)


# -- C-MOVE ------------------------------------------------------------------------------

MOVE_CASES = {
    "study-root-STUDY": ("study", "STUDY", {"StudyInstanceUID": A1}, where(StudyInstanceUID=A1)),
    "study-root-STUDY-list": (
        "study",
        "STUDY",
        {"StudyInstanceUID": f"{A2}\\{B1}"},
        where(StudyInstanceUID=A2) + where(StudyInstanceUID=B1),
    ),
    "patient-root-SERIES": (
        "patient",
        "SERIES",
        {"PatientID": "QR-A", "StudyInstanceUID": A1, "SeriesInstanceUID": A1_MR},
        where(SeriesInstanceUID=A1_MR),
    ),
    "study-root-IMAGE": (
        "study",
        "IMAGE",
        {
            "StudyInstanceUID": A1,
            "SeriesInstanceUID": A1_CT,
            "SOPInstanceUID": "\\".join(uids_of(where(SeriesInstanceUID=A1_CT))[:2]),
        },
        sorted(where(SeriesInstanceUID=A1_CT), key=lambda ds: ds.SOPInstanceUID)[:2],
    ),
}


def movescu(
    server: ServerProcess, model: str, level: str, keys: dict[str, object], destination: str
) -> subprocess.CompletedProcess[str]:
    result = dcmtk(
        "movescu",
        "-d",
        "-aet",
        DCMTK_AE,
        "-aec",
        server.ae_title,
        "-aem",
        destination,
        DCMTK_MODEL[model],
        *dcmtk_keys(level, keys),
        "127.0.0.1",
        str(server.dicom_port),
    )
    # 69: movescu's exit code for a failed move (the tests check the status itself).
    assert result.returncode in (0, 69), f"movescu: {result.stderr}\n{server.log()}"
    return result


def assert_arrived_unchanged(files: dict[str, Path], expected: dict[str, bytes]) -> None:
    """Each file holds, after its File Meta group, exactly the bytes that were stored."""
    assert sorted(files) == sorted(expected)
    for sop_instance_uid, path in files.items():
        assert dataset_part(path.read_bytes()) == expected[sop_instance_uid], path.name


@pytest.mark.parametrize("case", MOVE_CASES)
def test_movescu_delivers_the_stored_bytes(
    qr: QR, storescp: Callable[..., Storescp], case: str
) -> None:
    model, level, keys, expected = MOVE_CASES[case]
    destination = storescp()
    result = movescu(qr.server, model, level, keys, "DEST")
    assert final_status(result) == SUCCESS, result.stdout + result.stderr
    files = destination.files()
    assert_arrived_unchanged(files, {ds.SOPInstanceUID: SENT[ds.SOPInstanceUID] for ds in expected})
    for path in files.values():
        assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian


def test_move_reports_progress_and_names_its_originator(qr: QR) -> None:
    model = StudyRootQueryRetrieveInformationModelMove
    request = identifier("SERIES", {"StudyInstanceUID": A1, "SeriesInstanceUID": A1_CT})
    with association(qr.server, [(model, None)]) as assoc:
        responses = list(assoc.send_c_move(request, "PYDEST", model, msg_id=41))
    counts = [
        (
            int(s.Status),
            s.get("NumberOfRemainingSuboperations"),
            s.NumberOfCompletedSuboperations,
            s.NumberOfFailedSuboperations,
            s.NumberOfWarningSuboperations,
        )
        for s, _ in responses
    ]
    assert counts == [(PENDING, 2, 1, 0, 0), (PENDING, 1, 2, 0, 0), (SUCCESS, None, 3, 0, 0)]
    for ds in where(SeriesInstanceUID=A1_CT):
        arrival = qr.receiver.arrivals[ds.SOPInstanceUID]
        assert arrival.transfer_syntax_uid == ExplicitVRLittleEndian
        assert arrival.data == SENT[ds.SOPInstanceUID]
        assert arrival.move_originator == (CALLING_AE, 41)


def test_move_lists_the_instances_the_destination_refused(qr: QR) -> None:
    model = StudyRootQueryRetrieveInformationModelMove
    instances = where(StudyInstanceUID=B1)
    refused = instances[0].SOPInstanceUID
    qr.receiver.refuse.add(refused)
    try:
        with association(qr.server, [(model, None)]) as assoc:
            responses = list(
                assoc.send_c_move(identifier("STUDY", {"StudyInstanceUID": B1}), "PYDEST", model)
            )
    finally:
        qr.receiver.refuse.discard(refused)
    final, failed = responses[-1]
    assert final.Status == WARNING_SUBOPERATIONS
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (1, 1)
    assert failed is not None and failed.FailedSOPInstanceUIDList == refused


@pytest.mark.parametrize("client", ["movescu", "pynetdicom"])
def test_move_to_an_unknown_destination_is_refused(qr: QR, client: str) -> None:
    keys = {"StudyInstanceUID": V1}
    if client == "movescu":
        status = final_status(movescu(qr.server, "study", "STUDY", keys, "NOWHERE"))
    else:
        model = StudyRootQueryRetrieveInformationModelMove
        with association(qr.server, [(model, None)]) as assoc:
            responses = list(assoc.send_c_move(identifier("STUDY", keys), "NOWHERE", model))
        assert len(responses) == 1
        status = int(responses[0][0].Status)
    assert status == MOVE_DESTINATION_UNKNOWN
    assert echo(qr.server) == SUCCESS


def test_move_to_a_destination_that_is_down_fails_and_the_server_goes_on(qr: QR) -> None:
    model = StudyRootQueryRetrieveInformationModelMove
    request = identifier("STUDY", {"StudyInstanceUID": A1})
    started = time.monotonic()
    with association(qr.server, [(model, None), (Verification, None)]) as assoc:
        responses = list(assoc.send_c_move(request, "DEAD", model))
        assert assoc.send_c_echo().Status == SUCCESS
    assert time.monotonic() - started < 10
    final, _ = responses[-1]
    assert final.Status == UNABLE_TO_PERFORM_SUBOPERATIONS
    assert final.get("NumberOfCompletedSuboperations", 0) == 0
    assert final.NumberOfFailedSuboperations == len(where(StudyInstanceUID=A1))
    assert echo(qr.server) == SUCCESS
    # And it still retrieves.
    (ds,) = where(StudyInstanceUID=V1)
    with association(qr.server, [(model, None)]) as assoc:
        request = identifier("STUDY", {"StudyInstanceUID": V1})
        responses = list(assoc.send_c_move(request, "PYDEST", model))
    assert responses[-1][0].Status == SUCCESS
    assert qr.receiver.arrivals[ds.SOPInstanceUID].data == SENT[ds.SOPInstanceUID]


def compressed_originals() -> dict[str, tuple[Path, Dataset]]:
    """SOP Instance UID -> (file, data set) of each compressed file the server holds."""
    result = {}
    for name in COMPRESSED:
        path = PYDICOM_TEST_FILES / name
        ds = pydicom.dcmread(path)
        result[str(ds.SOPInstanceUID)] = (path, ds)
    return result


def compressed_study_keys() -> dict[str, object]:
    studies = sorted({str(ds.StudyInstanceUID) for _, ds in compressed_originals().values()})
    return {"StudyInstanceUID": "\\".join(studies)}


def test_move_converts_compressed_images_for_an_uncompressed_destination(
    qr: QR, storescp: Callable[..., Storescp]
) -> None:
    destination = storescp()  # by default storescp accepts only uncompressed syntaxes
    result = movescu(qr.server, "study", "STUDY", compressed_study_keys(), "DEST")
    assert final_status(result) == SUCCESS, result.stdout + result.stderr
    originals = compressed_originals()
    files = destination.files()
    assert sorted(files) == sorted(originals)
    for sop_instance_uid, (path, original) in originals.items():
        received = pydicom.dcmread(files[sop_instance_uid])
        assert received.file_meta.TransferSyntaxUID in (
            ExplicitVRLittleEndian,
            ImplicitVRLittleEndian,
        )
        assert received.SOPClassUID == original.SOPClassUID
        assert received.StudyInstanceUID == original.StudyInstanceUID
        assert received.pixel_array.shape == original.pixel_array.shape, path.name
        assert np.array_equal(received.pixel_array, original.pixel_array), path.name


def test_move_sends_compressed_images_as_stored_when_accepted(
    qr: QR, storescp: Callable[..., Storescp]
) -> None:
    destination = storescp("+xa")
    result = movescu(qr.server, "study", "STUDY", compressed_study_keys(), "DEST")
    assert final_status(result) == SUCCESS, result.stdout + result.stderr
    originals = compressed_originals()
    files = destination.files()
    assert_arrived_unchanged(
        files, {uid: dataset_part(path.read_bytes()) for uid, (path, _) in originals.items()}
    )
    for uid, (_, original) in originals.items():
        received = pydicom.dcmread(files[uid], stop_before_pixels=True)
        assert received.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID


@pytest.mark.parametrize(
    ("node", "syntax", "decompressor"),
    [("JLSDEST", JPEGLSLossless, "dcmdjpls"), ("JPEGDEST", JPEGLosslessSV1, "dcmdjpeg")],
)
def test_move_compresses_for_a_node_that_prefers_it(
    qr: QR, storescp: Callable[..., Storescp], node: str, syntax: str, decompressor: str
) -> None:
    """A satellite hospital's node asks for JPEG-LS or JPEG lossless: every image,
    whatever it is stored as, arrives so, and DCMTK's own decoder gives back the
    original pixels."""
    destination = storescp("+xa")
    studies = [A2, *str(compressed_study_keys()["StudyInstanceUID"]).split("\\")]
    result = movescu(qr.server, "study", "STUDY", {"StudyInstanceUID": "\\".join(studies)}, node)
    assert final_status(result) == SUCCESS, result.stdout + result.stderr
    files = destination.files()
    originals = {uid: ds for uid, (_, ds) in compressed_originals().items()}
    originals.update({str(ds.SOPInstanceUID): ds for ds in where(StudyInstanceUID=A2)})
    assert sorted(files) == sorted(originals)
    for uid, original in originals.items():
        received = pydicom.dcmread(files[uid], stop_before_pixels=True)
        assert received.file_meta.TransferSyntaxUID == syntax, uid
        plain = files[uid].with_suffix(".plain")
        done = dcmtk(decompressor, str(files[uid]), str(plain))
        assert done.returncode == 0, done.stderr
        decoded = pydicom.dcmread(plain)
        assert decoded.SOPInstanceUID == uid
        assert np.array_equal(decoded.pixel_array, original.pixel_array), uid


def test_c_cancel_stops_a_move(qr: QR) -> None:
    model = StudyRootQueryRetrieveInformationModelMove
    request = identifier("STUDY", {"StudyInstanceUID": MANY_STUDY})
    with association(qr.server, [(model, None), (Verification, None)]) as assoc:
        responses = assoc.send_c_move(request, "PYDEST", model, msg_id=9)
        status, _ = next(responses)
        assert status.Status == PENDING
        assoc.send_c_cancel(9, query_model=model)
        rest = list(responses)
        assert assoc.send_c_echo().Status == SUCCESS
    final, failed = rest[-1]
    assert final.Status == CANCEL
    assert {int(s.Status) for s, _ in rest[:-1]} <= {PENDING}
    completed = int(final.NumberOfCompletedSuboperations)
    remaining = int(final.NumberOfRemainingSuboperations)
    assert 1 <= completed < MANY and completed + remaining == MANY
    assert failed is not None and len(failed.FailedSOPInstanceUIDList) == remaining
    many = [make_ct("qr-many", 1, i).SOPInstanceUID for i in range(MANY)]
    arrived = [uid for uid in many if uid in qr.receiver.arrivals]
    assert len(arrived) == completed
    assert not set(arrived) & set(failed.FailedSOPInstanceUIDList)
    assert echo(qr.server) == SUCCESS


# -- C-GET -------------------------------------------------------------------------------


def getscu(
    server: ServerProcess, out: Path, model: str, level: str, keys: dict[str, object]
) -> subprocess.CompletedProcess[str]:
    out.mkdir()
    result = dcmtk(
        "getscu",
        "-d",
        "-aet",
        DCMTK_AE,
        "-aec",
        server.ae_title,
        DCMTK_MODEL[model],
        "+B",
        "-od",
        str(out),
        *dcmtk_keys(level, keys),
        "127.0.0.1",
        str(server.dicom_port),
    )
    assert result.returncode == 0, f"getscu: {result.stderr}\n{server.log()}"
    return result


def assert_same_content(received: Dataset, original: Dataset, what: str) -> None:
    assert sorted(received.keys()) == sorted(original.keys()), what
    for element in original:
        assert received[element.tag].value == element.value, f"{what}: {element.tag}"


def test_getscu_receives_every_instance(qr: QR, tmp_path: Path) -> None:
    result = getscu(qr.server, tmp_path / "get", "study", "STUDY", {"StudyInstanceUID": A1})
    assert final_status(result) == SUCCESS, result.stdout + result.stderr
    files = files_by_uid(tmp_path / "get")
    expected = where(StudyInstanceUID=A1)
    assert sorted(files) == uids_of(expected)
    for ds in expected:
        assert_same_content(pydicom.dcmread(files[ds.SOPInstanceUID]), ds, ds.SOPInstanceUID)


def test_getscu_receives_the_stored_bytes(qr: QR, tmp_path: Path) -> None:
    # getscu proposes Explicit VR Little Endian first (its default), the stored syntax.
    result = getscu(
        qr.server,
        tmp_path / "get",
        "patient",
        "SERIES",
        {"PatientID": "QR-A", "StudyInstanceUID": A1, "SeriesInstanceUID": A1_CT},
    )
    assert final_status(result) == SUCCESS, result.stdout + result.stderr
    files = files_by_uid(tmp_path / "get")
    expected = where(SeriesInstanceUID=A1_CT)
    for path in files.values():
        assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert_arrived_unchanged(files, {ds.SOPInstanceUID: SENT[ds.SOPInstanceUID] for ds in expected})


class Inbox:
    """The C-STORE sub-operations a C-GET requestor received."""

    def __init__(self) -> None:
        self.arrivals: dict[str, Arrival] = {}

    def __call__(self, event: evt.Event) -> int:
        request = event.request
        self.arrivals[str(request.AffectedSOPInstanceUID)] = Arrival(
            str(event.context.transfer_syntax), request.DataSet.getvalue(), None
        )
        return SUCCESS


@pytest.mark.parametrize(
    "proposed",
    [[ExplicitVRLittleEndian], [ExplicitVRLittleEndian, ImplicitVRLittleEndian]],
    ids=["explicit-only", "explicit-then-implicit"],
)
def test_get_with_role_selection_receives_the_stored_bytes(qr: QR, proposed: list[str]) -> None:
    """The requestor proposes the stored syntax (first): it gets the stored bytes."""
    model = PatientRootQueryRetrieveInformationModelGet
    inbox = Inbox()
    contexts = [(model, None), (CTImageStorage, proposed), (MRImageStorage, proposed)]
    request = identifier("STUDY", {"PatientID": "QR-A", "StudyInstanceUID": A1})
    with association(
        qr.server, contexts, roles=[CTImageStorage, MRImageStorage], on_store=inbox
    ) as assoc:
        responses = list(assoc.send_c_get(request, model))
    expected = where(StudyInstanceUID=A1)
    total = len(expected)
    counts = [
        (int(s.Status), s.get("NumberOfRemainingSuboperations"), s.NumberOfCompletedSuboperations)
        for s, _ in responses
    ]
    assert counts == [(PENDING, total - n, n) for n in range(1, total)] + [(SUCCESS, None, total)]
    assert sorted(inbox.arrivals) == uids_of(expected)
    for ds in expected:
        arrival = inbox.arrivals[ds.SOPInstanceUID]
        assert arrival.transfer_syntax_uid == ExplicitVRLittleEndian
        assert arrival.data == SENT[ds.SOPInstanceUID]


def test_get_converts_for_an_implicit_vr_requestor(qr: QR) -> None:
    model = StudyRootQueryRetrieveInformationModelGet
    inbox = Inbox()
    contexts = [(model, None), (CTImageStorage, [ImplicitVRLittleEndian])]
    request = identifier("SERIES", {"SeriesInstanceUID": B1_CT})
    with association(qr.server, contexts, roles=[CTImageStorage], on_store=inbox) as assoc:
        responses = list(assoc.send_c_get(request, model))
    assert responses[-1][0].Status == SUCCESS
    expected = where(SeriesInstanceUID=B1_CT)
    assert sorted(inbox.arrivals) == uids_of(expected)
    for ds in expected:
        arrival = inbox.arrivals[ds.SOPInstanceUID]
        assert arrival.transfer_syntax_uid == ImplicitVRLittleEndian
        received = read_raw(arrival.data, ImplicitVRLittleEndian)
        assert_same_content(received, ds, ds.SOPInstanceUID)


def test_get_decompresses_for_a_requestor_that_accepts_only_uncompressed(qr: QR) -> None:
    model = StudyRootQueryRetrieveInformationModelGet
    originals = compressed_originals()
    classes = sorted({str(ds.SOPClassUID) for _, ds in originals.values()})
    inbox = Inbox()
    contexts = [(model, None)] + [(c, [ExplicitVRLittleEndian]) for c in classes]
    request = identifier("IMAGE", {"SOPInstanceUID": "\\".join(sorted(originals))})
    with association(qr.server, contexts, roles=classes, on_store=inbox) as assoc:
        responses = list(assoc.send_c_get(request, model))
    assert responses[-1][0].Status == SUCCESS
    assert sorted(inbox.arrivals) == sorted(originals)
    for sop_instance_uid, (path, original) in originals.items():
        arrival = inbox.arrivals[sop_instance_uid]
        assert arrival.transfer_syntax_uid == ExplicitVRLittleEndian
        received = read_raw(arrival.data, ExplicitVRLittleEndian)
        received.file_meta = FileMetaDataset()
        received.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        assert np.array_equal(received.pixel_array, original.pixel_array), path.name


# -- node settings ---------------------------------------------------------------------


@pytest.mark.parametrize("options", [(), ("+xi",)], ids=["storescp-default", "storescp-implicit"])
def test_node_preferring_implicit_vr_receives_implicit_vr(
    qr: QR, storescp: Callable[..., Storescp], options: tuple[str, ...]
) -> None:
    """IMPLDEST lists Implicit VR Little Endian first; its storescp accepts it."""
    destination = storescp(*options)
    expected = where(StudyInstanceUID=A2) + where(StudyInstanceUID=V1)
    keys = {"StudyInstanceUID": f"{A2}\\{V1}"}
    result = movescu(qr.server, "study", "STUDY", keys, "IMPLDEST")
    assert final_status(result) == SUCCESS, result.stdout + result.stderr
    files = destination.files()
    assert sorted(files) == uids_of(expected)
    for ds in expected:
        received = pydicom.dcmread(files[ds.SOPInstanceUID])
        assert received.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
        assert_same_content(received, ds, ds.SOPInstanceUID)


def test_known_nodes_only_refuses_unknown_calling_ae(tmp_path: Path) -> None:
    # PROBE is how start_server checks that the server is up.
    server = start_server(
        tmp_path / "pacs-data",
        "--known-nodes-only",
        "--node",
        "PROBE@127.0.0.1:104",
        "--node",
        "KNOWN@127.0.0.1:104",
    )
    try:
        ae = AE(ae_title="STRANGER")
        ae.add_requested_context(Verification)
        ae.acse_timeout = 10
        assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title=server.ae_title)
        assert assoc.is_rejected
        assert echo(server, "KNOWN") == SUCCESS
        ds = make_ct("qr-known", 1, 1, patient_id="KNOWN-1")
        store_all(server, [ds], ae_title="KNOWN")

        keys = {"PatientID": ""}
        stranger = dcmtk(
            "findscu",
            "-aet",
            "STRANGER",
            "-aec",
            server.ae_title,
            "-P",
            *dcmtk_keys("PATIENT", keys),
            "127.0.0.1",
            str(server.dicom_port),
        )
        assert stranger.returncode != 0
        assert "Calling AE Title Not Recognized" in stranger.stderr
        matches, status = findscu(server, tmp_path, "patient", "PATIENT", keys, ae_title="KNOWN")
        assert (matched(matches, "PATIENT"), status) == (["KNOWN-1"], SUCCESS)
    finally:
        stop_server(server)

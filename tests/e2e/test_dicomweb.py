"""DICOMweb end to end: dicomweb-client and httpx against a real ``pacs serve``.

One server serves the module. It is loaded once, over C-STORE, with a small
corpus made by ``make_ct`` (two patients, three studies, one patient with
seven one-instance studies for paging) and with pydicom's own files in their
own transfer syntaxes (JPEG 2000, JPEG baseline, RLE, JPEG-LS, Implicit VR
multi-frame), given fresh UIDs so that none collide. STOW-RS tests add their
own studies. What comes back is compared with what went in: the data set
bytes after the File Meta group when the stored syntax is asked for, pydicom's
decoding of the original file otherwise.

The streaming test has its own server, so that its memory figures are its own.
"""

from __future__ import annotations

import base64
import datetime as dt
import email.utils
import functools
import gzip
import json
import struct
import subprocess
import sys
import threading
import time
import unicodedata
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    JPEG2000MC,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    MRImageStorage,
)
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
)

from tests import dicom_clients
from tests.conftest import (
    PYDICOM_TEST_FILES,
    ServerProcess,
    start_server,
    stop_server,
)
from tests.dicom_clients import raw_sending
from tests.dicom_factory import blob_files, encode, make_ct, part10_bytes, uid

CALLING_AE = "DWSCU"
SUCCESS = 0x0000
PENDING = 0xFF00
DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
VIEWER = "https://viewer.example.org"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"

# -- the corpus ------------------------------------------------------------------

PATIENTS = {
    "DW-A": ("Alpha^Anna", "F", "19700101"),
    "DW-B": ("Beta^Bob", "M", "19800202"),
}
# study key: patient, study date, description, series (number, modality, SOP class, instances)
STUDIES = {
    "a1": ("DW-A", "20240102", "CHEST", [(1, "CT", CTImageStorage, 3),
                                         (2, "MR", MRImageStorage, 2)]),
    "a2": ("DW-A", "20230615", "HEAD", [(1, "CT", CTImageStorage, 1)]),
    "b1": ("DW-B", "20240301", "ABDOMEN", [(1, "CT", CTImageStorage, 2)]),
}  # fmt: skip
PAGED = 7  # one-instance studies of patient DW-PAGE


def build_corpus() -> list[Dataset]:
    datasets = []
    for key, (patient_id, study_date, description, series_list) in STUDIES.items():
        name, sex, birth_date = PATIENTS[patient_id]
        for number, modality, sop_class, count in series_list:
            for instance in range(1, count + 1):
                ds = make_ct(
                    f"dw-{key}",
                    number,
                    instance,
                    patient_id=patient_id,
                    patient_name=name,
                    modality=modality,
                    sop_class_uid=sop_class,
                )
                ds.PatientSex = sex
                ds.PatientBirthDate = birth_date
                ds.StudyDate = study_date
                ds.StudyDescription = description
                if key == "a1":
                    ds.PatientWeight = "72.5"
                datasets.append(ds)
    for page in range(PAGED):
        ds = make_ct(f"dw-page-{page}", patient_id="DW-PAGE", patient_name="Page^Paula")
        ds.StudyDate = f"2021010{page + 1}"
        datasets.append(ds)
    return datasets


CORPUS = build_corpus()
SENT = {str(ds.SOPInstanceUID): encode(ds) for ds in CORPUS}
"""The corpus as C-STORE carried it (Explicit VR Little Endian)."""
STUDY = {key: make_ct(f"dw-{key}").StudyInstanceUID for key in STUDIES}
A1, A2, B1 = STUDY["a1"], STUDY["a2"], STUDY["b1"]
A1_CT, A1_MR = make_ct("dw-a1", 1).SeriesInstanceUID, make_ct("dw-a1", 2).SeriesInstanceUID
A2_CT, B1_CT = make_ct("dw-a2", 1).SeriesInstanceUID, make_ct("dw-b1", 1).SeriesInstanceUID
PAGE_STUDIES = sorted(make_ct(f"dw-page-{page}").StudyInstanceUID for page in range(PAGED))


def where(**conditions: object) -> list[Dataset]:
    return [ds for ds in CORPUS if all(ds.get(k) == v for k, v in conditions.items())]


def sop_uids(datasets: Sequence[Dataset]) -> list[str]:
    return sorted(str(ds.SOPInstanceUID) for ds in datasets)


# pydicom's bundled files (never get_testdata_file: it may try the network).
BUNDLED = [
    "CT_small.dcm",  # Explicit VR Little Endian
    "JPEG2000.dcm",  # JPEG 2000
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline, YBR_FULL
    "MR_small_RLE.dcm",  # RLE lossless
    "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS lossless
    "rtdose.dcm",  # Implicit VR Little Endian, 15 frames of 32 bits
    "rtdose_rle.dcm",  # RLE, 15 frames
    "SC_rgb_rle_2frame.dcm",  # RLE, 2 RGB frames
]
FILES_STUDY = uid("dw-files")


@dataclass(frozen=True)
class Bundled:
    name: str
    path: Path
    dataset: Dataset
    data: bytes
    """The data set bytes after the File Meta group, as sent over C-STORE."""

    @property
    def sop(self) -> str:
        return str(self.dataset.SOPInstanceUID)

    @property
    def series(self) -> str:
        return str(self.dataset.SeriesInstanceUID)

    @property
    def transfer_syntax(self) -> str:
        return str(self.dataset.file_meta.TransferSyntaxUID)

    @property
    def frames(self) -> int:
        return int(self.dataset.get("NumberOfFrames") or 1)

    def pixels(self) -> np.ndarray:
        return pydicom.dcmread(self.path).pixel_array

    def frame_pixels(self, number: int) -> bytes:
        """Frame ``number`` (1-based) as pydicom decodes it, little-endian bytes."""
        array = self.pixels()
        frame = array[number - 1] if self.frames > 1 else array
        return np.ascontiguousarray(frame, dtype=frame.dtype.newbyteorder("<")).tobytes()

    def stored_frame(self, number: int) -> bytes:
        frames = list(generate_frames(self.dataset.PixelData, number_of_frames=self.frames))
        return frames[number - 1]


def rewrite(name: str, folder: Path) -> Bundled:
    """The bundled file with UIDs of its own, in one study for the module."""
    ds = pydicom.dcmread(PYDICOM_TEST_FILES / name)
    ds.StudyInstanceUID = FILES_STUDY
    ds.SeriesInstanceUID = uid("dw-files", name)
    ds.SOPInstanceUID = uid("dw-files", name, "instance")
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID = "DW-FILES"
    ds.PatientName = "Files^Bundled"
    path = folder / name
    ds.save_as(path, enforce_file_format=True)
    raw = path.read_bytes()
    return Bundled(name, path, pydicom.dcmread(path), raw[dataset_offset(raw) :])


# -- DICOM encoding helpers -------------------------------------------------------------

_LONG_VRS = frozenset(
    (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV")
)


def dataset_offset(part10: bytes) -> int:
    """Where the data set starts in a Part 10 file (after preamble, DICM and group 2)."""
    assert part10[128:132] == b"DICM", "not a Part 10 file"
    position = 132
    while struct.unpack_from("<H", part10, position)[0] == 0x0002:
        vr = part10[position + 4 : position + 6]
        if vr in _LONG_VRS:
            position += 12 + struct.unpack_from("<L", part10, position + 8)[0]
        else:
            position += 8 + struct.unpack_from("<H", part10, position + 6)[0]
    return position


def part10_of(ds: Dataset) -> bytes:
    """``ds`` as a conformant Part 10 file in Explicit VR Little Endian."""
    return part10_bytes(ds.SOPClassUID, ds.SOPInstanceUID, ExplicitVRLittleEndian, encode(ds))


def with_file_meta(ds: Dataset) -> Dataset:
    """``ds`` ready for ``dcmwrite`` as dicomweb-client calls it (preamble and full meta)."""
    ds.preamble = b"\x00" * 128
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


# -- talking to the server ----------------------------------------------------------------


# Up to 300 large instances go over one association here: a longer DIMSE timeout.
association = functools.partial(dicom_clients.association, ae_title=CALLING_AE, timeout=60)
store_all = functools.partial(dicom_clients.store_all, ae_title=CALLING_AE, timeout=60)


def c_find_images(server: ServerProcess, study_instance_uid: str) -> list[str]:
    """SOP Instance UIDs a Study Root C-FIND at IMAGE level finds in a study."""
    ds = Dataset()
    ds.QueryRetrieveLevel = "IMAGE"
    ds.StudyInstanceUID = study_instance_uid
    ds.SeriesInstanceUID = ""
    ds.SOPInstanceUID = ""
    model = StudyRootQueryRetrieveInformationModelFind
    with association(server, [(model, None)]) as assoc:
        responses = list(assoc.send_c_find(ds, model))
    *pending, (final, _) = responses
    assert final.Status == SUCCESS
    assert all(status.Status == PENDING for status, _ in pending)
    return sorted(str(match.SOPInstanceUID) for _, match in pending)


def multipart(response: httpx.Response) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a multipart/related body: (headers, payload) each."""
    main, params = media_params(response.headers["content-type"])
    assert main == "multipart/related", response.headers["content-type"]
    boundary = params["boundary"].encode()
    pieces = response.content.split(b"--" + boundary)
    assert pieces[-1].strip() == b"--", "no close delimiter"
    parts = []
    for piece in pieces[1:-1]:
        head, _, payload = piece.partition(b"\r\n\r\n")
        assert payload.endswith(b"\r\n")
        headers = {}
        for line in head.decode("latin-1").split("\r\n"):
            if line.strip():
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        parts.append((headers, payload[:-2]))
    return parts


def media_params(content_type: str) -> tuple[str, dict[str, str]]:
    main, *params = [p.strip() for p in content_type.split(";")]
    return main.lower(), {
        k.strip().lower(): v.strip().strip('"') for k, v in (p.split("=", 1) for p in params)
    }


def dicom_accept(transfer_syntax: str | None = None) -> dict[str, str]:
    value = 'multipart/related; type="application/dicom"'
    if transfer_syntax:
        value += f"; transfer-syntax={transfer_syntax}"
    return {"Accept": value}


def assert_short_reason(response: httpx.Response) -> None:
    """PS3.18 errors: a short text body, never a traceback."""
    assert response.text.strip(), "an error needs a reason"
    assert "Traceback" not in response.text
    assert len(response.text) < 600


# -- fixtures --------------------------------------------------------------------------


@dataclass
class DW:
    server: ServerProcess
    bundled: dict[str, Bundled]

    @property
    def url(self) -> str:
        return self.server.http_url + "/dicom-web"

    @property
    def client(self) -> DICOMwebClient:
        return DICOMwebClient(self.url)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(self.url + path, timeout=30, **kwargs)

    def instance_path(self, study: str, series: str, sop: str) -> str:
        return f"/studies/{study}/series/{series}/instances/{sop}"

    def stored_count(self) -> int:
        return len(blob_files(self.server.data_dir / "blobs"))


@pytest.fixture(scope="module")
def dw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DW]:
    root = tmp_path_factory.mktemp("dicomweb")
    folder = root / "bundled"
    folder.mkdir()
    bundled = {name: rewrite(name, folder) for name in BUNDLED}
    server = start_server(root / "pacs-data", "--cors-origin", VIEWER)
    try:
        store_all(server, CORPUS)
        contexts = sorted(
            {(str(b.dataset.SOPClassUID), b.transfer_syntax) for b in bundled.values()}
        )
        with raw_sending(), association(server, contexts) as assoc:
            statuses = [int(assoc.send_c_store(b.path).Status) for b in bundled.values()]
        assert statuses == [SUCCESS] * len(bundled), server.log()
        yield DW(server, bundled)
    finally:
        stop_server(server)


# -- QIDO-RS ----------------------------------------------------------------------------

STUDY_MATCHES: dict[str, tuple[dict[str, str], list[str]]] = {
    "single value": ({"PatientID": "DW-B"}, [B1]),
    "tag as key": ({"00100020": "DW-B"}, [B1]),
    "name, single value": ({"PatientName": "Alpha^Anna"}, sorted([A1, A2])),
    "wildcard *": ({"PatientName": "Alph*"}, sorted([A1, A2])),
    "wildcard ?": ({"PatientID": "DW-?"}, sorted([A1, A2, B1])),
    "wildcard in a tag key": ({"00081030": "*DOMEN"}, [B1]),
    "date range": ({"PatientID": "DW-?", "StudyDate": "20240101-20241231"}, sorted([A1, B1])),
    "date range, open start": ({"PatientID": "DW-?", "StudyDate": "-20231231"}, [A2]),
    "date range, open end": ({"PatientID": "DW-?", "StudyDate": "20240201-"}, [B1]),
    "single date": ({"StudyDate": "20230615"}, [A2]),
    "UID list": ({"StudyInstanceUID": f"{A1},{B1}"}, sorted([A1, B1])),
    "UID list and other keys": ({"StudyInstanceUID": f"{A1},{B1}", "PatientID": "DW-A"}, [A1]),
    "accession number": ({"AccessionNumber": "ACCdw-a2"}, [A2]),
    "modalities in study": ({"PatientID": "DW-?", "ModalitiesInStudy": "MR"}, [A1]),
    "no match": ({"PatientID": "DW-NOBODY"}, []),
}


@pytest.mark.parametrize("case", STUDY_MATCHES)
def test_search_for_studies_with_each_kind_of_matching(dw: DW, case: str) -> None:
    filters, expected = STUDY_MATCHES[case]
    found = dw.client.search_for_studies(search_filters=filters)
    assert sorted(s["0020000D"]["Value"][0] for s in found) == expected


def test_uid_list_as_repeated_query_keys(dw: DW) -> None:
    response = dw.get("/studies", params=[("StudyInstanceUID", A1), ("StudyInstanceUID", A2)])
    assert response.status_code == 200
    assert sorted(s["0020000D"]["Value"][0] for s in response.json()) == sorted([A1, A2])


# resource: (client method, its arguments, the unique key of the level, expected)
RESOURCE_CASES: dict[str, tuple[str, dict[str, Any], str, list[str]]] = {
    "/studies/{study}/series": (
        "search_for_series",
        {"study_instance_uid": A1},
        "0020000E",
        sorted([A1_CT, A1_MR]),
    ),
    "/studies/{study}/series?SeriesNumber": (
        "search_for_series",
        {"study_instance_uid": A1, "search_filters": {"SeriesNumber": "2"}},
        "0020000E",
        [A1_MR],
    ),
    "/series?PatientID&Modality": (
        "search_for_series",
        {"search_filters": {"PatientID": "DW-A", "Modality": "CT"}},
        "0020000E",
        sorted([A1_CT, A2_CT]),
    ),
    "/series?StudyInstanceUID list": (
        "search_for_series",
        {"search_filters": {"StudyInstanceUID": f"{A2},{B1}"}},
        "0020000E",
        sorted([A2_CT, B1_CT]),
    ),
    "/studies/{study}/series/{series}/instances": (
        "search_for_instances",
        {"study_instance_uid": A1, "series_instance_uid": A1_CT},
        "00080018",
        sop_uids(where(SeriesInstanceUID=A1_CT)),
    ),
    "/studies/{study}/instances": (
        "search_for_instances",
        {"study_instance_uid": A1},
        "00080018",
        sop_uids(where(StudyInstanceUID=A1)),
    ),
    "/studies/{study}/instances?Modality": (
        "search_for_instances",
        {"study_instance_uid": A1, "search_filters": {"Modality": "MR"}},
        "00080018",
        sop_uids(where(SeriesInstanceUID=A1_MR)),
    ),
    "/instances?PatientID": (
        "search_for_instances",
        {"search_filters": {"PatientID": "DW-B"}},
        "00080018",
        sop_uids(where(PatientID="DW-B")),
    ),
    "/instances?InstanceNumber&PatientName wildcard": (
        "search_for_instances",
        {"search_filters": {"InstanceNumber": "2", "PatientName": "*^Anna"}},
        "00080018",
        sop_uids([ds for ds in where(PatientID="DW-A") if ds.InstanceNumber == 2]),
    ),
    "/instances?SOPInstanceUID list": (
        "search_for_instances",
        {"search_filters": {"SOPInstanceUID": ",".join(sop_uids(where(StudyInstanceUID=B1)))}},
        "00080018",
        sop_uids(where(StudyInstanceUID=B1)),
    ),
}


@pytest.mark.parametrize("resource", RESOURCE_CASES)
def test_search_at_each_resource(dw: DW, resource: str) -> None:
    method, arguments, key, expected = RESOURCE_CASES[resource]
    found = getattr(dw.client, method)(**arguments)
    assert sorted(item[key]["Value"][0] for item in found) == expected


def test_search_results_are_dicom_json(dw: DW) -> None:
    response = dw.get("/studies", params={"PatientID": "DW-A", "includefield": "PatientWeight"})
    assert response.status_code == 200
    assert response.headers["content-type"] == DICOM_JSON
    studies = {s["0020000D"]["Value"][0]: s for s in response.json()}
    a1 = studies[A1]
    assert a1["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Alpha^Anna"}]}
    assert a1["00100020"] == {"vr": "LO", "Value": ["DW-A"]}
    assert a1["00080020"] == {"vr": "DA", "Value": ["20240102"]}
    # IS and DS values are JSON numbers (PS3.18 F.2.3.1), not strings
    assert a1["00201206"] == {"vr": "IS", "Value": [2]}
    assert a1["00201208"] == {"vr": "IS", "Value": [5]}
    assert a1["00101030"] == {"vr": "DS", "Value": [72.5]}
    assert sorted(a1["00080061"]["Value"]) == ["CT", "MR"]
    # an attribute without a value has no "Value" (PS3.18 F.2.5)
    assert a1["00080090"] == {"vr": "PN"}
    assert a1["00081190"] == {"vr": "UR", "Value": [f"{dw.url}/studies/{A1}"]}
    # a2 has no PatientWeight
    assert studies[A2]["00101030"] == {"vr": "DS"}
    for study in response.json():
        for tag, attribute in study.items():
            assert len(tag) == 8 and int(tag, 16) >= 0
            assert "vr" in attribute
            if "Value" in attribute:
                assert attribute["Value"], f"{tag} has an empty Value array"

    series = dw.get(f"/studies/{A1}/series", params={"SeriesNumber": "2"}).json()
    assert [s["00200011"] for s in series] == [{"vr": "IS", "Value": [2]}]
    assert series[0]["00080060"] == {"vr": "CS", "Value": ["MR"]}
    assert series[0]["00201209"] == {"vr": "IS", "Value": [2]}
    assert series[0]["00081190"] == {"vr": "UR", "Value": [f"{dw.url}/studies/{A1}/series/{A1_MR}"]}

    instances = dw.get(f"/studies/{A1}/series/{A1_MR}/instances").json()
    assert sorted(i["00200013"]["Value"][0] for i in instances) == [1, 2]
    for instance in instances:
        assert instance["00280010"] == {"vr": "US", "Value": [8]}
        assert instance["00080016"] == {"vr": "UI", "Value": [MRImageStorage]}
        sop = instance["00080018"]["Value"][0]
        assert instance["00081190"]["Value"] == [dw.url + dw.instance_path(A1, A1_MR, sop)]


def test_includefield_of_a_sequence_returns_its_stored_items(dw: DW) -> None:
    ds = make_ct("dw-seq", 1, 1, patient_id="DW-SEQ")
    ds.SpecificCharacterSet = "ISO_IR 192"
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator = "CTCHEST", "99PACS"
    code.CodeMeaning = "Chụp cắt lớp ngực"
    ds.ProcedureCodeSequence = DicomSequence([code])
    result = dw.client.store_instances([with_file_meta(ds)])
    assert "FailedSOPSequence" not in result
    (study,) = dw.get(
        "/studies", params={"PatientID": "DW-SEQ", "includefield": "ProcedureCodeSequence"}
    ).json()
    assert study["00081032"] == {
        "vr": "SQ",
        "Value": [
            {
                "00080100": {"vr": "SH", "Value": ["CTCHEST"]},
                "00080102": {"vr": "SH", "Value": ["99PACS"]},
                "00080104": {"vr": "LO", "Value": ["Chụp cắt lớp ngực"]},
            }
        ],
    }
    # a sequence the study does not hold: present, without a value (PS3.18 F.2.5)
    (study,) = dw.get(
        "/studies", params={"PatientID": "DW-SEQ", "includefield": "ReferencedStudySequence"}
    ).json()
    assert study["00081110"] == {"vr": "SQ"}


def test_includefield_as_a_list_and_all(dw: DW) -> None:
    # PatientWeight, SOPClassesInStudy, NumberOfPatientRelatedStudies: not returned by default
    extra = ("00101030", "00080062", "00201200")
    plain = dw.client.search_for_studies(search_filters={"PatientID": "DW-A"})
    assert plain and all(tag not in study for study in plain for tag in extra)

    response = dw.get(
        "/studies",
        params=[
            ("PatientID", "DW-A"),
            ("includefield", "PatientWeight,00080062"),
            ("includefield", "NumberOfPatientRelatedStudies"),
        ],
    )
    assert response.status_code == 200
    a1 = next(s for s in response.json() if s["0020000D"]["Value"][0] == A1)
    assert a1["00101030"] == {"vr": "DS", "Value": [72.5]}
    assert sorted(a1["00080062"]["Value"]) == sorted([CTImageStorage, MRImageStorage])
    assert a1["00201200"] == {"vr": "IS", "Value": [2]}
    assert "00104000" not in a1  # PatientComments: not asked for

    everything = dw.client.search_for_studies(
        search_filters={"StudyInstanceUID": A1}, fields=["all"]
    )
    (a1,) = everything
    for tag in (*extra, "00100010", "00080020", "00201208"):
        assert tag in a1, tag
    assert a1["00104000"] == {"vr": "LT"}  # PatientComments: never stored, so no Value
    assert a1["00201200"]["Value"] == [2]


def test_limit_and_offset_page_with_a_warning(dw: DW) -> None:
    def page(**params: Any) -> httpx.Response:
        response = dw.get("/studies", params={"PatientID": "DW-PAGE", **params})
        assert response.status_code == 200
        return response

    whole = page()
    assert "warning" not in whole.headers
    assert sorted(s["0020000D"]["Value"][0] for s in whole.json()) == PAGE_STUDIES
    seen = []
    for offset, size, cut in ((0, 3, True), (3, 3, True), (6, 1, False)):
        response = page(limit=3, offset=offset)
        assert len(response.json()) == size
        assert ("warning" in response.headers) is cut, (offset, dict(response.headers))
        if cut:
            assert response.headers["warning"].startswith("299 ")
        seen += [s["0020000D"]["Value"][0] for s in response.json()]
    assert sorted(seen) == PAGE_STUDIES  # no study twice, none lost
    assert "warning" not in page(limit=PAGED).headers
    assert page(offset=PAGED).json() == []

    # dicomweb-client follows the pages itself
    found = dw.client.search_for_studies(
        search_filters={"PatientID": "DW-PAGE"}, limit=2, get_remaining=True
    )
    assert sorted(s["0020000D"]["Value"][0] for s in found) == PAGE_STUDIES


BAD_QUERIES = {
    "unknown keyword": ("/studies", {"NoSuchAttribute": "1"}),
    "unknown tag": ("/studies", {"00191010": "1"}),
    "unknown includefield": ("/studies", {"includefield": "NoSuchAttribute"}),
    "limit not a number": ("/studies", {"limit": "ten"}),
    "negative limit": ("/studies", {"limit": "-1"}),
    "offset not a number": ("/series", {"offset": "1.5"}),
    "offset too large": ("/studies", {"offset": "99999999999999999999"}),
    "impossible date": ("/studies", {"StudyDate": "20241345"}),
    "backwards range": ("/studies", {"StudyDate": "20241231-20240101"}),
    "malformed UID key": ("/instances", {"SOPInstanceUID": "1.2.abc"}),
}


@pytest.mark.parametrize("case", BAD_QUERIES)
def test_a_bad_query_is_400_with_a_reason(dw: DW, case: str) -> None:
    path, params = BAD_QUERIES[case]
    response = dw.get(path, params=params)
    assert response.status_code == 400
    assert_short_reason(response)


def test_fuzzymatching_matches_names_by_their_start_in_any_case(dw: DW) -> None:
    strict = dw.client.search_for_studies(search_filters={"PatientName": "alpha"})
    assert strict == []
    fuzzy = dw.client.search_for_studies(
        search_filters={"PatientName": "alpha"}, fuzzymatching=True
    )
    assert sorted(s["0020000D"]["Value"][0] for s in fuzzy) == sorted([A1, A2])
    response = dw.get("/studies", params={"PatientName": "BETA", "fuzzymatching": "true"})
    assert [s["0020000D"]["Value"][0] for s in response.json()] == [B1]


VIETNAMESE = unicodedata.normalize("NFC", "Nguyễn^Văn An")


def test_a_vietnamese_name_stored_over_stow_comes_back_intact(dw: DW) -> None:
    ds = make_ct("dw-viet", patient_id="DW-VIET", patient_name=VIETNAMESE)
    ds.SpecificCharacterSet = "ISO_IR 192"
    result = dw.client.store_instances([with_file_meta(ds)])
    assert "FailedSOPSequence" not in result

    response = dw.get("/studies", params={"PatientID": "DW-VIET"})
    assert response.headers["content-type"] == DICOM_JSON
    (study,) = response.json()
    assert study["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": VIETNAMESE}]}
    assert response.content.decode("utf-8")  # JSON is UTF-8 (PS3.18 F.2)

    for name in ("nguyễn*", "NGUYỄN^VĂN*", "*văn an"):
        found = dw.client.search_for_studies(search_filters={"PatientName": name})
        assert [s["0020000D"]["Value"][0] for s in found] == [ds.StudyInstanceUID], name


# -- WADO-RS: instances ------------------------------------------------------------------


def _retrieve_path(dw: DW, level: str, which: str) -> tuple[str, list[str]]:
    """URL path and expected SOP Instance UIDs of a study, series or instance."""
    if which == "corpus":
        if level == "study":
            return f"/studies/{A1}", sop_uids(where(StudyInstanceUID=A1))
        if level == "series":
            return f"/studies/{A1}/series/{A1_CT}", sop_uids(where(SeriesInstanceUID=A1_CT))
        sop = sop_uids(where(SeriesInstanceUID=A1_MR))[0]
        return dw.instance_path(A1, A1_MR, sop), [sop]
    if level == "study":
        return f"/studies/{FILES_STUDY}", sorted(b.sop for b in dw.bundled.values())
    jpeg2000 = dw.bundled["JPEG2000.dcm"]
    if level == "series":
        return f"/studies/{FILES_STUDY}/series/{jpeg2000.series}", [jpeg2000.sop]
    return dw.instance_path(FILES_STUDY, jpeg2000.series, jpeg2000.sop), [jpeg2000.sop]


def _sent(dw: DW, sop: str) -> tuple[str, bytes]:
    """(transfer syntax, data set bytes) of an instance as it was sent."""
    for bundled in dw.bundled.values():
        if bundled.sop == sop:
            return bundled.transfer_syntax, bundled.data
    return ExplicitVRLittleEndian, SENT[sop]


@pytest.mark.parametrize("which", ["corpus", "bundled"])
@pytest.mark.parametrize("level", ["study", "series", "instance"])
def test_retrieve_as_stored_gives_the_stored_bytes(dw: DW, level: str, which: str) -> None:
    path, expected = _retrieve_path(dw, level, which)
    response = dw.get(path, headers=dicom_accept("*"))
    assert response.status_code == 200, response.text
    main, params = media_params(response.headers["content-type"])
    assert (main, params["type"]) == ("multipart/related", "application/dicom")
    parts = multipart(response)
    found = []
    for headers, part10 in parts:
        meta = pydicom.dcmread(BytesIO(part10), stop_before_pixels=True).file_meta
        sop = str(meta.MediaStorageSOPInstanceUID)
        syntax, data = _sent(dw, sop)
        part_type, part_params = media_params(headers["content-type"])
        assert (part_type, part_params.get("transfer-syntax")) == ("application/dicom", syntax)
        assert meta.TransferSyntaxUID == syntax
        assert part10[dataset_offset(part10) :] == data, sop
        found.append(sop)
    assert sorted(found) == expected


@pytest.mark.parametrize("level", ["study", "series", "instance"])
def test_retrieve_by_default_is_explicit_vr_little_endian_with_equal_pixels(
    dw: DW, level: str
) -> None:
    client = dw.client
    if level == "study":
        datasets = client.retrieve_study(FILES_STUDY)
        expected = list(dw.bundled.values())
    elif level == "series":
        expected = [dw.bundled["SC_rgb_jpeg_dcmtk.dcm"]]
        datasets = client.retrieve_series(FILES_STUDY, expected[0].series)
    else:
        expected = [dw.bundled["MR_small_RLE.dcm"]]
        # dicomweb-client asks for transfer-syntax=* here unless told otherwise
        datasets = [
            client.retrieve_instance(
                FILES_STUDY, expected[0].series, expected[0].sop, media_types=(DICOM,)
            )
        ]
    by_sop = {str(ds.SOPInstanceUID): ds for ds in datasets}
    assert sorted(by_sop) == sorted(b.sop for b in expected)
    for bundled in expected:
        ds = by_sop[bundled.sop]
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian, bundled.name
        assert ds.PatientID == "DW-FILES"
        assert ds.SOPClassUID == bundled.dataset.SOPClassUID
        assert np.array_equal(ds.pixel_array, bundled.pixels()), bundled.name

    # the corpus is stored in Explicit VR Little Endian: the default gives its bytes
    response = dw.get(f"/studies/{B1}", headers=dicom_accept())
    assert response.status_code == 200
    assert media_params(response.headers["content-type"])[1]["transfer-syntax"] == (
        ExplicitVRLittleEndian
    )
    for _, part10 in multipart(response):
        sop = str(pydicom.dcmread(BytesIO(part10)).SOPInstanceUID)
        assert part10[dataset_offset(part10) :] == SENT[sop]


def test_retrieve_converts_to_an_explicit_transfer_syntax(dw: DW) -> None:
    for name in ("MR_small_RLE.dcm", "JPEG2000.dcm", "rtdose.dcm"):
        bundled = dw.bundled[name]
        path = dw.instance_path(FILES_STUDY, bundled.series, bundled.sop)
        response = dw.get(path, headers=dicom_accept(ImplicitVRLittleEndian))
        assert response.status_code == 200, (name, response.text)
        ((headers, part10),) = multipart(response)
        assert media_params(headers["content-type"])[1]["transfer-syntax"] == (
            ImplicitVRLittleEndian
        )
        ds = pydicom.dcmread(BytesIO(part10))
        assert ds.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
        assert np.array_equal(ds.pixel_array, bundled.pixels()), name


# Lossless targets: pixels equal; lossy ones: marked lossy, same UIDs.
CONVERSIONS = [
    ("MR_small_RLE.dcm", JPEGLSLossless),
    ("CT_small.dcm", HTJ2KLossless),
    ("JPEG2000.dcm", JPEGLosslessSV1),
    ("SC_rgb_rle_2frame.dcm", JPEG2000Lossless),
    ("rtdose_rle.dcm", DeflatedExplicitVRLittleEndian),
    ("CT_small.dcm", JPEG2000),
    ("MR_small_jpeg_ls_lossless.dcm", HTJ2K),
    ("SC_rgb_jpeg_dcmtk.dcm", JPEGBaseline8Bit),
]


@pytest.mark.parametrize(("name", "syntax"), CONVERSIONS, ids=lambda v: str(v))
def test_retrieve_converts_to_compressed_syntaxes(dw: DW, name: str, syntax: str) -> None:
    bundled = dw.bundled[name]
    # httpx, as dicomweb-client 0.59 refuses to ask for HTJ2K or deflate
    response = dw.get(
        f"/studies/{FILES_STUDY}/series/{bundled.series}", headers=dicom_accept(syntax)
    )
    assert response.status_code == 200, response.text
    ((headers, part10),) = multipart(response)
    assert media_params(headers["content-type"])[1]["transfer-syntax"] == syntax
    ds = pydicom.dcmread(BytesIO(part10))
    assert ds.file_meta.TransferSyntaxUID == syntax
    assert ds.SOPInstanceUID == bundled.sop
    if syntax in (JPEG2000, HTJ2K, JPEGBaseline8Bit) and syntax != bundled.transfer_syntax:
        assert ds.LossyImageCompression == "01"
        error = ds.pixel_array.astype(float) - bundled.pixels().astype(float)
        peak = float((1 << int(ds.BitsStored)) - 1)
        assert 10 * np.log10(peak**2 / max(np.mean(error**2), 1e-9)) > 30
    else:
        assert np.array_equal(ds.pixel_array, bundled.pixels())


def test_a_transfer_syntax_that_cannot_be_made_is_406(dw: DW) -> None:
    sop = sop_uids(where(SeriesInstanceUID=A1_CT))[0]
    for path in (
        f"/studies/{A1}",
        f"/studies/{A1}/series/{A1_CT}",
        dw.instance_path(A1, A1_CT, sop),
    ):
        # 16-bit images do not fit JPEG baseline; multi-component JPEG 2000 is not written
        for syntax in (JPEGBaseline8Bit, JPEG2000MC):
            response = dw.get(path, headers=dicom_accept(syntax))
            assert response.status_code == 406, (path, syntax)
            assert_short_reason(response)
    # the study of bundled files mixes syntaxes: one that cannot be converted is enough
    response = dw.get(f"/studies/{FILES_STUDY}", headers=dicom_accept(RLE_LOSSLESS))
    assert response.status_code == 406
    with pytest.raises(requests.HTTPError) as raised:
        dw.client.retrieve_instance(
            A1, A1_CT, sop, media_types=(("application/dicom", JPEGBaseline8Bit),)
        )
    assert raised.value.response.status_code == 406


UNKNOWN = uid("dw-unknown")


def test_unknown_uids_are_404(dw: DW) -> None:
    sop = sop_uids(where(SeriesInstanceUID=A1_CT))[0]
    jpeg = dw.bundled["SC_rgb_jpeg_dcmtk.dcm"]
    paths = [
        f"/studies/{UNKNOWN}",
        f"/studies/{A1}/series/{UNKNOWN}",
        dw.instance_path(A1, A1_CT, UNKNOWN),
        f"/studies/{B1}/series/{A1_CT}",  # a series of another study
        dw.instance_path(B1, A1_CT, sop),  # an instance under the wrong study
        f"/studies/{UNKNOWN}/metadata",
        f"/studies/{A1}/series/{UNKNOWN}/metadata",
        dw.instance_path(A1, A1_CT, UNKNOWN) + "/metadata",
        dw.instance_path(A1, A1_CT, UNKNOWN) + "/frames/1",
        dw.instance_path(B1, B1_CT, sop) + "/frames/1",
        dw.instance_path(FILES_STUDY, jpeg.series, jpeg.sop) + "/bulkdata/00291010",
        dw.instance_path(A1, A1_CT, UNKNOWN) + "/bulkdata/7FE00010",
    ]
    for path in paths:
        accept = DICOM_JSON if path.endswith("metadata") else "*/*"
        response = dw.get(path, headers={"Accept": accept})
        assert response.status_code == 404, (path, response.status_code, response.text)
        assert_short_reason(response)
    with pytest.raises(requests.HTTPError) as raised:
        dw.client.retrieve_study(UNKNOWN)
    assert raised.value.response.status_code == 404


def test_malformed_uids_are_400(dw: DW) -> None:
    paths = [
        "/studies/1.2.abc",
        "/studies/1.2.abc/metadata",
        "/studies/1.2.abc/series",
        "/studies/1.2.abc/instances",
        f"/studies/{A1}/series/1.2.abc",
        f"/studies/{A1}/series/1.2.abc/metadata",
        f"/studies/{A1}/series/{A1_CT}/instances/1.2.abc/frames/1",
        f"/studies/{A1}/series/{A1_CT}/instances/1.2.abc/bulkdata/7FE00010",
        "/studies/%2E%2E/metadata",  # ".." as the study UID
        f"/studies/{A1}/series/%2E%2E/instances",
        "/studies/" + "1." * 40 + "1",  # longer than 64 characters
    ]
    for path in paths:
        response = dw.get(path, headers={"Accept": "*/*"})
        assert response.status_code == 400, (path, response.status_code, response.text)
        assert_short_reason(response)


def test_path_tricks_are_400(dw: DW) -> None:
    """Issue 4, point 5: "malformed UIDs or path tricks -> 400", "../x" among them."""
    jpeg = dw.bundled["SC_rgb_jpeg_dcmtk.dcm"]
    instance = dw.instance_path(FILES_STUDY, jpeg.series, jpeg.sop)
    paths = [
        "/studies/..%2Fx/metadata",  # "../x" as the study UID
        f"/studies/{A1}/series/..%2Fx/instances",  # "../x" as the series UID
        f"/studies/{A1}/series/..%2F..%2F{A1_CT}",
        f"{instance}/bulkdata/..%2F..%2Fx",
        f"{instance}/bulkdata/%2E%2E/7FE00010",
    ]
    statuses = {path: dw.get(path, headers={"Accept": "*/*"}).status_code for path in paths}
    assert statuses == dict.fromkeys(paths, 400)


def test_a_bulk_data_path_through_a_value_that_is_not_a_sequence_is_not_a_500(dw: DW) -> None:
    jpeg = dw.bundled["SC_rgb_jpeg_dcmtk.dcm"]
    instance = dw.instance_path(FILES_STUDY, jpeg.series, jpeg.sop)
    for suffix in ("7FE00010/1/00100010", "00100010/1/00100020", "7FE00010/1"):
        response = dw.get(f"{instance}/bulkdata/{suffix}", headers={"Accept": "*/*"})
        assert response.status_code in (400, 404), (suffix, response.status_code, response.text)
        assert_short_reason(response)


# -- WADO-RS: metadata and bulk data -------------------------------------------------------


def _bulk_value(ds: Dataset, steps: list[str]) -> bytes:
    """The value a BulkDataURI path (tag, item number, tag...) names in ``ds``."""
    while True:
        element = ds[Tag(int(steps.pop(0), 16))]
        if not steps:
            return bytes(element.value)
        ds = element.value[int(steps.pop(0)) - 1]


def _walk(model: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for tag, attribute in model.items():
        yield tag, attribute
        if attribute.get("vr") == "SQ":
            for item in attribute.get("Value", []):
                yield from _walk(item)


@pytest.mark.parametrize("level", ["study", "series", "instance"])
def test_metadata_has_bulk_data_uris_that_resolve(dw: DW, level: str) -> None:
    client = dw.client
    if level == "study":
        metadata = client.retrieve_study_metadata(FILES_STUDY)
        expected = list(dw.bundled.values())
        path = f"/studies/{FILES_STUDY}/metadata"
    elif level == "series":
        expected = [dw.bundled["rtdose.dcm"]]
        metadata = client.retrieve_series_metadata(FILES_STUDY, expected[0].series)
        path = f"/studies/{FILES_STUDY}/series/{expected[0].series}/metadata"
    else:
        expected = [dw.bundled["JPEG2000.dcm"]]
        metadata = [
            client.retrieve_instance_metadata(FILES_STUDY, expected[0].series, expected[0].sop)
        ]
        path = dw.instance_path(FILES_STUDY, expected[0].series, expected[0].sop) + "/metadata"
    response = dw.get(path, headers={"Accept": DICOM_JSON})
    assert response.status_code == 200
    assert response.headers["content-type"] == DICOM_JSON
    assert len(response.json()) == len(expected)

    by_sop = {m["00080018"]["Value"][0]: m for m in metadata}
    assert sorted(by_sop) == sorted(b.sop for b in expected)
    for bundled in expected:
        model = by_sop[bundled.sop]
        pixel_data = model["7FE00010"]
        assert set(pixel_data) == {"vr", "BulkDataURI"}, "Pixel Data inlined"
        assert pixel_data["BulkDataURI"].startswith(dw.url + "/studies/")
        resolved = 0
        for tag, attribute in _walk(model):
            assert "Value" not in attribute or attribute["Value"], tag
            if "BulkDataURI" in attribute:
                uri = attribute["BulkDataURI"]
                steps = uri.split("/bulkdata/", 1)[1].split("/")
                assert client.retrieve_bulkdata(uri) == [_bulk_value(bundled.dataset, steps)], uri
                resolved += 1
        assert resolved >= 1
        for tag, attribute in model.items():
            if "InlineBinary" in attribute:
                value = bundled.dataset[Tag(int(tag, 16))].value
                assert base64.b64decode(attribute["InlineBinary"]) == bytes(value), tag
        assert model["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Files^Bundled"}]}
        assert model["0020000D"] == {"vr": "UI", "Value": [FILES_STUDY]}


def test_metadata_of_the_corpus_matches_pydicom_json(dw: DW) -> None:
    (ds,) = where(SeriesInstanceUID=A1_MR, InstanceNumber=1)
    path = dw.instance_path(A1, A1_MR, str(ds.SOPInstanceUID)) + "/metadata"
    (model,) = dw.get(path, headers={"Accept": DICOM_JSON}).json()
    uri = model.pop("7FE00010")["BulkDataURI"]
    assert uri == f"{dw.url}{dw.instance_path(A1, A1_MR, str(ds.SOPInstanceUID))}/bulkdata/7FE00010"
    # The stored transfer syntax is added, as dcm4chee-arc does (Available Transfer Syntax UID).
    assert model.pop("00083002") == {"vr": "UI", "Value": [ExplicitVRLittleEndian]}
    expected = ds.to_json_dict()
    expected.pop("7FE00010")
    assert model == expected
    assert dw.client.retrieve_bulkdata(uri) == [ds.PixelData]


def test_json_resources_asked_as_xml_are_406(dw: DW) -> None:
    for path in (f"/studies/{A1}/metadata", "/studies", f"/studies/{A1}/series"):
        response = dw.get(path, headers={"Accept": "application/dicom+xml"})
        assert response.status_code == 406, path
        assert_short_reason(response)


# -- WADO-RS: frames --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "numbers"),
    [
        ("CT_small.dcm", [1]),
        ("rtdose.dcm", [2]),
        ("rtdose.dcm", [1, 5, 15]),
        ("rtdose_rle.dcm", [3]),
        ("SC_rgb_rle_2frame.dcm", [2, 1]),
        ("JPEG2000.dcm", [1]),
        ("SC_rgb_jpeg_dcmtk.dcm", [1]),
    ],
)
def test_frames_uncompressed_equal_pydicom_pixels(dw: DW, name: str, numbers: list[int]) -> None:
    bundled = dw.bundled[name]
    frames = dw.client.retrieve_instance_frames(
        FILES_STUDY,
        bundled.series,
        bundled.sop,
        numbers,
        media_types=(("application/octet-stream", ExplicitVRLittleEndian),),
    )
    assert frames == [bundled.frame_pixels(n) for n in numbers]

    path = dw.instance_path(FILES_STUDY, bundled.series, bundled.sop)
    response = dw.get(
        f"{path}/frames/{','.join(map(str, numbers))}",
        headers={"Accept": 'multipart/related; type="application/octet-stream"'},
    )
    parts = multipart(response)
    assert [media_params(h["content-type"])[0] for h, _ in parts] == (
        ["application/octet-stream"] * len(numbers)
    )
    assert [payload for _, payload in parts] == frames


@pytest.mark.parametrize(
    ("name", "numbers"), [("CT_small.dcm", [1]), ("rtdose.dcm", [4, 2, 9]), ("JPEG2000.dcm", [1])]
)
def test_frames_the_same_whether_sent_at_once_or_from_a_worker(
    dw: DW, name: str, numbers: list[int]
) -> None:
    """A client that takes no gzip gets uncompressed frames read on the event loop
    when they are in the page cache (``Archive.frames_now``); one that takes gzip
    gets them compressed from a worker thread; a decoded one always comes from
    a worker. The bytes and the headers are the same."""
    bundled = dw.bundled[name]
    path = f"{dw.instance_path(FILES_STUDY, bundled.series, bundled.sop)}/frames/"
    path += ",".join(map(str, numbers))
    accept = 'multipart/related; type="application/octet-stream"'
    expected = [bundled.frame_pixels(n) for n in numbers]
    for encoding in ("identity", "identity", "gzip"):  # the first call reads the pages in
        response = dw.get(path, headers={"Accept": accept, "Accept-Encoding": encoding})
        assert response.status_code == 200
        assert response.headers.get("content-encoding", "identity") == encoding
        assert "Accept-Encoding" in response.headers["vary"]
        if encoding == "identity":
            assert int(response.headers["content-length"]) == len(response.content)
        parts = multipart(response)
        assert [h["content-type"] for h, _ in parts] == ["application/octet-stream"] * len(numbers)
        assert [payload for _, payload in parts] == expected


def test_converted_frames_asked_again_are_the_same(dw: DW) -> None:
    """A viewer opening a study again gets the HTJ2K frames kept from the first time."""
    bundled = dw.bundled["SC_rgb_rle_2frame.dcm"]
    path = f"{dw.instance_path(FILES_STUDY, bundled.series, bundled.sop)}/frames/2,1"
    accept = {"Accept": 'multipart/related; type="image/jphc"'}
    first, again = dw.get(path, headers=accept), dw.get(path, headers=accept)
    assert first.status_code == again.status_code == 200
    assert [p for _, p in multipart(first)] == [p for _, p in multipart(again)]
    assert [h for h, _ in multipart(first)] == [h for h, _ in multipart(again)]
    assert media_params(multipart(again)[0][0]["content-type"]) == (
        "image/jphc",
        {"transfer-syntax": HTJ2KLossless},
    )


@pytest.mark.parametrize(
    ("name", "media_type", "numbers"),
    [
        ("rtdose_rle.dcm", "image/dicom-rle", [1, 3, 15]),
        ("SC_rgb_rle_2frame.dcm", "image/dicom-rle", [2]),
        ("JPEG2000.dcm", "image/jp2", [1]),
        ("SC_rgb_jpeg_dcmtk.dcm", "image/jpeg", [1]),
        ("MR_small_jpeg_ls_lossless.dcm", "image/jls", [1]),
    ],
)
def test_compressed_frames_as_stored(
    dw: DW, name: str, media_type: str, numbers: list[int]
) -> None:
    bundled = dw.bundled[name]
    expected = [bundled.stored_frame(n) for n in numbers]
    client = dw.client
    args = (FILES_STUDY, bundled.series, bundled.sop, numbers)
    assert client.retrieve_instance_frames(*args) == expected  # */*
    typed = client.retrieve_instance_frames(
        *args, media_types=((media_type, bundled.transfer_syntax),)
    )
    assert typed == expected

    path = dw.instance_path(FILES_STUDY, bundled.series, bundled.sop)
    response = dw.get(
        f"{path}/frames/{','.join(map(str, numbers))}",
        headers={"Accept": f'multipart/related; type="{media_type}"'},
    )
    assert response.status_code == 200
    for headers, _ in multipart(response):
        part_type, params = media_params(headers["content-type"])
        assert (part_type, params.get("transfer-syntax")) == (media_type, bundled.transfer_syntax)


@pytest.mark.parametrize(
    ("name", "accept", "syntax"),
    [
        ("CT_small.dcm", "image/jphc", HTJ2KLossless),
        ("CT_small.dcm", "image/jls", JPEGLSLossless),
        ("SC_rgb_rle_2frame.dcm", "image/jp2", JPEG2000Lossless),
        ("JPEG2000.dcm", f"image/jphc; transfer-syntax={HTJ2KLosslessRPCL}", HTJ2KLosslessRPCL),
        ("MR_small_RLE.dcm", f"image/jpeg; transfer-syntax={JPEGLosslessSV1}", JPEGLosslessSV1),
    ],
)
def test_frames_converted_to_a_frame_media_type(
    dw: DW, name: str, accept: str, syntax: str
) -> None:
    """A viewer on a thin link asks frames in a compressed syntax the file is not stored in."""
    bundled = dw.bundled[name]
    path = dw.instance_path(FILES_STUDY, bundled.series, bundled.sop)
    numbers = [1, 2] if bundled.frames > 1 else [1]
    media_type, _, params = accept.partition(";")
    header = f'multipart/related; type="{media_type}"' + (f"; {params.strip()}" if params else "")
    response = dw.get(f"{path}/frames/{','.join(map(str, numbers))}", headers={"Accept": header})
    assert response.status_code == 200, response.text
    parts = multipart(response)
    assert len(parts) == len(numbers)
    for number, (headers, codestream) in zip(numbers, parts, strict=True):
        part_type = media_params(headers["content-type"])[0]
        part_params = media_params(headers["content-type"])[1]
        assert (part_type, part_params.get("transfer-syntax")) == (media_type, syntax)
        # wrap the codestream in a data set and let pydicom (pylibjpeg) decode it
        ds = Dataset()
        for keyword in ("Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit"):
            setattr(ds, keyword, bundled.dataset.get(keyword))
        ds.SamplesPerPixel = bundled.dataset.SamplesPerPixel
        # colour JPEG 2000 is written with the reversible colour transform
        ds.PhotometricInterpretation = "MONOCHROME2" if ds.SamplesPerPixel == 1 else "YBR_RCT"
        ds.PlanarConfiguration = 0
        ds.PixelRepresentation = bundled.dataset.PixelRepresentation
        ds.PixelData = encapsulate([codestream])
        ds["PixelData"].VR = "OB"
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = syntax
        expected = np.frombuffer(bundled.frame_pixels(number), dtype=ds.pixel_array.dtype)
        assert np.array_equal(ds.pixel_array.ravel(), expected)
        # JPEG 2000 and HTJ2K parts say what they decode to, for a client to check its decoder
        if syntax in (HTJ2KLossless, HTJ2KLosslessRPCL, JPEG2000Lossless):
            crc = zlib.crc32(np.ascontiguousarray(ds.pixel_array).data)
            assert headers["decoded-crc32"] == f"{crc:08x}"
        else:
            assert "decoded-crc32" not in headers


def test_frames_in_a_syntax_the_image_cannot_take_are_406(dw: DW) -> None:
    ct = dw.bundled["CT_small.dcm"]  # signed 16-bit: no JPEG baseline
    path = dw.instance_path(FILES_STUDY, ct.series, ct.sop)
    response = dw.get(
        f"{path}/frames/1", headers={"Accept": 'multipart/related; type="image/jpeg"'}
    )
    assert response.status_code == 406
    assert "JPEG baseline" in response.text
    # a second choice that fits is taken
    response = dw.get(
        f"{path}/frames/1",
        headers={
            "Accept": 'multipart/related; type="image/jpeg", multipart/related; type="image/jls"'
        },
    )
    assert response.status_code == 200
    assert media_params(multipart(response)[0][0]["content-type"])[0] == "image/jls"


def test_a_frame_out_of_range_is_404_and_a_bad_list_400(dw: DW) -> None:
    rtdose, ct = dw.bundled["rtdose.dcm"], dw.bundled["CT_small.dcm"]
    rtdose_path = dw.instance_path(FILES_STUDY, rtdose.series, rtdose.sop)
    ct_path = dw.instance_path(FILES_STUDY, ct.series, ct.sop)
    cases = {
        f"{rtdose_path}/frames/16": (404, 400),
        f"{rtdose_path}/frames/1,16": (404, 400),
        f"{ct_path}/frames/2": (404, 400),
        f"{rtdose_path}/frames/0": (400,),
        f"{rtdose_path}/frames/one": (400,),
        f"{rtdose_path}/frames/-1": (400,),
    }
    for path, statuses in cases.items():
        response = dw.get(path, headers={"Accept": "*/*"})
        assert response.status_code in statuses, (path, response.status_code, response.text)
        assert_short_reason(response)
    with pytest.raises(requests.HTTPError) as raised:
        dw.client.retrieve_instance_frames(FILES_STUDY, rtdose.series, rtdose.sop, [16])
    assert raised.value.response.status_code in (404, 400)


# -- STOW-RS -----------------------------------------------------------------------------------


BOUNDARY = "dw-boundary-0123"
STOW_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def stow_body(parts: Sequence[bytes]) -> bytes:
    body = b"".join(
        f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n"
        for part in parts
    )
    return body + f"--{BOUNDARY}--\r\n".encode()


def post(dw: DW, body: bytes, content_type: str, path: str = "/studies") -> httpx.Response:
    return httpx.post(
        dw.url + path, content=body, headers={"Content-Type": content_type}, timeout=30
    )


def stow(dw: DW, parts: Sequence[bytes], path: str = "/studies") -> httpx.Response:
    return post(dw, stow_body(parts), STOW_TYPE, path)


def test_stow_several_instances_then_found_by_qido_and_c_find(dw: DW) -> None:
    datasets = [make_ct("dw-stow", series, n, patient_id="DW-STOW") for series, n in
                ((1, 1), (1, 2), (2, 1))]  # fmt: skip
    study = str(datasets[0].StudyInstanceUID)
    result = dw.client.store_instances([with_file_meta(ds) for ds in datasets])
    assert "FailedSOPSequence" not in result
    referenced = {str(item.ReferencedSOPInstanceUID): item for item in result.ReferencedSOPSequence}
    assert sorted(referenced) == sop_uids(datasets)
    for ds in datasets:
        item = referenced[str(ds.SOPInstanceUID)]
        assert item.ReferencedSOPClassUID == CTImageStorage
        url = item.RetrieveURL
        assert url == dw.url + dw.instance_path(study, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        response = httpx.get(url, headers=dicom_accept("*"), timeout=30)
        ((_, part10),) = multipart(response)
        assert part10[dataset_offset(part10) :] == encode(ds)

    found = dw.client.search_for_instances(study_instance_uid=study)
    assert sorted(i["00080018"]["Value"][0] for i in found) == sop_uids(datasets)
    (summary,) = dw.client.search_for_studies(search_filters={"StudyInstanceUID": study})
    assert summary["00201206"]["Value"] == [2] and summary["00201208"]["Value"] == [3]
    assert c_find_images(dw.server, study) == sop_uids(datasets)


def test_stow_response_json_shape(dw: DW) -> None:
    ds = make_ct("dw-stow-raw", patient_id="DW-STOW")
    response = stow(dw, [part10_of(ds)])
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == DICOM_JSON
    model = response.json()
    assert "00081198" not in model
    (item,) = model["00081199"]["Value"]
    assert item["00081155"] == {"vr": "UI", "Value": [ds.SOPInstanceUID]}
    assert item["00081150"] == {"vr": "UI", "Value": [CTImageStorage]}
    assert item["00081190"]["vr"] == "UR"
    # storing the same bytes again is a success, not a second copy
    before = dw.stored_count()
    assert stow(dw, [part10_of(ds)]).status_code == 200
    assert dw.stored_count() == before


def test_stow_to_a_study_refuses_instances_of_another(dw: DW) -> None:
    ours = make_ct("dw-stow-target", 1, 1, patient_id="DW-STOW")
    other = make_ct("dw-stow-other", 1, 1, patient_id="DW-STOW")
    study = str(ours.StudyInstanceUID)

    result = dw.client.store_instances(
        [with_file_meta(ours), with_file_meta(other)], study_instance_uid=study
    )
    assert [str(i.ReferencedSOPInstanceUID) for i in result.ReferencedSOPSequence] == [
        ours.SOPInstanceUID
    ]
    (failed,) = result.FailedSOPSequence
    assert failed.ReferencedSOPInstanceUID == other.SOPInstanceUID
    assert failed.FailureReason != 0
    assert result.RetrieveURL == f"{dw.url}/studies/{study}"

    partly = stow(
        dw, [part10_of(make_ct("dw-stow-target", 1, 2)), part10_of(other)], f"/studies/{study}"
    )
    assert partly.status_code == 202
    only_other = stow(dw, [part10_of(other)], f"/studies/{study}")
    assert only_other.status_code == 409
    (failed_item,) = only_other.json()["00081198"]["Value"]
    assert failed_item["00081155"]["Value"] == [other.SOPInstanceUID]
    assert failed_item["00081197"]["vr"] == "US" and failed_item["00081197"]["Value"][0] > 0
    assert "00081199" not in only_other.json()

    assert (
        dw.client.search_for_studies(search_filters={"StudyInstanceUID": other.StudyInstanceUID})
        == []
    )
    assert len(dw.client.search_for_instances(study_instance_uid=study)) == 2


def test_stow_of_garbage_is_refused_with_reasons_and_stores_nothing(dw: DW) -> None:
    truncated_ds = make_ct("dw-stow-truncated", patient_id="DW-STOW")
    truncated = part10_of(truncated_ds)[:-40]
    not_dicom = b"this is not DICOM at all" * 20
    before = dw.stored_count()

    response = stow(dw, [not_dicom, truncated])
    assert response.status_code == 409, response.text  # every part failed
    failed = response.json()["00081198"]["Value"]
    assert len(failed) == 2
    for item in failed:
        assert item["00081197"]["Value"][0] > 0  # FailureReason
        assert item["00000902"]["Value"][0]  # Error Comment: the reason in words
    assert failed[1]["00081155"]["Value"] == [truncated_ds.SOPInstanceUID]

    for body, content_type in (
        (not_dicom, STOW_TYPE),  # no parts at all
        (b"", STOW_TYPE),
        (stow_body([part10_of(truncated_ds)])[:-30], STOW_TYPE),  # cut inside the part
        (stow_body([part10_of(truncated_ds)]), 'multipart/related; type="application/dicom"'),
    ):
        response = post(dw, body, content_type)
        assert response.status_code == 400, (body[:40], response.status_code, response.text)
        assert_short_reason(response)

    assert (
        dw.client.search_for_studies(
            search_filters={"StudyInstanceUID": truncated_ds.StudyInstanceUID}
        )
        == []
    )
    assert dw.stored_count() == before
    assert not list((dw.server.data_dir / "blobs" / ".incoming").glob("*"))


@pytest.mark.parametrize(
    "content_type",
    [
        "application/dicom",
        "application/json",
        'multipart/related; type="application/dicom+json"; boundary=xyz',
        "multipart/form-data; boundary=xyz",
    ],
)
def test_stow_with_a_wrong_media_type_is_415(dw: DW, content_type: str) -> None:
    ds = make_ct("dw-stow-415", patient_id="DW-STOW")
    response = post(dw, part10_of(ds), content_type)
    assert response.status_code == 415
    assert_short_reason(response)
    assert (
        dw.client.search_for_studies(search_filters={"StudyInstanceUID": ds.StudyInstanceUID}) == []
    )


# -- WADO-URI ------------------------------------------------------------------------------------


def wado_uri(dw: DW, headers: dict[str, str] | None = None, **params: str) -> httpx.Response:
    return httpx.get(
        dw.server.http_url + "/wado",
        params={"requestType": "WADO", **params},
        headers=headers or {},
        timeout=30,
    )


def uri_params(study: str, series: str, sop: str, **extra: str) -> dict[str, str]:
    return {"studyUID": study, "seriesUID": series, "objectUID": sop, **extra}


def test_wado_uri_gives_the_stored_file(dw: DW) -> None:
    (ds,) = where(SeriesInstanceUID=B1_CT, InstanceNumber=2)
    sop = str(ds.SOPInstanceUID)
    response = wado_uri(dw, **uri_params(B1, B1_CT, sop, contentType="application/dicom"))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/dicom"
    assert response.content[dataset_offset(response.content) :] == SENT[sop]
    meta = pydicom.dcmread(BytesIO(response.content)).file_meta
    assert (meta.MediaStorageSOPInstanceUID, meta.TransferSyntaxUID) == (
        sop,
        ExplicitVRLittleEndian,
    )

    jpeg2000 = dw.bundled["JPEG2000.dcm"]
    response = wado_uri(
        dw,
        **uri_params(FILES_STUDY, jpeg2000.series, jpeg2000.sop, contentType="application/dicom"),
    )
    assert response.status_code == 200
    assert response.content[dataset_offset(response.content) :] == jpeg2000.data


@pytest.mark.parametrize("name", ["CT_small.dcm", "SC_rgb_jpeg_dcmtk.dcm", "JPEG2000.dcm"])
def test_wado_uri_jpeg_is_a_picture_of_the_right_size(dw: DW, name: str) -> None:
    bundled = dw.bundled[name]
    for extra in ({"contentType": "image/jpeg"}, {}):  # image/jpeg is the default
        response = wado_uri(dw, **uri_params(FILES_STUDY, bundled.series, bundled.sop, **extra))
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "image/jpeg"
        with Image.open(BytesIO(response.content)) as picture:
            picture.load()
            assert picture.format == "JPEG"
            assert picture.size == (bundled.dataset.Columns, bundled.dataset.Rows)
            colour = int(bundled.dataset.SamplesPerPixel) == 3
            assert picture.mode == ("RGB" if colour else "L")


def test_wado_uri_errors(dw: DW) -> None:
    sop = sop_uids(where(SeriesInstanceUID=B1_CT))[0]
    good = {"requestType": "WADO", **uri_params(B1, B1_CT, sop, contentType="application/dicom")}
    assert httpx.get(dw.server.http_url + "/wado", params=good, timeout=30).status_code == 200
    cases = [
        (400, {**good, "requestType": "WADX"}),
        (400, {**good, "requestType": ""}),
        (400, {k: v for k, v in good.items() if k != "requestType"}),
        (400, {k: v for k, v in good.items() if k != "objectUID"}),
        (400, {**good, "objectUID": "../x"}),
        (400, {**good, "studyUID": "1.2.abc"}),
        (404, {**good, "objectUID": UNKNOWN}),
        (404, {**good, "seriesUID": A1_CT}),  # the instance is not in that series
        (406, {**good, "contentType": "text/html"}),
    ]
    for status, params in cases:
        response = httpx.get(dw.server.http_url + "/wado", params=params, timeout=30)
        assert response.status_code == status, (params, response.status_code, response.text)
        assert_short_reason(response)


# -- HTTP: validators, ranges, gzip, CORS -------------------------------------------------------


def test_single_part_responses_have_an_etag_and_ranges(dw: DW) -> None:
    ct = dw.bundled["CT_small.dcm"]
    params = uri_params(FILES_STUDY, ct.series, ct.sop, contentType="application/dicom")
    whole = wado_uri(dw, **params)
    data = whole.content
    etag = whole.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"')

    cached = wado_uri(dw, {"If-None-Match": etag}, **params)
    assert cached.status_code == 304
    assert cached.content == b""
    assert cached.headers["etag"] == etag
    assert wado_uri(dw, {"If-None-Match": '"something-else"'}, **params).status_code == 200

    part = wado_uri(dw, {"Range": "bytes=128-131"}, **params)
    assert part.status_code == 206
    assert part.content == b"DICM"
    assert part.headers["content-range"] == f"bytes 128-131/{len(data)}"
    tail = wado_uri(dw, {"Range": "bytes=-100"}, **params)
    assert (tail.status_code, tail.content) == (206, data[-100:])
    rest = wado_uri(dw, {"Range": f"bytes={len(data) - 10}-"}, **params)
    assert (rest.status_code, rest.content) == (206, data[-10:])
    beyond = wado_uri(dw, {"Range": f"bytes={len(data) + 10}-"}, **params)
    assert beyond.status_code == 416
    assert beyond.headers["content-range"] == f"bytes */{len(data)}"


def test_single_part_responses_say_when_the_instance_was_stored(dw: DW) -> None:
    ct = dw.bundled["CT_small.dcm"]
    rendered_path = dw.instance_path(FILES_STUDY, ct.series, ct.sop) + "/rendered"
    params = uri_params(FILES_STUDY, ct.series, ct.sop, contentType="application/dicom")
    for response in (wado_uri(dw, **params), dw.get(rendered_path)):
        assert response.status_code == 200
        modified = response.headers["last-modified"]
        stored = email.utils.parsedate_to_datetime(modified)
        assert abs((stored - dt.datetime.now(dt.UTC)).total_seconds()) < 24 * 3600
        later = email.utils.format_datetime(stored + dt.timedelta(seconds=1), usegmt=True)
        earlier = email.utils.format_datetime(stored - dt.timedelta(days=1), usegmt=True)
        again = httpx.get(response.url, headers={"If-Modified-Since": modified}, timeout=30)
        assert again.status_code == 304 and again.headers["last-modified"] == modified
        assert (
            httpx.get(response.url, headers={"If-Modified-Since": later}, timeout=30).status_code
            == 304
        )
        assert (
            httpx.get(response.url, headers={"If-Modified-Since": earlier}, timeout=30).status_code
            == 200
        )
        # If-None-Match decides alone when both are sent (RFC 9110 13.2.2).
        both = {"If-Modified-Since": modified, "If-None-Match": '"another"'}
        assert httpx.get(response.url, headers=both, timeout=30).status_code == 200


def test_json_is_gzipped_when_asked(dw: DW) -> None:
    for path, params in (
        ("/studies", {"PatientID": "DW-*", "includefield": "all"}),
        (f"/studies/{FILES_STUDY}/metadata", {}),
    ):
        plain = dw.get(path, params=params, headers={"Accept-Encoding": "identity"})
        assert "content-encoding" not in plain.headers
        with httpx.stream(
            "GET", dw.url + path, params=params, headers={"Accept-Encoding": "gzip"}, timeout=30
        ) as response:
            assert response.headers["content-encoding"] == "gzip"
            assert response.headers["content-type"] == DICOM_JSON
            wire = b"".join(response.iter_raw())  # the bytes as sent, not undone by httpx
        assert len(wire) < len(plain.content)
        assert gzip.decompress(wire) == plain.content


def test_cors_header_for_the_configured_origin(dw: DW) -> None:
    response = dw.get("/studies", headers={"Origin": VIEWER}, params={"PatientID": "DW-B"})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == VIEWER
    assert "warning" in response.headers["access-control-expose-headers"].lower()

    preflight = httpx.options(
        dw.url + "/studies",
        headers={
            "Origin": VIEWER,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
        timeout=30,
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == VIEWER
    assert "POST" in preflight.headers["access-control-allow-methods"]

    stranger = dw.get("/studies", headers={"Origin": "https://evil.example.com"})
    assert "access-control-allow-origin" not in stranger.headers


# -- streaming -------------------------------------------------------------------------------------

BIG_INSTANCES = 300
BIG_SIZE = 512  # 512 x 512 x 16 bits: 0.5 MB an instance, ~157 MB the study


def _resident_bytes(pid: int) -> int:
    """The process's resident set size (/proc/PID/status VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def _bytes_read(pid: int) -> int:
    """Bytes the process has read through read() and its kin (/proc/PID/io rchar)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError(f"no rchar for {pid}")


def _big_study() -> Iterator[Dataset]:
    for number in range(1, BIG_INSTANCES + 1):
        yield make_ct("dw-big", 1, number, patient_id="DW-BIG", size=BIG_SIZE)


def test_study_retrieval_streams_in_bounded_memory(tmp_path: Path) -> None:
    server = start_server(tmp_path / "pacs-data")
    try:
        contexts = [(CTImageStorage, ExplicitVRLittleEndian)]
        with association(server, contexts) as assoc:
            statuses = {int(assoc.send_c_store(ds).Status) for ds in _big_study()}
        assert statuses == {SUCCESS}, server.log()
        study = make_ct("dw-big").StudyInstanceUID
        study_size = BIG_INSTANCES * BIG_SIZE * BIG_SIZE * 2  # the pixels alone

        pid = server.process.pid
        url = f"{server.http_url}/dicom-web/studies/{study}"
        baseline = _resident_bytes(pid)
        peak = baseline
        sampling = True

        def sample() -> None:
            nonlocal peak
            while sampling:
                peak = max(peak, _resident_bytes(pid))
                time.sleep(0.01)

        sampler = threading.Thread(target=sample)
        sampler.start()
        received = 0
        try:
            started = time.monotonic()
            read_before = _bytes_read(pid)
            with httpx.stream("GET", url, headers=dicom_accept(), timeout=60) as response:
                assert response.status_code == 200
                first_byte: float | None = None
                read_at_first_byte = 0
                for chunk in response.iter_raw(256 << 10):
                    if first_byte is None:
                        first_byte = time.monotonic() - started
                        read_at_first_byte = _bytes_read(pid) - read_before
                    received += len(chunk)
                    time.sleep(0.004)  # a slow client: ~2.5 s for the study
            elapsed = time.monotonic() - started
        finally:
            sampling = False
            sampler.join()

        assert received >= study_size
        assert first_byte is not None
        growth = peak - baseline
        assert growth < study_size / 3, (
            f"RSS grew {growth >> 20} MB for a {study_size >> 20} MB study"
        )
        # The first part left long before the study was read: the server had
        # read a small part of it, and the client waited a fraction of the time.
        assert read_at_first_byte < study_size / 4, read_at_first_byte
        assert first_byte < 1.0 and first_byte < elapsed / 5, (first_byte, elapsed)
    finally:
        stop_server(server)


# -- corrupt stored pixel data ---------------------------------------------------------


@pytest.fixture(scope="module")
def corrupt(dw: DW, tmp_path_factory: pytest.TempPathFactory) -> Bundled:
    """A JPEG 2000 instance whose codestream header is broken (a modality's bad
    encoder, a bit flip on disk): the data set is well-formed, so it is stored."""
    folder = tmp_path_factory.mktemp("corrupt")
    good = rewrite("MR_small_jp2klossless.dcm", folder)
    ds = pydicom.dcmread(good.path)
    ds.StudyInstanceUID = uid("dw-corrupt")
    ds.SeriesInstanceUID = uid("dw-corrupt", "series")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid("dw-corrupt", "sop")
    ds.save_as(folder / "corrupt.dcm", enforce_file_format=True)
    raw = bytearray((folder / "corrupt.dcm").read_bytes())
    start = raw.index(b"\xff\x4f\xff\x51")  # the codestream's SOC and SIZ markers
    raw[start + 4 : start + 40] = b"\x00" * 36
    data = bytes(raw)
    (folder / "corrupt.dcm").write_bytes(data)
    context = [(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID))]
    with raw_sending(), association(dw.server, context) as assoc:
        assert int(assoc.send_c_store(folder / "corrupt.dcm").Status) == SUCCESS
    return Bundled("corrupt.dcm", folder / "corrupt.dcm", ds, data[dataset_offset(data) :])


def test_corrupt_pixel_data_is_a_500_with_a_reason_and_nothing_breaks(
    dw: DW, corrupt: Bundled
) -> None:
    path = dw.instance_path(str(corrupt.dataset.StudyInstanceUID), corrupt.series, corrupt.sop)
    octet = {"Accept": 'multipart/related; type="application/octet-stream"'}
    for resource, headers in (
        (path + "/rendered", {"Accept": "image/jpeg"}),
        (path + "/frames/1/rendered", {"Accept": "image/png"}),
        (path + "/thumbnail", {"Accept": "image/jpeg"}),
        (path + "/frames/1", octet),
        (path + "/frames/1", {"Accept": 'multipart/related; type="image/jphc"'}),
        (path, dicom_accept(ExplicitVRLittleEndian)),
        (f"/studies/{corrupt.dataset.StudyInstanceUID}/thumbnail", {"Accept": "image/png"}),
    ):
        response = dw.get(resource, headers=headers)
        assert response.status_code == 500, (resource, response.status_code)
        assert "decode" in response.text, resource
        assert_short_reason(response)
    # What needs no decoding still works: the file as stored, its frame as stored.
    response = dw.get(path, headers=dicom_accept("*"))
    assert response.status_code == 200
    ((_, part10),) = multipart(response)
    assert part10.endswith(corrupt.data)
    frames = dw.get(path + "/frames/1", headers={"Accept": "*/*"})
    assert frames.status_code == 200
    assert dw.get("/studies", params={"PatientID": "DW-A"}).status_code == 200
    assert httpx.get(dw.server.http_url + "/health").status_code == 200


# -- DELETE (not PS3.18; as dcm4chee's and Orthanc's REST APIs) ---------------------------


def delete(dw: DW, path: str) -> httpx.Response:
    return httpx.delete(dw.url + path, timeout=30)


def study_summary(dw: DW, study: str) -> dict[str, Any] | None:
    found = dw.get(
        "/studies",
        params={"StudyInstanceUID": study, "includefield": "ModalitiesInStudy"},
        headers={"Accept": DICOM_JSON},
    ).json()
    return found[0] if found else None


def test_delete_an_instance_a_series_then_the_study(dw: DW) -> None:
    # One patient, one study: a CT series of two images and an MR series of one.
    datasets = [
        make_ct("dw-delete", 1, 1, patient_id="DW-DEL"),
        make_ct("dw-delete", 1, 2, patient_id="DW-DEL"),
        make_ct("dw-delete", 2, 1, patient_id="DW-DEL", modality="MR"),
    ]
    study = str(datasets[0].StudyInstanceUID)
    ct, mr = str(datasets[0].SeriesInstanceUID), str(datasets[2].SeriesInstanceUID)
    assert stow(dw, [part10_of(ds) for ds in datasets]).status_code == 200
    blobs_before = dw.stored_count()

    first = dw.instance_path(study, ct, str(datasets[0].SOPInstanceUID))
    response = delete(dw, first)
    assert response.status_code == 204, response.text
    assert dw.get(first, headers=dicom_accept("*")).status_code == 404
    assert dw.get(first + "/frames/1", headers={"Accept": "*/*"}).status_code == 404
    assert delete(dw, first).status_code == 404  # gone already
    summary = study_summary(dw, study)
    assert summary is not None
    assert summary["00201206"]["Value"] == [2] and summary["00201208"]["Value"] == [2]
    assert dw.stored_count() == blobs_before - 1
    assert c_find_images(dw.server, study) == sop_uids(datasets[1:])

    # The MR series: the study is CT only afterwards.
    assert delete(dw, f"/studies/{study}/series/{mr}").status_code == 204
    summary = study_summary(dw, study)
    assert summary is not None
    assert summary["00080061"]["Value"] == ["CT"]
    assert summary["00201206"]["Value"] == [1] and summary["00201208"]["Value"] == [1]
    assert dw.get(f"/studies/{study}/series/{mr}/metadata").status_code == 404

    # The study: nothing of it or of its patient is left, in QIDO or C-FIND.
    assert delete(dw, f"/studies/{study}").status_code == 204
    assert study_summary(dw, study) is None
    assert dw.get(f"/studies/{study}", headers=dicom_accept("*")).status_code == 404
    assert c_find_images(dw.server, study) == []
    assert dw.get("/studies", params={"PatientID": "DW-DEL"}).json() == []
    assert dw.stored_count() == blobs_before - 3
    # Stored again, it is a new study like any other.
    assert stow(dw, [part10_of(datasets[0])]).status_code == 200
    summary = study_summary(dw, study)
    assert summary is not None and summary["00201208"]["Value"] == [1]
    metadata = dw.get(f"/studies/{study}/metadata", headers={"Accept": DICOM_JSON}).json()
    assert [m["00080018"]["Value"][0] for m in metadata] == [str(datasets[0].SOPInstanceUID)]


def test_delete_of_what_is_not_there_or_malformed(dw: DW) -> None:
    assert delete(dw, f"/studies/{uid('dw-nothing')}").status_code == 404
    assert delete(dw, "/studies/1.2.x").status_code == 400
    # The other patients' studies are untouched by all of the above.
    assert dw.get("/studies", params={"PatientID": "DW-A"}).json()


def test_pacs_delete_at_the_server_while_it_runs(dw: DW) -> None:
    ds = make_ct("dw-delete-cli", patient_id="DW-DELCLI")
    study = str(ds.StudyInstanceUID)
    assert stow(dw, [part10_of(ds)]).status_code == 200
    command = [sys.executable, "-m", "pacs", "delete", "--data-dir", str(dw.server.data_dir)]
    done = subprocess.run([*command, "--study", study], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "deleted 1 instances" in done.stdout
    assert study_summary(dw, study) is None
    again = subprocess.run([*command, "--study", study], capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "no study" in again.stderr
    trail = subprocess.run(
        [sys.executable, "-m", "pacs", "audit", "--data-dir", str(dw.server.data_dir),
         "--patient", "DW-DELCLI", "--json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert trail.returncode == 0, trail.stderr
    events = [json.loads(line) for line in trail.stdout.splitlines()]
    assert any(e["EventID"]["code"] == "110105" for e in events), events

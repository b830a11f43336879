"""Orthanc (Debian's, with its DICOMweb plugin) as a client of pacs.

Another archive is one of the clients a provincial PACS serves: a satellite
hospital's Orthanc finds studies here over C-FIND, pulls them with C-MOVE,
pushes its own with C-STORE, and does the same over DICOMweb with its
plugin's client (QIDO-RS, WADO-RS, STOW-RS). Everything goes through
Orthanc's REST API, as its users drive it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset

from benchmarks.dicom_nodes import (
    OrthancProcess,
    dicomweb_plugin,
    free_port,
    start_orthanc,
    stop_process,
)
from tests.conftest import ServerProcess, start_server, stop_server
from tests.dicom_clients import store_all
from tests.dicom_factory import make_ct
from tests.e2e.test_dicomweb import part10_of

NAME = "Nguyễn^Văn An"


def vietnamese(study: str, n: int, patient: str) -> Dataset:
    ds = make_ct(study, 1, n, patient_id=patient, patient_name=NAME)
    ds.SpecificCharacterSet = "ISO_IR 192"
    return ds


DIMSE_STUDY = [vietnamese("orthanc-dimse", n, "OR-1") for n in (1, 2)]
WEB_STUDY = [vietnamese("orthanc-web", n, "OR-2") for n in (1, 2, 3)]


@dataclass
class Pair:
    pacs: ServerProcess
    orthanc: OrthancProcess

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        url = f"http://127.0.0.1:{self.orthanc.http_port}{path}"
        response = httpx.request(method, url, timeout=60, **kwargs)
        assert response.status_code == 200, (path, response.status_code, response.text)
        return response.json()

    def orthanc_instances(self, study_uid: str) -> dict[str, bytes]:
        """SOP Instance UID -> Part 10 file, of what Orthanc holds of the study."""
        found = self.call(
            "POST",
            "/tools/find",
            json={"Level": "Instance", "Query": {"StudyInstanceUID": study_uid}},
        )
        files = {}
        for orthanc_id in found:
            url = f"http://127.0.0.1:{self.orthanc.http_port}/instances/{orthanc_id}/file"
            data = httpx.get(url, timeout=60).content
            files[str(pydicom.dcmread(BytesIO(data)).SOPInstanceUID)] = data
        return files

    def pacs_studies(self, patient_id: str) -> list[dict[str, Any]]:
        url = self.pacs.http_url + "/dicom-web/studies"
        response = httpx.get(url, params={"PatientID": patient_id}, timeout=30)
        assert response.status_code == 200
        result: list[dict[str, Any]] = response.json()
        return result


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    root = tmp_path_factory.mktemp("orthanc")
    plugin = dicomweb_plugin()
    assert plugin, "Debian's orthanc-dicomweb is missing: `make test` installs it (system-deps)"
    orthanc_port = free_port()
    pacs = start_server(root / "pacs-data", "--node", f"ORTHANC@127.0.0.1:{orthanc_port}")
    try:
        orthanc = start_orthanc(
            root / "orthanc",
            "ORTHANC",
            dicom_port=orthanc_port,
            overrides={
                "Plugins": [plugin],
                "DicomWeb": {
                    "Enable": True,
                    "Root": "/dicom-web/",
                    "Servers": {"pacs": [pacs.http_url + "/dicom-web/"]},
                },
                "DicomModalities": {"pacs": ["PACS", "127.0.0.1", pacs.dicom_port]},
            },
        )
        try:
            store_all(pacs, DIMSE_STUDY + WEB_STUDY, ae_title="MODALITY")
            yield Pair(pacs, orthanc)
        finally:
            stop_process(orthanc)
    finally:
        stop_server(pacs)


def assert_same_images(received: dict[str, bytes], sent: list[Dataset]) -> None:
    assert sorted(received) == sorted(str(ds.SOPInstanceUID) for ds in sent)
    for ds in sent:
        copy = pydicom.dcmread(BytesIO(received[str(ds.SOPInstanceUID)]))
        assert copy.PixelData == ds.PixelData
        assert str(copy.PatientName) == NAME


def test_orthanc_finds_a_study_by_a_vietnamese_name_in_lower_case(pair: Pair) -> None:
    query = {"PatientName": "nguyễn*", "PatientID": "OR-1", "StudyInstanceUID": ""}
    asked = pair.call("POST", "/modalities/pacs/query", json={"Level": "Study", "Query": query})
    answers = pair.call("GET", f"/queries/{asked['ID']}/answers?expand&simplify")
    assert [a["StudyInstanceUID"] for a in answers] == [str(DIMSE_STUDY[0].StudyInstanceUID)]
    assert answers[0]["PatientName"] == NAME
    assert answers[0]["RetrieveAETitle"] == "PACS"


def test_orthanc_pulls_a_study_with_c_move(pair: Pair) -> None:
    study = str(DIMSE_STUDY[0].StudyInstanceUID)
    query = {"StudyInstanceUID": study}
    asked = pair.call("POST", "/modalities/pacs/query", json={"Level": "Study", "Query": query})
    pair.call(
        "POST",
        f"/queries/{asked['ID']}/retrieve",
        json={"TargetAet": "ORTHANC", "Synchronous": True},
    )
    assert_same_images(pair.orthanc_instances(study), DIMSE_STUDY)


def test_orthanc_pushes_a_study_with_c_store(pair: Pair) -> None:
    ds = vietnamese("orthanc-push", 1, "OR-3")
    uploaded = pair.call("POST", "/instances", content=part10_of(ds))
    stored = pair.call(
        "POST", "/modalities/pacs/store", json={"Resources": [uploaded["ID"]], "Synchronous": True}
    )
    assert stored["InstancesCount"] == 1 and stored["FailedInstancesCount"] == 0
    (summary,) = pair.pacs_studies("OR-3")
    assert summary["0020000D"]["Value"] == [str(ds.StudyInstanceUID)]
    assert summary["00100010"]["Value"] == [{"Alphabetic": NAME}]


def test_orthanc_dicomweb_client_searches_retrieves_and_stores(pair: Pair) -> None:
    study = str(WEB_STUDY[0].StudyInstanceUID)
    found = pair.call(
        "POST",
        "/dicom-web/servers/pacs/get",
        json={"Uri": "/studies", "Arguments": {"PatientID": "OR-2"}},
    )
    assert [s["0020000D"]["Value"][0] for s in found] == [study]
    assert found[0]["00201208"]["Value"] == [3]
    retrieved = pair.call(
        "POST", "/dicom-web/servers/pacs/retrieve", json={"Resources": [{"Study": study}]}
    )
    assert int(retrieved["ReceivedInstancesCount"]) == 3
    assert_same_images(pair.orthanc_instances(study), WEB_STUDY)

    ds = vietnamese("orthanc-stow", 1, "OR-4")
    uploaded = pair.call("POST", "/instances", content=part10_of(ds))
    pair.call(
        "POST",
        "/dicom-web/servers/pacs/stow",
        json={"Resources": [uploaded["ID"]], "Synchronous": True},
    )
    (summary,) = pair.pacs_studies("OR-4")
    assert summary["0020000D"]["Value"] == [str(ds.StudyInstanceUID)]

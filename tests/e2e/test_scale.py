"""Beyond one machine: ``pacs serve`` processes over one PostgreSQL and one S3 bucket.

Real servers (`pacs serve` processes), a real PostgreSQL (a private cluster) and a
real S3 HTTP endpoint (MinIO when PACS_TEST_S3_ENDPOINT is set, else moto's
server); DIMSE through pynetdicom, DICOMweb through httpx.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)

from storage.s3 import S3BlobStore
from tests.conftest import ServerProcess, start_server, stop_server
from tests.dicom_clients import SUCCESS, association, store_all
from tests.dicom_factory import encode, make_ct, part10_bytes
from tests.e2e.test_dicomweb import dataset_offset, dicom_accept, multipart
from tests.services import S3Endpoint, TcpRelay, new_bucket_name

PENDING = 0xFF00
CALLING_AE = "SCALETEST"


@dataclass
class Shared:
    """One PostgreSQL database and one bucket, as several servers see them."""

    index_url: str
    storage_url: str
    s3: S3Endpoint
    bucket: str

    def server(self, data_dir: Path, *extra: str, storage_url: str | None = None) -> ServerProcess:
        return start_server(
            data_dir,
            "--index-url",
            self.index_url,
            "--storage-url",
            storage_url or self.storage_url,
            *extra,
            env=self.s3.environment(),
        )

    def store(self) -> S3BlobStore:
        """The archive's blobs, straight from S3."""
        return S3BlobStore(
            self.bucket,
            "archive",
            endpoint=self.s3.endpoint,
            access_key=self.s3.access_key,
            secret_key=self.s3.secret_key,
            secure=self.s3.secure,
        )

    def objects(self) -> list[str]:
        return sorted(self.store().keys())


@pytest.fixture
def shared(postgres_url: str, s3_endpoint: S3Endpoint) -> Shared:
    bucket = new_bucket_name()
    return Shared(postgres_url, s3_endpoint.url(bucket, "archive"), s3_endpoint, bucket)


@pytest.fixture
def servers(shared: Shared, tmp_path: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    first = shared.server(tmp_path / "first")
    try:
        second = shared.server(tmp_path / "second")
    except BaseException:
        stop_server(first)
        raise
    try:
        yield first, second
    finally:
        stop_server(first)
        stop_server(second)


def uploads_pending(server: ServerProcess) -> int:
    storage = server.system()["storage"]
    assert isinstance(storage, dict)
    return int(storage["uploads_pending"] or 0)


def wait_uploaded(server: ServerProcess, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while uploads_pending(server):
        assert time.monotonic() < deadline, f"uploads still pending:\n{server.log()}"
        time.sleep(0.1)


def study(name: str, series: int = 2, instances: int = 3) -> list[Dataset]:
    return [
        make_ct(name, s, i, patient_id=f"PAT-{name}", size=64)
        for s in range(1, series + 1)
        for i in range(1, instances + 1)
    ]


def find_study(server: ServerProcess, study_instance_uid: str) -> Dataset:
    request = Dataset()
    request.QueryRetrieveLevel = "STUDY"
    request.StudyInstanceUID = study_instance_uid
    request.NumberOfStudyRelatedInstances = ""
    request.ModalitiesInStudy = ""
    model = StudyRootQueryRetrieveInformationModelFind
    with association(server, [(model, None)], ae_title=CALLING_AE) as assoc:
        responses = list(assoc.send_c_find(request, model))
    *pending, (final, _) = responses
    assert int(final.Status) == SUCCESS
    assert len(pending) == 1, pending
    match: Dataset = pending[0][1]
    return match


def c_get_study(server: ServerProcess, study_instance_uid: str) -> dict[str, bytes]:
    """SOP Instance UID -> the data set bytes a C-GET delivers."""
    received: dict[str, bytes] = {}

    def on_store(event: evt.Event) -> int:
        request = event.request
        received[str(request.AffectedSOPInstanceUID)] = request.DataSet.getvalue()
        return SUCCESS

    request = Dataset()
    request.QueryRetrieveLevel = "STUDY"
    request.StudyInstanceUID = study_instance_uid
    model = StudyRootQueryRetrieveInformationModelGet
    contexts = [(model, None), (CTImageStorage, [ExplicitVRLittleEndian])]
    with association(
        server, contexts, ae_title=CALLING_AE, roles=[CTImageStorage], on_store=on_store
    ) as assoc:
        responses = list(assoc.send_c_get(request, model))
    assert int(responses[-1][0].Status) == SUCCESS, server.log()
    return received


def wado_study(server: ServerProcess, study_instance_uid: str) -> dict[str, bytes]:
    """SOP Instance UID -> the Part 10 file WADO-RS sends as stored."""
    response = httpx.get(
        f"{server.http_url}/dicom-web/studies/{study_instance_uid}",
        headers=dicom_accept("*"),
        timeout=30,
    )
    assert response.status_code == 200, response.text
    files = {}
    for _, payload in multipart(response):
        start = dataset_offset(payload)
        files[_sop_of(payload)] = payload
        assert start > 132
    return files


def _sop_of(part10: bytes) -> str:
    from pydicom import dcmread
    from pydicom.filebase import DicomBytesIO

    return str(dcmread(DicomBytesIO(part10), stop_before_pixels=True).SOPInstanceUID)


def qido_study_count(server: ServerProcess, study_instance_uid: str) -> int:
    response = httpx.get(
        f"{server.http_url}/dicom-web/studies",
        params={"StudyInstanceUID": study_instance_uid, "includefield": "00201208"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    (match,) = response.json()
    return int(match["00201208"]["Value"][0])  # NumberOfStudyRelatedInstances


def stow(server: ServerProcess, datasets: list[Dataset]) -> None:
    boundary = "scale-boundary"
    body = b""
    for ds in datasets:
        part10 = part10_bytes(ds.SOPClassUID, ds.SOPInstanceUID, ExplicitVRLittleEndian, encode(ds))
        body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        body += part10 + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    response = httpx.post(
        f"{server.http_url}/dicom-web/studies",
        content=body,
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'
        },
        timeout=60,
    )
    assert response.status_code == 200, response.text


# -- two servers, one index, one bucket ---------------------------------------------------


def test_a_study_stored_through_one_server_is_found_and_retrieved_through_the_other(
    servers: tuple[ServerProcess, ServerProcess], shared: Shared
) -> None:
    first, second = servers
    # DIMSE into the first server, out of the second
    sent = study("scale-dimse")
    store_all(first, sent, ae_title=CALLING_AE)
    study_uid = str(sent[0].StudyInstanceUID)
    expected = {str(ds.SOPInstanceUID): encode(ds) for ds in sent}
    wait_uploaded(first)
    assert uploads_pending(second) == 0  # nothing of it was ever in the second's spool

    match = find_study(second, study_uid)
    assert int(match.NumberOfStudyRelatedInstances) == len(sent)
    assert match.ModalitiesInStudy == "CT"
    assert c_get_study(second, study_uid) == expected  # byte for byte, as sent

    # DICOMweb: the same study found and retrieved through the second server
    assert qido_study_count(second, study_uid) == len(sent)
    from_second = wado_study(second, study_uid)
    from_first = wado_study(first, study_uid)
    assert from_second == from_first  # the same Part 10 files, whoever serves them
    assert {sop: f[dataset_offset(f) :] for sop, f in from_second.items()} == expected

    # and the other way round: STOW-RS into the second, DIMSE and WADO-RS from the first
    posted = study("scale-stow", series=1, instances=4)
    stow(second, posted)
    posted_uid = str(posted[0].StudyInstanceUID)
    wait_uploaded(second)
    posted_bytes = {str(ds.SOPInstanceUID): encode(ds) for ds in posted}
    assert c_get_study(first, posted_uid) == posted_bytes
    files = wado_study(first, posted_uid)
    assert {sop: f[dataset_offset(f) :] for sop, f in files.items()} == posted_bytes
    assert int(find_study(first, posted_uid).NumberOfStudyRelatedInstances) == len(posted)

    # one copy of each instance in the bucket; both servers count the same archive
    assert len(shared.objects()) == len(sent) + len(posted)
    for server in servers:
        counts = server.system()["counts"]
        assert isinstance(counts, dict) and counts["instances"] == len(sent) + len(posted)


def test_a_study_deleted_through_one_server_is_gone_from_the_bucket_and_the_other(
    servers: tuple[ServerProcess, ServerProcess], shared: Shared
) -> None:
    first, second = servers
    kept, doomed = study("scale-kept", series=1), study("scale-doomed")
    store_all(first, kept + doomed, ae_title=CALLING_AE)
    wait_uploaded(first)
    assert len(shared.objects()) == len(kept) + len(doomed)
    doomed_uid = str(doomed[0].StudyInstanceUID)
    url = f"{second.http_url}/dicom-web/studies/{doomed_uid}"
    assert httpx.delete(url, timeout=30).status_code == 204
    found = httpx.get(
        f"{first.http_url}/dicom-web/studies", params={"StudyInstanceUID": doomed_uid}, timeout=30
    )
    assert found.status_code == 200 and found.json() == []
    assert httpx.get(url, headers=dicom_accept("*"), timeout=30).status_code == 404
    remaining = shared.objects()
    assert len(remaining) == len(kept)
    assert not any(doomed_uid in key for key in remaining)
    assert int(
        find_study(first, str(kept[0].StudyInstanceUID)).NumberOfStudyRelatedInstances
    ) == len(kept)
    for server in servers:
        counts = server.system()["counts"]
        assert isinstance(counts, dict) and counts["instances"] == len(kept)


def test_both_servers_ingest_at_once_and_lose_no_counts(
    servers: tuple[ServerProcess, ServerProcess],
) -> None:
    """Two modalities send the same study, one to each server, at the same time."""
    import threading

    sent = study("scale-both", series=3, instances=8)
    errors: list[BaseException] = []

    def send(server: ServerProcess, datasets: list[Dataset]) -> None:
        try:
            store_all(server, datasets, ae_title=CALLING_AE, timeout=60)
        except BaseException as exc:
            errors.append(exc)

    # each server gets every instance, in opposite orders: every one races
    threads = [
        threading.Thread(target=send, args=(servers[0], sent)),
        threading.Thread(target=send, args=(servers[1], sent[::-1])),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    assert errors == []
    study_uid = str(sent[0].StudyInstanceUID)
    for server in servers:
        match = find_study(server, study_uid)
        assert int(match.NumberOfStudyRelatedInstances) == len(sent)
        assert qido_study_count(server, study_uid) == len(sent)


# -- S3 going away mid-ingest ---------------------------------------------------------------


@pytest.mark.parametrize("spool", [True, False], ids=["spool", "no-spool"])
def test_s3_killed_mid_ingest_loses_and_duplicates_nothing_acknowledged(
    shared: Shared, tmp_path: Path, spool: bool
) -> None:
    """The S3 endpoint the server talks to is cut off (its relay process killed
    with SIGKILL) while instances arrive, then comes back on the same port.

    With the spool every store is acknowledged and waits for S3; without it, the
    stores during the outage fail with an 0xA7xx status. Either way every
    acknowledged instance is retrievable afterwards, through another server that
    reads S3 directly, once each; nothing unacknowledged is half-stored."""
    relay = TcpRelay(shared.s3.port).start()
    through_relay = shared.s3.url(shared.bucket, "archive", endpoint=f"127.0.0.1:{relay.port}")
    env_spool = {} if spool else {"PACS_UPLOAD_SPOOL": "false"}
    server = start_server(
        tmp_path / "cut-off",
        "--index-url",
        shared.index_url,
        "--storage-url",
        through_relay,
        env={**shared.s3.environment(), **env_spool},
    )
    during = 12 if spool else 3  # without a spool each store waits out its retries (~3 s)
    sent = [make_ct("outage", 1, i, size=64) for i in range(1, 31 + during)]
    statuses: dict[str, int] = {}
    try:
        with association(
            server, [(CTImageStorage, ExplicitVRLittleEndian)], ae_title=CALLING_AE, timeout=60
        ) as assoc:
            for number, ds in enumerate(sent, start=1):
                if number == 11 and spool:
                    wait_uploaded(server)  # these ten are only in S3 from now on
                if number == 21:
                    relay.kill()  # uploads of 11-20 may be in flight
                    if spool:
                        # An instance only S3 holds cannot be read now: 503.
                        path = f"{server.http_url}/dicom-web/studies/{ds.StudyInstanceUID}"
                        first = sent[0]
                        response = httpx.get(
                            f"{path}/series/{first.SeriesInstanceUID}"
                            f"/instances/{first.SOPInstanceUID}",
                            headers=dicom_accept("*"),
                            timeout=60,
                        )
                        assert response.status_code == 503, response.text
                if number == 21 + during:
                    if spool:  # acknowledged, and waiting in the spool for S3
                        assert uploads_pending(server) >= during
                    relay.start()
                statuses[str(ds.SOPInstanceUID)] = int(assoc.send_c_store(ds).Status)
        acknowledged = {sop for sop, status in statuses.items() if status == SUCCESS}
        refused = {sop: status for sop, status in statuses.items() if status != SUCCESS}
        if spool:
            assert refused == {}, server.log()
        else:
            assert len(refused) == during, statuses
            assert all(0xA700 <= status <= 0xA7FF for status in refused.values()), refused
        if spool:
            # While S3 was away the spool held them; now they drain by themselves.
            wait_uploaded(server, timeout=90)
    finally:
        stop_server(server)
        relay.stop()

    # A server that reads S3 directly, with an empty spool of its own, has them all.
    reader = shared.server(tmp_path / "reader")
    try:
        study_uid = str(sent[0].StudyInstanceUID)
        files = wado_study(reader, study_uid)
        expected = {str(ds.SOPInstanceUID): encode(ds) for ds in sent}
        assert set(files) == acknowledged
        for sop, part10 in files.items():
            assert part10[dataset_offset(part10) :] == expected[sop]
        counts = reader.system()["counts"]
        assert isinstance(counts, dict) and counts["instances"] == len(acknowledged)
    finally:
        stop_server(reader)
    # one object per acknowledged instance: no duplicate, no orphan of a refused store
    objects = shared.objects()
    assert len(objects) == len(acknowledged)
    assert {".".join(key.rsplit("/", 1)[1].split(".")[:-2]) for key in objects} == acknowledged


# -- pacs migrate-storage -------------------------------------------------------------------


def test_migrate_storage_from_the_filesystem_to_s3(
    shared: Shared, tmp_path: Path, postgres_url: str
) -> None:
    data_dir = tmp_path / "archive"
    sent = study("migrated", series=2, instances=5)
    server = start_server(data_dir, "--index-url", postgres_url)  # filesystem blobs
    try:
        store_all(server, sent, ae_title=CALLING_AE)
    finally:
        stop_server(server)

    def migrate() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable, "-m", "pacs", "migrate-storage",
                "--data-dir", str(data_dir), "--index-url", postgres_url,
                "--to", shared.storage_url,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env={**_environment(), **shared.s3.environment()},
        )  # fmt: skip

    first = migrate()
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"Copied {len(sent)} blobs" in first.stdout
    assert f"{len(sent)} indexed instances checked, 0 missing" in first.stdout
    assert "copied" in first.stderr  # progress
    assert len(shared.objects()) == len(sent)
    # run again (an interrupted migration is resumed so): nothing copied twice
    again = migrate()
    assert again.returncode == 0, again.stderr
    assert f"Copied 0 blobs (0.0 MB), {len(sent)} already in the target" in again.stdout

    # the archive now served from S3, with the same index: byte for byte as sent
    server = start_server(
        tmp_path / "from-s3",
        "--index-url",
        postgres_url,
        "--storage-url",
        shared.storage_url,
        env=shared.s3.environment(),
    )
    try:
        files = wado_study(server, str(sent[0].StudyInstanceUID))
        assert {sop: f[dataset_offset(f) :] for sop, f in files.items()} == {
            str(ds.SOPInstanceUID): encode(ds) for ds in sent
        }
    finally:
        stop_server(server)

    # a blob lost from the target is reported, and the exit status says so
    victim = next(iter(shared.objects()))
    shared.store().delete(victim)
    (data_dir / "blobs" / victim).unlink()  # gone from the source too: cannot be copied
    broken = migrate()
    assert broken.returncode == 1
    assert "1 missing from the target" in broken.stdout
    assert "not in the target" in broken.stdout


def _environment() -> dict[str, str]:
    import os

    return dict(os.environ)


def test_import_into_s3_ends_with_every_blob_in_the_bucket(shared: Shared, tmp_path: Path) -> None:
    folder = tmp_path / "old-archive"
    folder.mkdir()
    sent = study("imported", series=1, instances=6)
    for number, ds in enumerate(sent):
        (folder / f"{number}.dcm").write_bytes(
            part10_bytes(ds.SOPClassUID, ds.SOPInstanceUID, ExplicitVRLittleEndian, encode(ds))
        )
    result = subprocess.run(
        [
            sys.executable, "-m", "pacs", "import", str(folder),
            "--data-dir", str(tmp_path / "importer"),
            "--index-url", shared.index_url, "--storage-url", shared.storage_url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**_environment(), **shared.s3.environment()},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "6 stored" in result.stdout
    # the import waited for its uploads: all in S3, nothing left in its spool
    assert len(shared.objects()) == len(sent)
    assert not any((tmp_path / "importer" / "spool").rglob("*.dcm"))

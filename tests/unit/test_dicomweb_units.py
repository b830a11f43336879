"""DICOM JSON, Accept negotiation and the streamed multipart parser, without a server."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pydicom
import pytest
from pydicom.dataset import Dataset

from pacs.core import Archive
from pacs.core.dicomjson import BASE_PLACEHOLDER, attributes, instance_metadata
from pacs.core.metadata import MetadataWarmer
from pacs.dicomweb.errors import DicomWebError
from pacs.dicomweb.media import OCTET_STREAM, Multipart, parse_accept, require_json
from pacs.dicomweb.stow import _boundary, _parts
from pacs.index import SqliteIndex
from pacs.index.query import Query
from pacs.index.schema import Level
from pacs.types import Caller
from storage import FilesystemBlobStore
from tests.conftest import bundled_dicom_files
from tests.dicom_factory import make_ct

TEST_FILES = Path(pydicom.data.__path__[0]) / "test_files"
CALLER = Caller("TEST", "127.0.0.1")


def _model(ds: Dataset, pixel_data: bool = False) -> dict[str, dict[str, object]]:
    return orjson.loads(instance_metadata(ds, "studies/1/series/2/instances/3", pixel_data))


def test_person_names_numbers_and_empty_values() -> None:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "Nguyễn^Văn An=阮^文安"
    ds.PatientWeight = "72.5"
    ds.SeriesNumber = "3"
    ds.Rows = 512
    ds.ImageType = ["ORIGINAL", "", "AXIAL"]
    ds.AccessionNumber = ""
    ds.WindowCenter = ["40", "400"]
    model = _model(ds)
    assert model["00100010"] == {
        "vr": "PN",
        "Value": [{"Alphabetic": "Nguyễn^Văn An", "Ideographic": "阮^文安"}],
    }
    assert model["00101030"] == {"vr": "DS", "Value": [72.5]}
    assert model["00200011"] == {"vr": "IS", "Value": [3]}
    assert model["00280010"] == {"vr": "US", "Value": [512]}
    # PS3.18 F.2.5: an empty value inside a list is null; an empty attribute has no Value.
    assert model["00080008"] == {"vr": "CS", "Value": ["ORIGINAL", None, "AXIAL"]}
    assert model["00080050"] == {"vr": "SH"}
    assert model["00281050"] == {"vr": "DS", "Value": [40, 400]}


def test_bulk_data_is_never_inline() -> None:
    ds = pydicom.dcmread(TEST_FILES / "waveform_ecg.dcm")
    model = _model(ds)
    waveform = model["54000100"]["Value"][0]  # type: ignore[index]
    uri = waveform["54001010"]["BulkDataURI"]
    assert uri == f"{BASE_PLACEHOLDER}/studies/1/series/2/instances/3/bulkdata/54000100/1/54001010"
    small = Dataset()
    small.add_new(0x00091010, "OB", b"\x01\x02")
    assert _model(small)["00091010"] == {"vr": "OB", "InlineBinary": "AQI="}
    pixels = _model(Dataset(), pixel_data=True)["7FE00010"]
    assert pixels["BulkDataURI"].endswith("/bulkdata/7FE00010")  # type: ignore[union-attr]


@pytest.mark.parametrize("path", bundled_dicom_files()[:40], ids=lambda p: p.name)
def test_matches_pydicom_for_plain_values(path: Path) -> None:
    """Our model equals pydicom's for every non-binary, non-sequence attribute."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about odd values in its test files
            reference = ds.to_json_dict(1024, lambda element: "bulk")
    except Exception:
        pytest.skip("pydicom cannot read or convert this file")
    ours = _model(ds)
    for tag, value in reference.items():
        if (
            tag.startswith("0002")
            or tag.endswith("0000")
            or value["vr"] in ("SQ", "OB", "OW", "UN")
        ):
            continue
        if "Value" in value and any(v in ("", None) for v in value["Value"]):
            continue  # pydicom writes "" where PS3.18 F.2.5 says null
        assert ours[tag] == value, tag


CHARSET_FILES = sorted((TEST_FILES.parent / "charset_files").glob("*.dcm"))


@pytest.mark.parametrize("path", bundled_dicom_files() + CHARSET_FILES, ids=lambda p: p.name)
def test_metadata_of_values_not_yet_decoded_equals_that_of_decoded_ones(path: Path) -> None:
    """A data set just parsed has its values decoded straight by pydicom's
    converter (no DataElement kept); the model must equal the one made once
    pydicom has decoded every element itself, for every test file (both byte
    orders, implicit VR, private tags, sequences, every character set)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            decoded = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            for _ in decoded.iterall():  # decodes and keeps every element, nested ones too
                pass
            expected = _model(decoded)
        except Exception:
            pytest.skip("pydicom cannot decode every element of this file")
        fresh = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        assert _model(fresh) == expected


def test_attributes_for_index_rows() -> None:
    model = attributes(
        [(0x00100010, "PN", "Lê^Thị"), (0x00201208, "IS", 12), (0x00080061, "CS", ["CT", "MR"])]
    )
    assert model == {
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Lê^Thị"}]},
        "00201208": {"vr": "IS", "Value": [12]},
        "00080061": {"vr": "CS", "Value": ["CT", "MR"]},
    }


def test_accept_parsing() -> None:
    ranges = parse_accept(
        'multipart/related; type="application/dicom"; transfer-syntax=*; q=0.5, '
        'multipart/related; type="application/octet-stream"'
    )
    assert [(r.media_type, r.transfer_syntax, r.multipart) for r in ranges] == [
        ("application/octet-stream", None, True),
        ("application/dicom", "*", True),
    ]
    assert parse_accept(None)[0].media_type == "*/*"
    require_json("application/dicom+json")
    require_json("*/*")
    with pytest.raises(DicomWebError) as info:
        require_json('multipart/related; type="application/dicom"')
    assert info.value.status == 406


def _chunked(data: bytes, size: int) -> AsyncIterator[bytes]:
    async def stream() -> AsyncIterator[bytes]:
        for start in range(0, len(data), size):
            yield data[start : start + size]

    return stream()


async def _collect(data: bytes, size: int, boundary: bytes) -> list[tuple[dict[str, str], bytes]]:
    return [part async for part in _parts(_chunked(data, size), boundary)]


@pytest.mark.parametrize("chunk", [1, 7, 64, 1 << 20])
def test_multipart_parts_split_anywhere(chunk: int) -> None:
    writer = Multipart("application/dicom")
    bodies = [b"first\r\n--not-the-boundary", b"", bytes(range(256)) * 40]
    body = (
        b"preamble\r\n"
        + b"".join(writer.head("application/dicom") + part + writer.part_end() for part in bodies)
        + writer.tail()
    )
    parts = asyncio.run(_collect(body, chunk, writer.boundary.encode()))
    assert [data for _, data in parts] == bodies
    assert all(headers["content-type"] == "application/dicom" for headers, _ in parts)


def test_bodies_known_in_full_share_a_boundary_none_of_their_values_holds() -> None:
    """Frames' bodies reuse the process's boundary (Python clients compile a
    regular expression per new one), except where a value holds it: a stored
    image could, since every client sees it."""
    frames = [bytes(range(256)) * 2048, b"\x00\x01" * 1000]
    first, second = (
        Multipart.around(OCTET_STREAM, frames[:1]),
        Multipart.around(OCTET_STREAM, frames[1:]),
    )
    assert first.boundary == second.boundary
    assert 1 <= len(first.boundary) <= 70  # RFC 2046 5.1.1
    crafted = b"pixels" + f"\r\n--{first.boundary}--\r\n".encode() + b"more pixels"
    writer = Multipart.around(OCTET_STREAM, [frames[0], crafted])
    assert writer.boundary != first.boundary
    body = writer.body([frames[0], crafted], OCTET_STREAM)
    parts = asyncio.run(_collect(body, 1 << 16, writer.boundary.encode()))
    assert [data for _, data in parts] == [frames[0], crafted]
    # A large body is not scanned: a random boundary of its own, as before.
    large = Multipart.around(OCTET_STREAM, [bytes(9 << 20)])
    assert large.boundary != first.boundary


def test_a_truncated_body_is_an_error() -> None:
    writer = Multipart("application/dicom")
    body = writer.head("application/dicom") + b"half a file"
    with pytest.raises(DicomWebError) as info:
        asyncio.run(_collect(body, 5, writer.boundary.encode()))
    assert info.value.status == 400


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        ("application/dicom", 415),
        ('multipart/related; type="application/dicom+json"; boundary=x', 415),
        ('multipart/related; type="application/dicom"', 400),
    ],
)
def test_stow_content_types(content_type: str, status: int) -> None:
    with pytest.raises(DicomWebError) as info:
        _boundary(content_type)
    assert info.value.status == status
    assert _boundary('multipart/related; type="application/dicom"; boundary="abc"') == b"abc"


def test_metadata_is_precomputed_after_ingest(memory_archive: Archive) -> None:
    """The warmer records each instance's JSON once ingest goes quiet; no request needed."""
    for number in (1, 2, 3):
        memory_archive.ingest_dataset(make_ct("warm", 1, number), CALLER)
    assert memory_archive.wait_for_metadata(timeout=10)
    query = Query(
        Level.IMAGE,
        columns=((Level.IMAGE, "sop_instance_uid"), (Level.IMAGE, "metadata")),
    )
    rows = list(memory_archive.index.find(query))
    assert len(rows) == 3
    for row in rows:
        model = orjson.loads(row["metadata"])
        assert model["00080018"]["Value"] == [row["sop_instance_uid"]]
        assert "7FE00010" in model and "BulkDataURI" in model["7FE00010"]


def test_missing_metadata_is_filled_in_when_quiet(tmp_path: Path) -> None:
    """Instances stored without JSON (older server, dropped job) get it at start-up."""
    index_path = tmp_path / "index.sqlite"
    first = Archive(SqliteIndex(index_path), FilesystemBlobStore(tmp_path / "blobs"))
    for number in (1, 2):
        first.ingest_dataset(make_ct("backfill", 1, number), CALLER)
    first.close()
    with sqlite3.connect(index_path) as db:
        db.execute("DELETE FROM instance_metadata")
    second = Archive(SqliteIndex(index_path), FilesystemBlobStore(tmp_path / "blobs"))
    try:
        query = Query(Level.IMAGE, columns=((Level.IMAGE, "metadata"),))
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if all(row["metadata"] for row in second.index.find(query)):
                break
            time.sleep(0.1)
        rows = list(second.index.find(query))
        assert len(rows) == 2 and all(row["metadata"] for row in rows)
    finally:
        second.close()


class _IndexOnAFullDisk(SqliteIndex):
    """The disk is full for the first ``full_writes`` writes of metadata, then has room."""

    full_writes = 1

    def set_metadata(self, items: Any) -> None:
        if self.full_writes:
            self.full_writes -= 1
            raise sqlite3.OperationalError("database or disk is full")
        super().set_metadata(items)


def test_metadata_that_could_not_be_recorded_is_filled_in_later(tmp_path: Path) -> None:
    """Instances whose JSON met a full disk get it once there is room (not at the next start)."""
    index = _IndexOnAFullDisk(tmp_path / "index.sqlite")
    archive = Archive(index, FilesystemBlobStore(tmp_path / "blobs"))
    query = Query(Level.IMAGE, columns=((Level.IMAGE, "metadata"),))
    try:
        archive.ingest_dataset(make_ct("full", 1, 1), CALLER)
        archive.wait_for_metadata(timeout=10)
        assert [row["metadata"] for row in index.find(query)] == [None]  # the write failed
        assert index.full_writes == 0
        warmer = MetadataWarmer(index, archive._backfill_metadata, retry_delay=0.2)
        index.full_writes = 2  # this warmer's first backfill fails too, then waits
        try:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and not all(r["metadata"] for r in index.find(query)):
                time.sleep(0.05)
        finally:
            warmer.close()
        assert index.full_writes == 0  # both failures were met
        rows = list(index.find(query))
        assert len(rows) == 1 and orjson.loads(rows[0]["metadata"])["00080018"]["Value"]
    finally:
        archive.close()


def test_the_backfill_leaves_what_was_stored_after_it_began(tmp_path: Path) -> None:
    """Another process's new instances are its warmer's, not this backfill's."""
    from pacs.core.audit import now_iso as stored_at_now

    index_path = tmp_path / "index.sqlite"
    archive = Archive(SqliteIndex(index_path), FilesystemBlobStore(tmp_path / "blobs"))
    earlier = make_ct("backfill-bound", 1, 1)
    archive.ingest_dataset(earlier, CALLER)
    time.sleep(0.002)
    began = stored_at_now()
    time.sleep(0.002)
    archive.ingest_dataset(make_ct("backfill-bound", 1, 2), CALLER)
    archive.close()
    with sqlite3.connect(index_path) as db:
        db.execute("DELETE FROM instance_metadata")
    index = SqliteIndex(index_path)
    try:
        missing = index.instances_without_metadata(0, 10, began)
        assert [stored.sop_instance_uid for _, stored in missing] == [earlier.SOPInstanceUID]
        assert len(index.instances_without_metadata(0, 10, stored_at_now())) == 2
    finally:
        index.close()


def test_the_app_answers_without_a_server_port(memory_archive: Archive) -> None:
    """Behind a Unix socket (or an in-process transport) the ASGI scope has no port."""
    import httpx

    from pacs.config import Settings
    from pacs.http.app import create_http_app

    memory_archive.ingest_dataset(make_ct("asgi", 1, 1), CALLER)
    app = create_http_app(memory_archive, Settings())

    async def search() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://archive") as client:
            return await client.get("/dicom-web/studies")

    response = asyncio.run(search())
    assert response.status_code == 200
    [study] = response.json()
    assert study["00081190"]["Value"][0].startswith("http://archive/dicom-web/studies/")


# -- frames answered before routing (pacs.dicomweb.frames_at_once) ------------------------


class _Routes:
    """Stands for the routes behind the middleware: answers 299 and counts."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls += 1
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b"routed"})


def _get(
    app: Any, path: str, principal: object, method: str = "GET", encoding: str = "identity"
) -> tuple[int, dict[str, str], bytes]:
    headers = [
        (b"accept", b'multipart/related; type="application/octet-stream"'),
        (b"accept-encoding", encoding.encode()),
    ]
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "state": {"principal": principal},
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    response_headers = {k.decode(): v.decode() for k, v in sent[0].get("headers", [])}
    body = b"".join(bytes(m.get("body", b"")) for m in sent[1:])
    return sent[0]["status"], response_headers, body


def test_frames_in_the_page_cache_are_answered_before_routing(tmp_path: Path) -> None:
    from pacs.core.access import ANONYMOUS, Principal, Role
    from pacs.dicomweb.frames_at_once import FramesAtOnce
    from pacs.types import Scope
    from tests.page_cache import nowait_reads

    archive = Archive(SqliteIndex(tmp_path / "index.sqlite"), FilesystemBlobStore(tmp_path / "b"))
    archive.at_once_budget = 10.0  # a pause of the test machine must not turn it off
    try:
        ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
        archive.ingest_part10((TEST_FILES / "CT_small.dcm").read_bytes(), CALLER)
        routes = _Routes()
        app = FramesAtOnce(routes, archive)
        instance = (
            f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}"
        )
        if not nowait_reads(tmp_path / "index.sqlite"):
            pytest.skip("this filesystem takes no RWF_NOWAIT reads: frames come from a thread")
        for _ in range(5):  # the kernel may drop the pages between two calls
            status, headers, body = _get(app, instance + "/frames/1", ANONYMOUS)
            if status == 200:
                break
        assert status == 200 and routes.calls < 5
        assert headers["content-length"] == str(len(body))
        assert ds.PixelData in body and headers["vary"] == "Accept-Encoding"
        assert headers["content-type"].startswith(
            'multipart/related; type="application/octet-stream"'
        )

        # gzip is made in a thread, still without the routes
        calls = routes.calls
        status, headers, body = _get(app, instance + "/frames/1", ANONYMOUS, encoding="gzip")
        assert status == 200 and headers["content-encoding"] == "gzip"
        assert routes.calls == calls

        # everything that is not plainly a frame of a readable instance goes on
        restricted = Principal("clinic", Role.HOSPITAL, Scope(institutions=frozenset({"A"})))
        passed_on = [
            (instance + "/frames/1", restricted, "GET"),  # its scope is checked by the route
            (instance + "/frames/1", ANONYMOUS, "POST"),
            (instance + "/frames/0", ANONYMOUS, "GET"),
            (instance + "/frames/9", ANONYMOUS, "GET"),  # out of range: the route's 404
            (instance.replace(ds.SOPInstanceUID, "1.2.3.4") + "/frames/1", ANONYMOUS, "GET"),
            (instance.replace(ds.SOPInstanceUID, "..") + "/frames/1", ANONYMOUS, "GET"),
            (instance + "/frames/1/rendered", ANONYMOUS, "GET"),
            (instance + "/metadata", ANONYMOUS, "GET"),
        ]
        for path, principal, method in passed_on:
            before = routes.calls
            assert _get(app, path, principal, method)[0] == 299, path
            assert routes.calls == before + 1
    finally:
        archive.close()

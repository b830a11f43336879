"""Imaging: rendering and transcoding, pacs beside the naive path and Orthanc.

Images, generated deterministically, each stored as ``--copies`` instances
with the same pixels and UIDs of their own, so that "cold" (the first
request for an instance, decoded from storage) is a median over copies, not
one sample:

* CT: one 512x512 16-bit slice of ``phantom.py`` (Explicit VR Little Endian),
  and the same slice in JPEG 2000 lossless and in HTJ2K lossless;
* CR: a 2500x3000 (columns x rows) 12-bit radiograph-like image: smooth
  gradients, a body outline, ribs, a spine and a few edges, no random noise;
* MF: a 50-frame 256x256 16-bit multi-frame (Multi-frame Grayscale Word
  Secondary Capture); frame 26 of 50 is the one rendered.

Rendering, milliseconds per frame (median):

1. naive, in process: ``dcmread(...).pixel_array`` of the whole instance from
   bytes in memory, float windowing in numpy with the file's centre and
   width, Pillow encode (JPEG quality 90, as pacs and Orthanc);
2. pacs in process: ``render`` (the pure function, from the same bytes), and
   ``Archive.rendered`` on an archive in a temporary folder (SQLite index,
   files): "cold" is each copy's first rendering, from storage, "cached" a
   repeat. The archive's cold figure is what a request pays before HTTP, so
   "pacs vs naive" divides by it;
3. over HTTP, one keep-alive connection per server: Orthanc's
   ``/instances/{id}/rendered`` (``/frames/25/rendered`` for MF), with its
   GDCM plugin so that it reads JPEG 2000, and pacs' WADO-RS
   ``.../rendered`` (``/frames/26/rendered``), ``Accept: image/jpeg`` or
   ``image/png``. Cold is the first request for each copy; then the servers
   take three turns on one copy and "median" is of the repeats. Each cold
   request and each turn comes after three untimed repeats of a picture the
   server has already made (``SETTLE``): the first requests after a pause are
   slow on this VM whatever answers them.

Transcoding, MB/s of pixels (the 512x512 16-bit CT slice, 0.52 MB): from each
source syntax to each target pacs writes, pacs' ``transcode`` in process, and
over HTTP both servers' WADO-RS instance retrieval with ``transfer-syntax``
in the Accept header (Orthanc's DICOMweb plugin with the GDCM plugin). Every
answer is read back with pydicom; lossless ones must give the original pixels.

    python benchmarks/imaging.py [--repeat N] [--copies N] [--record]

Needs Debian's ``orthanc``, ``orthanc-dicomweb`` and ``orthanc-gdcm``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_dataset
from pydicom.uid import (
    PYDICOM_ROOT_UID,
    UID,
    ComputedRadiographyImageStorage,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    RLELossless,
)

from benchmarks.dicom_nodes import (
    LOCALHOST,
    OrthancProcess,
    revision,
    start_orthanc,
    stop_process,
)
from benchmarks.dicomweb import Client, pacs_import, start_pacs, wait_for_http
from benchmarks.phantom import generate_ct_series
from pacs.app import configure_libraries
from pacs.core import Archive
from pacs.core.encoding import split_part10
from pacs.core.rendering import RenderRequest
from pacs.index import SqliteIndex
from pacs.pixels import (
    ENCODED_TARGETS,
    LOSSY_TARGETS,
    UNCOMPRESSED_TARGETS,
    frame_format,
    refusal,
    transcode,
)
from pacs.pixels.render import decode_frame, render
from pacs.types import Caller
from storage import FilesystemBlobStore

HERE = Path(__file__).resolve().parent
README = HERE / "README.md"
BEGIN, END = "<!-- imaging:begin -->", "<!-- imaging:end -->"
ROOT = f"{PYDICOM_ROOT_UID}77."
JPEG, PNG = "image/jpeg", "image/png"
MEDIA = {JPEG: "JPEG", PNG: "PNG"}
PLUGINS = "/usr/share/orthanc/plugins"
SOURCES = [
    ExplicitVRLittleEndian,
    RLELossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEG2000Lossless,
    HTJ2KLossless,
]
TARGETS = sorted(UNCOMPRESSED_TARGETS | ENCODED_TARGETS)


@dataclass(frozen=True, slots=True)
class Image_:
    label: str
    frame: int
    """0-based frame to render."""
    copies: list[Path]
    """The same pixels under UIDs of their own; the first is the one timed warm."""


def uids(path: Path) -> tuple[str, str, str]:
    ds = dcmread(path, stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)


# -- data -------------------------------------------------------------------------------


def _header(ds: Dataset, sop_class: str, key: str) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = UID(ROOT + key + ".3")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = ROOT + key + ".1"
    ds.SeriesInstanceUID = ROOT + key + ".2"
    ds.PatientName = f"IMAGING^{key}"
    ds.PatientID = f"IMAGING-{key}"
    ds.StudyDate = ds.SeriesDate = "20240115"
    ds.StudyTime = "100000"
    ds.AccessionNumber = ds.StudyID = key
    ds.SeriesNumber = ds.InstanceNumber = 1
    ds.ReferringPhysicianName = ""
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.PixelRepresentation = 0


def cr_pixels(rows: int = 3000, columns: int = 2500) -> np.ndarray:
    """A chest-radiograph-like 12-bit picture: smooth shapes and edges, no noise."""
    y, x = np.mgrid[0:rows, 0:columns].astype(np.float32)
    u, v = (x - columns / 2) / (columns / 2), (y - rows / 2) / (rows / 2)
    image = 300.0 + 200.0 * v  # exposure gradient, air
    body = np.clip(1.2 - (u / 0.85) ** 2 - (v / 1.05) ** 4, 0, None)
    image += 1500.0 * np.sqrt(body)
    lungs = np.exp(-(((np.abs(u) - 0.38) / 0.22) ** 2) - ((v + 0.1) / 0.55) ** 4)
    image -= 900.0 * lungs
    ribs = 0.5 + 0.5 * np.cos(2 * np.pi * (v * 7.0 + 0.6 * u**2))
    image += 350.0 * lungs * ribs**6
    image += 1200.0 * np.exp(-((u / 0.07) ** 2)) * (v > -0.8)  # spine
    heart = np.exp(-(((u + 0.1) / 0.25) ** 2) - ((v - 0.2) / 0.3) ** 2)
    image += 700.0 * heart
    image += 600.0 * ((np.abs(u - 0.6) < 0.04) & (np.abs(v + 0.7) < 0.12))  # a marker
    return np.clip(image, 0, 4095).astype("<u2")


def write_cr(path: Path) -> None:
    pixels = cr_pixels()
    ds = Dataset()
    _header(ds, ComputedRadiographyImageStorage, "1")
    ds.Modality = "CR"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsStored, ds.HighBit = 12, 11
    ds.WindowCenter, ds.WindowWidth = "2000", "3600"
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)


def write_multiframe(path: Path, frames: int = 50, size: int = 256) -> None:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    stack = np.empty((frames, size, size), "<u2")
    for k in range(frames):
        t = k / frames
        r2 = (x - 0.5 - 0.2 * np.cos(2 * np.pi * t)) ** 2 + (y - 0.5) ** 2
        stack[k] = 800 + 1500 * x + 2500 * np.exp(-r2 / 0.02) + 400 * np.sin(12 * y + t)
    ds = Dataset()
    _header(ds, MultiFrameGrayscaleWordSecondaryCaptureImageStorage, "2")
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = 0x00280009  # none better for SC; points at itself
    ds.Rows = ds.Columns = size
    ds.BitsStored, ds.HighBit = 12, 11
    ds.WindowCenter, ds.WindowWidth = "2500", "4000"
    ds.PixelData = stack.tobytes()
    ds.save_as(path, enforce_file_format=True)


def recode(source: Path, target: Path, key: str, syntax: str) -> Path:
    """A copy of ``source`` under new UIDs (series and instance) in ``syntax``,
    converted by pacs' own transcoder."""
    raw = source.read_bytes()
    meta, offset = split_part10(raw)
    stored = meta[0x00020010].rstrip(b"\0 ").decode()
    ds = dcmread(BytesIO(raw))
    if syntax != stored:
        converted = read_dataset(BytesIO(transcode(raw[offset:], stored, syntax)), False, True)
        converted.file_meta = ds.file_meta
        converted.file_meta.TransferSyntaxUID = UID(syntax)
        ds = converted
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID(ROOT + key + ".3")
    ds.SeriesInstanceUID = ROOT + key + ".2"
    ds.save_as(target, enforce_file_format=True)
    return target


def prepare(root: Path, copies: int) -> tuple[list[Image_], dict[str, Path], list[Path]]:
    """The images (with their copies), the CT slice in each source syntax, and warm-up files."""
    files = root / "files"
    files.mkdir(parents=True)
    (ct,) = generate_ct_series(root / "phantom", slices=1)
    shutil.copy(ct, files / "ct.dcm")
    write_cr(files / "cr.dcm")
    write_multiframe(files / "mf.dcm")
    specs = (
        ("CT 512x512", "ct.dcm", ExplicitVRLittleEndian, 0),
        ("CT 512x512, J2K lossless", "ct.dcm", JPEG2000Lossless, 0),
        ("CT 512x512, HTJ2K lossless", "ct.dcm", HTJ2KLossless, 0),
        ("CR 2500x3000", "cr.dcm", ExplicitVRLittleEndian, 0),
        ("MF 50x256x256, frame 26", "mf.dcm", ExplicitVRLittleEndian, 25),
    )
    images = []
    for number, (label, name, syntax, frame) in enumerate(specs, start=10):
        paths = [
            recode(files / name, files / f"{number}-{k}.dcm", f"{number}.{k}", syntax)
            for k in range(copies)
        ]
        images.append(Image_(label, frame, paths))
    sources = {
        syntax: recode(files / "ct.dcm", files / f"source-{n}.dcm", f"30.{n}", syntax)
        for n, syntax in enumerate(SOURCES)
    }
    warm = [
        recode(files / "ct.dcm", files / "warm.dcm", "4", ExplicitVRLittleEndian),
        recode(files / "ct.dcm", files / "warm-j2k.dcm", "5", JPEG2000Lossless),
    ]
    return images, sources, warm


# -- in process -------------------------------------------------------------------------


def naive(part10: bytes, frame: int, media_type: str) -> bytes:
    ds = dcmread(BytesIO(part10))
    pixels = ds.pixel_array
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        pixels = pixels[frame]
    values = pixels.astype(np.float64) * float(ds.get("RescaleSlope", 1)) + float(
        ds.get("RescaleIntercept", 0)
    )
    centre, width = float(ds.WindowCenter), float(ds.WindowWidth)
    scaled = np.clip((values - (centre - 0.5)) / (width - 1) + 0.5, 0, 1) * 255
    out = BytesIO()
    kind = MEDIA[media_type]
    options: dict[str, Any] = {"quality": 90} if kind == "JPEG" else {}
    Image.fromarray(np.rint(scaled).astype(np.uint8)).save(out, format=kind, **options)
    return out.getvalue()


def median_ms(work: Callable[[], object], repeat: int) -> float:
    work()  # untimed: imports, allocator, caches of the libraries
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


@dataclass
class Figures:
    decode: float = 0.0
    render: dict[str, float] = field(default_factory=dict)
    archive_cold: dict[str, float] = field(default_factory=dict)
    archive_cached: dict[str, float] = field(default_factory=dict)
    naive: dict[str, float] = field(default_factory=dict)
    pacs_cold: dict[str, float | None] = field(default_factory=dict)
    pacs_cached: dict[str, float | None] = field(default_factory=dict)
    orthanc_first: dict[str, float | None] = field(default_factory=dict)
    orthanc: dict[str, float | None] = field(default_factory=dict)


def in_process(
    root: Path, images: Sequence[Image_], figures: dict[str, Figures], repeat: int
) -> None:
    for image in images:
        f = figures[image.label]
        part10 = image.copies[0].read_bytes()
        f.decode = median_ms(lambda p=part10, i=image: decode_frame(p, i.frame), repeat)
        for media in MEDIA:
            f.render[media] = median_ms(
                lambda m=media, p=part10, i=image: render(p, m, frame=i.frame), repeat
            )
            f.naive[media] = median_ms(
                lambda m=media, p=part10, i=image: naive(p, i.frame, m), repeat
            )
    # The archive: each media type on a fresh one, so each copy's first render is cold.
    for media in MEDIA:
        folder = root / f"archive-{MEDIA[media]}"
        folder.mkdir()
        archive = Archive(SqliteIndex(folder / "index.sqlite"), FilesystemBlobStore(folder / "b"))
        try:
            keyed = {}
            for image in images:
                keyed[image.label] = []
                for path in image.copies:
                    result = archive.ingest_part10(path.read_bytes(), Caller("BENCH", LOCALHOST))
                    keyed[image.label].append(
                        {
                            "StudyInstanceUID": result.study_instance_uid,
                            "SeriesInstanceUID": result.series_instance_uid,
                            "SOPInstanceUID": result.sop_instance_uid,
                        }
                    )
            archive.wait_for_metadata(60)
            request = RenderRequest(media_type=media)
            for image in images:
                cold = []
                for keys in keyed[image.label]:
                    start = time.perf_counter()
                    archive.rendered(keys, image.frame, request)
                    cold.append(time.perf_counter() - start)
                f = figures[image.label]
                f.archive_cold[media] = statistics.median(cold) * 1e3
                first = keyed[image.label][0]
                f.archive_cached[media] = median_ms(
                    lambda a=archive, k=first, i=image, r=request: a.rendered(k, i.frame, r),
                    repeat,
                )
        finally:
            archive.close()


# -- Orthanc ----------------------------------------------------------------------------


def start_orthanc_imaging(workdir: Path) -> OrthancProcess:
    """Orthanc with its DICOMweb and GDCM plugins (GDCM reads and writes JPEG 2000)."""
    plugins = [f"{PLUGINS}/libOrthancDicomWeb.so", f"{PLUGINS}/libOrthancGdcm.so"]
    process = start_orthanc(
        workdir,
        overrides={
            "Plugins": [p for p in plugins if Path(p).exists()],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        },
    )
    wait_for_http(process.http_port, "/system", process)
    return process


def orthanc_upload(port: int, path: Path) -> str:
    connection = http.client.HTTPConnection(LOCALHOST, port, timeout=120)
    try:
        connection.request("POST", "/instances", body=path.read_bytes())
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"Orthanc refused {path.name}: {response.status} {body[:200]!r}")
        return str(json.loads(body)["ID"])
    finally:
        connection.close()


# -- rendering over HTTP ----------------------------------------------------------------


def pacs_path(path: Path, frame: int) -> str:
    study, series, sop = uids(path)
    base = f"/dicom-web/studies/{study}/series/{series}/instances/{sop}"
    return base + (f"/frames/{frame + 1}/rendered" if frame else "/rendered")


def orthanc_path(orthanc_id: str, frame: int) -> str:
    base = f"/instances/{orthanc_id}"
    return base + (f"/frames/{frame}/rendered" if frame else "/rendered")


def fetch(client: Client, path: str, media: str, errors: list[str]) -> float | None:
    """Milliseconds, or None (and the reason in ``errors``) if no picture came back."""
    try:
        reply = client.get(path, media)
    except (OSError, http.client.HTTPException) as exc:
        errors.append(f"{path} ({media}): {exc!r}")
        client.connection.close()
        return None
    if reply.status != 200 or not reply.content_type.startswith(media):
        errors.append(f"{path} ({media}): HTTP {reply.status} {reply.body[:120]!r}")
        return None
    return reply.seconds * 1e3


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present and len(present) == len(values) else None


# Untimed requests before each timed one or turn (see ``settle`` in ``over_http``),
# and the turns the repeated requests are dealt in.
SETTLE = 3
TURNS = 3


def over_http(
    root: Path,
    images: Sequence[Image_],
    warm: Sequence[Path],
    figures: dict[str, Figures],
    repeat: int,
    errors: list[str],
    notes: list[str],
) -> str:
    """Every image through both servers, each media type on freshly started servers.

    pacs' failures go to ``errors``, Orthanc's to ``notes`` (the baseline's limits)."""
    data_dir = root / "pacs-data"
    every = [p for i in images for p in i.copies] + list(warm)
    pacs_import(data_dir, every, root / "pacs.log")
    version = "-"
    ids: dict[Path, str] = {}
    for media in MEDIA:
        pacs = start_pacs(data_dir, root / "pacs.log")
        orthanc = start_orthanc_imaging(root / "orthanc")
        clients = {"pacs": Client(pacs.http_port, ""), "Orthanc": Client(orthanc.http_port, "")}
        try:
            if not ids:
                for path in every:
                    ids[path] = orthanc_upload(orthanc.http_port, path)
                version = json.loads(clients["Orthanc"].get("/system", "*/*").body)["Version"]
            for path in warm:
                fetch(clients["pacs"], pacs_path(path, 0), media, errors)
                fetch(clients["Orthanc"], orthanc_path(ids[path], 0), media, notes)
            settling = {
                "pacs": pacs_path(warm[0], 0),
                "Orthanc": orthanc_path(ids[warm[0]], 0),
            }

            for image in images:
                f = figures[image.label]
                cold: dict[str, list[float | None]] = {"pacs": [], "Orthanc": []}
                for path in image.copies:
                    _settle(clients["pacs"], settling["pacs"], media)
                    cold["pacs"].append(
                        fetch(clients["pacs"], pacs_path(path, image.frame), media, errors)
                    )
                    _settle(clients["Orthanc"], settling["Orthanc"], media)
                    cold["Orthanc"].append(
                        fetch(
                            clients["Orthanc"], orthanc_path(ids[path], image.frame), media, notes
                        )
                    )
                f.pacs_cold[media] = _median(cold["pacs"])
                f.orthanc_first[media] = _median(cold["Orthanc"])
            for image in images:
                paths = {
                    "pacs": pacs_path(image.copies[0], image.frame),
                    "Orthanc": orthanc_path(ids[image.copies[0]], image.frame),
                }
                times: dict[str, list[float | None]] = {"pacs": [], "Orthanc": []}
                # Turns of a few repeats each, so that a drift of the machine's
                # speed weighs on both servers alike; each turn settles first.
                for turn in range(TURNS):
                    for name, client in clients.items():
                        _settle(client, settling[name], media)
                        sink = errors if name == "pacs" else notes
                        for _ in range(turn, repeat, TURNS):
                            times[name].append(fetch(client, paths[name], media, sink))
                figures[image.label].pacs_cached[media] = _median(times["pacs"])
                figures[image.label].orthanc[media] = _median(times["Orthanc"])
        finally:
            for client in clients.values():
                client.close()
            stop_process(pacs.process)
            stop_process(orthanc)
    return version


def _settle(client: Client, path: str, media: str) -> None:
    """Untimed repeats of a picture already made, before a timed request or
    turn: on this VM the first requests after a pause are slow whatever
    answers them (a bare uvicorn app: 1.3 ms for the first after 100 ms idle,
    0.44 ms from the tenth on), which would weigh most on the server whose
    answers take the least time."""
    for _ in range(SETTLE):
        fetch(client, path, media, [])


# -- transcoding ------------------------------------------------------------------------


@dataclass
class Conversion:
    pacs_in_process: float | None = None
    """Milliseconds."""
    pacs_http: float | None = None
    orthanc_http: float | None = None
    orthanc_error: str = ""
    refused: str = ""
    """Why pacs does not write this image in the target (then nothing is timed)."""


def _check(body: bytes, content_type: str, target: str, reference: np.ndarray) -> str:
    """'' when ``body`` is one Part 10 instance in ``target`` with the right pixels."""
    boundary = content_type.split("boundary=")[-1].split(";")[0].strip('"').encode()
    parts = [p for p in body.split(b"--" + boundary) if p.strip() not in (b"", b"--")]
    if len(parts) != 1:
        return f"{len(parts)} parts"
    payload = parts[0].split(b"\r\n\r\n", 1)[-1].rsplit(b"\r\n", 1)[0]
    try:
        ds = dcmread(BytesIO(payload))
        if ds.file_meta.TransferSyntaxUID != target:
            return f"sent as {ds.file_meta.TransferSyntaxUID}"
        pixels = ds.pixel_array
    except Exception as exc:  # whatever a broken answer makes pydicom raise
        return f"unreadable answer: {exc}"
    if target not in LOSSY_TARGETS and not np.array_equal(pixels, reference):
        return "pixels differ"
    return ""


def transcoding(
    root: Path, sources: dict[str, Path], repeat: int, http_too: bool, errors: list[str]
) -> dict[tuple[str, str], Conversion]:
    original = dcmread(sources[ExplicitVRLittleEndian])
    reference = original.pixel_array
    fmt = frame_format(
        original.BitsAllocated,
        original.BitsStored,
        original.PixelRepresentation,
        original.SamplesPerPixel,
        original.PhotometricInterpretation,
    )
    results = {(s, t): Conversion(refused=refusal(t, fmt) or "") for s in SOURCES for t in TARGETS}
    results = {pair: r for pair, r in results.items() if pair[0] != pair[1]}
    for source, path in sources.items():
        raw = path.read_bytes()
        _, offset = split_part10(raw)
        for target in TARGETS:
            if target != source and not results[source, target].refused:
                results[source, target].pacs_in_process = median_ms(
                    lambda r=raw, o=offset, s=source, t=target: transcode(r[o:], s, t),
                    max(3, repeat // 3),
                )
        print(f"transcoding in process: from {UID(source).name} done", flush=True)
    if not http_too:
        return results
    data_dir = root / "pacs-transcode"
    pacs_import(data_dir, list(sources.values()), root / "pacs.log")
    pacs = start_pacs(data_dir, root / "pacs.log")
    orthanc = start_orthanc_imaging(root / "orthanc-transcode")
    try:
        for path in sources.values():
            orthanc_upload(orthanc.http_port, path)
        for (source, target), result in results.items():
            if result.refused:
                continue
            study, series, sop = uids(sources[source])
            route = f"/dicom-web/studies/{study}/series/{series}/instances/{sop}"
            accept = f'multipart/related; type="application/dicom"; transfer-syntax={target}'
            for name in ("pacs", "Orthanc"):
                port = pacs.http_port if name == "pacs" else orthanc.http_port
                if name == "Orthanc" and orthanc.poll() is not None:
                    orthanc = start_orthanc_imaging(root / "orthanc-transcode")
                    port = orthanc.http_port
                client = Client(port, "")
                try:
                    reply = client.get(route, accept)
                    problem = (
                        _check(reply.body, reply.content_type, target, reference)
                        if reply.status == 200
                        else f"HTTP {reply.status}"
                    )
                    times = (
                        [client.get(route, accept).seconds for _ in range(3)] if not problem else []
                    )
                except (OSError, http.client.HTTPException) as exc:
                    crashed = name == "Orthanc" and orthanc.poll() is not None
                    problem = f"crashed ({orthanc.returncode})" if crashed else f"{exc!r}"
                    times = []
                finally:
                    client.close()
                if name == "pacs":
                    if problem:
                        errors.append(f"pacs {source} -> {target}: {problem}")
                    result.pacs_http = statistics.median(times) * 1e3 if times else None
                else:
                    result.orthanc_error = problem
                    result.orthanc_http = statistics.median(times) * 1e3 if times else None
    finally:
        stop_process(pacs.process)
        if orthanc.poll() is None:
            stop_process(orthanc)
    return results


# -- report -----------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if value < 10 else f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def _ratio(slow: float | None, fast: float | None) -> str:
    return f"{slow / fast:.2f}x" if slow and fast else "-"


def table(images: Sequence[Image_], figures: dict[str, Figures]) -> tuple[list[str], list[str]]:
    """The rendering table and the verdicts on its targets."""
    lines = [
        "| image | format | naive | pacs render (pure) | pacs archive cold | archive cached"
        " | pacs vs naive | pacs HTTP cold | pacs HTTP cached | Orthanc HTTP first"
        " | Orthanc HTTP median | pacs cold vs Orthanc median | pacs cached vs Orthanc median |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    slow_naive, slow_orthanc, slow_cached, orthanc_failed = [], [], [], []
    for image in images:
        f = figures[image.label]
        for media, kind in MEDIA.items():
            name = f"{image.label} {kind}"
            naive_x = f.naive[media] / f.archive_cold[media]
            cold, cached, orthanc = (
                f.pacs_cold.get(media),
                f.pacs_cached.get(media),
                f.orthanc.get(media),
            )
            if naive_x < 3:
                slow_naive.append(f"{name} ({naive_x:.1f}x)")
            if orthanc is None:
                orthanc_failed.append(name)
            elif cold is None or cold >= orthanc:
                slow_orthanc.append(f"{name} ({_ratio(orthanc, cold)})")
            if cached is None or cached >= 1:
                slow_cached.append(f"{name} ({_ms(cached)} ms)")
            lines.append(
                f"| {image.label} | {kind} | {_ms(f.naive[media])} | {_ms(f.render[media])}"
                f" | {_ms(f.archive_cold[media])} | {_ms(f.archive_cached[media])}"
                f" | {naive_x:.1f}x | {_ms(cold)} | {_ms(cached)}"
                f" | {_ms(f.orthanc_first.get(media))} | {_ms(orthanc)}"
                f" | {_ratio(orthanc, cold)} | {_ratio(orthanc, cached)} |"
            )
    cr = next(figures[i.label] for i in images if i.label.startswith("CR"))
    cr_cold, cr_orthanc = cr.pacs_cold.get(PNG), cr.orthanc.get(PNG)
    cr_share = cr_cold / cr_orthanc if cr_cold and cr_orthanc else None

    def verdict(misses: list[str]) -> str:
        return "met" if not misses else "not met: " + ", ".join(misses)

    verdicts = [
        f"- Render at least 3x faster than the naive path on every image (archive, cold):"
        f" {verdict(slow_naive)}.",
        f"- pacs (cold, over HTTP) faster than Orthanc's median on every image:"
        f" {verdict(slow_orthanc)}.",
        f"- CR PNG, pacs cold under half of Orthanc's median:"
        f" {'met' if cr_share is not None and cr_share < 0.5 else 'not met'}"
        f" ({f'{cr_share:.2f}' if cr_share is not None else '-'} of it).",
        f"- Cached re-render under 1 ms over HTTP: {verdict(slow_cached)}.",
    ]
    if orthanc_failed:
        verdicts.append(f"- Orthanc rendered no picture for {', '.join(orthanc_failed)}.")
    return lines, verdicts


def _name(syntax: str) -> str:
    return UID(syntax).keyword or syntax


def transcoding_table(results: dict[tuple[str, str], Conversion], pixel_bytes: int) -> list[str]:
    def rate(ms: float | None) -> str:
        return f"{pixel_bytes / 1e6 / (ms / 1e3):.0f}" if ms else "-"

    lines = [
        "| from | to | pacs in process MB/s | pacs HTTP MB/s | Orthanc HTTP MB/s"
        " | pacs HTTP / Orthanc |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for (source, target), r in results.items():
        if r.refused:
            lines.append(f"| {_name(source)} | {_name(target)} | not written: {r.refused} | | | |")
            continue
        orthanc = rate(r.orthanc_http) if r.orthanc_http else (r.orthanc_error or "-")
        lines.append(
            f"| {_name(source)} | {_name(target)} | {rate(r.pacs_in_process)}"
            f" | {rate(r.pacs_http)} | {orthanc} | {_ratio(r.orthanc_http, r.pacs_http)} |"
        )
    return lines


def record(lines: list[str]) -> None:
    """Replace the imaging figures between the markers in benchmarks/README.md."""
    text = README.read_text()
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    README.write_text(head + BEGIN + "\n" + "\n".join(lines) + "\n" + END + tail)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15, help="timed calls of each kind")
    parser.add_argument("--copies", type=int, default=5, help="instances per image, for cold")
    parser.add_argument("--no-http", action="store_true", help="in-process figures only")
    parser.add_argument("--workdir", type=Path, help="for servers and files (default: /tmp)")
    parser.add_argument(
        "--record", action="store_true", help="write the tables into benchmarks/README.md"
    )
    args = parser.parse_args(argv)
    if not args.no_http and not shutil.which("Orthanc"):
        parser.error("needs Debian's orthanc, orthanc-dicomweb and orthanc-gdcm (or --no-http)")
    configure_libraries()
    root = Path(tempfile.mkdtemp(prefix="pacs-imaging-", dir=args.workdir))
    errors: list[str] = []
    notes: list[str] = []
    try:
        images, sources, warm = prepare(root, args.copies)
        figures = {i.label: Figures() for i in images}
        in_process(root, images, figures, args.repeat)
        print("rendering in process: done", flush=True)
        version = "-"
        if not args.no_http:
            version = over_http(root, images, warm, figures, args.repeat, errors, notes)
            print("rendering over HTTP: done", flush=True)
        conversions = transcoding(root, sources, args.repeat, not args.no_http, errors)
        rows, verdicts = table(images, figures)
        pixel_bytes = dcmread(sources[ExplicitVRLittleEndian]).pixel_array.nbytes
        lines = [
            f"{os.cpu_count()} cores, Python {platform.python_version()}, Orthanc {version}"
            f" (DICOMweb and GDCM plugins), {time.strftime('%Y-%m-%d')}, {revision()}",
            "",
            f"**Rendering**, milliseconds per frame: in process, median of {args.repeat} calls"
            f" after an untimed one; cold, median over {args.copies} copies of each image,"
            " each rendered for the first time; over HTTP, median of the repeated requests"
            f" (in {TURNS} turns per server; every cold request and turn after {SETTLE}"
            " untimed repeats of a picture already made)."
            " Ratios are how many times faster pacs is.",
            "",
            *rows,
            "",
            "Targets:",
            "",
            *verdicts,
            "",
            "**Transcoding** the 512x512 16-bit CT slice, MB/s of pixels (median of 3"
            " after an untimed first call whose answer is checked: read back by pydicom,"
            " lossless ones must give the original pixels). HTTP is WADO-RS instance"
            " retrieval with `transfer-syntax` in Accept, one keep-alive connection.",
            "",
            *transcoding_table(conversions, pixel_bytes),
        ]
        print("\n" + "\n".join(lines))
        for error in list(dict.fromkeys(errors))[:30]:
            print("ERROR", error)
        for note in list(dict.fromkeys(notes))[:10]:
            print("Orthanc:", note)
        if args.record:
            record(lines)
        return 1 if errors else 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

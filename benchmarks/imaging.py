"""Imaging: rendering a frame to JPEG or PNG, pacs beside the naive path and Orthanc.

Four instances, generated deterministically:

* CT: one 512x512 16-bit slice of ``phantom.py`` (Explicit VR Little Endian);
* CT J2K: the same slice in JPEG 2000 lossless (pydicom's ``Dataset.compress``);
* CR: a 2500x3000 (columns x rows) 12-bit radiograph-like image: smooth
  gradients, a body outline, ribs, a spine and a few edges, no random noise;
* MF: a 50-frame 256x256 16-bit multi-frame (Multi-frame Grayscale Word
  Secondary Capture); frame 26 of 50 is the one rendered.

For each, median milliseconds per frame of:

1. pacs in-process, pure functions with no server: ``decode_frame`` alone, and
   ``render`` (decode, display pipeline, encode) to JPEG and to PNG;
2. the naive path, in the same process: ``dcmread(...).pixel_array`` of the whole
   instance, float windowing in numpy with the file's centre and width, Pillow
   encode (JPEG quality 90, as pacs and Orthanc);
3. over HTTP, one keep-alive connection per server: Orthanc's
   ``/instances/{id}/rendered`` (``/frames/25/rendered`` for MF) and pacs' WADO-RS
   ``.../instances/{i}/rendered`` (``/frames/26/rendered``), with ``Accept:
   image/jpeg`` or ``image/png``. Both servers are started afresh for each media
   type and warmed on two other instances (a native and a J2K copy of the CT), so
   that the first request for an image ("cold") is that image's first decode in
   that server; then the servers take turns, and "cached" is the median of the
   repeated requests.

    python benchmarks/imaging.py [--repeat N] [--record]

Needs Debian's ``orthanc``.
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
from pydicom.uid import (
    PYDICOM_ROOT_UID,
    UID,
    ComputedRadiographyImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
)

from benchmarks.dicom_nodes import LOCALHOST, revision, start_orthanc, stop_process
from benchmarks.dicomweb import Client, pacs_import, start_pacs, wait_for_http
from benchmarks.phantom import generate_ct_series
from pacs.pixels.render import decode_frame, render

HERE = Path(__file__).resolve().parent
README = HERE / "README.md"
BEGIN, END = "<!-- imaging:begin -->", "<!-- imaging:end -->"
ROOT = f"{PYDICOM_ROOT_UID}77."
JPEG, PNG = "image/jpeg", "image/png"
MEDIA = {JPEG: "JPEG", PNG: "PNG"}


@dataclass(frozen=True, slots=True)
class Image_:
    label: str
    path: Path
    frame: int
    """0-based frame to render."""
    study: str
    series: str
    sop: str


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


def recode(source: Path, target: Path, key: str, j2k: bool) -> None:
    """A copy of ``source`` under new UIDs, in JPEG 2000 lossless if ``j2k``."""
    ds = dcmread(source)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID(ROOT + key + ".3")
    ds.SeriesInstanceUID = ROOT + key + ".2"
    if j2k:
        ds.compress(JPEG2000Lossless)
    ds.save_as(target, enforce_file_format=True)


def prepare(root: Path) -> tuple[list[Image_], list[Path]]:
    files = root / "files"
    files.mkdir(parents=True)
    (ct,) = generate_ct_series(root / "phantom", slices=1)
    shutil.copy(ct, files / "ct.dcm")
    recode(ct, files / "ct-j2k.dcm", "3", True)
    write_cr(files / "cr.dcm")
    write_multiframe(files / "mf.dcm")
    recode(ct, files / "warm.dcm", "4", False)
    recode(ct, files / "warm-j2k.dcm", "5", True)
    images = []
    for label, name, frame in (
        ("CT 512x512", "ct.dcm", 0),
        ("CT 512x512, J2K lossless", "ct-j2k.dcm", 0),
        ("CR 2500x3000", "cr.dcm", 0),
        ("MF 50x256x256, frame 26", "mf.dcm", 25),
    ):
        ds = dcmread(files / name, stop_before_pixels=True)
        images.append(
            Image_(
                label,
                files / name,
                frame,
                ds.StudyInstanceUID,
                ds.SeriesInstanceUID,
                ds.SOPInstanceUID,
            )
        )
    return images, [files / "warm.dcm", files / "warm-j2k.dcm"]


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
    naive: dict[str, float] = field(default_factory=dict)
    pacs_cold: dict[str, float | None] = field(default_factory=dict)
    pacs_cached: dict[str, float | None] = field(default_factory=dict)
    orthanc_first: dict[str, float | None] = field(default_factory=dict)
    orthanc: dict[str, float | None] = field(default_factory=dict)


def in_process(image: Image_, figures: Figures, repeat: int) -> None:
    part10 = image.path.read_bytes()
    figures.decode = median_ms(lambda: decode_frame(part10, image.frame), repeat)
    for media in MEDIA:
        figures.render[media] = median_ms(
            lambda m=media: render(part10, m, frame=image.frame), repeat
        )
        figures.naive[media] = median_ms(lambda m=media: naive(part10, image.frame, m), repeat)


# -- over HTTP --------------------------------------------------------------------------


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


def pacs_path(image: Image_) -> str:
    base = f"/studies/{image.study}/series/{image.series}/instances/{image.sop}"
    return base + (f"/frames/{image.frame + 1}/rendered" if image.frame else "/rendered")


def orthanc_path(orthanc_id: str, frame: int) -> str:
    base = f"/instances/{orthanc_id}"
    return base + (f"/frames/{frame}/rendered" if frame else "/rendered")


def fetch(client: Client, path: str, media: str, errors: list[str]) -> float | None:
    """Milliseconds, or None (and the reason in ``errors``) if no picture came back."""
    reply = client.get(path, media)
    if reply.status != 200 or not reply.content_type.startswith(media):
        errors.append(f"{path} ({media}): HTTP {reply.status} {reply.body[:120]!r}")
        return None
    return reply.seconds * 1e3


def _median(values: Sequence[float | None]) -> float | None:
    return statistics.median(values) if None not in values else None  # type: ignore[type-var]


def over_http(
    root: Path,
    images: Sequence[Image_],
    warm: Sequence[Path],
    figures: dict[str, Figures],
    repeat: int,
    errors: list[str],
) -> str:
    """Every image through both servers, each media type on freshly started servers."""
    data_dir = root / "pacs-data"
    pacs_import(data_dir, [i.path for i in images] + list(warm), root / "pacs.log")
    warm_uids = [dcmread(p, stop_before_pixels=True) for p in warm]
    version = "-"
    ids: dict[str, str] = {}
    for media in MEDIA:
        pacs = start_pacs(data_dir, root / "pacs.log")
        orthanc = start_orthanc(root / "orthanc")
        clients = {"pacs": Client(pacs.http_port, ""), "Orthanc": Client(orthanc.http_port, "")}
        try:
            wait_for_http(orthanc.http_port, "/system", orthanc)
            if not ids:
                for path in [i.path for i in images] + list(warm):
                    ids[path.name] = orthanc_upload(orthanc.http_port, path)
                version = json.loads(clients["Orthanc"].get("/system", "*/*").body)["Version"]
            for ds, path in zip(warm_uids, warm, strict=True):
                fetch(
                    clients["pacs"],
                    f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                    f"/instances/{ds.SOPInstanceUID}/rendered",
                    media,
                    errors,
                )
                fetch(clients["Orthanc"], orthanc_path(ids[path.name], 0), media, errors)
            paths = {
                i.label: {
                    "pacs": "/dicom-web" + pacs_path(i),
                    "Orthanc": orthanc_path(ids[i.path.name], i.frame),
                }
                for i in images
            }
            for image in images:
                f = figures[image.label]
                f.pacs_cold[media] = fetch(
                    clients["pacs"], paths[image.label]["pacs"], media, errors
                )
                f.orthanc_first[media] = fetch(
                    clients["Orthanc"], paths[image.label]["Orthanc"], media, errors
                )
            for image in images:
                times: dict[str, list[float | None]] = {"pacs": [], "Orthanc": []}
                for _ in range(repeat):
                    for name, client in clients.items():
                        path = paths[image.label][name]
                        times[name].append(fetch(client, path, media, errors))
                figures[image.label].pacs_cached[media] = _median(times["pacs"])
                figures[image.label].orthanc[media] = _median(times["Orthanc"])
        finally:
            for client in clients.values():
                client.close()
            stop_process(pacs.process)
            stop_process(orthanc)
    return version


# -- report -----------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if value < 10 else f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def _ratio(slow: float | None, fast: float | None) -> str:
    return f"{slow / fast:.2f}x" if slow and fast else "-"


def table(images: Sequence[Image_], figures: dict[str, Figures]) -> tuple[list[str], list[str]]:
    """The table and the verdicts on the targets."""
    lines = [
        "| image | format | pacs decode | pacs render | naive | pacs vs naive"
        " | pacs HTTP cold | pacs HTTP cached | Orthanc HTTP first | Orthanc HTTP median"
        " | pacs cold vs Orthanc median | pacs cached vs Orthanc median |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    slow_naive, slow_orthanc, slow_cached, orthanc_failed = [], [], [], []
    for image in images:
        f = figures[image.label]
        for media, kind in MEDIA.items():
            name = f"{image.label} {kind}"
            naive_x = f.naive[media] / f.render[media]
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
                f"| {image.label} | {kind} | {_ms(f.decode)} | {_ms(f.render[media])}"
                f" | {_ms(f.naive[media])} | {naive_x:.1f}x | {_ms(cold)} | {_ms(cached)}"
                f" | {_ms(f.orthanc_first.get(media))} | {_ms(orthanc)}"
                f" | {_ratio(orthanc, cold)} | {_ratio(orthanc, cached)} |"
            )
    cr = figures[images[2].label]
    cr_cold, cr_orthanc = cr.pacs_cold.get(PNG), cr.orthanc.get(PNG)
    cr_share = cr_cold / cr_orthanc if cr_cold and cr_orthanc else None

    def verdict(misses: list[str]) -> str:
        return "met" if not misses else "not met: " + ", ".join(misses)

    verdicts = [
        f"- In-process render at least 3x faster than the naive path on every image:"
        f" {verdict(slow_naive)}.",
        f"- pacs (cold, over HTTP) faster than Orthanc's median on every image:"
        f" {verdict(slow_orthanc)}.",
        f"- CR PNG, pacs cold under half of Orthanc's median:"
        f" {'met' if cr_share is not None and cr_share < 0.5 else 'not met'}"
        f" ({f'{cr_share:.2f}' if cr_share is not None else '-'} of it).",
        f"- Cached re-render under 1 ms over HTTP: {verdict(slow_cached)}.",
    ]
    if orthanc_failed:
        verdicts.append(
            f"- Orthanc rendered no picture for {', '.join(orthanc_failed)}"
            " (HTTP 415: Debian's Orthanc 1.10 decodes no JPEG 2000 without the GDCM plugin)."
        )
    return lines, verdicts


def record(lines: list[str]) -> None:
    """Replace the imaging figures between the markers in benchmarks/README.md."""
    text = README.read_text()
    if BEGIN not in text:
        text = text.rstrip("\n") + (
            "\n\n## Imaging: `imaging.py`\n\n```sh\n"
            "python benchmarks/imaging.py --record\n```\n\n"
            "See the script's docstring for the images and what is timed.\n\n"
            f"{BEGIN}\n{END}\n"
        )
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    README.write_text(head + BEGIN + "\n" + "\n".join(lines) + "\n" + END + tail)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15, help="timed calls of each kind")
    parser.add_argument("--no-http", action="store_true", help="in-process figures only")
    parser.add_argument("--workdir", type=Path, help="for servers and files (default: /tmp)")
    parser.add_argument(
        "--record", action="store_true", help="write the table into benchmarks/README.md"
    )
    args = parser.parse_args(argv)
    if not args.no_http and not shutil.which("Orthanc"):
        parser.error("needs Debian's orthanc (or --no-http)")
    root = Path(tempfile.mkdtemp(prefix="pacs-imaging-", dir=args.workdir))
    errors: list[str] = []
    try:
        images, warm = prepare(root)
        figures = {i.label: Figures() for i in images}
        for image in images:
            in_process(image, figures[image.label], args.repeat)
            print(f"in-process: {image.label} done", flush=True)
        version = "-"
        if not args.no_http:
            version = over_http(root, images, warm, figures, args.repeat, errors)
        rows, verdicts = table(images, figures)
        lines = [
            f"{os.cpu_count()} cores, Python {platform.python_version()}, Orthanc {version},"
            f" {time.strftime('%Y-%m-%d')}, {revision()}",
            "",
            f"Milliseconds per frame, median of {args.repeat} calls after an untimed one"
            " (in-process) or of the repeated requests; HTTP cold is the first request for"
            " that image (one sample). Ratios are how many times faster pacs is.",
            "",
            *rows,
            "",
            "Targets:",
            "",
            *verdicts,
        ]
        print("\n" + "\n".join(lines))
        # Orthanc without a JPEG 2000 decoder is the baseline's limit, not a failure.
        failures = [e for e in errors if "/dicom-web/" in e or "HTTP 415" not in e]
        for error in list(dict.fromkeys(errors))[:20]:
            print("ERROR" if error in failures else "note", error)
        if args.record:
            record(lines)
        return 1 if failures else 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

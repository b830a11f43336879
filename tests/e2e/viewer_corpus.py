"""Studies for the viewer's browser tests, stored over STOW-RS into a real server.

- A generated CT (``benchmarks.phantom``; 40 slices of 128x128, 2.8 mm pixels)
  for patient ``Nguyễn^Văn An``.
- pydicom's own files as the series of one study of ``Trần^Thị Bình``: a
  30-frame JPEG colour ultrasound, a 15-frame 32-bit RT dose, JPEG-LS and
  JPEG 2000 grey images, palette colour (which the browser leaves to the
  server's rendering), RGB without Pixel Spacing, and a structured report
  with no image at all.
- ``PAGED`` one-image studies of ``Page^Patient`` so that the list has pages.
- Three series of one frame of reference for ``Võ^Thị Liên``: a thin CT, a
  thick one made of every other slice (linked scrolling) and a coronal
  reformat of it (reference lines).
"""

from __future__ import annotations

import secrets
import warnings
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import httpx
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from benchmarks.phantom import generate_ct_series
from tests.conftest import PYDICOM_TEST_FILES
from tests.dicom_factory import make_ct, uid

CT_PATIENT = "Nguyễn^Văn An"
CT_PATIENT_ID = "VN-0001"
CT_SLICES = 40
CT_SIZE = 128
SAMPLES_PATIENT = "Trần^Thị Bình"
SAMPLES_PATIENT_ID = "VN-0002"
SAMPLES_STUDY = uid("viewer", "samples")
PAGED = 30
LINKED_PATIENT_ID = "VN-0003"
LINKED_SLICES = 12  # the thick series has every other one
LINKED_SIZE = 64
# The axial rows the coronal slices cut through the body, the first one shown first.
CORONAL_ROWS = tuple(range(44, 12, -4))

# file name -> series description shown in the viewer
SAMPLE_FILES = {
    "examples_ybr_color.dcm": "US cine, 30 frames, JPEG",
    "rtdose.dcm": "RT dose, 15 frames, 32-bit",
    "MR_small_jpeg_ls_lossless.dcm": "MR JPEG-LS",
    "JPEG2000.dcm": "NM JPEG 2000",
    "CT_small.dcm": "CT small",
    "examples_palette.dcm": "US palette colour",
    "examples_rgb_color.dcm": "US RGB, no pixel spacing",
}
SR_DESCRIPTION = "Report (no images)"
VOI_LUT_DESCRIPTION = "DX with a VOI LUT"
VOI_LUT_EXPLANATION = "INVERTED STEP"


@dataclass(frozen=True)
class Corpus:
    ct_study: str
    ct_series: str
    pixel_spacing_mm: float
    samples_study: str
    sample_series: dict[str, str]  # description -> series UID
    linked_study: str
    linked_series: tuple[str, str, str]  # thin, thick, coronal


def _stow(dicomweb: str, files: list[bytes]) -> None:
    boundary = secrets.token_hex(8)
    body = b"".join(
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n"
        for data in files
    )
    body += f"--{boundary}--\r\n".encode()
    response = httpx.post(
        dicomweb + "/studies",
        content=body,
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'
        },
        timeout=120,
    )
    assert response.status_code == 200, response.text


def _saved(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _sample(name: str, number: int, description: str) -> tuple[str, bytes]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(PYDICOM_TEST_FILES / name)
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.PatientName = SAMPLES_PATIENT
        ds.PatientID = SAMPLES_PATIENT_ID
        ds.StudyInstanceUID = SAMPLES_STUDY
        ds.StudyDate = "20231105"
        ds.StudyTime = "141500"
        ds.StudyDescription = "pydicom samples"
        ds.AccessionNumber = "SAMPLES-1"
        ds.SeriesInstanceUID = uid("viewer", "samples", name)
        ds.SOPInstanceUID = uid("viewer", "samples", name, "instance")
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesNumber = number
        ds.SeriesDescription = description
        return str(ds.SeriesInstanceUID), _saved(ds)


def _report() -> tuple[str, bytes]:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    ds.SOPInstanceUID = uid("viewer", "samples", "sr", "instance")
    ds.StudyInstanceUID = SAMPLES_STUDY
    ds.SeriesInstanceUID = uid("viewer", "samples", "sr")
    ds.PatientName = SAMPLES_PATIENT
    ds.PatientID = SAMPLES_PATIENT_ID
    ds.StudyDate = "20231105"
    ds.Modality = "SR"
    ds.SeriesNumber = 99
    ds.InstanceNumber = 1
    ds.SeriesDescription = SR_DESCRIPTION
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    return str(ds.SeriesInstanceUID), _saved(ds)


def _voi_lut_image() -> tuple[str, bytes]:
    """A DX with no window but a VOI LUT Sequence (as some CR/DX vendors send):
    stored 500 on the left half, 1500 on the right, and a LUT that maps
    everything below 1000 to white and the rest to black, the opposite of
    what the image's range would show."""
    ds = make_ct(
        "viewer-voi-lut", patient_id=SAMPLES_PATIENT_ID, patient_name=SAMPLES_PATIENT, size=64
    )
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.Modality = "DX"
    ds.StudyInstanceUID = SAMPLES_STUDY
    ds.StudyDate, ds.StudyTime = "20231105", "141500"
    ds.StudyDescription, ds.AccessionNumber = "pydicom samples", "SAMPLES-1"
    ds.SeriesInstanceUID = uid("viewer", "samples", "voi-lut")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid("viewer", "voi-lut", "1")
    ds.SeriesNumber = 50
    ds.SeriesDescription = VOI_LUT_DESCRIPTION
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    for keyword in ("WindowCenter", "WindowWidth", "RescaleSlope", "RescaleIntercept"):
        if keyword in ds:
            delattr(ds, keyword)
    pixels = np.full((64, 64), 500, dtype="<u2")
    pixels[:, 32:] = 1500
    ds.PixelData = pixels.tobytes()
    lut = Dataset()
    lut.add_new(0x00283002, "US", [4096, 0, 12])  # LUT Descriptor: entries, first value, bits
    lut.add_new(0x00283003, "LO", VOI_LUT_EXPLANATION)
    words = np.where(np.arange(4096) < 1000, 4095, 0).astype("<u2")
    lut.add_new(0x00283006, "OW", words.tobytes())  # LUT Data, 8 KB: a BulkDataURI
    ds.VOILUTSequence = [lut]
    return str(ds.SeriesInstanceUID), _saved(ds)


def _linked_series(folder: Path) -> tuple[list[Dataset], list[Dataset], list[Dataset]]:
    thin = []
    size = LINKED_SIZE
    for path in generate_ct_series(folder, slices=LINKED_SLICES, rows=size, columns=size, seed=1):
        ds = pydicom.dcmread(path)
        ds.PatientName, ds.PatientID = "Võ^Thị Liên", LINKED_PATIENT_ID
        ds.SpecificCharacterSet = "ISO_IR 192"
        thin.append(ds)
    thick = []
    for n, source in enumerate(thin[::2], start=1):
        ds = pydicom.dcmread(BytesIO(_saved(source)))
        ds.SeriesInstanceUID = uid("viewer", "thick")
        ds.SOPInstanceUID = uid("viewer", "thick", n)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesNumber, ds.InstanceNumber = 3, n
        ds.SeriesDescription = "THICK"
        ds.SliceThickness = f"{2 * float(source.SliceThickness):g}"
        thick.append(ds)
    # Coronal: rows are the axial slices, top first; columns left to right.
    volume = np.stack([ds.pixel_array for ds in thin])
    top = [float(v) for v in thin[0].ImagePositionPatient]
    row_mm = float(thin[0].PixelSpacing[0])
    slice_mm = abs(float(thin[1].ImagePositionPatient[2]) - top[2])
    coronal = []
    for n, row in enumerate(CORONAL_ROWS, start=1):
        ds = pydicom.dcmread(BytesIO(_saved(thin[0])))
        ds.SeriesInstanceUID = uid("viewer", "coronal")
        ds.SOPInstanceUID = uid("viewer", "coronal", n)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesNumber, ds.InstanceNumber = 4, n
        ds.SeriesDescription = "CORONAL"
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
        ds.ImagePositionPatient = [top[0], top[1] + row * row_mm, top[2]]
        ds.PixelSpacing = [f"{slice_mm:g}", thin[0].PixelSpacing[1]]
        ds.Rows, ds.Columns = LINKED_SLICES, size
        ds.SliceThickness = f"{row_mm:g}"
        ds.PixelData = np.ascontiguousarray(volume[:, row, :]).tobytes()
        for keyword in ("SliceLocation", "SpacingBetweenSlices"):
            if keyword in ds:
                delattr(ds, keyword)
        coronal.append(ds)
    return thin, thick, coronal


def load_corpus(dicomweb: str, workdir: Path) -> Corpus:
    ct_files = []
    for path in generate_ct_series(workdir / "ct", slices=CT_SLICES, rows=CT_SIZE, columns=CT_SIZE):
        ds = pydicom.dcmread(path)
        ds.PatientName = CT_PATIENT
        ds.PatientID = CT_PATIENT_ID
        ct_files.append(ds)
    first = ct_files[0]
    _stow(dicomweb, [_saved(ds) for ds in ct_files])

    series = {}
    files = []
    for number, (name, description) in enumerate(SAMPLE_FILES.items(), start=1):
        series_uid, data = _sample(name, number, description)
        series[description] = series_uid
        files.append(data)
    series_uid, data = _report()
    series[SR_DESCRIPTION] = series_uid
    files.append(data)
    series_uid, data = _voi_lut_image()
    series[VOI_LUT_DESCRIPTION] = series_uid
    files.append(data)
    _stow(dicomweb, files)

    paged = []
    for page in range(PAGED):
        ds = make_ct(
            f"viewer-page-{page}", patient_id=f"PG-{page:03d}", patient_name="Page^Patient"
        )
        ds.StudyDate = f"2022{1 + page % 12:02d}{1 + page % 28:02d}"
        ds.StudyDescription = f"PAGING {page:02d}"
        ds.AccessionNumber = f"ACC{page:04d}"
        paged.append(_saved(ds))
    _stow(dicomweb, paged)
    thin, thick, coronal = _linked_series(workdir / "linked")
    _stow(dicomweb, [_saved(ds) for ds in thin + thick + coronal])
    return Corpus(
        linked_study=str(thin[0].StudyInstanceUID),
        linked_series=tuple(str(s[0].SeriesInstanceUID) for s in (thin, thick, coronal)),
        ct_study=str(first.StudyInstanceUID),
        ct_series=str(first.SeriesInstanceUID),
        pixel_spacing_mm=float(first.PixelSpacing[1]),
        samples_study=SAMPLES_STUDY,
        sample_series=series,
    )

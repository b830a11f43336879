"""Decoding: the archive's frame decoder against pydicom's own ``pixel_array``.

The archive decodes with its imagecodecs plugin where that is preferred
(libjpeg-turbo, CharLS, OpenJPEG threaded, OpenJPH) and pydicom's pylibjpeg
plugins elsewhere; pydicom's reference here uses its defaults (pylibjpeg).
"""

from __future__ import annotations

import warnings
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import (
    HTJ2K,
    UID,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    SecondaryCaptureImageStorage,
)

from pacs.errors import CorruptDataError, UnsupportedTransferSyntaxError
from pacs.pixels.codecs import FrameFormat, LossyQuality, encode_frame, preferred_plugin
from pacs.pixels.frames import (
    decode_frames,
    frame_array,
    frame_spans,
    parse,
    span_bytes,
    span_length,
)
from tests.conftest import PYDICOM_TEST_FILES

TEST_FILES = Path(pydicom.data.__path__[0]) / "test_files"
# Lossy JPEG: libjpeg-turbo and libjpeg round their inverse DCTs differently;
# lossy HTJ2K: OpenJPH and OpenJPEG round the irreversible wavelet differently.
LOSSY_JPEG = (JPEGBaseline8Bit, JPEGExtended12Bit)
ROUNDED = (*LOSSY_JPEG, HTJ2K)


def files_with_pixels() -> list[Path]:
    found = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in sorted(TEST_FILES.glob("*.dcm")):
            try:
                ds = pydicom.dcmread(path)
                if "PixelData" in ds:
                    ds.pixel_array  # noqa: B018  (only files pydicom itself can decode)
                    found.append(path)
            except Exception:
                continue
    return found


@pytest.mark.parametrize("path", files_with_pixels(), ids=lambda p: p.name)
def test_every_bundled_file_decodes_as_pydicom_does(path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = pydicom.dcmread(path).pixel_array
        dataset = parse(path.read_bytes())
        frames = int(dataset.get("NumberOfFrames") or 1)
        ours = [frame_array(dataset, index) for index in range(frames)]
    decoded = np.stack(ours) if frames > 1 else ours[0]
    assert decoded.shape == reference.shape
    assert decoded.dtype.kind == reference.dtype.kind
    assert decoded.dtype.itemsize == reference.dtype.itemsize
    syntax = dataset.file_meta.TransferSyntaxUID
    tolerance = 1 if syntax in LOSSY_JPEG else 0
    assert np.abs(decoded.astype(np.int64) - reference.astype(np.int64)).max() <= tolerance


def part10(pixels: np.ndarray, syntax: str, fmt: FrameFormat, photometric: str) -> bytes:
    """A one-frame Secondary Capture file whose frame our encoder wrote."""
    encoded = encode_frame(pixels, syntax, fmt, LossyQuality())
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.78.1"
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.78.1"
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = fmt.samples_per_pixel
    ds.PhotometricInterpretation = encoded.photometric if photometric == "RGB" else photometric
    if fmt.samples_per_pixel > 1:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored = fmt.bits_allocated, fmt.bits_stored
    ds.HighBit = fmt.bits_stored - 1
    ds.PixelRepresentation = int(fmt.signed)
    ds.PixelData = encapsulate([encoded.codestream])
    ds["PixelData"].VR = "OB"
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def grey(bits: int, signed: bool) -> np.ndarray:
    y, x = np.mgrid[0:120, 0:100]
    wave = np.sin(x / 8.0) * np.cos(y / 11.0)
    if signed:
        return (600 * wave - 300).astype(np.int16)
    top = (1 << bits) - 1
    values = top / 2 + top / 2.2 * wave
    return values.astype(np.uint8 if bits <= 8 else np.uint16)


# Grey JPEG, which pydicom's bundled files barely cover, in every syntax the
# plugin decodes: written by our encoders, read by both decoders.
GREY = [
    (JPEGBaseline8Bit, 8, False),
    (JPEGExtended12Bit, 12, False),
    (JPEGLossless, 16, True),
    (JPEGLosslessSV1, 12, False),
    (JPEGLSLossless, 16, True),
    (HTJ2KLossless, 16, True),
    (HTJ2KLosslessRPCL, 10, False),
    (HTJ2K, 12, False),
]


@pytest.mark.parametrize(("syntax", "bits", "signed"), GREY, ids=lambda v: str(v))
def test_grey_codestreams_decode_as_pylibjpeg_does(syntax: str, bits: int, signed: bool) -> None:
    pixels = grey(bits, signed)
    fmt = FrameFormat(8 if bits <= 8 else 16, bits, signed, 1, "MONOCHROME2")
    data = part10(pixels, syntax, fmt, "MONOCHROME2")
    assert preferred_plugin(syntax, 1) == "imagecodecs"
    reference = pydicom.dcmread(BytesIO(data)).pixel_array  # pylibjpeg
    ours = frame_array(parse(data), 0)
    tolerance = 1 if syntax in ROUNDED else 0
    assert np.abs(ours.astype(np.int64) - reference.astype(np.int64)).max() <= tolerance
    if syntax not in ROUNDED:
        assert np.array_equal(ours, pixels)  # lossless: the original values


def test_colour_jpeg_is_left_to_pylibjpeg() -> None:
    assert preferred_plugin(JPEGBaseline8Bit, 3) == ""
    assert preferred_plugin(ExplicitVRLittleEndian, 1) == ""


def test_decode_frames_gives_little_endian_bytes_of_each_frame() -> None:
    path = TEST_FILES / "SC_rgb_rle_2frame.dcm"
    reference = pydicom.dcmread(path).pixel_array
    frames = decode_frames(path.read_bytes(), [1, 0])
    assert frames == [reference[1].tobytes(), reference[0].tobytes()]


def test_corrupt_pixel_data_is_a_clear_error() -> None:
    data = bytearray((TEST_FILES / "MR_small_jp2klossless.dcm").read_bytes())
    start = data.index(b"\xff\x4f\xff\x51")  # the codestream's SOC and SIZ markers
    data[start + 4 : start + 40] = b"\x00" * 36  # an image of no size
    with pytest.raises((CorruptDataError, UnsupportedTransferSyntaxError), match="decode"):
        frame_array(parse(bytes(data)), 0)
    with pytest.raises(CorruptDataError, match="parsed"):
        parse(b"not a dicom file at all")


def _compressed_test_files() -> list[Path]:
    found = []
    for path in sorted(PYDICOM_TEST_FILES.glob("*.dcm")):
        try:
            ds = pydicom.dcmread(path)
            syntax = ds.file_meta.TransferSyntaxUID
        except Exception:
            continue
        if syntax.is_compressed and "PixelData" in ds:
            found.append(path)
    return found


@pytest.mark.parametrize("path", _compressed_test_files(), ids=lambda p: p.name)
def test_frame_spans_find_the_frames_pydicom_finds(path: Path) -> None:
    """Where each frame lies in an encapsulated value, so that a frame of a
    cine loop is read alone: the same bytes as pydicom's frames, each span
    read as one range from its first fragment to the end of its last."""
    ds = pydicom.dcmread(path)
    value, count = ds.PixelData, int(ds.get("NumberOfFrames", 1) or 1)
    expected = list(generate_frames(value, number_of_frames=count))
    spans = frame_spans(value, count)
    assert [span_bytes(span, value) for span in spans] == expected
    for span, frame in zip(spans, expected, strict=True):
        start = span[0]
        assert span_bytes(span, value[start : start + span_length(span)], start) == frame


def test_frame_spans_of_frames_in_several_fragments_with_an_offset_table() -> None:
    frames = [bytes([n]) * (1000 + 38 * n) for n in range(5)]  # even: no padding
    value = encapsulate(frames, fragments_per_frame=3, has_bot=True)
    spans = frame_spans(value, 5)
    assert [len(span[1]) for span in spans] == [3] * 5
    assert [span_bytes(span, value) for span in spans] == frames


@pytest.mark.parametrize(
    "value",
    [b"", b"\xfe\xff\x00\xe0\xff\xff\xff\xff", b"\x08\x00\x05\x00\x00\x00\x00\x00"],
    ids=["empty", "undefined length item", "not an item"],
)
def test_frame_spans_refuse_what_is_not_a_sequence_of_items(value: bytes) -> None:
    with pytest.raises(ValueError):
        frame_spans(value, 1)

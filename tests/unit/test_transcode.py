"""pacs.pixels.transcode: every source syntax to every target we write.

Each converted data set is read back by pydicom's default decoders
(pylibjpeg: libjpeg, OpenJPEG, RLE), not by the imagecodecs libraries that
wrote it, so an encoder and its reader are never the same code. Lossless
targets must give back exactly the decoded source; lossy ones must stay
within a stated PSNR and say that they are lossy.
"""

from __future__ import annotations

import warnings
import zlib
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.multival import MultiValue
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    JPEG2000MC,
    MPEG2MPML,
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSNearLossless,
    SecondaryCaptureImageStorage,
)

from pacs.core.encoding import split_part10
from pacs.errors import UnsupportedTransferSyntaxError
from pacs.pixels import (
    ENCODED_TARGETS,
    LOSSY_TARGETS,
    UNCOMPRESSED_TARGETS,
    LossyQuality,
    can_transcode,
    frame_format,
    refusal,
    transcode,
)
from pacs.pixels.frames import frame_array, parse
from pacs.pixels.reencoding import reencode_little_endian

TEST_FILES = Path(pydicom.data.__path__[0]) / "test_files"
BUNDLED = [
    "CT_small.dcm",  # explicit VR little endian, signed 16-bit
    "MR_small_bigendian.dcm",  # explicit VR big endian, 16-bit
    "MR_small_implicit.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "JPEG2000.dcm",  # lossy JPEG 2000, signed
    "JPGExtended.dcm",  # lossy 12-bit JPEG
    "SC_rgb_rle_2frame.dcm",  # colour, two frames
    "SC_rgb_jpeg_dcmtk.dcm",  # lossy colour JPEG, YBR_FULL
    "SC_rgb_dcmtk_+eb+cy+np.dcm",  # lossy colour JPEG, YBR_FULL_422
    "SC_ybr_full_422_uncompressed.dcm",  # native 4:2:2
    "ExplVR_BigEnd.dcm",  # big endian colour, planar configuration 1
    "SC_rgb_small_odd_big_endian.dcm",  # 8-bit samples in OW, big endian
    "examples_palette.dcm",  # palette colour, 8-bit
    "image_dfl.dcm",  # deflated
    "rtdose.dcm",  # 32-bit multi-frame
]
GENERATED = ["signed CT with air at -2000", "8-bit grey", "10-bit grey 3 frames", "rgb 256"]
TARGETS = sorted(UNCOMPRESSED_TARGETS | ENCODED_TARGETS)
# Lossy floors, in dB over the stored range: JPEG at quality 90 with 4:2:2
# chroma on synthetic colour tests (the hardest here) is ~30 dB.
PSNR_FLOOR = {1: 38.0, 3: 29.0}


def generated(name: str) -> Dataset:
    """Test images with the properties the bundled corpus lacks (deterministic)."""
    rng = np.random.default_rng(abs(hash(name)) % 1000)
    y, x = np.mgrid[0:96, 0:80]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage if "CT" in name else SecondaryCaptureImageStorage
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.77." + str(len(name))
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.77.1"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.77.2"
    ds.Rows, ds.Columns = y.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelRepresentation = 0
    smooth = np.sin(x / 9.0) * np.cos(y / 13.0)
    if name.startswith("signed CT"):
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        body = (x - 40) ** 2 + (y - 48) ** 2 < 38**2
        values = np.where(body, 1040 + 400 * smooth + rng.normal(0, 15, y.shape), -2000)
        pixels = values.astype(np.int16)
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    elif name == "8-bit grey":
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        pixels = (127 + 100 * smooth + rng.normal(0, 3, y.shape)).clip(0, 255).astype(np.uint8)
    elif name.startswith("10-bit"):
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 10, 9
        frames = [(500 + 400 * np.roll(smooth, 7 * k, axis=1)) for k in range(3)]
        pixels = np.stack(frames).clip(0, 1023).astype(np.uint16)
        ds.NumberOfFrames = 3
    else:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        channels = [127 + 120 * np.sin(x / d) * np.cos(y / (d + 3)) for d in (7.0, 11.0, 17.0)]
        pixels = np.dstack(channels).clip(0, 255).astype(np.uint8)
    ds.PixelData = pixels.tobytes()
    return ds


def source(name: str) -> tuple[bytes, str]:
    """(data set bytes without file meta, transfer syntax) of a test image."""
    if name in GENERATED:
        buffer = DicomBytesIO()
        buffer.is_little_endian, buffer.is_implicit_VR = True, False
        write_dataset(buffer, generated(name))
        return buffer.getvalue(), ExplicitVRLittleEndian
    raw = (TEST_FILES / name).read_bytes()
    meta, offset = split_part10(raw)
    return raw[offset:], meta[0x00020010].rstrip(b"\0 ").decode()


def read_back(data: bytes, syntax: str) -> Dataset:
    """A converted data set, read by pydicom alone."""
    uid = UID(syntax)
    if uid == DeflatedExplicitVRLittleEndian:
        data, uid = zlib.decompress(data, -zlib.MAX_WBITS), ExplicitVRLittleEndian
    ds = read_dataset(BytesIO(data), uid.is_implicit_VR, uid.is_little_endian)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    return ds


def decoded_source(data: bytes, syntax: str) -> tuple[Dataset, np.ndarray]:
    """The source as the archive decodes it (the reference for lossless targets)."""
    uid = UID(syntax)
    plain = data
    if uid == DeflatedExplicitVRLittleEndian:
        plain, uid = zlib.decompress(data, -zlib.MAX_WBITS), ExplicitVRLittleEndian
    ds = read_dataset(BytesIO(plain), uid.is_implicit_VR, uid.is_little_endian)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid
    frames = int(ds.get("NumberOfFrames") or 1)
    arrays = [frame_array(ds, index) for index in range(frames)]
    return ds, np.stack(arrays) if frames > 1 else arrays[0]


def values(value: object) -> list[str]:
    return [str(v) for v in value] if isinstance(value, MultiValue) else [str(value)]


def psnr(a: np.ndarray, b: np.ndarray, bits: int) -> float:
    error = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if error == 0 else 10 * np.log10(((1 << bits) - 1) ** 2 / error)


@pytest.mark.parametrize("target", TARGETS, ids=lambda uid: UID(uid).keyword or uid)
@pytest.mark.parametrize("name", BUNDLED + GENERATED)
def test_every_source_converts_to_every_target_or_says_why(name: str, target: str) -> None:
    data, syntax = source(name)
    if target == syntax:
        assert transcode(data, syntax, target) is data
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's notes on its own odd test files
        original, reference = decoded_source(data, syntax)
        fmt = frame_format(
            original.get("BitsAllocated"),
            original.get("BitsStored"),
            original.get("PixelRepresentation"),
            original.get("SamplesPerPixel"),
            original.get("PhotometricInterpretation"),
        )
        assert can_transcode(syntax, target)
        reason = refusal(target, fmt)
        if reason is not None:
            with pytest.raises(UnsupportedTransferSyntaxError, match="cannot encode"):
                transcode(data, syntax, target)
            return
        converted = read_back(transcode(data, syntax, target), target)
        pixels = converted.pixel_array
    assert converted.SOPInstanceUID == original.SOPInstanceUID
    assert pixels.shape == reference.shape
    if target in LOSSY_TARGETS:
        bits = int(original.BitsStored)
        assert psnr(pixels, reference, bits) >= PSNR_FLOOR[fmt.samples_per_pixel]
        if converted.get("LossyImageCompression") == "01":
            methods = values(converted.LossyImageCompressionMethod)
            assert methods[-1] in ("ISO_10918_1", "ISO_14495_1", "ISO_15444_1", "ISO_15444_15")
            assert float(values(converted.LossyImageCompressionRatio)[-1]) > 0
        else:
            # tiny images get a reversible codestream, which the syntax allows
            assert target in (JPEG2000, HTJ2K) and min(pixels.shape[-3:-1]) < 64
            assert np.array_equal(pixels, reference)
    else:
        assert np.array_equal(pixels, reference)
        if syntax not in LOSSY_TARGETS:
            assert converted.get("LossyImageCompression", "00") == original.get(
                "LossyImageCompression", "00"
            )
    if fmt.samples_per_pixel == 3 and UID(target).is_compressed:
        expected = {
            JPEGBaseline8Bit: ("YBR_FULL_422",),
            JPEGExtended12Bit: ("YBR_FULL_422",),
        }.get(target)
        if UID(target).keyword.startswith(("JPEG2000", "HTJ2K")):
            expected = ("YBR_RCT", "YBR_ICT")
        photometric = converted.PhotometricInterpretation
        assert photometric in (expected or ("RGB", "YBR_FULL")), photometric


def test_lossy_output_is_marked_with_ratio_and_method_after_earlier_steps() -> None:
    """PS3.3 C.7.6.1.1.5: a second lossy step appends its ratio and method."""
    data, syntax = source("JPGExtended.dcm")  # already lossy: Lossy Image Compression 01
    converted = read_back(transcode(data, syntax, JPEGLSNearLossless), JPEGLSNearLossless)
    assert converted.LossyImageCompression == "01"
    assert values(converted.LossyImageCompressionMethod)[-1] == "ISO_14495_1"
    ratios = values(converted.LossyImageCompressionRatio)
    assert ratios[0] == "76" and len(ratios) == 2 and float(ratios[1]) > 1  # the file's, then ours


def test_compression_settings_are_honoured() -> None:
    data, syntax = source("signed CT with air at -2000")
    sizes = {}
    for ratio in (5.0, 20.0):
        out = transcode(data, syntax, HTJ2K, LossyQuality(compression_ratio=ratio))
        sizes[ratio] = len(out)
    assert sizes[20.0] < sizes[5.0]
    rough = transcode(data, syntax, JPEGLSNearLossless, LossyQuality(jpegls_near=8))
    fine = transcode(data, syntax, JPEGLSNearLossless, LossyQuality(jpegls_near=1))
    reference = generated("signed CT with air at -2000").pixel_array
    worst = np.abs(
        read_back(fine, JPEGLSNearLossless).pixel_array.astype(int) - reference.astype(int)
    )
    assert worst.max() <= 1 and len(rough) < len(fine)


def test_big_endian_words_are_swapped() -> None:
    """A 16-bit big endian image read back as little endian has the same values."""
    data, _ = source("MR_small_bigendian.dcm")
    little = transcode(data, ExplicitVRBigEndian, ExplicitVRLittleEndian)
    dataset = read_back(little, ExplicitVRLittleEndian)
    assert dataset.Rows == 64 and dataset.BitsAllocated == 16
    assert np.array_equal(
        dataset.pixel_array, pydicom.dcmread(TEST_FILES / "MR_small_bigendian.dcm").pixel_array
    )


def test_deflated_output_is_a_raw_deflate_of_explicit_little_endian() -> None:
    data, syntax = source("CT_small.dcm")
    deflated = transcode(data, syntax, DeflatedExplicitVRLittleEndian)
    assert zlib.decompress(deflated, -zlib.MAX_WBITS) == transcode(
        data, syntax, ExplicitVRLittleEndian
    )
    assert len(deflated) < len(data)


@pytest.mark.parametrize("target", [JPEG2000MC, MPEG2MPML, "1.2.3.4"])
def test_syntaxes_we_do_not_write_are_refused(target: str) -> None:
    data, syntax = source("CT_small.dcm")
    assert not can_transcode(syntax, target)
    with pytest.raises(UnsupportedTransferSyntaxError):
        transcode(data, syntax, target)


def test_the_same_syntax_is_the_same_bytes() -> None:
    data, syntax = source("JPEG2000.dcm")
    assert transcode(data, syntax, syntax) is data
    assert ImplicitVRLittleEndian in UNCOMPRESSED_TARGETS


def test_frames_are_decoded_one_at_a_time() -> None:
    ds = generated("10-bit grey 3 frames")
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, ds)
    part10 = transcode(buffer.getvalue(), ExplicitVRLittleEndian, HTJ2KLossless)
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = HTJ2KLossless
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    out = BytesIO()
    full = read_back(part10, HTJ2KLossless)
    full.file_meta = meta
    pydicom.dcmwrite(out, full, enforce_file_format=True)
    parsed = parse(out.getvalue())
    assert np.array_equal(frame_array(parsed, 2), ds.pixel_array[2])


# -- explicit <-> implicit VR little endian on the bytes -------------------------------

_EXPLICIT_AND_IMPLICIT = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


def _little_endian_files() -> list[str]:
    """Every bundled file in Explicit or Implicit VR Little Endian."""
    names = []
    for path in sorted(TEST_FILES.glob("*.dcm")):
        try:
            meta, _ = split_part10(path.read_bytes())
        except Exception:  # not Part 10: not a source here
            continue
        if meta.get(0x00020010, b"").rstrip(b"\0 ").decode() in _EXPLICIT_AND_IMPLICIT:
            names.append(path.name)
    return names


def _through_pydicom(data: bytes, syntax: str, target: str) -> bytes:
    source_uid, target_uid = UID(syntax), UID(target)
    ds = read_dataset(BytesIO(data), source_uid.is_implicit_VR, True)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = source_uid
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, target_uid.is_implicit_VR
    write_dataset(buffer, ds)
    return buffer.getvalue()


def _elements(ds: Dataset) -> list[tuple[object, ...]]:
    """Each element's tag, VR and value (items' elements for a sequence)."""
    return [
        (el.tag, "SQ", [_elements(item) for item in el.value])
        if el.VR == "SQ"
        else (el.tag, el.VR, el.value)
        for el in ds
    ]


@pytest.mark.parametrize("name", _little_endian_files())
def test_explicit_and_implicit_little_endian_swap_headers_as_pydicom_would(name: str) -> None:
    data, syntax = source(name)
    target = ImplicitVRLittleEndian if syntax == ExplicitVRLittleEndian else ExplicitVRLittleEndian
    fast = reencode_little_endian(data, to_implicit=target == ImplicitVRLittleEndian)
    if name.endswith("_truncated.dcm"):
        assert fast is None  # left to pydicom, which says what is wrong
        return
    assert fast is not None
    expected = _through_pydicom(data, syntax, target)
    implicit = target == ImplicitVRLittleEndian
    assert _elements(read_dataset(BytesIO(fast), implicit, True)) == _elements(
        read_dataset(BytesIO(expected), implicit, True)
    )
    # And back: as pydicom's round trip (private elements come back UN, 8-bit
    # Pixel Data OW: Implicit VR said neither).
    back = reencode_little_endian(fast, to_implicit=not implicit)
    assert back is not None
    expected_back = _through_pydicom(expected, target, syntax)
    assert _elements(read_dataset(BytesIO(back), not implicit, True)) == _elements(
        read_dataset(BytesIO(expected_back), not implicit, True)
    )
    assert transcode(data, syntax, target) == fast  # the path transcode takes


def test_pixel_values_follow_pixel_representation_and_pixel_data_is_ow() -> None:
    ds = generated("signed CT with air at -2000")
    ds.SmallestImagePixelValue, ds.LargestImagePixelValue = -2000, 1500  # 'US or SS'
    ds.PixelPaddingValue = -2000
    implicit = _through_pydicom(encode_explicit(ds), ExplicitVRLittleEndian, ImplicitVRLittleEndian)
    explicit = reencode_little_endian(implicit, to_implicit=False)
    assert explicit is not None
    back = read_dataset(BytesIO(explicit), False, True)
    assert back["SmallestImagePixelValue"].VR == "SS" and back.SmallestImagePixelValue == -2000
    assert back["LargestImagePixelValue"].VR == "SS" and back.LargestImagePixelValue == 1500
    assert back["PixelPaddingValue"].VR == "SS" and back.PixelPaddingValue == -2000
    assert back["PixelData"].VR == "OW" and back.PixelData == ds.PixelData


def test_what_the_dictionary_does_not_settle_is_left_to_pydicom() -> None:
    ds = generated("8-bit grey")
    lut = Dataset()
    lut.LUTDescriptor = [256, 0, 8]
    lut.LUTData = bytes(range(256))  # 'US or OW', by the descriptor's first value
    ds.VOILUTSequence = [lut]
    implicit = _through_pydicom(encode_explicit(ds), ExplicitVRLittleEndian, ImplicitVRLittleEndian)
    assert reencode_little_endian(implicit, to_implicit=False) is None
    explicit = transcode(implicit, ImplicitVRLittleEndian, ExplicitVRLittleEndian)  # pydicom's
    assert read_dataset(BytesIO(explicit), False, True).VOILUTSequence[0].LUTDescriptor == [
        256,
        0,
        8,
    ]
    assert reencode_little_endian(b"\x08\x00\x18\x00UI\x40\x00short", to_implicit=True) is None


def encode_explicit(ds: Dataset) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, ds)
    return buffer.getvalue()

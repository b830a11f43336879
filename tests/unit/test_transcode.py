"""pacs.pixels.transcode: every conversion keeps the pixel values (lossless targets)."""

from __future__ import annotations

import warnings
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.filereader import read_dataset
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from pacs.core.encoding import split_part10
from pacs.errors import UnsupportedTransferSyntaxError
from pacs.pixels import can_transcode, transcode

TEST_FILES = Path(pydicom.data.__path__[0]) / "test_files"
SOURCES = [
    "CT_small.dcm",  # explicit VR little endian, signed 16-bit
    "MR_small_bigendian.dcm",  # explicit VR big endian
    "MR_small_implicit.dcm",
    "MR_small_RLE.dcm",
    "JPEG2000.dcm",
    "SC_rgb_rle_2frame.dcm",  # colour, two frames
    "SC_rgb_jpeg_dcmtk.dcm",  # lossy JPEG, YBR: compared after decoding
]
TARGETS = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless, JPEG2000Lossless]


def _decoded(data: bytes, syntax: str) -> np.ndarray:
    uid = UID(syntax)
    dataset = read_dataset(BytesIO(data), uid.is_implicit_VR, uid.is_little_endian)
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = uid
    return dataset.pixel_array


@pytest.mark.parametrize("target", TARGETS, ids=lambda uid: UID(uid).name)
@pytest.mark.parametrize("name", SOURCES)
def test_pixel_values_survive_every_conversion(name: str, target: str) -> None:
    raw = (TEST_FILES / name).read_bytes()
    meta, offset = split_part10(raw)
    source = meta[0x00020010].rstrip(b"\0 ").decode()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's notes on its own odd test files
        reference = pydicom.dcmread(TEST_FILES / name).pixel_array
        assert can_transcode(source, target)
        converted = transcode(raw[offset:], source, target)
        assert np.array_equal(_decoded(converted, target), reference)


def test_big_endian_words_are_swapped() -> None:
    """A 16-bit big endian image read back as little endian has the same values."""
    raw = (TEST_FILES / "MR_small_bigendian.dcm").read_bytes()
    _, offset = split_part10(raw)
    little = transcode(raw[offset:], ExplicitVRBigEndian, ExplicitVRLittleEndian)
    dataset = read_dataset(BytesIO(little), False, True)
    assert dataset.Rows == 64 and dataset.BitsAllocated == 16
    assert np.array_equal(
        _decoded(little, ExplicitVRLittleEndian),
        pydicom.dcmread(TEST_FILES / "MR_small_bigendian.dcm").pixel_array,
    )


def test_syntaxes_we_cannot_make_are_refused() -> None:
    raw = (TEST_FILES / "CT_small.dcm").read_bytes()
    _, offset = split_part10(raw)
    assert not can_transcode(ExplicitVRLittleEndian, JPEGLSLossless)
    with pytest.raises(UnsupportedTransferSyntaxError):
        transcode(raw[offset:], ExplicitVRLittleEndian, JPEGLSLossless)

"""Rendering frames to pictures, checked against PS3.3 C.11 and pydicom.

Expected values are computed here from the formulas of PS3.3 C.11.2.1.2
(LINEAR, LINEAR_EXACT) and C.11.2.1.3 (SIGMOID), and colour pictures are
compared with pydicom's own decoding, so a bug in ``pacs.pixels`` cannot hide
behind the same bug in the expectation.
"""

from __future__ import annotations

import math
import threading
import warnings
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, convert_color_space
from pydicom.pixels import pixel_array as pydicom_pixel_array
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from pacs.core.rendering import SizeBoundedCache
from pacs.errors import CorruptDataError, NotFoundError, UnsupportedTransferSyntaxError
from pacs.pixels.codecs import load_imagecodecs
from pacs.pixels.jpeg import encode_in_strips, join_strips
from pacs.pixels.pipeline import (
    LINEAR,
    LINEAR_EXACT,
    SIGMOID,
    Window,
    apply_lut,
    grey_lut,
    voi_window,
)
from pacs.pixels.render import decode_frame, render, to_display
from tests.dicom_factory import encode, part10_bytes, uid

TEST_FILES = Path(pydicom.data.__path__[0]) / "test_files"

# -- the formulas, written out from PS3.3 -------------------------------------------------


def linear(x: float, c: float, w: float) -> float:
    """PS3.3 C.11.2.1.2.1, output range 0..255."""
    if x <= c - 0.5 - (w - 1) / 2:
        return 0.0
    if x > c - 0.5 + (w - 1) / 2:
        return 255.0
    return ((x - (c - 0.5)) / (w - 1) + 0.5) * 255


def linear_exact(x: float, c: float, w: float) -> float:
    """PS3.3 C.11.2.1.3.2."""
    if x <= c - w / 2:
        return 0.0
    if x > c + w / 2:
        return 255.0
    return ((x - c) / w + 0.5) * 255


def sigmoid(x: float, c: float, w: float) -> float:
    """PS3.3 C.11.2.1.3.1."""
    exponent = -4 * (x - c) / w
    return 0.0 if exponent > 700 else 255 / (1 + math.exp(exponent))


FORMULAS = {LINEAR: linear, LINEAR_EXACT: linear_exact, SIGMOID: sigmoid}


def assert_rounded(actual: np.ndarray, expected: np.ndarray) -> None:
    """8-bit output is the formula rounded (to nearest, either way on a half)."""
    actual = np.asarray(actual, dtype=np.float64)
    assert actual.shape == expected.shape
    assert np.all(np.abs(actual - expected) <= 0.5 + 1e-9), (actual, expected)


# -- voi_window ---------------------------------------------------------------------------

SAMPLES = np.array(
    [-2000, -1000, -161, -160.5, -160, -100, 0, 39, 39.5, 40, 40.5, 41, 100, 239, 240, 241, 3000],
    dtype=np.float64,
)


@pytest.mark.parametrize("function", [LINEAR, LINEAR_EXACT, SIGMOID])
@pytest.mark.parametrize(
    ("centre", "width"), [(40, 400), (40, 1), (40, 2), (0.5, 3), (-600, 1500), (2048, 4096)]
)
def test_voi_window_follows_the_formula(function: str, centre: float, width: float) -> None:
    expected = np.array([FORMULAS[function](x, centre, width) for x in SAMPLES])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # see the test below
        actual = voi_window(SAMPLES, Window(centre, width, function))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-9)


def test_a_narrow_sigmoid_window_gives_no_overflow_warning() -> None:
    # Values far below a narrow SIGMOID window must give 0 quietly: exp(-4(x-c)/w)
    # overflows float64 once the exponent passes ~709 (here 8160).
    out = voi_window(np.array([-2000.0, 40.0, 2000.0]), Window(40, 1, SIGMOID))
    np.testing.assert_allclose(out, [0.0, 127.5, 255.0])


def test_voi_window_linear_width_1_is_a_threshold() -> None:
    # C.11.2.1.2.1: x <= c - 0.5 -> ymin, otherwise ymax.
    values = np.array([99, 99.5, 99.6, 100, 101], dtype=np.float64)
    actual = voi_window(values, Window(100, 1))
    np.testing.assert_array_equal(actual, [0, 0, 255, 255, 255])


def test_voi_window_known_values() -> None:
    # Worked by hand: c=40, w=400 LINEAR: x=40 -> ((0.5)/399 + 0.5) * 255.
    out = voi_window(np.array([40.0, -160.0, 239.0, 240.0]), Window(40, 400))
    assert out[0] == pytest.approx((0.5 / 399 + 0.5) * 255)
    assert out[1] == 0.0  # -160 <= 40 - 0.5 - 199.5
    assert out[2] == pytest.approx(255.0)  # exactly the top of the ramp
    assert out[3] == 255.0
    assert voi_window(np.array([40.0]), Window(40, 400, SIGMOID))[0] == pytest.approx(127.5)
    assert voi_window(np.array([40.0]), Window(40, 400, LINEAR_EXACT))[0] == pytest.approx(127.5)


# -- the grey pipeline on synthetic data sets --------------------------------------------


def grey_dataset(
    pixels: np.ndarray,
    *,
    bits_stored: int = 16,
    signed: bool = False,
    photometric: str = "MONOCHROME2",
) -> Dataset:
    """A small grey image data set with ``pixels`` (frames, rows, columns) or (rows, columns)."""
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = uid("render-unit", pixels.tobytes().hex()[:32], photometric, bits_stored)
    ds.StudyInstanceUID = uid("render-unit-study")
    ds.SeriesInstanceUID = uid("render-unit-series")
    ds.Modality = "OT"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = pixels.shape[-2:]
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.PixelData = pixels.astype("<i2" if signed else "<u2").tobytes()
    return ds


def to_part10(ds: Dataset) -> bytes:
    return part10_bytes(
        str(ds.SOPClassUID), str(ds.SOPInstanceUID), ExplicitVRLittleEndian, encode(ds)
    )


def pipeline(ds: Dataset, window: Window | None = None, frame: int = 0) -> np.ndarray:
    """Through the public functions the way ``render`` goes: decode, LUT, apply."""
    header, pixels = decode_frame(to_part10(ds), frame)
    lut, offset = grey_lut(header, window, pixels)
    by_lut = apply_lut(pixels, lut, offset)
    np.testing.assert_array_equal(by_lut, to_display(header, pixels, window))
    return by_lut


CT_STORED = np.array(
    [
        [-2000, -1000, 0, 500],
        [512, 532, 533, 534],
        [600, 700, 1024, 1200],
        [3000, 32767, -32768, 1],
    ],
    dtype=np.int16,
)


def ct_dataset(photometric: str = "MONOCHROME2") -> Dataset:
    ds = grey_dataset(CT_STORED, signed=True, photometric=photometric)
    ds.RescaleSlope = "2"
    ds.RescaleIntercept = "-1024"
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    return ds


def hu(stored: np.ndarray) -> np.ndarray:
    return stored.astype(np.float64) * 2 - 1024


def test_signed_ct_with_rescale_and_its_own_window() -> None:
    out = pipeline(ct_dataset())
    expected = np.vectorize(linear)(hu(CT_STORED), 40.0, 400.0)
    assert out.dtype == np.uint8
    assert_rounded(out, expected)
    # spot checks: far below, inside the ramp, far above
    assert out[0, 0] == 0
    assert out[3, 1] == 255
    assert 0 < out[1, 1] < 255


@pytest.mark.parametrize("function", [LINEAR, LINEAR_EXACT, SIGMOID])
def test_a_window_of_the_caller_overrides_the_instance_one(function: str) -> None:
    window = Window(-600, 1500, function)
    out = pipeline(ct_dataset(), window)
    expected = np.vectorize(FORMULAS[function])(hu(CT_STORED), -600.0, 1500.0)
    assert_rounded(out, expected)


def test_voi_lut_function_of_the_instance_is_used() -> None:
    ds = ct_dataset()
    ds.VOILUTFunction = "SIGMOID"
    expected = np.vectorize(sigmoid)(hu(CT_STORED), 40.0, 400.0)
    assert_rounded(pipeline(ds), expected)


def test_monochrome1_is_inverted() -> None:
    out = pipeline(ct_dataset("MONOCHROME1"))
    expected = 255 - np.vectorize(linear)(hu(CT_STORED), 40.0, 400.0)
    assert_rounded(out, expected)
    assert out[0, 0] == 255
    assert out[3, 1] == 0


def test_without_a_window_the_frame_range_fills_the_output() -> None:
    stored = np.array([[100, 200], [300, 1100]], dtype=np.uint16)
    out = pipeline(grey_dataset(stored))
    expected = (stored.astype(np.float64) - 100) / 1000 * 255
    assert_rounded(out, expected)
    assert out.min() == 0
    assert out.max() == 255


def test_without_a_window_signed_rescaled_data_fills_the_output() -> None:
    ds = ct_dataset()
    del ds.WindowCenter
    del ds.WindowWidth
    out = pipeline(ds)
    values = hu(CT_STORED)
    expected = (values - values.min()) / (values.max() - values.min()) * 255
    assert_rounded(out, expected)


def test_twelve_bit_data() -> None:
    stored = np.array([[0, 1, 2047, 2048], [2049, 3000, 4094, 4095]], dtype=np.uint16)
    ds = grey_dataset(stored, bits_stored=12)
    lut, offset = grey_lut(ds, Window(2048, 4096), stored)
    assert (len(lut), offset) == (4096, 0)
    out = pipeline(ds, Window(2048, 4096))
    assert_rounded(out, np.vectorize(linear)(stored.astype(np.float64), 2048.0, 4096.0))
    full = pipeline(ds)
    assert_rounded(full, stored.astype(np.float64) / 4095 * 255)


def test_twelve_bit_signed_data() -> None:
    stored = np.array([[-2048, -1, 0, 2047]], dtype=np.int16)
    ds = grey_dataset(stored, bits_stored=12, signed=True)
    lut, offset = grey_lut(ds, Window(0, 100), stored)
    assert (len(lut), offset) == (4096, -2048)
    out = pipeline(ds, Window(0, 100))
    assert_rounded(out, np.vectorize(linear)(stored.astype(np.float64), 0.0, 100.0))


def test_voi_lut_sequence() -> None:
    stored = np.array([[0, 10, 100], [127, 200, 255], [256, 300, 1000]], dtype=np.uint16)
    ds = grey_dataset(stored, bits_stored=12)
    item = Dataset()
    # 256 entries for inputs 10..265, 16-bit output, a ramp over the whole output range.
    lut_data = np.rint(np.linspace(0, 65535, 256)).astype("<u2")
    item.LUTDescriptor = [256, 10, 16]
    item.LUTData = lut_data.tobytes()
    ds.VOILUTSequence = [item]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # see the test below
        out = pipeline(ds)
    index = np.clip(stored.astype(np.int64) - 10, 0, 255)
    expected = lut_data[index].astype(np.float64) / 65535 * 255
    assert_rounded(out, expected)


def test_a_voi_lut_sequence_gives_no_warning() -> None:
    # grey_lut hands pydicom's apply_voi_lut float64 modality values, and pydicom
    # warns "Applying a VOI LUT on a float input array may give incorrect results"
    # on every render of such an instance.
    stored = np.array([[0, 100, 300]], dtype=np.uint16)
    ds = grey_dataset(stored, bits_stored=12)
    item = Dataset()
    item.LUTDescriptor = [256, 10, 16]
    item.LUTData = np.rint(np.linspace(0, 65535, 256)).astype("<u2").tobytes()
    ds.VOILUTSequence = [item]
    grey_lut(ds, None, stored)


def test_one_frame_of_a_multi_frame_instance() -> None:
    frames = np.stack([np.full((3, 5), v, dtype=np.uint16) for v in (0, 500, 1000)])
    frames[1, 0, 0] = 250
    frames[1, 2, 4] = 750
    ds = grey_dataset(frames)
    ds.WindowCenter = "500"
    ds.WindowWidth = "501"
    for number in range(3):
        out = pipeline(ds, frame=number)
        assert out.shape == (3, 5)
        expected = np.vectorize(linear)(frames[number].astype(np.float64), 500.0, 501.0)
        assert_rounded(out, expected)
    with pytest.raises(NotFoundError):
        decode_frame(to_part10(ds), 3)
    picture = Image.open(BytesIO(render(to_part10(ds), "image/png", frame=1)))
    np.testing.assert_array_equal(np.asarray(picture), pipeline(ds, frame=1))


def test_render_window_as_a_tuple_and_a_size() -> None:
    stored = np.arange(64 * 32, dtype=np.uint16).reshape(32, 64)
    data = to_part10(grey_dataset(stored))
    with Image.open(BytesIO(render(data, "image/png", window=(1000, 500)))) as picture:
        assert picture.size == (64, 32)
        expected = np.vectorize(linear)(stored.astype(np.float64), 1000.0, 500.0)
        assert_rounded(np.asarray(picture), expected)
    with Image.open(BytesIO(render(data, "image/jpeg", size=(16, 16)))) as picture:
        assert picture.format == "JPEG"
        assert picture.size == (16, 8)
    with Image.open(BytesIO(render(data, "image/gif"))) as picture:
        assert picture.format == "GIF"


# -- every bundled file -------------------------------------------------------------------


def bundled_files() -> list[Path]:
    return sorted(p for p in TEST_FILES.rglob("*") if p.is_file() and p.suffix == ".dcm")


def pydicom_decodes(path: Path) -> tuple[Dataset | None, np.ndarray | None]:
    """(header, pixel array) if the file has pixel data pydicom decodes, else (header, None)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(path, force=True)
        except Exception:
            return None, None
        if "PixelData" not in ds:
            return ds, None
        try:
            return ds, ds.pixel_array
        except Exception:
            return ds, None


@pytest.mark.parametrize("path", bundled_files(), ids=lambda p: str(p.relative_to(TEST_FILES)))
def test_render_every_bundled_file(path: Path) -> None:
    ds, pixels = pydicom_decodes(path)
    if ds is None or "PixelData" not in ds:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises((CorruptDataError, UnsupportedTransferSyntaxError)):
                render(path.read_bytes(), "image/png")
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if pixels is None:
            try:
                render(path.read_bytes(), "image/png")
            except (CorruptDataError, UnsupportedTransferSyntaxError):
                return
            return  # we decode more than pydicom: fine, as long as no other exception
        data = render(path.read_bytes(), "image/png")
    with Image.open(BytesIO(data)) as picture:
        picture.load()
        assert picture.format == "PNG"
        assert picture.size == (int(ds.Columns), int(ds.Rows))
        colour = int(ds.get("SamplesPerPixel", 1)) == 3 or (
            str(ds.PhotometricInterpretation) == "PALETTE COLOR"
        )
        assert picture.mode == ("RGB" if colour else "L")


def test_render_of_garbage_is_an_invalid_dataset() -> None:
    with pytest.raises(CorruptDataError):
        render(b"not a dicom file at all" * 10, "image/png")


# -- colour against pydicom ---------------------------------------------------------------

COLOUR_FILES = [
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline, YBR_FULL_422
    "SC_rgb_rle.dcm",  # RLE, RGB
    "SC_rgb_rle_16bit.dcm",  # RLE, 16-bit RGB
    "SC_rgb_small_odd.dcm",  # odd size, native RGB
    "SC_ybr_full_422_uncompressed.dcm",  # native YBR_FULL_422
    "examples_ybr_color.dcm",  # native YBR_FULL, multi-frame
    "examples_rgb_color.dcm",  # native RGB
    "ExplVR_BigEnd.dcm",  # big endian RGB
    "examples_palette.dcm",  # PALETTE COLOR
]
JPEG_FAMILY = ("1.2.840.10008.1.2.4.",)


def reference_rgb(path: Path) -> np.ndarray:
    """Frame 1 as 8-bit RGB, by pydicom alone."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path)
        syntax = str(ds.file_meta.TransferSyntaxUID)
        photometric = str(ds.PhotometricInterpretation)
        if syntax.startswith(JPEG_FAMILY):
            array = pydicom_pixel_array(path, index=0)  # the decoder gives RGB
        else:
            array = pydicom_pixel_array(path, index=0, raw=True)
            if photometric.startswith("YBR"):
                array = convert_color_space(array, photometric, "RGB")
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(array, ds)
        bits = 16 if rgb.dtype == np.uint16 else 8
    else:
        rgb = array
        bits = int(ds.BitsStored)
    rgb = rgb.astype(np.float64)
    if bits > 8:
        rgb = rgb * 255 / ((1 << bits) - 1)
    return rgb


@pytest.mark.parametrize("name", COLOUR_FILES)
def test_colour_pictures_match_pydicom(name: str) -> None:
    path = TEST_FILES / name
    expected = reference_rgb(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = render(path.read_bytes(), "image/png")
    with Image.open(BytesIO(data)) as picture:
        assert picture.mode == "RGB"
        actual = np.asarray(picture).astype(np.float64)
    assert actual.shape == expected.shape
    rows, columns = expected.shape[:2]
    for r, c in [(0, 0), (rows // 2, columns // 2), (rows - 1, columns - 1), (rows // 3, 1)]:
        assert np.all(np.abs(actual[r, c] - expected[r, c]) <= 1), (r, c, actual[r, c])
    assert np.abs(actual - expected).max() <= 1


# -- SizeBoundedCache ---------------------------------------------------------------------


def test_cache_evicts_the_least_recently_used_by_size() -> None:
    cache: SizeBoundedCache[str] = SizeBoundedCache(100)
    for key in "abcd":
        cache.put(key, key * 2, 25)
    assert cache.get("a") == "aa"  # order now b c d a
    cache.put("e", "ee", 25)  # 125 bytes: the least recent (b) goes
    assert cache.get("b") is None  # a miss does not reorder: c d a e
    cache.put("f", "ff", 20)  # 120: c goes
    assert cache.get("c") is None
    assert cache.get("d") == "dd"  # order a e f d
    cache.put("g", "gg", 25)  # 120: a goes, d was just read
    assert cache.get("a") is None
    assert [cache.get(k) for k in "defg"] == ["dd", "ee", "ff", "gg"]


def test_cache_replacing_a_key_counts_its_new_size() -> None:
    cache: SizeBoundedCache[int] = SizeBoundedCache(100)
    cache.put("a", 1, 25)
    cache.put("a", 2, 10)
    for key in "bcdef":
        cache.put(key, 0, 18)  # 10 + 90 = 100: everything fits
    assert cache.get("a") == 2
    cache.put("g", 0, 1)  # 101: the least recent (b) goes, a was just read
    assert cache.get("b") is None
    assert cache.get("a") == 2


def test_cache_ignores_values_over_a_quarter_of_its_budget() -> None:
    cache: SizeBoundedCache[str] = SizeBoundedCache(100)
    cache.put("small", "s", 10)
    cache.put("big", "b", 26)
    assert cache.get("big") is None
    assert cache.get("small") == "s"
    cache.put("quarter", "q", 25)
    assert cache.get("quarter") == "q"


def test_cache_under_concurrent_puts_stays_within_its_budget() -> None:
    budget = 1000
    cache: SizeBoundedCache[int] = SizeBoundedCache(budget)
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def worker(n: int) -> None:
        try:
            start.wait()
            for i in range(2000):
                key = (n, i % 50)
                cache.put(key, i, 1 + (i * 7 + n) % 40)
                got = cache.get(key)
                assert got is None or isinstance(got, int)
                cache.get((n - 1, i % 50))
        except BaseException as exc:  # reported in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    entries = cache._entries
    total = sum(size for _, size in entries.values())
    assert total == cache._size
    assert total <= budget
    # once quiet, the cache still evicts and accepts
    cache.put("last", -1, 40)
    assert cache.get("last") == -1
    assert sum(size for _, size in cache._entries.values()) <= budget


@pytest.mark.parametrize(
    ("dtype", "shape"),
    [(np.uint16, (1200, 1000)), (np.int16, (1200, 1000)), (np.uint8, (3, 700, 300))],
)
def test_a_large_frame_is_mapped_in_blocks_to_the_same_values(
    dtype: type, shape: tuple[int, ...]
) -> None:
    """Frames over a few hundred thousand pixels go through the LUT in blocks
    of rows (uneven at the end here); every pixel must map as one ``take`` would."""
    info = np.iinfo(dtype)
    rng = np.random.default_rng(7)
    frame = rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
    lut = (np.arange(5000) % 256).astype(np.uint8)
    offset = -1000 if info.min < 0 else 100
    expected = lut[np.clip(frame.astype(np.int64) - offset, 0, len(lut) - 1)]
    mapped = apply_lut(frame, lut, offset)
    assert mapped.shape == frame.shape and mapped.dtype == np.uint8
    np.testing.assert_array_equal(mapped, expected)


def _jpeg_one_piece(display: np.ndarray) -> bytes:
    codecs = load_imagecodecs()
    assert codecs is not None
    return bytes(codecs.jpeg8_encode(display, level=90))


def _decoded_by_pillow(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(BytesIO(data)))


@pytest.mark.parametrize(
    "shape",
    [
        (1024, 1024),  # two strips of whole MCU rows
        (1013, 777),  # rows and columns not multiples of an MCU: a short last strip
        (600, 9000),  # wide: a restart interval of 42,750 MCUs
        (700, 517, 3),  # colour, 4:2:0 MCUs of 16x16
    ],
)
def test_a_jpeg_in_strips_decodes_to_the_one_piece_pixels(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(7)
    rows = np.linspace(0, 200, shape[0])[:, None]
    smooth = rows + np.linspace(0, 50, shape[1])[None, :]
    if len(shape) == 3:
        smooth = np.stack([smooth, smooth[::-1], 255 - smooth], axis=-1)
    display = np.clip(smooth + rng.normal(0, 8, shape), 0, 255).astype(np.uint8)
    one_piece = _jpeg_one_piece(display)
    in_strips = encode_in_strips(display, _jpeg_one_piece, cores=2)
    # Really joined: a restart interval and restart markers between strips.
    assert b"\xff\xdd\x00\x04" in in_strips and b"\xff\xd0" in in_strips
    assert np.array_equal(_decoded_by_pillow(in_strips), _decoded_by_pillow(one_piece))
    codecs = load_imagecodecs()
    assert np.array_equal(codecs.jpeg8_decode(in_strips), codecs.jpeg8_decode(one_piece))


def test_a_small_picture_or_one_core_is_encoded_in_one_piece() -> None:
    display = np.full((512, 512), 90, dtype=np.uint8)
    assert encode_in_strips(display, _jpeg_one_piece, cores=2) == _jpeg_one_piece(display)
    large = np.full((2048, 2048), 90, dtype=np.uint8)
    assert encode_in_strips(large, _jpeg_one_piece, cores=1) == _jpeg_one_piece(large)


def test_strips_that_cannot_be_joined_fall_back_to_one_piece() -> None:
    display = np.tile(np.arange(256, dtype=np.uint8), (1024, 4))

    def progressive(part: np.ndarray) -> bytes:
        out = BytesIO()
        Image.fromarray(part).save(out, format="JPEG", quality=90, progressive=True)
        return out.getvalue()

    result = encode_in_strips(display, progressive, cores=2)
    assert result == progressive(display)

    # Strips with tables of their own (optimised Huffman codes) are not joined either.
    def optimised(part: np.ndarray) -> bytes:
        out = BytesIO()
        Image.fromarray(part).save(out, format="JPEG", quality=90, optimize=True)
        return out.getvalue()

    pieces = [optimised(display[:512]), optimised(display[512:] // 3)]
    assert join_strips(pieces, 1024, 512) is None

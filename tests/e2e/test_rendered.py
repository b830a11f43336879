"""Rendered resources and thumbnails end to end, against a real ``pacs serve``.

One server for the module, loaded over C-STORE with a signed, rescaled CT
series made by ``make_ct`` (one instance larger than a thumbnail) and with
pydicom's own files: a grey CT, a two-frame RGB RLE and a 15-frame RT dose.
Grey PNG pictures are compared with PS3.3 C.11.2.1.2 applied to the pixels
that were sent.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pynetdicom import AE

from tests.conftest import PYDICOM_TEST_FILES, ServerProcess, start_server, stop_server
from tests.dicom_factory import make_ct, uid

STUDY = uid("rendered", "study")
CT_SERIES = uid("rendered", "ct-series")
FILES_SERIES = uid("rendered", "files-series")
BUNDLED = ["CT_small.dcm", "SC_rgb_rle_2frame.dcm", "rtdose.dcm"]
SLOPE, INTERCEPT = 2.0, -1024.0
BIG = 200  # the CT instance that is larger than a thumbnail


def signed_ct(instance: int, size: int) -> Dataset:
    ds = make_ct("rendered", "ct", instance, patient_id="RENDER-1", size=size)
    ds.StudyInstanceUID = STUDY
    ds.SeriesInstanceUID = CT_SERIES
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleSlope = str(SLOPE)
    ds.RescaleIntercept = str(INTERCEPT)
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    return ds


def bundled(name: str, folder: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(PYDICOM_TEST_FILES / name)
        ds.StudyInstanceUID = STUDY
        ds.SeriesInstanceUID = FILES_SERIES
        ds.SOPInstanceUID = uid("rendered", name)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientID = "RENDER-1"
        path = folder / name
        ds.save_as(path, enforce_file_format=True)
    return path


@dataclass
class Rendered:
    server: ServerProcess
    cts: list[Dataset]
    files: dict[str, Dataset]

    @property
    def url(self) -> str:
        return self.server.http_url + "/dicom-web"

    def get(self, path: str, accept: str | None = None, **params: str) -> httpx.Response:
        headers = {"Accept": accept} if accept else {}
        return httpx.get(self.url + path, params=params, headers=headers, timeout=30)

    def ct_path(self, index: int) -> str:
        ds = self.cts[index]
        return f"/studies/{STUDY}/series/{CT_SERIES}/instances/{ds.SOPInstanceUID}"

    def file_path(self, name: str) -> str:
        ds = self.files[name]
        return f"/studies/{STUDY}/series/{FILES_SERIES}/instances/{ds.SOPInstanceUID}"


@pytest.fixture(scope="module")
def rd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rendered]:
    root = tmp_path_factory.mktemp("rendered")
    cts = [signed_ct(1, 16), signed_ct(2, BIG), signed_ct(3, 16)]
    paths = [bundled(name, root) for name in BUNDLED]
    files = {p.name: pydicom.dcmread(p) for p in paths}
    server = start_server(root / "pacs-data")
    try:
        ae = AE(ae_title="RENDERSCU")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        contexts = {(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in cts}
        contexts |= {
            (str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in files.values()
        }
        for abstract_syntax, transfer_syntax in sorted(contexts):
            ae.add_requested_context(abstract_syntax, transfer_syntax)
        assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title=server.ae_title)
        assert assoc.is_established, server.log()
        statuses = [int(assoc.send_c_store(ds).Status) for ds in cts]
        statuses += [int(assoc.send_c_store(path).Status) for path in paths]
        assoc.release()
        ae.shutdown()
        assert statuses == [0] * len(statuses), server.log()
        yield Rendered(server, cts, files)
    finally:
        stop_server(server)


def picture(data: bytes) -> Image.Image:
    image = Image.open(BytesIO(data))
    image.load()
    return image


def parts(response: httpx.Response) -> list[tuple[dict[str, str], bytes]]:
    main, *params = [p.strip() for p in response.headers["content-type"].split(";")]
    assert main.lower() == "multipart/related", response.headers["content-type"]
    values = dict(p.split("=", 1) for p in params)
    boundary = values["boundary"].strip('"').encode()
    pieces = response.content.split(b"--" + boundary)
    assert pieces[-1].strip() == b"--"
    result = []
    for piece in pieces[1:-1]:
        head, _, payload = piece.partition(b"\r\n\r\n")
        headers = {}
        for line in head.decode("latin-1").split("\r\n"):
            if line.strip():
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        result.append((headers, payload.removesuffix(b"\r\n")))
    return result


def linear(x: np.ndarray, c: float, w: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 with output 0..255."""
    ramp = ((x - (c - 0.5)) / (w - 1) + 0.5) * 255
    return np.where(
        x <= c - 0.5 - (w - 1) / 2, 0.0, np.where(x > c - 0.5 + (w - 1) / 2, 255.0, ramp)
    )


def hounsfield(ds: Dataset) -> np.ndarray:
    stored = np.frombuffer(ds.PixelData, dtype="<i2").reshape(int(ds.Rows), int(ds.Columns))
    return stored.astype(np.float64) * SLOPE + INTERCEPT


# -- instance level ---------------------------------------------------------------------


def test_instance_rendered_is_jpeg_by_default(rd: Rendered) -> None:
    for accept in (None, "*/*", "image/*", "image/jpeg"):
        response = rd.get(rd.ct_path(0) + "/rendered", accept)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("image/jpeg")
        image = picture(response.content)
        assert (image.format, image.size, image.mode) == ("JPEG", (16, 16), "L")


def test_instance_rendered_png_follows_the_window(rd: Rendered) -> None:
    ds = rd.cts[0]
    values = hounsfield(ds)
    for centre, width in ((40.0, 400.0), (-600.0, 1500.0), (float(np.median(values)), 1000.0)):
        response = rd.get(rd.ct_path(0) + "/rendered", "image/png", window=f"{centre},{width}")
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("image/png")
        image = picture(response.content)
        assert (image.format, image.mode, image.size) == ("PNG", "L", (16, 16))
        actual = np.asarray(image).astype(np.float64)
        expected = linear(values, centre, width)
        assert np.abs(actual - expected).max() <= 0.5 + 1e-9


def test_instance_rendered_png_uses_the_instance_window_by_default(rd: Rendered) -> None:
    response = rd.get(rd.ct_path(2) + "/rendered", "image/png")
    assert response.status_code == 200, response.text
    actual = np.asarray(picture(response.content)).astype(np.float64)
    expected = linear(hounsfield(rd.cts[2]), 40.0, 400.0)
    assert np.abs(actual - expected).max() <= 0.5 + 1e-9


@pytest.mark.parametrize("function", ["LINEAR_EXACT", "SIGMOID", "linear"])
def test_window_functions_are_accepted(rd: Rendered, function: str) -> None:
    response = rd.get(rd.ct_path(0) + "/rendered", "image/png", window=f"40,400,{function}")
    assert response.status_code == 200, response.text
    assert picture(response.content).size == (16, 16)


def test_gif_is_available(rd: Rendered) -> None:
    response = rd.get(rd.file_path("CT_small.dcm") + "/rendered", "image/gif")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("image/gif")
    assert picture(response.content).format == "GIF"


def test_a_multi_frame_instance_as_gif_is_every_frame_in_turn(rd: Rendered) -> None:
    """rtdose.dcm has 15 frames: the GIF shows each, as the frames resource renders them."""
    path = rd.file_path("rtdose.dcm")
    response = rd.get(path + "/rendered", "image/gif")
    assert response.status_code == 200, response.text
    animation = picture(response.content)
    assert getattr(animation, "n_frames", 1) == 15
    for number in (1, 8):
        animation.seek(number - 1)
        frame = np.asarray(animation.convert("L"))
        alone = rd.get(f"{path}/frames/{number}/rendered", "image/png")
        # GIF keeps grey levels in its palette: the same picture, level for level
        assert np.array_equal(frame, np.asarray(picture(alone.content)))
    assert picture(rd.get(path + "/rendered", "image/png").content).format == "PNG"


@pytest.mark.parametrize(
    ("name", "mode"), [("CT_small.dcm", "L"), ("SC_rgb_rle_2frame.dcm", "RGB"), ("rtdose.dcm", "L")]
)
def test_bundled_instances_render(rd: Rendered, name: str, mode: str) -> None:
    ds = rd.files[name]
    response = rd.get(rd.file_path(name) + "/rendered", "image/png")
    assert response.status_code == 200, response.text
    image = picture(response.content)
    assert (image.mode, image.size) == (mode, (int(ds.Columns), int(ds.Rows)))


# -- frames ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "mode"), [("SC_rgb_rle_2frame.dcm", "RGB"), ("rtdose.dcm", "L")])
def test_two_frames_are_multipart_with_two_pictures(rd: Rendered, name: str, mode: str) -> None:
    ds = rd.files[name]
    response = rd.get(rd.file_path(name) + "/frames/1,2/rendered", "image/png")
    assert response.status_code == 200, response.text
    got = parts(response)
    assert len(got) == 2
    pictures = []
    for headers, payload in got:
        assert headers["content-type"].startswith("image/png")
        image = picture(payload)
        assert (image.mode, image.size) == (mode, (int(ds.Columns), int(ds.Rows)))
        pictures.append(np.asarray(image))
    assert not np.array_equal(pictures[0], pictures[1]), "frames 1 and 2 differ in the file"


def test_one_frame_is_a_single_picture_and_matches_the_instance_rendering(rd: Rendered) -> None:
    path = rd.file_path("SC_rgb_rle_2frame.dcm")
    one = rd.get(path + "/frames/1/rendered", "image/png")
    assert one.status_code == 200, one.text
    assert one.headers["content-type"].startswith("image/png")
    whole = rd.get(path + "/rendered", "image/png")
    assert np.array_equal(np.asarray(picture(one.content)), np.asarray(picture(whole.content)))


def test_frame_errors(rd: Rendered) -> None:
    path = rd.file_path("SC_rgb_rle_2frame.dcm")
    assert rd.get(path + "/frames/0/rendered").status_code == 400
    assert rd.get(path + "/frames/a,b/rendered").status_code == 400
    assert rd.get(path + "/frames/3/rendered").status_code in (400, 404)


# -- series and study -----------------------------------------------------------------------


def test_series_rendered_has_one_picture_per_instance(rd: Rendered) -> None:
    response = rd.get(f"/studies/{STUDY}/series/{CT_SERIES}/rendered", "image/png")
    assert response.status_code == 200, response.text
    sizes = sorted(picture(payload).size for _, payload in parts(response))
    assert sizes == [(16, 16), (16, 16), (BIG, BIG)]


def test_study_rendered_has_one_picture_per_instance(rd: Rendered) -> None:
    response = rd.get(f"/studies/{STUDY}/rendered")
    assert response.status_code == 200, response.text
    got = parts(response)
    assert len(got) == len(rd.cts) + len(rd.files)
    for headers, payload in got:
        assert headers["content-type"].startswith("image/jpeg")
        assert picture(payload).format == "JPEG"


# -- thumbnails and viewports ----------------------------------------------------------------


def thumbnail_paths(rd: Rendered) -> list[str]:
    return [
        f"/studies/{STUDY}",
        f"/studies/{STUDY}/series/{CT_SERIES}",
        f"/studies/{STUDY}/series/{FILES_SERIES}",
        rd.ct_path(1),
        rd.file_path("CT_small.dcm"),
        rd.file_path("SC_rgb_rle_2frame.dcm"),
    ]


def test_thumbnails_fit_in_128(rd: Rendered) -> None:
    for path in thumbnail_paths(rd):
        response = rd.get(path + "/thumbnail")
        assert response.status_code == 200, (path, response.text)
        assert response.headers["content-type"].startswith("image/jpeg")
        width, height = picture(response.content).size
        assert 0 < width <= 128 and 0 < height <= 128, path
    big = picture(rd.get(rd.ct_path(1) + "/thumbnail").content)
    assert big.size == (128, 128)


def test_thumbnail_with_a_viewport(rd: Rendered) -> None:
    for path in thumbnail_paths(rd):
        response = rd.get(path + "/thumbnail", "image/png", viewport="64,32")
        assert response.status_code == 200, (path, response.text)
        width, height = picture(response.content).size
        assert 0 < width <= 64 and 0 < height <= 32, path


def test_a_viewport_bounds_the_picture(rd: Rendered) -> None:
    response = rd.get(rd.ct_path(1) + "/rendered", "image/png", viewport="64,32")
    assert response.status_code == 200, response.text
    assert picture(response.content).size == (32, 32)
    response = rd.get(rd.file_path("CT_small.dcm") + "/rendered", viewport="64,32")
    assert picture(response.content).size == (32, 32)


def test_jpeg_quality_changes_the_picture(rd: Rendered) -> None:
    low = rd.get(rd.ct_path(1) + "/rendered", quality="5")
    high = rd.get(rd.ct_path(1) + "/rendered", quality="100")
    assert low.status_code == high.status_code == 200
    assert len(low.content) < len(high.content)


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        {"window": "40"},
        {"window": "a,b"},
        {"window": "40,0"},
        {"window": "40,-5"},
        {"window": "40,400,CUBIC"},
        {"viewport": "64"},
        {"viewport": "0,10"},
        {"viewport": "x,y"},
        {"viewport": "-1,10"},
        {"quality": "0"},
        {"quality": "101"},
        {"quality": "good"},
    ],
)
def test_bad_parameters_are_400(rd: Rendered, params: dict[str, str]) -> None:
    for path in (rd.ct_path(0) + "/rendered", rd.ct_path(0) + "/thumbnail"):
        response = rd.get(path, **params)
        assert response.status_code == 400, (path, params, response.text)
        assert "Traceback" not in response.text


@pytest.mark.parametrize("accept", ["image/tiff", "application/dicom", "text/html"])
def test_an_unsupported_accept_is_406(rd: Rendered, accept: str) -> None:
    response = rd.get(rd.ct_path(0) + "/rendered", accept)
    assert response.status_code == 406, response.text


def test_unknown_resources_are_404(rd: Rendered) -> None:
    missing = uid("rendered", "missing")
    for path in (
        f"/studies/{STUDY}/series/{CT_SERIES}/instances/{missing}/rendered",
        f"/studies/{STUDY}/series/{CT_SERIES}/instances/{missing}/thumbnail",
        f"/studies/{STUDY}/series/{CT_SERIES}/instances/{missing}/frames/1/rendered",
        f"/studies/{STUDY}/series/{missing}/rendered",
        f"/studies/{missing}/rendered",
        f"/studies/{missing}/thumbnail",
        f"/studies/{STUDY}/series/{missing}/thumbnail",
    ):
        assert rd.get(path).status_code == 404, path


# -- WADO-URI ------------------------------------------------------------------------------


def wado(rd: Rendered, ds: Dataset, **params: Any) -> httpx.Response:
    return httpx.get(
        rd.server.http_url + "/wado",
        params={
            "requestType": "WADO",
            "studyUID": str(ds.StudyInstanceUID),
            "seriesUID": str(ds.SeriesInstanceUID),
            "objectUID": str(ds.SOPInstanceUID),
            **params,
        },
        timeout=30,
    )


def test_wado_uri_png_with_a_window(rd: Rendered) -> None:
    ds = rd.cts[0]
    response = wado(
        rd,
        ds,
        contentType="image/png",
        windowCenter="-600",
        windowWidth="1500",
        rows="16",
        columns="16",
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("image/png")
    image = picture(response.content)
    assert (image.format, image.size) == ("PNG", (16, 16))
    expected = linear(hounsfield(ds), -600.0, 1500.0)
    assert np.abs(np.asarray(image).astype(np.float64) - expected).max() <= 0.5 + 1e-9


def test_wado_uri_rows_and_columns_bound_the_picture(rd: Rendered) -> None:
    response = wado(rd, rd.cts[1], contentType="image/png", rows="50", columns="100")
    assert response.status_code == 200, response.text
    assert picture(response.content).size == (50, 50)
    response = wado(rd, rd.files["SC_rgb_rle_2frame.dcm"], rows="40", frameNumber="2")
    assert response.status_code == 200, response.text
    image = picture(response.content)
    assert image.format == "JPEG" and image.mode == "RGB" and image.size == (40, 40)


def test_wado_uri_bad_rendering_parameters_are_400(rd: Rendered) -> None:
    ds = rd.cts[0]
    for params in (
        {"windowCenter": "40"},
        {"windowCenter": "40", "windowWidth": "x"},
        {"windowCenter": "40", "windowWidth": "0"},
        {"rows": "0"},
        {"columns": "many"},
    ):
        response = wado(rd, ds, contentType="image/png", **params)
        assert response.status_code == 400, (params, response.text)

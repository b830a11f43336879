"""The web viewer in a real browser: Debian's Chromium, driven by Playwright.

One ``pacs serve`` for the module, loaded over STOW-RS with the studies of
``tests.e2e.viewer_corpus`` (a generated CT of ``Nguyễn^Văn An``, pydicom's
sample files, and enough small studies to page through). Each test opens
the viewer in a fresh page and checks what a radiologist would see: the
rows of the study list, the slice number, the window/level and measurement
labels, and the canvas pixels themselves. Every test leaves a screenshot in
``tests/artifacts/viewer/`` (git-ignored).
"""

from __future__ import annotations

import base64
import gzip
import re
import unicodedata
import warnings
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from pacs.pixels.codecs import load_imagecodecs
from tests.conftest import ServerProcess, start_server, stop_server
from tests.e2e.viewer_corpus import (
    CORONAL_ROWS,
    CT_PATIENT_ID,
    CT_SLICES,
    LINKED_SIZE,
    LINKED_SLICES,
    PAGED,
    SAMPLE_FILES,
    SR_DESCRIPTION,
    VOI_LUT_DESCRIPTION,
    VOI_LUT_EXPLANATION,
    Corpus,
    load_corpus,
)

playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = Path("/usr/bin/chromium")
# As root on a closed network: no sandbox, and no calls home that would be refused.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "viewer"
WIDE = {"width": 1400, "height": 900}
TABLET = {"width": 820, "height": 1180}  # an iPad Air held upright
TIMEOUT_MS = 15_000

# A cheap hash of the pixels a viewport's canvas shows.
CANVAS_SIGNATURE = """(n) => {
  const canvas = document.querySelector(`[data-viewport="${n}"] canvas`);
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let hash = 2166136261, lit = 0;
  for (let i = 0; i < data.length; i += 4) {
    const v = data[i] + 3 * data[i + 1] + 7 * data[i + 2];
    if (v > 30) lit++;
    hash = Math.imul(hash ^ v, 16777619);
  }
  return { hash: hash >>> 0, lit };
}"""


# The values each loaded frame of viewport 0 holds, as their typed array's
# name and bytes in base64 (a list of numbers would cost seconds to pass).
SHOWN_FRAMES = """() => window.pacsViewer.view.viewports[0].stack.frames.map((f) => {
  const bytes = new Uint8Array(f.values.buffer, f.values.byteOffset, f.values.byteLength);
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return [f.values.constructor.name, btoa(text)];
})"""
_TYPED_ARRAYS = {"Int16Array": "<i2", "Uint16Array": "<u2", "Int8Array": "i1", "Uint8Array": "u1"}


def shown_frames(page: Any) -> list[np.ndarray]:
    """``SHOWN_FRAMES`` as arrays."""
    return [
        np.frombuffer(base64.b64decode(data), dtype=_TYPED_ARRAYS[kind])
        for kind, data in page.evaluate(SHOWN_FRAMES)
    ]


def split_part(body: bytes) -> tuple[bytes, bytes, bytes]:
    """A one-part multipart body as (delimiter and headers, payload, what follows it)."""
    head, _, rest = body.partition(b"\r\n\r\n")
    end = rest.rindex(b"\r\n--")
    return head + b"\r\n\r\n", rest[:end], rest[end:]


def change_htj2k_frames(page: Any, change: Callable[[bytes], bytes]) -> None:
    """Every HTJ2K frame response of ``page`` with its codestream replaced by
    ``change(codestream)`` on the way; other frames as they come."""

    def changed(route: Any) -> None:
        response = route.fetch()
        if 'type="image/jphc"' not in response.headers.get("content-type", ""):
            route.fulfill(response=response)
            return
        head, codestream, tail = split_part(response.body())
        route.fulfill(response=response, body=head + change(codestream) + tail)

    page.route("**/frames/*", changed)


def frame_part(http: httpx.Client, series_url: str, sop: str, media: str) -> tuple[str, bytes]:
    """Frame 1 of ``sop`` as ``media``: its part's headers and its payload."""
    raw = http.get(
        f"{series_url}/instances/{sop}/frames/1",
        headers={"Accept": f'multipart/related; type="{media}"'},
    )
    head, payload, _ = split_part(raw.content)
    return head.decode("ascii"), payload


@pytest.fixture(scope="module")
def viewer_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ServerProcess, Corpus]]:
    root = tmp_path_factory.mktemp("viewer")
    server = start_server(root / "pacs-data")
    try:
        corpus = load_corpus(server.http_url + "/dicom-web", root)
        yield server, corpus
    finally:
        stop_server(server)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is missing: `make test` installs it (system-deps)")
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield chromium
        finally:
            chromium.close()


class Viewer:
    """A page of the viewer, with the handful of looks and gestures the tests need."""

    def __init__(self, page: Any, server: ServerProcess, corpus: Corpus) -> None:
        self.page = page
        self.server = server
        self.corpus = corpus
        self.errors: list[str] = []
        self.warnings: list[str] = []  # the console's
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("console", lambda m: self.warnings.append(m.text) if m.type == "warning" else None)
        page.set_default_timeout(TIMEOUT_MS)

    def open_list(self) -> None:
        self.page.goto(self.server.http_url + "/viewer/")
        self.page.wait_for_selector(".list-state.ok, .list-state.empty")

    def search_name(self, name: str) -> None:
        self.page.fill("input[name=name]", name)
        self.page.press("input[name=name]", "Enter")
        self.page.wait_for_function(
            "() => !document.querySelector('#study-list').classList.contains('searching')"
        )

    def rows(self) -> list[str]:
        return [str(t) for t in self.page.locator("table.studies tbody tr").all_inner_texts()]

    def open_study(self, uid: str) -> None:
        self.page.goto(f"{self.server.http_url}/viewer/#/study/{uid}")
        self.wait_for_image(0)

    def series_url(self, study: str, series: str) -> str:
        return f"{self.server.http_url}/dicom-web/studies/{study}/series/{series}"

    def stack_order(self) -> list[str]:
        """The SOP Instance UIDs of viewport 0's stack, in its order."""
        order: list[str] = self.page.evaluate(
            "() => window.pacsViewer.view.viewports[0].stack.images"
            ".map(i => i.instance['00080018'].Value[0])"
        )
        return order

    def viewport(self, n: int) -> Any:
        return self.page.locator(f'[data-viewport="{n}"]')

    def wait_for_image(self, n: int) -> None:
        self.page.wait_for_function(
            """(n) => {
                const v = document.querySelector(`[data-viewport="${n}"]`);
                return v && v.classList.contains("has-stack") && Number(v.dataset.rendered) > 0
                    && !v.querySelector(".message").textContent;
            }""",
            arg=n,
        )
        self.settle()

    def settle(self) -> None:
        # The pictures at rest (drawn with the best filter) and whatever was asked for drawn.
        self.page.wait_for_function(
            """() => (window.pacsViewer?.view.viewports || []).every(v => v.cine.playing
                || (performance.now() > v.movingUntil + 40 && !v.renderQueued))"""
        )
        self.page.evaluate(
            "() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))"
        )

    def signature(self, n: int = 0) -> dict[str, int]:
        self.settle()
        result: dict[str, int] = self.page.evaluate(CANVAS_SIGNATURE, n)
        return result

    def text(self, n: int, selector: str) -> str:
        self.settle()
        return str(self.viewport(n).locator(selector).inner_text()).strip()

    def wait_for_text(self, n: int, selector: str, pattern: str) -> None:
        """Wait until the text of ``selector`` in viewport ``n`` matches ``pattern`` (a regex)."""
        self.page.wait_for_function(
            """([n, selector, pattern]) => new RegExp(pattern).test(
                document.querySelector(`[data-viewport="${n}"] ${selector}`).textContent)""",
            arg=[n, selector, pattern],
        )

    def centre(self, n: int = 0) -> tuple[float, float]:
        box = self.viewport(n).locator("canvas").bounding_box()
        return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2

    def drag(self, start: tuple[float, float], end: tuple[float, float]) -> None:
        mouse = self.page.mouse
        mouse.move(*start)
        mouse.down()
        mouse.move(*end, steps=8)
        mouse.up()
        self.settle()

    def show_series(self, n: int, description: str) -> None:
        self.viewport(n).locator("canvas").click(position={"x": 4, "y": 4})
        self.page.locator(".series", has_text=description).click()
        self.page.wait_for_function(
            "([n, uid]) => document.querySelector(`[data-viewport='${n}']`).dataset.series === uid",
            arg=[n, self.corpus.sample_series[description]],
        )


@pytest.fixture
def viewer(
    browser: Any, viewer_server: tuple[ServerProcess, Corpus], request: pytest.FixtureRequest
) -> Iterator[Viewer]:
    server, corpus = viewer_server
    size = getattr(request, "param", WIDE)
    context = browser.new_context(viewport=size, has_touch=size is TABLET, device_scale_factor=1)
    page = context.new_page()
    viewer = Viewer(page, server, corpus)
    try:
        yield viewer
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[^\w.-]+", "_", request.node.name)
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
        context.close()
    assert not viewer.errors, f"JavaScript errors in the page: {viewer.errors}"


# -- the server side ----------------------------------------------------------------


def test_viewer_is_served_with_its_config(viewer_server: tuple[ServerProcess, Corpus]) -> None:
    server, _ = viewer_server
    home = httpx.get(server.http_url + "/", follow_redirects=False)
    assert home.status_code == 302 and home.headers["location"] == "/viewer/"
    page = httpx.get(server.http_url + "/viewer/")
    assert page.status_code == 200 and '<script type="module" src="js/main.js">' in page.text
    assert httpx.get(server.http_url + "/viewer/js/viewport.js").status_code == 200
    config = httpx.get(server.http_url + "/viewer/config.json").json()
    assert config["dicomweb"]["root"] == "../dicom-web"
    assert config["capabilities"]["frameMediaTypes"] == ["image/jphc", "application/octet-stream"]
    wasm = httpx.get(server.http_url + "/viewer/vendor/openjph/openjphjs.wasm")
    assert wasm.status_code == 200 and wasm.headers["content-type"] == "application/wasm"


def test_uncompressed_frames_are_gzipped_for_clients_that_accept_it(
    viewer_server: tuple[ServerProcess, Corpus],
) -> None:
    server, corpus = viewer_server
    root = server.http_url + "/dicom-web"
    metadata = httpx.get(
        f"{root}/studies/{corpus.ct_study}/series/{corpus.ct_series}/metadata"
    ).json()
    assert metadata[0]["00083002"]["Value"] == ["1.2.840.10008.1.2.1"]
    sop = metadata[0]["00080018"]["Value"][0]
    url = f"{root}/studies/{corpus.ct_study}/series/{corpus.ct_series}/instances/{sop}/frames/1"
    accept = {"Accept": 'multipart/related; type="application/octet-stream"'}
    with httpx.Client() as client:
        plain = client.get(url, headers={**accept, "Accept-Encoding": "identity"})
        packed = client.send(
            client.build_request("GET", url, headers={**accept, "Accept-Encoding": "gzip"}),
            stream=True,
        )
        wire = b"".join(packed.iter_raw())
    assert "content-encoding" not in plain.headers
    assert packed.headers["content-encoding"] == "gzip"
    assert packed.headers["vary"] == "Accept-Encoding"
    body = gzip.decompress(wire)
    # Same parts (the boundary may differ between responses), and smaller on the wire.
    boundary = body.split(b"\r\n", 1)[0]
    plain_boundary = plain.content.split(b"\r\n", 1)[0]
    assert body.replace(boundary, b"B") == plain.content.replace(plain_boundary, b"B")
    assert len(wire) < 0.8 * len(plain.content)


# -- study list ---------------------------------------------------------------------


def test_search_finds_a_study_by_a_lower_case_partial_vietnamese_name(viewer: Viewer) -> None:
    viewer.open_list()
    viewer.search_name("nguyễn")
    rows = viewer.rows()
    assert len(rows) == 1 and "Nguyễn Văn An" in rows[0] and CT_PATIENT_ID in rows[0], rows
    # The middle of a name, and the decomposed form some keyboards type.
    viewer.search_name("văn a")
    assert [r for r in viewer.rows() if "Nguyễn Văn An" in r], viewer.rows()
    viewer.search_name(unicodedata.normalize("NFD", "trần"))
    rows = viewer.rows()
    assert len(rows) == 1 and "Trần Thị Bình" in rows[0], rows
    # Diacritics count, as the archive matches them.
    viewer.search_name("tran")
    assert viewer.rows() == []


def test_empty_search_and_unreachable_archive_are_said_plainly(viewer: Viewer) -> None:
    viewer.open_list()
    viewer.search_name("zzz-nobody")
    assert viewer.rows() == []
    assert "No study matches" in viewer.page.inner_text(".list-state")
    viewer.page.route("**/dicom-web/**", lambda route: route.abort())
    viewer.search_name("nguyễn")
    state = viewer.page.inner_text(".list-state")
    assert "cannot be reached" in state and "Try again" in state, state
    viewer.page.unroute("**/dicom-web/**")
    viewer.page.click(".list-state button")
    viewer.page.wait_for_selector(".list-state.ok")
    assert len(viewer.rows()) == 1


def test_columns_sort_and_results_page(viewer: Viewer) -> None:
    viewer.open_list()
    viewer.search_name("")
    total = PAGED + 3
    assert f"of {total}" in viewer.page.inner_text(".page-info")
    assert len(viewer.rows()) == 25
    # Newest first by default.
    dates = viewer.page.locator("td[data-column=date]").all_inner_texts()
    assert dates == sorted(dates, reverse=True)
    viewer.page.click("th[data-column=name] button")
    assert viewer.page.get_attribute("th[data-column=name]", "aria-sort") == "ascending"
    names = viewer.page.locator("td[data-column=name]").all_inner_texts()
    assert names[0] == "Nguyễn Văn An" and names == sorted(names, key=str.casefold)
    viewer.page.click("th[data-column=images] button")
    images = [int(n) for n in viewer.page.locator("td[data-column=images]").all_inner_texts()]
    assert images[0] == CT_SLICES and images == sorted(images, reverse=True)
    viewer.page.click("[data-page=next]")
    assert len(viewer.rows()) == total - 25
    assert f"26\N{EN DASH}{total} of {total}" in viewer.page.inner_text(".page-info")
    viewer.page.select_option("select[name=modality]", "US")
    viewer.page.wait_for_function(
        "() => document.querySelectorAll('table.studies tbody tr').length === 1"
    )
    assert "Trần Thị Bình" in viewer.rows()[0]


def test_keyboard_opens_a_study_and_comes_back(viewer: Viewer) -> None:
    viewer.open_list()
    viewer.search_name("nguyễn")
    viewer.page.press("input[name=name]", "ArrowDown")
    viewer.page.keyboard.press("Enter")
    viewer.wait_for_image(0)
    assert viewer.text(0, ".image-number") == f"Im 1/{CT_SLICES}"
    viewer.page.keyboard.press("b")
    viewer.page.wait_for_selector("#study-list:not([hidden]) table.studies tbody tr")
    assert viewer.page.input_value("input[name=name]") == "nguyễn"


# -- study view ---------------------------------------------------------------------


def test_opening_a_study_shows_thumbnails_and_the_first_image(viewer: Viewer) -> None:
    viewer.open_study(viewer.corpus.samples_study)
    viewer.page.wait_for_function(
        "() => [...document.querySelectorAll('.series .thumb img')]"
        ".filter(i => i.naturalWidth > 0).length >= 7"
    )
    cards = viewer.page.locator(".series").all_inner_texts()
    assert len(cards) == len(SAMPLE_FILES) + 2  # and the report and the VOI LUT DX
    assert any("US cine, 30 frames, JPEG" in c and "US" in c for c in cards)
    assert viewer.page.locator(".series .thumb.no-thumb").count() == 1  # the report
    overlay = viewer.text(0, ".overlay.tl")
    assert "Trần Thị Bình" in overlay and "VN-0002" in overlay
    assert viewer.signature(0)["lit"] > 1000


# A frame caught by its CRC-32 is shown right (asked for again uncompressed): said, not failed.
@pytest.mark.filterwarnings("default:HTJ2K frames caught by their CRC-32:UserWarning")
def test_frames_come_as_htj2k_and_decode_to_the_stored_values(viewer: Viewer) -> None:
    """Lossless HTJ2K through OpenJPH in a worker: every value of every slice
    is the stored one, and each frame came with the CRC-32 of those values;
    an image HTJ2K cannot hold (32-bit dose) comes raw."""
    frames: list[tuple[str, str]] = []  # (url, content type)
    viewer.page.on(
        "response",
        lambda r: (
            frames.append((r.url, r.headers.get("content-type", "")))
            if "/frames/" in r.url
            else None
        ),
    )
    viewer.open_study(viewer.corpus.ct_study)
    viewer.page.wait_for_selector('[data-viewport="0"] .progress', state="hidden")
    # A frame caught by its CRC-32 is asked for again uncompressed (see below).
    mismatched = [w for w in viewer.warnings if "other values than the archive's" in w]
    kinds = {
        kind.split(";")[1].strip()
        for url, kind in frames
        if not any(url.split("/instances/")[1].split("/")[0] in w for w in mismatched)
    }
    assert kinds == {'type="image/jphc"'}, kinds
    shown = shown_frames(viewer.page)
    root = viewer.server.http_url + "/dicom-web"
    metadata = httpx.get(
        f"{root}/studies/{viewer.corpus.ct_study}/series/{viewer.corpus.ct_series}/metadata"
    ).json()
    by_sop = {m["00080018"]["Value"][0]: m for m in metadata}
    order = viewer.stack_order()
    assert len(order) == len(shown) == CT_SLICES
    series_url = viewer.series_url(viewer.corpus.ct_study, viewer.corpus.ct_series)

    # One keep-alive connection for the 80-odd frames asked.
    with httpx.Client() as http:
        stored = {}
        for sop in order:
            signed = by_sop[sop]["00280103"]["Value"][0] == 1
            dtype = "<i2" if signed else "<u2"
            head, part = frame_part(http, series_url, sop, "application/octet-stream")
            assert "Decoded-CRC32" not in head  # nothing to decode
            stored[sop] = np.frombuffer(part, dtype=dtype)
            head, _ = frame_part(http, series_url, sop, "image/jphc")
            assert f"\r\nDecoded-CRC32: {zlib.crc32(part):08x}" in head, head
        codecs = load_imagecodecs()

        def server_decodes_right(sop: str) -> bool:
            codestream = frame_part(http, series_url, sop, "image/jphc")[1]
            return np.array_equal(codecs.htj2k_decode(codestream).ravel(), stored[sop])

        wrong = [
            sop
            for sop, values in zip(order, shown, strict=True)
            if not np.array_equal(values, stored[sop])
        ]
        if wrong:
            # Which slice the viewer showed instead, and whether the server's HTJ2K
            # of it is right: a wrong slice, a wrong codestream or a wrong decode.
            found = []
            for sop in wrong:
                values = shown[order.index(sop)]
                instead = [
                    other for other, frame in stored.items() if np.array_equal(values, frame)
                ]
                found.append(
                    f"{sop}: shows {instead or 'no stored slice'};"
                    f" the server's HTJ2K decodes to it: {server_decodes_right(sop)}"
                )
            raise AssertionError(f"{len(wrong)} slices differ: " + "; ".join(found))
        if mismatched:
            # Shown right all the same (asked again uncompressed), but something on
            # the way (the server's encoder, the link, the browser's decoder) erred:
            # whether the server's codestream decodes right tells which side.
            verdicts = {
                sop: server_decodes_right(sop) for sop in order if any(sop in w for w in mismatched)
            }
            warnings.warn(
                f"HTJ2K frames caught by their CRC-32: {mismatched};"
                f" the server's codestream decodes right: {verdicts}",
                stacklevel=1,
            )
    viewer.open_study(viewer.corpus.samples_study)
    viewer.show_series(0, "RT dose, 15 frames, 32-bit")
    viewer.wait_for_image(0)
    dose = viewer.corpus.sample_series["RT dose, 15 frames, 32-bit"]
    kinds = {kind.split(";")[1].strip() for url, kind in frames if dose in url}
    assert kinds == {'type="application/octet-stream"'}, kinds
    assert not viewer.errors


def test_an_htj2k_frame_that_does_not_decode_is_fetched_again_uncompressed(
    viewer: Viewer,
) -> None:
    """Every HTJ2K frame spoiled on the way (cut to its first markers): the
    viewer asks for each again as octet-stream and shows the whole series."""
    change_htj2k_frames(viewer.page, lambda codestream: b"\xff\x4f\xff\x51\x00")
    viewer.open_study(viewer.corpus.ct_study)
    viewer.page.wait_for_selector('[data-viewport="0"] .progress', state="hidden")
    loaded = viewer.page.evaluate(
        "() => { const s = window.pacsViewer.view.viewports[0].stack;"
        " return [s.loaded, s.status.filter(x => x === 3).length]; }"
    )
    assert loaded == [CT_SLICES, 0]
    assert sum("asking for it uncompressed" in w for w in viewer.warnings) >= CT_SLICES
    assert viewer.signature()["lit"] > 1000
    assert not viewer.errors


def test_an_htj2k_frame_that_decodes_to_other_values_is_fetched_again_uncompressed(
    viewer: Viewer,
) -> None:
    """Each HTJ2K frame swapped on the way for the one sent before it: a valid
    codestream of the wrong values, which decodes without an error. Its CRC-32
    header gives it away; the viewer asks for it again uncompressed, and every
    slice holds the stored values."""
    previous: list[bytes] = []

    def swap(codestream: bytes) -> bytes:
        sent = previous[-1] if previous else codestream
        previous.append(codestream)
        return sent

    change_htj2k_frames(viewer.page, swap)
    viewer.open_study(viewer.corpus.ct_study)
    viewer.page.wait_for_selector('[data-viewport="0"] .progress', state="hidden")
    shown = shown_frames(viewer.page)
    series_url = viewer.series_url(viewer.corpus.ct_study, viewer.corpus.ct_series)
    with httpx.Client() as http:
        for sop, values in zip(viewer.stack_order(), shown, strict=True):
            part = frame_part(http, series_url, sop, "application/octet-stream")[1]
            assert np.array_equal(values, np.frombuffer(part, dtype="<i2")), sop
    caught = [w for w in viewer.warnings if "other values than the archive's (CRC-32" in w]
    # Every frame but the first (sent as it was) came as the slice asked before it.
    assert len(previous) == CT_SLICES and len(caught) == CT_SLICES - 1, viewer.warnings
    assert all("asking for it uncompressed" in w for w in caught)
    assert not viewer.errors


def test_scrolling_changes_the_slice_number_and_the_pixels(viewer: Viewer) -> None:
    viewer.open_study(viewer.corpus.ct_study)
    page = viewer.page
    before = viewer.signature()
    assert viewer.text(0, ".image-number") == f"Im 1/{CT_SLICES}"
    page.mouse.move(*viewer.centre())
    page.mouse.wheel(0, 100)
    viewer.wait_for_text(0, ".image-number", "^Im 2/")
    after_wheel = viewer.signature()
    assert after_wheel["hash"] != before["hash"]
    for _ in range(3):
        page.keyboard.press("ArrowDown")
    viewer.settle()
    assert viewer.text(0, ".image-number") == f"Im 5/{CT_SLICES}"
    assert viewer.signature()["hash"] != after_wheel["hash"]
    page.keyboard.press("End")
    viewer.settle()
    assert viewer.text(0, ".image-number") == f"Im {CT_SLICES}/{CT_SLICES}"
    viewer.viewport(0).locator(".slider").fill("20")
    viewer.settle()
    assert viewer.text(0, ".image-number") == f"Im 20/{CT_SLICES}"
    assert "Loc " in viewer.text(0, ".overlay.bl")
    # The whole series arrives while the user looks; progress then hides.
    page.wait_for_selector('[data-viewport="0"] .progress', state="hidden")


def test_window_level_drag_and_presets_change_the_pixels(viewer: Viewer) -> None:
    viewer.open_study(viewer.corpus.ct_study)
    # The image's own window first.
    assert viewer.text(0, ".window-text") == "W 400  L 40"
    options = viewer.page.locator("select[data-role=preset] option").all_inner_texts()
    assert "SOFT TISSUE" in options[1] and "CT brain" in options[2]
    before = viewer.signature()
    x, y = viewer.centre()
    viewer.drag((x, y), (x + 120, y + 60))
    dragged = viewer.text(0, ".window-text")
    assert dragged != "W 400  L 40"
    after_drag = viewer.signature()
    assert after_drag["hash"] != before["hash"]
    viewer.page.keyboard.press("3")  # CT lung
    viewer.settle()
    assert viewer.text(0, ".window-text") == "W 1500  L -600"
    lung = viewer.signature()
    assert lung["hash"] not in (before["hash"], after_drag["hash"])
    viewer.page.select_option("select[data-role=preset]", "bone")
    viewer.settle()
    assert viewer.text(0, ".window-text") == "W 1800  L 400"
    viewer.page.keyboard.press("1")
    assert viewer.text(0, ".window-text") == "W 400  L 40"
    assert viewer.signature()["hash"] == before["hash"]
    viewer.page.keyboard.press("i")
    inverted = viewer.signature()
    assert inverted["hash"] != before["hash"] and "Inverted" in viewer.text(0, ".overlay.br")


def test_zoom_pan_fit_native_size_and_reset(viewer: Viewer) -> None:
    viewer.open_study(viewer.corpus.ct_study)
    fit_zoom = viewer.text(0, ".zoom-text")
    fitted = viewer.signature()
    viewer.page.keyboard.press("n")
    assert viewer.text(0, ".zoom-text") == "Zoom 100%"
    viewer.page.keyboard.press("+")
    assert viewer.text(0, ".zoom-text") == "Zoom 125%"
    viewer.page.keyboard.press("p")
    zoomed = viewer.signature()
    x, y = viewer.centre()
    viewer.drag((x, y), (x + 90, y + 40))
    assert viewer.signature()["hash"] != zoomed["hash"]
    viewer.page.click("[data-action=fit]")
    assert viewer.text(0, ".zoom-text") == fit_zoom
    viewer.page.keyboard.press("z")
    viewer.drag((x, y), (x, y - 80))
    assert viewer.text(0, ".zoom-text") != fit_zoom
    viewer.page.click("[data-action=reset]")
    viewer.settle()
    assert viewer.text(0, ".zoom-text") == fit_zoom
    assert viewer.signature()["hash"] == fitted["hash"]


def test_length_on_a_known_pixel_spacing_and_an_angle(viewer: Viewer) -> None:
    viewer.open_study(viewer.corpus.ct_study)
    viewer.page.keyboard.press("n")  # one image pixel per screen pixel
    viewer.page.keyboard.press("l")
    x, y = viewer.centre()
    viewer.drag((x - 30, y - 40), (x + 30, y + 40))  # 100 pixels
    label = viewer.viewport(0).locator(".measurement-label").first.inner_text()
    millimetres = float(label.removesuffix(" mm"))
    expected = 100 * viewer.corpus.pixel_spacing_mm
    assert abs(millimetres - expected) <= 0.01 * expected, (label, expected)
    # The length stays on the anatomy when the image is zoomed.
    viewer.page.keyboard.press("f")
    assert viewer.viewport(0).locator(".measurement-label").first.inner_text() == label
    viewer.page.keyboard.press("a")
    viewer.drag((x - 80, y), (x, y))
    viewer.page.mouse.move(x, y - 70, steps=4)
    viewer.page.mouse.click(x, y - 70)
    viewer.settle()
    labels = viewer.viewport(0).locator(".measurement-label").all_inner_texts()
    assert "90.0°" in labels, labels
    viewer.page.keyboard.press("Delete")
    viewer.settle()
    assert viewer.viewport(0).locator(".measurement-label").count() == 1


def test_length_without_pixel_spacing_says_so(viewer: Viewer) -> None:
    viewer.open_study(viewer.corpus.samples_study)
    viewer.show_series(0, "US RGB, no pixel spacing")
    viewer.wait_for_image(0)
    viewer.page.keyboard.press("l")
    x, y = viewer.centre()
    viewer.drag((x - 50, y), (x + 50, y))
    assert viewer.viewport(0).locator(".measurement-label").first.inner_text().endswith(" px")
    assert "No Pixel Spacing" in viewer.text(0, ".note")


def test_a_multi_frame_instance_scrolls_and_plays(viewer: Viewer) -> None:
    viewer.open_study(viewer.corpus.samples_study)
    viewer.show_series(0, "US cine, 30 frames, JPEG")
    viewer.wait_for_image(0)
    assert viewer.text(0, ".image-number") == "Im 1/30  Fr 1/30"
    first = viewer.signature()
    viewer.page.mouse.move(*viewer.centre())
    viewer.page.mouse.wheel(0, 100)
    viewer.wait_for_text(0, ".image-number", "Fr 2/30")
    assert viewer.signature()["hash"] != first["hash"]
    viewer.page.keyboard.press(" ")
    viewer.wait_for_text(0, ".image-number", "Fr ([5-9]|[12][0-9])/30")
    assert "fps" in viewer.text(0, ".overlay.bl")
    viewer.page.keyboard.press(" ")
    stopped = viewer.text(0, ".image-number")
    viewer.page.wait_for_timeout(300)
    assert viewer.text(0, ".image-number") == stopped


def test_layouts_drag_a_series_and_the_active_viewport(viewer: Viewer) -> None:
    viewer.open_study(viewer.corpus.samples_study)
    viewer.page.click("[data-layout='2x2']")
    assert viewer.page.locator(".viewport").count() == 4
    for n in range(4):
        viewer.wait_for_image(n)
    assert viewer.page.locator(".viewport.active").count() == 1
    assert viewer.viewport(0).get_attribute("class").split().count("active") == 1
    viewer.viewport(3).locator("canvas").click()
    assert "active" in viewer.viewport(3).get_attribute("class")
    assert "active" not in viewer.viewport(0).get_attribute("class")
    viewer.page.locator(".series", has_text="CT small").drag_to(viewer.viewport(1))
    viewer.wait_for_text(1, ".overlay.tr", "CT small")
    viewer.page.keyboard.press("m")  # 2x2 -> 1x1
    assert viewer.page.locator(".viewport").count() == 1
    viewer.page.click("[data-layout='1x2']")
    assert viewer.page.locator(".viewport").count() == 2


def test_scrolling_one_series_moves_the_others_of_its_frame_of_reference(viewer: Viewer) -> None:
    """A thin and a thick series of one frame of reference side by side: the
    other viewport goes to the slice nearest in the patient, until unlinked."""
    thin, thick, _ = viewer.corpus.linked_series
    viewer.open_study(viewer.corpus.linked_study)
    viewer.page.click("[data-layout='1x2']")
    for n in range(2):
        viewer.wait_for_image(n)
    assert [viewer.viewport(n).get_attribute("data-series") for n in range(2)] == [thin, thick]
    link = viewer.page.locator("[data-action=link]")
    assert link.get_attribute("aria-pressed") == "true"
    thick_slices = LINKED_SLICES // 2
    viewer.viewport(0).locator("canvas").click()
    for _ in range(4):
        viewer.page.keyboard.press("ArrowDown")
    viewer.wait_for_text(0, ".image-number", f"^Im 5/{LINKED_SLICES}$")
    viewer.wait_for_text(1, ".image-number", f"^Im 3/{thick_slices}$")  # the same place
    viewer.page.keyboard.press("End")  # half a thick slice below its last: still its last
    viewer.wait_for_text(1, ".image-number", f"^Im {thick_slices}/{thick_slices}$")
    # the thick series leads when it is the active one
    viewer.viewport(1).locator("canvas").click()
    viewer.page.keyboard.press("Home")
    viewer.wait_for_text(0, ".image-number", f"^Im 1/{LINKED_SLICES}$")
    viewer.page.keyboard.press("ArrowDown")
    viewer.wait_for_text(0, ".image-number", f"^Im 3/{LINKED_SLICES}$")
    viewer.page.keyboard.press("s")  # unlinked
    assert link.get_attribute("aria-pressed") == "false"
    viewer.page.keyboard.press("End")
    viewer.wait_for_text(1, ".image-number", f"^Im {thick_slices}/{thick_slices}$")
    viewer.settle()
    assert viewer.text(0, ".image-number") == f"Im 3/{LINKED_SLICES}"
    link.click()  # linked again: the other follows the active one at once
    viewer.wait_for_text(0, ".image-number", f"^Im {LINKED_SLICES - 1}/{LINKED_SLICES}$")


def test_the_active_slice_is_a_reference_line_on_the_other_planes(viewer: Viewer) -> None:
    """An axial slice cuts the coronal images along one of their rows, and a
    coronal one the axial images along one of theirs; parallel slices draw none."""
    thin, thick, coronal = viewer.corpus.linked_series
    viewer.open_study(viewer.corpus.linked_study)
    viewer.page.click("[data-layout='2x2']")
    for n in range(3):
        viewer.wait_for_image(n)
    assert [viewer.viewport(n).get_attribute("data-series") for n in range(3)] == [
        thin,
        thick,
        coronal,
    ]

    def reference(n: int) -> str:
        viewer.settle()
        return str(viewer.viewport(n).get_attribute("data-reference") or "")

    right = LINKED_SIZE - 1
    viewer.viewport(0).locator("canvas").click()  # axial slice 1, the top one: row 0
    assert reference(2) == f"0.0,0.0 {right}.0,0.0"
    assert reference(1) == ""  # the thick axial series: parallel
    before = viewer.signature(2)
    for _ in range(5):
        viewer.page.keyboard.press("ArrowDown")
    viewer.wait_for_text(0, ".image-number", f"^Im 6/{LINKED_SLICES}$")
    assert reference(2) == f"0.0,5.0 {right}.0,5.0"
    assert viewer.signature(2)["hash"] != before["hash"]  # the line moved on the picture
    viewer.viewport(2).locator("canvas").click()  # coronal 1: the axial row it was cut at
    assert reference(0) == f"0.0,{CORONAL_ROWS[0]}.0 {right}.0,{CORONAL_ROWS[0]}.0"
    assert reference(2) == ""  # the active viewport shows none
    viewer.page.keyboard.press("ArrowDown")
    viewer.wait_for_text(2, ".image-number", f"^Im 2/{len(CORONAL_ROWS)}$")
    assert reference(0) == f"0.0,{CORONAL_ROWS[1]}.0 {right}.0,{CORONAL_ROWS[1]}.0"
    assert reference(1) == reference(0)  # the thick series is cut at the same row
    # Unlinked, scrolling an axial series leaves the parallel one untouched, not repainted.
    viewer.viewport(0).locator("canvas").click()
    viewer.page.keyboard.press("s")
    assert reference(1) == ""
    rendered = viewer.viewport(1).get_attribute("data-rendered")
    viewer.page.keyboard.press("ArrowDown")
    viewer.wait_for_text(0, ".image-number", f"^Im 7/{LINKED_SLICES}$")
    assert reference(2) == f"0.0,6.0 {right}.0,6.0"
    assert viewer.viewport(1).get_attribute("data-rendered") == rendered


def test_images_the_browser_cannot_show_and_series_without_images(viewer: Viewer) -> None:
    viewer.open_study(viewer.corpus.samples_study)
    viewer.show_series(0, "US palette colour")
    viewer.wait_for_image(0)
    assert "Rendered by the server" in viewer.text(0, ".overlay.br")
    assert viewer.signature()["lit"] > 1000
    viewer.show_series(0, SR_DESCRIPTION)
    viewer.wait_for_text(0, ".message", "no images")
    viewer.show_series(0, "RT dose, 15 frames, 32-bit")
    viewer.wait_for_image(0)
    assert viewer.text(0, ".image-number") == "Im 1/15  Fr 1/15"
    assert viewer.signature()["lit"] > 100


# Brightness of the image's left and right quarters (the picture is fit and centred).
HALVES = """(n) => {
  const canvas = document.querySelector(`[data-viewport="${n}"] canvas`);
  const side = Math.min(canvas.width, canvas.height);
  const ctx = canvas.getContext("2d");
  const at = (dx) => ctx.getImageData(
    Math.round(canvas.width / 2 + dx), Math.round(canvas.height / 2), 1, 1).data[0];
  return [at(-side / 4), at(side / 4)];
}"""


def test_a_voi_lut_sequence_is_the_images_own_display(viewer: Viewer) -> None:
    viewer.open_study(viewer.corpus.samples_study)
    viewer.show_series(0, VOI_LUT_DESCRIPTION)
    viewer.wait_for_text(0, ".overlay.br", "VOI LUT: " + VOI_LUT_EXPLANATION)
    left, right = viewer.page.evaluate(HALVES, 0)
    # 500 on the left, 1500 on the right; the LUT shows them white and black,
    # where the image's range would have shown them black and white.
    assert left > 240 and right < 15, (left, right)
    assert "Rendered by the server" not in viewer.text(0, ".overlay.br")
    # A drag leaves the LUT for a linear window, starting from its input range.
    x, y = viewer.centre(0)
    viewer.drag((x, y), (x + 40, y + 20))
    viewer.wait_for_text(0, ".overlay.br", r"W \d+  L \d+")
    assert not viewer.errors


def test_help_overlay_lists_the_shortcuts(viewer: Viewer) -> None:
    viewer.open_study(viewer.corpus.ct_study)
    viewer.page.keyboard.press("?")
    dialog = viewer.page.locator("dialog#help")
    assert dialog.is_visible()
    text = dialog.inner_text()
    for words in ("Window/level", "Length", "Cine", "Invert", "Next layout"):
        assert words in text
    viewer.page.screenshot(path=str(ARTIFACTS / "help.png"))
    viewer.page.keyboard.press("Escape")
    assert not dialog.is_visible()


@pytest.mark.parametrize("viewer", [TABLET], indirect=True, ids=["tablet"])
def test_works_at_tablet_width(viewer: Viewer) -> None:
    viewer.open_list()
    viewer.search_name("nguyễn")
    width = viewer.page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= TABLET["width"]
    viewer.page.locator("table.studies tbody tr").first.tap()
    viewer.wait_for_image(0)
    assert viewer.page.evaluate("() => document.documentElement.scrollWidth") <= TABLET["width"]
    for button in viewer.page.locator(".toolbar button").all():
        box = button.bounding_box()
        assert box and box["x"] + box["width"] <= TABLET["width"], button.inner_text()
    canvas = viewer.viewport(0).locator("canvas").bounding_box()
    assert canvas["width"] > 600 and canvas["height"] > 600
    viewer.page.locator(".series").first.tap()
    viewer.page.locator("[data-action=invert]").tap()
    assert "Inverted" in viewer.text(0, ".overlay.br")

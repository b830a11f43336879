"""The web viewer in Debian's Chromium: first image, whole series, bytes, scroll rate.

Generates the deterministic 300-slice 512x512 CT phantom (157 MB), imports it
into a fresh ``pacs serve``, then opens the study in the viewer (Playwright
driving ``/usr/bin/chromium``, a fresh browser context, so no cache) six
times: on loopback and on an emulated thin link (Chrome's network emulation,
``--link-mbit`` down, ``--link-latency-ms`` each way), each with frames as
the viewer asks for them by default (HTJ2K lossless, ``image/jphc``, which
the server converts each frame to and the browser decodes in WebAssembly),
as uncompressed frames with the browser's usual ``Accept-Encoding: gzip``
(config.json rewritten on the way to offer only ``application/octet-stream``),
and as bare 16-bit frames (``identity``: the baseline). For each it reports:

- time from opening the study to the first image drawn on the canvas;
- time until every one of the 300 frames is in the browser;
- bytes on the wire (Chrome's own count, headers included) and requests;
- CPU seconds the server spent (utime + stime of the ``pacs serve`` process).

Then, the series loaded, the scroll rate: one image further at every
animation frame for the whole stack (what the eye sees; capped by the
display's refresh), and the drawing cost per image (the capacity).

For comparison it also sums the bytes a viewer that shows server-rendered
pictures would fetch for one pass through the series (``/frames/1/rendered``
as JPEG and as PNG), which it would fetch again at every window change.

    python benchmarks/viewer.py [--slices 300] [--link-mbit 50] [--link-latency-ms 20] [--record]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.dicom_nodes import revision, stop_process
from benchmarks.dicomweb import Server, pacs_import, start_pacs
from benchmarks.phantom import generate_ct_series

HERE = Path(__file__).resolve().parent
README = HERE / "README.md"
BEGIN, END = "<!-- viewer:begin -->", "<!-- viewer:end -->"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]


FRAMES_AS = {
    "htj2k": "HTJ2K lossless (default)",
    "gzip": "uncompressed, gzip",
    "identity": "raw 16-bit (identity)",
}


@dataclass
class Run:
    link: str
    encoding: str  # a key of FRAMES_AS
    first_image_ms: float
    series_ms: float
    wire_bytes: int
    requests: int
    server_cpu_s: float


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_study(
    browser: Any,
    server: Server,
    study: str,
    *,
    link: tuple[float, float] | None,
    frames_as: str,
    timeout_s: float,
) -> tuple[Run, Any, Any]:
    identity = frames_as == "identity"
    context = browser.new_context(viewport={"width": 1400, "height": 900}, device_scale_factor=1)
    page = context.new_page()
    if frames_as != "htj2k":

        def octet_stream_only(route: Any) -> None:
            config = route.fetch().json()
            config["capabilities"]["frameMediaTypes"] = ["application/octet-stream"]
            route.fulfill(json=config)

        page.route("**/viewer/config.json", octet_stream_only)
    cdp = context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.setCacheDisabled", {"cacheDisabled": True})
    if identity:
        cdp.send("Network.setExtraHTTPHeaders", {"headers": {"Accept-Encoding": "identity"}})
    if link:
        mbit, latency = link
        cdp.send(
            "Network.emulateNetworkConditions",
            {
                "offline": False,
                "latency": latency,
                "downloadThroughput": mbit * 1e6 / 8,
                "uploadThroughput": mbit * 1e6 / 8,
            },
        )
    received = {"bytes": 0, "requests": 0, "gzip": 0, "htj2k": 0}

    def finished(event: dict[str, Any]) -> None:
        received["bytes"] += int(event.get("encodedDataLength", 0))
        received["requests"] += 1

    def response(event: dict[str, Any]) -> None:
        headers = {k.lower(): v for k, v in event["response"].get("headers", {}).items()}
        if headers.get("content-encoding") == "gzip":
            received["gzip"] += 1
        if 'type="image/jphc"' in headers.get("content-type", ""):
            received["htj2k"] += 1

    cdp.on("Network.loadingFinished", finished)
    cdp.on("Network.responseReceived", response)
    base = f"http://127.0.0.1:{server.http_port}/viewer/"
    page.goto(base)  # the bundle and config.json, before the clock starts
    page.wait_for_function("() => window.pacsViewer !== undefined")
    received["bytes"] = received["requests"] = received["gzip"] = received["htj2k"] = 0
    cpu_before = cpu_seconds(server.process.pid)
    page.evaluate(f"() => {{ location.hash = '#/study/{study}'; }}")
    page.wait_for_function(
        "() => { const s = window.pacsViewer.stats.snapshot();"
        " return s.stacks.length && s.stacks[0].done && s.firstImageMs !== null; }",
        timeout=timeout_s * 1000,
        polling=50,
    )
    snapshot = page.evaluate("() => window.pacsViewer.stats.snapshot()")
    page.wait_for_timeout(300)  # let the last loadingFinished events in
    stack = snapshot["stacks"][0]
    assert stack["failed"] == 0 and stack["loaded"] == stack["images"], snapshot
    if frames_as == "gzip":
        assert received["gzip"] >= stack["images"], "frames were not gzipped"
    if frames_as == "htj2k":
        assert received["htj2k"] >= stack["images"], "frames did not come as HTJ2K"
    run = Run(
        link="thin link" if link else "loopback",
        encoding=frames_as,
        first_image_ms=snapshot["firstImageMs"],
        series_ms=stack["loadedMs"],
        wire_bytes=received["bytes"],
        requests=received["requests"],
        server_cpu_s=cpu_seconds(server.process.pid) - cpu_before,
    )
    return run, context, page


SCROLL = """async () => {
  const view = window.pacsViewer.view;
  const viewport = view.active;
  const n = viewport.stack.images.length;
  viewport.go(0);
  await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
  viewport.renderTimes.length = 0;
  const shown = new Set();
  const start = performance.now();
  await new Promise((resolve) => {
    const step = () => {
      shown.add(viewport.position);
      if (viewport.position >= n - 1) return resolve();
      viewport.scroll(1);
      requestAnimationFrame(step);
    };
    requestAnimationFrame(step);
  });
  const seconds = (performance.now() - start) / 1000;
  const times = [...viewport.renderTimes].sort((a, b) => a - b);
  // The capacity: the same images drawn back to back, no waiting for the screen.
  const t0 = performance.now();
  for (let i = 0; i < n; i++) {
    viewport.position = i;
    viewport.drawnKey = "";
    viewport.moving();
    viewport.render();
  }
  const direct = (performance.now() - t0) / n;
  return {
    images: shown.size,
    imagesPerSecond: (shown.size - 1) / seconds,
    medianRenderMs: times[Math.floor(times.length / 2)],
    directRenderMs: direct,
  };
}"""


def rendered_bytes(server: Server, study: str, media_type: str) -> int:
    root = f"http://127.0.0.1:{server.http_port}/dicom-web"
    with httpx.Client(timeout=60) as client:
        instances = client.get(f"{root}/studies/{study}/instances").json()
        urls = [item["00081190"]["Value"][0] + "/frames/1/rendered" for item in instances]

        def size(url: str) -> int:
            response = client.get(url, headers={"Accept": media_type})
            response.raise_for_status()
            return len(response.content)

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            return sum(pool.map(size, urls))


def _mb(value: float) -> str:
    return f"{value / 1e6:.1f}"


def report(
    runs: list[Run],
    scroll: dict[str, Any],
    rendered: dict[str, int],
    args: argparse.Namespace,
    raw_bytes: int,
) -> list[str]:
    lines = [
        f"Viewer opening a {args.slices}-slice 512x512 CT ({_mb(raw_bytes)} MB of pixel data),"
        f" Chromium {browser_version()}, 2 cores, {time.strftime('%Y-%m-%d')}, {revision()}",
        "",
        "| link | frames sent as | first image ms | whole series s | MB on the wire"
        " | requests | server CPU s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        link = (
            f"emulated {args.link_mbit:g} Mbit/s, {args.link_latency_ms:g} ms"
            if run.link == "thin link"
            else "loopback"
        )
        lines.append(
            f"| {link} | {FRAMES_AS[run.encoding]}"
            f" | {run.first_image_ms:.0f} | {run.series_ms / 1000:.2f} | {_mb(run.wire_bytes)}"
            f" | {run.requests} | {run.server_cpu_s:.2f} |"
        )
    lines += [
        "",
        f"Scrolling the loaded series, one image per animation frame: {scroll['images']} images"
        f" at {scroll['imagesPerSecond']:.0f} images/s (the screen's refresh is the cap);"
        f" drawing one image costs {scroll['medianRenderMs']:.2f} ms median"
        f" ({scroll['directRenderMs']:.2f} ms back to back, i.e."
        f" {1000 / max(scroll['directRenderMs'], 1e-6):.0f} images/s of capacity).",
        "",
        "For comparison, one pass through the series as server-rendered pictures"
        f" (`/frames/1/rendered`, fetched again at every window change): JPEG"
        f" {_mb(rendered['image/jpeg'])} MB, PNG {_mb(rendered['image/png'])} MB.",
    ]
    return lines


_VERSION: list[str] = []


def browser_version() -> str:
    return _VERSION[0] if _VERSION else "?"


def record(lines: list[str]) -> None:
    text = README.read_text()
    if BEGIN not in text:
        text += f"\n## Viewer: `viewer.py`\n\n{BEGIN}\n{END}\n"
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    README.write_text(head + BEGIN + "\n" + "\n".join(lines) + "\n" + END + tail)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--link-mbit", type=float, default=50.0)
    parser.add_argument("--link-latency-ms", type=float, default=20.0)
    parser.add_argument("--record", action="store_true", help="write into benchmarks/README.md")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    workdir = Path(tempfile.mkdtemp(prefix="pacs-viewer-bench-"))
    server: Server | None = None
    try:
        paths = generate_ct_series(workdir / "ct", slices=args.slices)
        raw_bytes = args.slices * 512 * 512 * 2
        pacs_import(workdir / "pacs-data", [workdir / "ct"], workdir / "import.log")
        server = start_pacs(workdir / "pacs-data", workdir / "server.log")
        study = httpx.get(f"http://127.0.0.1:{server.http_port}/dicom-web/studies").json()[0][
            "0020000D"
        ]["Value"][0]
        print(f"{len(paths)} slices imported; study {study}", flush=True)
        runs = []
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            _VERSION.append(browser.version)
            link = (args.link_mbit, args.link_latency_ms)
            scroll: dict[str, Any] = {}
            for thin in (False, True):
                for frames_as in FRAMES_AS:
                    timeout = 60 + (raw_bytes * 8 / (args.link_mbit * 1e6) * 2 if thin else 0)
                    run, context, page = open_study(
                        browser,
                        server,
                        study,
                        link=link if thin else None,
                        frames_as=frames_as,
                        timeout_s=timeout,
                    )
                    print(json.dumps(run.__dict__), flush=True)
                    runs.append(run)
                    if not thin and frames_as == "htj2k":
                        scroll = page.evaluate(SCROLL)
                        print(json.dumps(scroll), flush=True)
                    context.close()
            browser.close()
        rendered = {m: rendered_bytes(server, study, m) for m in ("image/jpeg", "image/png")}
        lines = report(runs, scroll, rendered, args, raw_bytes)
        print("\n".join(lines))
        if args.record:
            record(lines)
    finally:
        if server is not None:
            stop_process(server.process)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

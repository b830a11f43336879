"""WADO-RS rendered resources and thumbnails (PS3.18 10.4.1.1.4, 10.4.1.1.6).

Query parameters (PS3.18 8.3.5.1): ``window=centre,width[,function]`` with
LINEAR, LINEAR_EXACT or SIGMOID; ``viewport=columns,rows`` (the picture fits
inside, keeping its shape); ``quality=1..100`` for JPEG. The Accept header
picks image/jpeg (the default), image/png or image/gif. Rendering runs in a
worker thread, so a slow decode never stalls other requests; a picture
already made is sent from the event loop (``Archive.rendered_now``).
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from pacs.core import Archive
from pacs.core.rendering import Picture, RenderRequest
from pacs.dicomweb.errors import DicomWebError
from pacs.dicomweb.media import Multipart, frame_numbers, matches, parse_accept
from pacs.dicomweb.responses import single_part
from pacs.errors import NotFoundError
from pacs.index.schema import Level
from pacs.pixels.pipeline import LINEAR, Window
from pacs.pixels.render import FORMATS

THUMBNAIL_SIZE = (128, 128)


def render_request(
    request: Request, default_viewport: tuple[int, int] | None = None
) -> RenderRequest:
    params = request.query_params
    return RenderRequest(
        media_type=_media_type(request),
        window=_window(params.get("window")),
        viewport=_viewport(params.get("viewport")) or default_viewport,
        quality=_quality(params.get("quality")),
    )


async def instance(request: Request, archive: Archive, keys: dict[str, str]) -> Response:
    """The first frame of an instance, or as GIF every frame (see ``Archive.rendered_instance``)."""
    wanted = render_request(request)
    # A GIF of a multi-frame instance is all its frames: not frame 0's picture.
    rendered = None if wanted.media_type == "image/gif" else archive.rendered_now(keys, 0, wanted)
    if rendered is None:
        rendered = await run_in_threadpool(archive.rendered_instance, keys, wanted)
    return single_part(
        request,
        rendered.data,
        wanted.media_type,
        etag=rendered.etag,
        last_modified=rendered.modified,
    )


async def frames(
    request: Request, archive: Archive, keys: dict[str, str], frame_list: str
) -> Response:
    """One picture for one frame; multipart/related pictures for several."""
    numbers = frame_numbers(frame_list)
    wanted = render_request(request)

    def work() -> list[Picture]:
        return [archive.rendered(keys, n - 1, wanted) for n in numbers]

    kept = [archive.rendered_now(keys, n - 1, wanted) for n in numbers]
    pictures = [p for p in kept if p is not None]
    if len(pictures) < len(numbers):
        pictures = await run_in_threadpool(work)
    if len(pictures) == 1:
        return single_part(
            request,
            pictures[0].data,
            wanted.media_type,
            etag=pictures[0].etag,
            last_modified=pictures[0].modified,
        )
    return _multipart([p.data for p in pictures], wanted.media_type)


async def group(request: Request, archive: Archive, level: Level, keys: dict[str, str]) -> Response:
    """Every instance of a study or series (first frame each), multipart/related."""
    wanted = render_request(request)

    def work() -> list[bytes]:
        instances = archive.instances_to_retrieve(level, keys)
        if not instances:
            raise NotFoundError(f"no {level.value.lower()} {keys}")
        return [
            archive.rendered(
                {
                    "StudyInstanceUID": s.study_instance_uid,
                    "SeriesInstanceUID": s.series_instance_uid,
                    "SOPInstanceUID": s.sop_instance_uid,
                },
                0,
                wanted,
            ).data
            for s in instances
        ]

    return _multipart(await run_in_threadpool(work), wanted.media_type)


async def thumbnail(
    request: Request, archive: Archive, level: Level, keys: dict[str, str]
) -> Response:
    """A small picture standing for a study, series or instance (PS3.18 10.4.1.1.6)."""
    wanted = render_request(request, THUMBNAIL_SIZE)

    def work() -> Picture:
        chosen = keys if level is Level.IMAGE else archive.representative(level, keys)
        return archive.rendered(chosen, 0, wanted)

    rendered = archive.rendered_now(keys, 0, wanted) if level is Level.IMAGE else None
    if rendered is None:
        rendered = await run_in_threadpool(work)
    return single_part(
        request,
        rendered.data,
        wanted.media_type,
        etag=rendered.etag,
        last_modified=rendered.modified,
    )


def _multipart(pictures: list[bytes], media_type: str) -> Response:
    multipart = Multipart.around(media_type, pictures)
    return Response(multipart.body(pictures, media_type), media_type=multipart.content_type())


def _media_type(request: Request) -> str:
    for media_range in parse_accept(request.headers.get("accept")):
        if media_range.media_type in ("*/*", "*", "image/*"):
            return "image/jpeg"
        for media_type in FORMATS:
            if matches(media_range, media_type):
                return media_type
    raise DicomWebError(406, f"rendered resources are available as {', '.join(FORMATS)}")


def _window(value: str | None) -> Window | None:
    if value is None:
        return None
    parts = [p.strip() for p in value.split(",")]
    try:
        centre, width = float(parts[0]), float(parts[1])
    except (IndexError, ValueError):
        raise DicomWebError(400, "window must be centre,width[,function]") from None
    function = parts[2].upper() if len(parts) > 2 and parts[2] else LINEAR
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        raise DicomWebError(
            400, f"window function {parts[2]!r} is not LINEAR, LINEAR_EXACT or SIGMOID"
        )
    if width <= 0:
        raise DicomWebError(400, "window width must be positive")
    return Window(centre, width, function)


def _viewport(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    parts = value.split(",")
    try:
        columns, rows = int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        raise DicomWebError(400, "viewport must be columns,rows") from None
    if not (0 < columns <= 8192 and 0 < rows <= 8192):
        raise DicomWebError(400, "viewport must be between 1 and 8192 pixels each way")
    return rows, columns


def _quality(value: str | None) -> int:
    if value is None:
        return 90
    try:
        quality = int(value)
    except ValueError:
        raise DicomWebError(400, "quality must be a whole number from 1 to 100") from None
    if not 1 <= quality <= 100:
        raise DicomWebError(400, "quality must be a whole number from 1 to 100")
    return quality

"""WADO-URI: one instance by its UIDs, as DICOM or as a picture (PS3.18 9)."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from pacs.core import Archive
from pacs.core.attributes import check_uid
from pacs.core.rendering import RenderRequest
from pacs.dicomweb.errors import DicomWebError
from pacs.dicomweb.media import DICOM, checked_transfer_syntax
from pacs.dicomweb.responses import single_part
from pacs.errors import InvalidDatasetError, NotFoundError
from pacs.pixels.pipeline import Window
from pacs.pixels.render import FORMATS
from pacs.types import Scope


async def wado_uri(request: Request, archive: Archive, scope: Scope | None = None) -> Response:
    params = request.query_params
    if params.get("requestType") != "WADO":
        raise DicomWebError(400, "requestType=WADO is required")
    try:
        uids = {
            name: check_uid(name, params.get(name))
            for name in ("studyUID", "seriesUID", "objectUID")
        }
    except InvalidDatasetError as exc:
        raise DicomWebError(400, str(exc)) from None
    if scope is not None and not scope.everything:
        await run_in_threadpool(archive.require_visible, scope, uids["studyUID"])
    # PS3.18 9.1.2.1.5: several types may be listed; the default is image/jpeg.
    wanted = [t.split(";")[0].strip() for t in params.get("contentType", "image/jpeg").split(",")]
    for media_type in wanted:
        if media_type in (DICOM, "*/*", "application/*"):
            stored = await run_in_threadpool(archive.instance, uids["objectUID"])
            if (stored.study_instance_uid, stored.series_instance_uid) != (
                uids["studyUID"],
                uids["seriesUID"],
            ):
                raise NotFoundError(f"instance {uids['objectUID']} is not in that study/series")
            syntax = checked_transfer_syntax(params.get("transferSyntax", "*"))
            data = await run_in_threadpool(_part10, archive, stored, syntax)
            return single_part(request, data, DICOM, last_modified=stored.stored_at)
        if media_type in FORMATS or media_type == "image/*":
            render_as = RenderRequest(
                media_type="image/jpeg" if media_type == "image/*" else media_type,
                window=_window(params.get("windowCenter"), params.get("windowWidth")),
                viewport=_size(params.get("rows"), params.get("columns")),
                quality=min(_number(params.get("imageQuality"), "imageQuality", 90), 100),
            )
            keys = {
                "StudyInstanceUID": uids["studyUID"],
                "SeriesInstanceUID": uids["seriesUID"],
                "SOPInstanceUID": uids["objectUID"],
            }
            frame = _number(params.get("frameNumber"), "frameNumber", 1) - 1
            # The look-up by all three UIDs is also the check that they belong together.
            picture = archive.rendered_now(keys, frame, render_as)
            if picture is None:
                picture = await run_in_threadpool(archive.rendered, keys, frame, render_as)
            return single_part(
                request,
                picture.data,
                render_as.media_type,
                etag=picture.etag,
                last_modified=picture.modified,
            )
    raise DicomWebError(406, f"contentType {params.get('contentType')!r} is not available")


def _part10(archive: Archive, stored: object, syntax: str | None) -> bytes:
    _, chunks = archive.part10_for_transfer(stored, syntax)  # type: ignore[arg-type]
    return b"".join(chunks)


def _number(value: str | None, name: str, default: int) -> int:
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise DicomWebError(400, f"{name} must be a whole number") from None
    if number < 1:
        raise DicomWebError(400, f"{name} must be at least 1")
    return number


def _window(centre: str | None, width: str | None) -> Window | None:
    if centre is None and width is None:
        return None
    try:
        window = Window(float(centre or ""), float(width or ""))
    except ValueError:
        raise DicomWebError(400, "windowCenter and windowWidth must both be numbers") from None
    if window.width <= 0:
        raise DicomWebError(400, "windowWidth must be positive")
    return window


def _size(rows: str | None, columns: str | None) -> tuple[int, int] | None:
    if rows is None and columns is None:
        return None
    r = _number(rows, "rows", 1 << 16)
    c = _number(columns, "columns", 1 << 16)
    return r, c

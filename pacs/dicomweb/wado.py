"""WADO-RS: instances, metadata, frames and bulk data (PS3.18 10.4).

Instances stream from storage: a batch of parts (a few MB) is read in a
worker thread while the event loop sends the previous one, so a study of any
size passes through bounded memory and the first part leaves at once.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator, Sequence

from pydicom.uid import ExplicitVRLittleEndian
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from pacs.core import Archive
from pacs.core.dicomjson import BASE_PLACEHOLDER_JSON
from pacs.dicomweb.errors import DicomWebError
from pacs.dicomweb.media import (
    DEFAULT_FRAME_SYNTAXES,
    DICOM,
    FRAME_MEDIA_TYPES,
    OCTET_STREAM,
    Buffer,
    MediaRange,
    Multipart,
    checked_transfer_syntax,
    frame_numbers,
    matches,
    parse_accept,
    require_json,
)
from pacs.dicomweb.responses import (
    PiecesResponse,
    accepts_gzip,
    base_url,
    gzipped_response,
    json_response,
)
from pacs.errors import NotFoundError
from pacs.index.base import StoredInstance
from pacs.index.schema import Level
from pacs.types import Frames

_BATCH_BYTES = 8 << 20
"""Bytes read per trip to a worker thread while streaming."""
_FIRST_BATCH_BYTES = 1 << 20


async def retrieve(
    request: Request, archive: Archive, level: Level, keys: dict[str, str]
) -> Response:
    """Study, series or instance as ``multipart/related; type="application/dicom"``.

    ``transfer-syntax=*`` sends every instance as stored; a UID converts to
    it (406 when some instance cannot be); no parameter means Explicit VR
    Little Endian, PS3.18 8.7.3.5.2's default.
    """
    target = _dicom_transfer_syntax(request)
    instances = await run_in_threadpool(_found, archive, level, keys)
    if target is not None:
        refused = await run_in_threadpool(archive.convertible, instances, target)
        if refused:
            raise DicomWebError(
                406, f"{len(refused)} instance(s) cannot be sent as {target}, e.g. {refused[0]}"
            )
    multipart = Multipart(DICOM)
    headers = {}
    syntaxes = {target or s.transfer_syntax_uid for s in instances}
    if all(target in (None, s.transfer_syntax_uid) for s in instances):
        # Sizes are known: a Content-Length spares the chunked encoding's copies.
        length = len(multipart.tail()) + sum(
            len(multipart.head(DICOM, transfer_syntax=s.transfer_syntax_uid)) + s.size + 2
            for s in instances
        )
        headers["Content-Length"] = str(length)
    if len(instances) == 1 and target not in (None, instances[0].transfer_syntax_uid):
        # One converted instance: convert before answering, so that a failure
        # (a corrupt codestream) is a status with a reason, not a cut-off body.
        parts: Iterator[bytes | memoryview] = iter(
            await run_in_threadpool(
                lambda: list(_dicom_parts(archive, instances, target, multipart))
            )
        )
    else:
        # A failure half-way through a study can only drop the connection: the
        # client sees a truncated body, never a short study passed off as whole.
        parts = _dicom_parts(archive, instances, target, multipart)
    # Read before answering, so that storage out of reach (S3 down) is a 503,
    # not a 200 cut short.
    first = await run_in_threadpool(_take, parts, _FIRST_BATCH_BYTES)
    return StreamingResponse(
        _in_batches(parts, first),
        media_type=multipart.content_type(syntaxes.pop() if len(syntaxes) == 1 else None),
        headers=headers,
    )


def _found(archive: Archive, level: Level, keys: dict[str, str]) -> list[StoredInstance]:
    instances = archive.instances_to_retrieve(level, keys)
    if not instances:
        raise NotFoundError(f"no {level.value.lower()} {keys}")
    return instances


def _dicom_parts(
    archive: Archive, instances: list[StoredInstance], target: str | None, multipart: Multipart
) -> Iterator[bytes | memoryview]:
    for stored in instances:
        syntax, chunks = archive.part10_for_transfer(stored, target)
        yield multipart.head(DICOM, transfer_syntax=syntax)
        yield from chunks
        yield multipart.part_end()
    yield multipart.tail()


def _take(parts: Iterator[bytes | memoryview], budget: int) -> list[bytes | memoryview]:
    batch, size = [], 0
    for piece in parts:
        batch.append(piece)
        size += len(piece)
        if size >= budget:
            break
    return batch


async def _in_batches(
    parts: Iterator[bytes | memoryview], batch: list[bytes | memoryview]
) -> AsyncIterator[bytes | memoryview]:
    """Send ``batch``, then read the next ones in a worker thread, the next one
    while this one is sent. The first batch is small so that the first part
    leaves at once.
    """
    while batch:
        upcoming = asyncio.ensure_future(run_in_threadpool(_take, parts, _BATCH_BYTES))
        try:
            for piece in batch:
                yield piece
        except BaseException:
            upcoming.cancel()
            raise
        batch = await upcoming


def _dicom_transfer_syntax(request: Request) -> str | None:
    for media_range in parse_accept(request.headers.get("accept")):
        if matches(media_range, DICOM) or media_range.media_type == "*/*":
            if media_range.transfer_syntax is None:
                return ExplicitVRLittleEndian
            return checked_transfer_syntax(media_range.transfer_syntax)
    raise DicomWebError(406, 'this resource is sent as multipart/related; type="application/dicom"')


async def metadata(
    request: Request, archive: Archive, level: Level, keys: dict[str, str]
) -> Response:
    """PS3.18 10.4.1.1.2: DICOM JSON of every instance, bulk data as BulkDataURI."""
    require_json(request.headers.get("accept"))
    objects = await run_in_threadpool(archive.metadata, level, keys)
    body = b"[" + b",".join(objects) + b"]"
    body = body.replace(BASE_PLACEHOLDER_JSON, base_url(request).encode())
    return json_response(request, body=body)


async def frames(
    request: Request, archive: Archive, keys: dict[str, str], frame_list: str
) -> Response:
    """PS3.18 10.4.1.1.3: frames as octet-stream (uncompressed) or as stored.

    Uncompressed frames are gzipped for clients that accept it (browsers do):
    half the bytes for CT on a thin link. Compressed ones are sent as they are.
    Frames the archive has at once (see ``Archive.frames_now``) are answered
    on the event loop; gzip, and everything else, runs in a worker thread.
    (``pacs.dicomweb.frames_at_once`` answers the first kind before routing.)
    """
    numbers = frame_numbers(frame_list)
    accept = parse_accept(request.headers.get("accept"))
    found = frames_now(archive, keys, numbers, accept)
    if found is not None:
        response = frames_as_they_are(found, request.headers.get("accept-encoding", ""))
        if response is not None:
            return response
    return await frames_in_thread(request, archive, keys, numbers, accept, found)


async def frames_in_thread(
    request: Request,
    archive: Archive,
    keys: dict[str, str],
    numbers: Sequence[int],
    accept: Sequence[MediaRange],
    found: Frames | None,
) -> Response:
    """The frames' response made in a worker thread: looked up and read there
    unless already ``found``, gzipped when the client takes it."""

    def work() -> Response:
        # One trip to a worker thread: lookup, read and body together.
        frames = found or archive.frames(
            keys, numbers, lambda stored: _frame_syntax(accept, stored)
        )
        media_type = _frame_media_type(frames.syntax)
        multipart = Multipart.around(media_type, frames.data)
        headers, params = _frame_part(media_type, frames)
        body = multipart.body(frames.data, media_type, headers, **params)
        content_type = multipart.content_type()
        if media_type != OCTET_STREAM:
            return Response(body, media_type=content_type)
        return gzipped_response(request, body, content_type)

    return await run_in_threadpool(work)


def frames_now(
    archive: Archive, keys: dict[str, str], numbers: Sequence[int], accept: Sequence[MediaRange]
) -> Frames | None:
    """``Archive.frames_now`` for a client that accepts ``accept``."""
    return archive.frames_now(keys, numbers, lambda stored: _frame_syntax(accept, stored))


def frames_as_they_are(found: Frames, accept_encoding: str) -> PiecesResponse | None:
    """The multipart response of frames found at once, sent as their pieces;
    ``None`` when they are to be gzipped, which is work for a thread."""
    media_type = _frame_media_type(found.syntax)
    if media_type == OCTET_STREAM and accepts_gzip(accept_encoding, sum(map(len, found.data))):
        return None
    multipart = Multipart.around(media_type, found.data)
    headers, params = _frame_part(media_type, found)
    return PiecesResponse(
        multipart.pieces(found.data, media_type, headers, **params),
        multipart.content_type(),
        _VARY,
    )


DECODED_CRC32 = "Decoded-CRC32"
"""A frame part's header (ours, not PS3.18's): the CRC-32, 8 hex digits, of
the samples its codestream decodes to, on frames the archive converted
losslessly to JPEG 2000 or HTJ2K (``Frames.decoded_crc32``). The viewer checks
its decoder's output against it; other clients ignore a header they do not know."""


def _frame_part(
    media_type: str, frames: Frames
) -> tuple[list[dict[str, str] | None], dict[str, str]]:
    """``Multipart.pieces``' per-part headers and Content-Type parameters for ``frames``."""
    headers: list[dict[str, str] | None] = [
        None if crc is None else {DECODED_CRC32: f"{crc:08x}"} for crc in frames.decoded_crc32
    ]
    return headers, _frame_params(media_type, frames.syntax)


_VARY = {"Vary": "Accept-Encoding"}


def _frame_media_type(syntax: str) -> str:
    if syntax == ExplicitVRLittleEndian:
        return OCTET_STREAM
    return FRAME_MEDIA_TYPES.get(syntax, OCTET_STREAM)


def _frame_params(media_type: str, syntax: str | None) -> dict[str, str]:
    return {"transfer_syntax": syntax} if syntax and media_type != OCTET_STREAM else {}


def _frame_syntax(accept: Sequence[MediaRange], stored_syntax: str) -> list[str | None]:
    """The syntaxes the client takes frames in, best first (``None``: as stored).

    ``*/*`` or the stored media type means as stored; ``application/octet-stream``
    uncompressed; another frame media type (``image/jphc``, ``image/jls``...)
    its ``transfer-syntax`` or PS3.18's default for it, converted from the
    stored frames. Whether a conversion fits the image is the archive's call.
    """
    stored_type = FRAME_MEDIA_TYPES.get(stored_syntax, OCTET_STREAM)
    wanted: list[str | None] = []
    for media_range in accept:
        if media_range.media_type in ("*/*", "*"):
            wanted.append(None)
        elif media_range.media_type == OCTET_STREAM:
            wanted.append(ExplicitVRLittleEndian)
        elif media_range.media_type in DEFAULT_FRAME_SYNTAXES:
            syntax = checked_transfer_syntax(media_range.transfer_syntax)
            if syntax is None:
                syntax = (
                    stored_syntax
                    if media_range.media_type == stored_type
                    else DEFAULT_FRAME_SYNTAXES[media_range.media_type]
                )
            if FRAME_MEDIA_TYPES.get(syntax) == media_range.media_type:
                wanted.append(None if syntax == stored_syntax else syntax)
    if not wanted:
        raise DicomWebError(
            406,
            f"frames are available as {OCTET_STREAM}, as stored ({stored_type})"
            " or in a frame media type of PS3.18 Table 8.7.3-5",
        )
    return wanted


async def bulkdata(request: Request, archive: Archive, keys: dict[str, str], path: str) -> Response:
    """PS3.18 10.4.1.1.5: the value behind a BulkDataURI, as stored."""
    sop = keys["SOPInstanceUID"]
    stored = await run_in_threadpool(archive.instance, sop)
    _check_parents(stored, keys)
    steps = path.split("/")
    for position, step in enumerate(steps):
        tag_step = position % 2 == 0
        valid = re.fullmatch(r"[0-9A-Fa-f]{8}", step) if tag_step else step.isdigit()
        if not valid:
            raise DicomWebError(
                400, f"bulk data path {path!r}: expected tag/item/tag..., found {step!r}"
            )
    syntax, value = await run_in_threadpool(archive.bulkdata, sop, steps)
    compressed = steps[-1:] == ["7FE00010"] and syntax in FRAME_MEDIA_TYPES
    media_type = FRAME_MEDIA_TYPES[syntax] if compressed else OCTET_STREAM
    for media_range in parse_accept(request.headers.get("accept")):
        if matches(media_range, media_type) or media_range.media_type in ("*/*", "*"):
            return _multipart_values([value], media_type, syntax if compressed else None)
    raise DicomWebError(406, f"this bulk data is available as {media_type}")


def _multipart_values(values: list[bytes], media_type: str, syntax: str | None) -> Response:
    body, content_type = _multipart_body(values, media_type, syntax)
    return Response(body, media_type=content_type)


def _multipart_body(
    values: Sequence[Buffer], media_type: str, syntax: str | None
) -> tuple[bytes, str]:
    multipart = Multipart.around(media_type, values)
    body = multipart.body(values, media_type, (), **_frame_params(media_type, syntax))
    return body, multipart.content_type()


def _check_parents(stored: StoredInstance, keys: dict[str, str]) -> None:
    if keys.get("StudyInstanceUID") not in (None, stored.study_instance_uid) or keys.get(
        "SeriesInstanceUID"
    ) not in (None, stored.series_instance_uid):
        raise NotFoundError(f"instance {stored.sop_instance_uid} is not in that study/series")

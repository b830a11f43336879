"""STOW-RS: store instances sent as multipart/related (PS3.18 10.5).

The body is parsed as it arrives: each part is ingested as soon as it is
complete, through the same ``Archive.ingest_part10`` as C-STORE, so at most
one instance (plus one network chunk) is held in memory.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from pacs.core import Archive
from pacs.core.archive import instance_path
from pacs.core.encoding import split_part10, uid_value
from pacs.dicomweb.errors import DicomWebError
from pacs.dicomweb.media import DICOM
from pacs.dicomweb.responses import base_url, json_response
from pacs.errors import (
    ConflictError,
    DatasetMismatchError,
    InvalidDatasetError,
    PacsError,
    StorageError,
    UnsupportedTransferSyntaxError,
)
from pacs.types import Caller, StoreResult

log = logging.getLogger(__name__)

# PS3.18 Table 10.5.3-3 Failure Reason values (the C-STORE statuses, PS3.4 B.2.3).
_FAILURE_REASONS: tuple[tuple[type[PacsError], int], ...] = (
    (DatasetMismatchError, 0xA900),
    (InvalidDatasetError, 0xC000),
    (UnsupportedTransferSyntaxError, 0xC122),
    (ConflictError, 0x0111),
    (StorageError, 0xA700),
)
_PROCESSING_FAILURE = 0x0110
_MAX_HEADER_BYTES = 16 << 10


async def store(request: Request, archive: Archive, study_instance_uid: str | None) -> Response:
    boundary = _boundary(request.headers.get("content-type", ""))
    caller = Caller(ae_title="", address=request.client.host if request.client else "", user="")
    root = base_url(request)
    referenced: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    async for headers, body in _parts(request.stream(), boundary):
        part_type = headers.get("content-type", DICOM).split(";")[0].strip().lower()
        if part_type != DICOM:
            failed.append(_failure(None, 0xC000, f"part of type {part_type} is not {DICOM}"))
            continue
        try:
            result: StoreResult = await run_in_threadpool(
                archive.ingest_part10, body, caller, study_instance_uid=study_instance_uid
            )
        except PacsError as exc:
            log.warning("STOW-RS instance from %s refused: %s", caller.address, exc)
            failed.append(_failure(body, _reason(exc), str(exc)))
            continue
        path = instance_path(
            result.study_instance_uid, result.series_instance_uid, result.sop_instance_uid
        )
        referenced.append(
            {
                "00081150": {"vr": "UI", "Value": [result.sop_class_uid]},
                "00081155": {"vr": "UI", "Value": [result.sop_instance_uid]},
                "00081190": {"vr": "UR", "Value": [f"{root}/{path}"]},
            }
        )
    if not referenced and not failed:
        raise DicomWebError(400, "the request holds no multipart/related parts")
    # One line a request; the instances are at level debug (``Archive.ingest``).
    log.info(
        "STOW-RS from %s: %d instance(s) accepted, %d refused",
        caller.address,
        len(referenced),
        len(failed),
    )
    model: dict[str, Any] = {}
    if study_instance_uid:
        model["00081190"] = {"vr": "UR", "Value": [f"{root}/studies/{study_instance_uid}"]}
    if failed:
        model["00081198"] = {"vr": "SQ", "Value": failed}
    if referenced:
        model["00081199"] = {"vr": "SQ", "Value": referenced}
    # PS3.18 10.5.3: 200 all stored, 202 some failed, 409 none stored.
    status = 200 if not failed else (202 if referenced else 409)
    return json_response(request, model, status=status)


def _reason(error: PacsError) -> int:
    for error_type, reason in _FAILURE_REASONS:
        if isinstance(error, error_type):
            return reason
    return _PROCESSING_FAILURE


def _failure(body: bytes | None, reason: int, comment: str) -> dict[str, Any]:
    item: dict[str, Any] = {"00081197": {"vr": "US", "Value": [reason]}}
    uids = _uids(body) if body else {}
    if "sop_class" in uids:
        item["00081150"] = {"vr": "UI", "Value": [uids["sop_class"]]}
    if "sop_instance" in uids:
        item["00081155"] = {"vr": "UI", "Value": [uids["sop_instance"]]}
    item["00000902"] = {"vr": "LO", "Value": [comment[:64]]}  # Error Comment
    return item


def _uids(body: bytes) -> dict[str, str]:
    """The SOP Class/Instance UIDs of a refused part, from its file meta if readable."""
    try:
        meta, _ = split_part10(body)
    except PacsError:
        return {}
    found = {}
    if 0x00020002 in meta:
        found["sop_class"] = uid_value(meta[0x00020002])
    if 0x00020003 in meta:
        found["sop_instance"] = uid_value(meta[0x00020003])
    return found


def _boundary(content_type: str) -> bytes:
    main, *params = content_type.split(";")
    if main.strip().lower() != "multipart/related":
        raise DicomWebError(415, 'STOW-RS takes multipart/related; type="application/dicom"')
    values = {}
    for param in params:
        name, _, value = param.partition("=")
        values[name.strip().lower()] = value.strip().strip('"')
    part_type = values.get("type", DICOM).lower()
    if part_type != DICOM:
        raise DicomWebError(415, f"parts of type {part_type} are not supported; send {DICOM}")
    boundary = values.get("boundary")
    if not boundary:
        raise DicomWebError(400, "multipart/related without a boundary")
    return boundary.encode("latin-1")


async def _parts(
    stream: AsyncIterator[bytes], boundary: bytes
) -> AsyncIterator[tuple[dict[str, str], bytes]]:
    """Parts of a multipart body (RFC 2046 5.1), each whole once its delimiter arrives."""
    delimiter = b"\r\n--" + boundary
    buffer = bytearray(b"\r\n")  # the first delimiter has no CRLF before it
    chunks = stream.__aiter__()
    finished = False

    async def fill() -> bool:
        nonlocal finished
        if finished:
            return False
        try:
            buffer.extend(await chunks.__anext__())
        except StopAsyncIteration:
            finished = True
            return False
        return True

    # Preamble, up to the first delimiter.
    while (start := buffer.find(delimiter)) < 0:
        del buffer[: max(0, len(buffer) - len(delimiter) + 1)]  # may end in a partial one
        if not await fill():
            return
    del buffer[: start + len(delimiter)]
    while True:
        while len(buffer) < 2 and await fill():
            pass
        if buffer[:2] == b"--" or len(buffer) < 2:
            return  # close delimiter (or a truncated body)
        while (end := buffer.find(b"\r\n\r\n")) < 0:
            if len(buffer) > _MAX_HEADER_BYTES:
                raise DicomWebError(400, "a part's headers are too long")
            if not await fill():
                raise DicomWebError(400, "the body ends inside a part's headers")
        headers = _headers(bytes(buffer[:end]))
        del buffer[: end + 4]
        body = bytearray()
        while (stop := buffer.find(delimiter)) < 0:
            keep = len(delimiter) - 1
            if len(buffer) > keep:
                body += buffer[: len(buffer) - keep]
                del buffer[: len(buffer) - keep]
            if not await fill():
                raise DicomWebError(400, "the body ends inside a part (no closing boundary)")
        body += buffer[:stop]
        del buffer[: stop + len(delimiter)]
        yield headers, bytes(body)


def _headers(block: bytes) -> dict[str, str]:
    headers = {}
    for line in block.decode("latin-1").split("\r\n"):
        name, _, value = line.partition(":")
        if name.strip():
            headers[name.strip().lower()] = value.strip()
    return headers

"""WADO-RS frames answered before routing, when the archive has them at once.

A viewer asks for every frame of a series, one request each, and a frame the
archive holds in the page cache costs ~0.1 ms to find and read; Starlette's
routing, its request objects and the exception layers around the endpoint
cost about as much again. This middleware sits just inside authentication
(so every request is still authenticated and audited) and answers
``GET /dicom-web/studies/{study}/series/{series}/instances/{instance}/frames/{list}``
itself when that is plainly possible: an account that may read everything,
well-formed UIDs and frame numbers, frames that ``Archive.frames_now`` has
(gzipped in a thread when the client takes it, as the route would). Anything
else, including every error, goes on to the routes, which answer it as they
always did: the rules live there, this only takes the common case first.
"""

from __future__ import annotations

import re

from starlette._utils import get_route_path
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from pacs.core import Archive
from pacs.core.access import Permission, Principal
from pacs.core.attributes import is_uid
from pacs.dicomweb import wado
from pacs.dicomweb.errors import DicomWebError
from pacs.dicomweb.media import frame_numbers, parse_accept
from pacs.errors import PacsError

# The frames route of ``routes.dicomweb_routes``, under its mount.
_FRAMES = re.compile(r"/dicom-web/studies/([^/]+)/series/([^/]+)/instances/([^/]+)/frames/([^/]+)")


class FramesAtOnce:
    def __init__(self, app: ASGIApp, archive: Archive) -> None:
        self.app = app
        self.archive = archive

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            response = await self._answer(scope)
            if response is not None:
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _answer(self, scope: Scope) -> Response | None:
        match = _FRAMES.fullmatch(get_route_path(scope))
        if match is None:
            return None
        principal = scope["state"].get("principal")
        # A restricted account needs its scope checked against the index, in a thread.
        if not isinstance(principal, Principal) or not principal.scope.everything:
            return None
        if not principal.may(Permission.READ):
            return None
        study, series, instance, frame_list = match.groups()
        if not (is_uid(study) and is_uid(series) and is_uid(instance)):
            return None
        accept = accept_encoding = None
        for name, value in scope["headers"]:
            if name == b"accept":
                accept = value.decode("latin-1")
            elif name == b"accept-encoding":
                accept_encoding = value.decode("latin-1")
        keys = {
            "StudyInstanceUID": study,
            "SeriesInstanceUID": series,
            "SOPInstanceUID": instance,
        }
        try:
            numbers = frame_numbers(frame_list)
            ranges = parse_accept(accept)
            found = wado.frames_now(self.archive, keys, numbers, ranges)
        except (DicomWebError, PacsError):
            return None  # the route says what is wrong, as it always has
        if found is None:
            return None
        as_they_are = wado.frames_as_they_are(found, accept_encoding or "")
        if as_they_are is not None:
            return as_they_are
        # To be gzipped: the route's work, without reading the frames again.
        return await wado.frames_in_thread(
            Request(scope), self.archive, keys, numbers, ranges, found
        )

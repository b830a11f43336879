"""URL layout of the DICOMweb service (PS3.18 Table 10.4.1-1, 10.5.1-1, 10.6.1-1)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route

from pacs.config import Settings
from pacs.core import Archive
from pacs.core.access import Permission
from pacs.core.attributes import check_uid
from pacs.dicomweb import qido, rendered, stow, wado, wado_uri
from pacs.dicomweb.errors import DicomWebError, error_response, http_status
from pacs.errors import InvalidDatasetError, OutsideScopeError, PacsError
from pacs.http.auth import principal_of
from pacs.index.schema import Level

log = logging.getLogger(__name__)

Endpoint = Callable[[Request], Awaitable[Response]]

_UID_PARAMS = {
    "study": "StudyInstanceUID",
    "series": "SeriesInstanceUID",
    "instance": "SOPInstanceUID",
}


def _uids(request: Request) -> dict[str, str]:
    """Path UIDs as query keys; a malformed one (or a path trick) is a 400."""
    keys = {}
    for name, keyword in _UID_PARAMS.items():
        if name in request.path_params:
            try:
                keys[keyword] = check_uid(keyword, request.path_params[name])
            except InvalidDatasetError as exc:
                raise DicomWebError(400, str(exc)) from None
    return keys


async def _authorized(
    request: Request,
    archive: Archive,
    permission: Permission = Permission.READ,
    *,
    search: bool = False,
) -> dict[str, str]:
    """The path's UIDs, once the caller may ``permission`` and may see the study.

    A study outside the caller's scope is a 404, as one that does not exist.
    A search is not checked here: its scope filters it, and it answers for a
    hidden study exactly as for a missing one.
    """
    keys = _uids(request)
    principal = principal_of(request)
    if not principal.may(permission):
        raise DicomWebError(403, f"{principal.role.value} accounts may not {permission.value} here")
    study = keys.get("StudyInstanceUID")
    if study and not search and permission is Permission.READ and not principal.scope.everything:
        await run_in_threadpool(archive.require_visible, principal.scope, study)
    return keys


def dicomweb_routes(archive: Archive, settings: Settings) -> list[BaseRoute]:
    def level_of(keys: dict[str, str]) -> Level:
        if "SOPInstanceUID" in keys:
            return Level.IMAGE
        return Level.SERIES if "SeriesInstanceUID" in keys else Level.STUDY

    # Searches need no visibility check of their own: the scope filters the query.
    async def search_studies(request: Request) -> Response:
        await _authorized(request, archive, search=True)
        return await qido.search(request, archive, settings, Level.STUDY)

    async def search_series(request: Request) -> Response:
        keys = await _authorized(request, archive, search=True)
        return await qido.search(request, archive, settings, Level.SERIES, **keys)

    async def search_instances(request: Request) -> Response:
        keys = await _authorized(request, archive, search=True)
        return await qido.search(request, archive, settings, Level.IMAGE, **keys)

    async def studies(request: Request) -> Response:
        if request.method == "POST":
            await _authorized(request, archive, Permission.STORE)
            return await stow.store(request, archive, None)
        return await search_studies(request)

    async def study(request: Request) -> Response:
        if request.method == "POST":
            keys = await _authorized(request, archive, Permission.STORE)
            return await stow.store(request, archive, keys["StudyInstanceUID"])
        if request.method == "DELETE":
            return await delete(request)
        keys = await _authorized(request, archive)
        return await wado.retrieve(request, archive, Level.STUDY, keys)

    async def retrieve(request: Request) -> Response:
        if request.method == "DELETE":
            return await delete(request)
        keys = await _authorized(request, archive)
        return await wado.retrieve(request, archive, level_of(keys), keys)

    async def delete(request: Request) -> Response:
        """Not part of PS3.18: removes a study, series or instance, as
        dcm4chee's and Orthanc's REST APIs do (admins only; 204 like
        dcm4chee). Audited as a delete, with the patient, by the middleware."""
        keys = await _authorized(request, archive, Permission.DELETE)
        scope = principal_of(request).scope
        deletion = await run_in_threadpool(archive.delete, level_of(keys), keys, scope)
        request.state.audit_patient = deletion.patient_id
        return Response(status_code=204)

    async def metadata(request: Request) -> Response:
        keys = await _authorized(request, archive)
        return await wado.metadata(request, archive, level_of(keys), keys)

    async def frames(request: Request) -> Response:
        keys = await _authorized(request, archive)
        return await wado.frames(request, archive, keys, request.path_params["frames"])

    async def bulkdata(request: Request) -> Response:
        keys = await _authorized(request, archive)
        return await wado.bulkdata(request, archive, keys, request.path_params["path"])

    async def unknown_resource(request: Request) -> Response:
        # A path that fits no resource: a trick ("..", encoded slashes) is a
        # malformed request, anything else a resource that does not exist.
        rest = request.path_params["rest"]
        raw = request.scope.get("raw_path", b"").decode("latin-1").lower()
        if ".." in rest or "%2f" in raw or "%2e" in raw:
            raise DicomWebError(400, "malformed resource path")
        raise DicomWebError(404, f"no DICOMweb resource /{rest}")

    async def rendered_resource(request: Request) -> Response:
        keys = await _authorized(request, archive)
        level = level_of(keys)
        if level is Level.IMAGE:
            return await rendered.instance(request, archive, keys)
        return await rendered.group(request, archive, level, keys)

    async def rendered_frames(request: Request) -> Response:
        keys = await _authorized(request, archive)
        return await rendered.frames(request, archive, keys, request.path_params["frames"])

    async def thumbnail(request: Request) -> Response:
        keys = await _authorized(request, archive)
        return await rendered.thumbnail(request, archive, level_of(keys), keys)

    series_path = "/studies/{study}/series/{series}"
    instance_path = series_path + "/instances/{instance}"
    service = [
        # Per-instance resources first: a viewer asks for hundreds of frames per
        # study, and Starlette tries each route's pattern in turn.
        Route(instance_path + "/frames/{frames}", frames),
        Route(instance_path + "/frames/{frames}/rendered", rendered_frames),
        Route(instance_path + "/rendered", rendered_resource),
        Route(instance_path + "/metadata", metadata),
        Route(instance_path + "/thumbnail", thumbnail),
        Route(instance_path + "/bulkdata/{path:path}", bulkdata),
        Route(instance_path, retrieve, methods=["GET", "DELETE"]),
        Route("/studies", studies, methods=["GET", "POST"]),
        Route("/series", search_series),
        Route("/instances", search_instances),
        Route("/studies/{study}", study, methods=["GET", "POST", "DELETE"]),
        Route("/studies/{study}/metadata", metadata),
        Route("/studies/{study}/rendered", rendered_resource),
        Route("/studies/{study}/thumbnail", thumbnail),
        Route("/studies/{study}/series", search_series),
        Route("/studies/{study}/instances", search_instances),
        Route(series_path, retrieve, methods=["GET", "DELETE"]),
        Route(series_path + "/metadata", metadata),
        Route(series_path + "/rendered", rendered_resource),
        Route(series_path + "/thumbnail", thumbnail),
        Route(series_path + "/instances", search_instances),
        Route("/{rest:path}", unknown_resource, methods=["GET", "POST", "DELETE"]),
    ]

    async def wado_uri_endpoint(request: Request) -> Response:
        principal = principal_of(request)
        if not principal.may(Permission.READ):
            raise DicomWebError(403, f"{principal.role.value} accounts may not read here")
        return await wado_uri.wado_uri(request, archive, principal.scope)

    return [Mount("/dicom-web", routes=service), Route("/wado", wado_uri_endpoint)]


async def _dicomweb_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DicomWebError)
    return error_response(exc.status, exc.reason)


async def _archive_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PacsError)
    if isinstance(exc, OutsideScopeError):
        request.state.audit_outcome = "denied"  # for the audit trail; the caller sees a 404
    status = http_status(exc)
    if status >= 500:
        log.warning("%s %s failed: %s", request.method, request.url.path, exc)
    return error_response(status, str(exc))


def error_handlers() -> dict[Any, Callable[[Request, Exception], Awaitable[Response]]]:
    return {DicomWebError: _dicomweb_error, PacsError: _archive_error}

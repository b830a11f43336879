"""The Starlette application: system endpoints, DICOMweb and the web viewer.

Endpoints are ``async``; the synchronous archive is reached through a thread
pool so that a slow disk never stalls the event loop, except for answers it
has without waiting (``Archive.frames_now``, ``Archive.rendered_now``): the
trip to a worker thread would cost more than they do.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

import pacs
from pacs.config import Settings
from pacs.core import Archive
from pacs.core.access import Permission
from pacs.core.security import Security
from pacs.dicomweb import dicomweb_routes, error_handlers
from pacs.dicomweb.frames_at_once import FramesAtOnce
from pacs.http.auth import AuthMiddleware, auth_routes, principal_of
from pacs.http.shares import share_routes
from pacs.http.viewer import viewer_routes
from pacs.index.access import AccessStore


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def create_http_app(
    archive: Archive,
    settings: Settings,
    on_startup: Callable[[], None] | None = None,
    on_shutdown: Callable[[], None] | None = None,
) -> Starlette:
    """Build the app; ``on_startup``/``on_shutdown`` run in its lifespan (the DICOM node)."""
    started = time.time()

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def system(request: Request) -> Response:
        # Counts of the whole archive: an administrator's view, not a hospital's.
        principal = principal_of(request)
        if not principal.may(Permission.MANAGE):
            return PlainTextResponse(
                f"{principal.role.value} accounts may not see the archive's figures\n", 403
            )
        stats = await run_in_threadpool(archive.statistics)
        disk = await run_in_threadpool(shutil.disk_usage, settings.data_dir)
        # Acknowledged blobs still in the local spool, not yet in S3 (null: no spool).
        uploads_pending = await run_in_threadpool(archive.uploads_pending)
        return JSONResponse(
            {
                "name": "pacs",
                "version": pacs.__version__,
                "ae_title": settings.ae_title,
                "dicom_port": settings.dicom_port,
                "http_port": settings.http_port,
                "uptime_seconds": round(time.time() - started, 1),
                "counts": {
                    "patients": stats.patients,
                    "studies": stats.studies,
                    "series": stats.series,
                    "instances": stats.instances,
                },
                "storage": {
                    "stored_bytes": stats.stored_bytes,
                    "disk_free_bytes": disk.free,
                    # Stores are refused below this (min_free_space).
                    "kept_free_bytes": settings.kept_free_bytes(disk.total),
                    "disk_total_bytes": disk.total,
                    "uploads_pending": uploads_pending,
                },
            }
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if on_startup is not None:
            await run_in_threadpool(on_startup)
        try:
            yield
        finally:
            if on_shutdown is not None:
                await run_in_threadpool(on_shutdown)

    security = Security(cast(AccessStore, archive.index), archive.audit)
    secure_cookies = bool(settings.tls_cert)
    middleware = []
    if settings.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.cors_origins),
                allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
                allow_headers=["*"],
                expose_headers=["Warning", "Content-Type", "Content-Length", "ETag"],
            )
        )
    # Inside CORS, so that a browser's preflight is answered before credentials are asked.
    middleware.append(
        Middleware(
            AuthMiddleware, security=security, secure_cookies=secure_cookies, audit=archive.audit
        )
    )
    # Inside authentication and audit, before routing: a viewer's many frames.
    middleware.append(Middleware(FramesAtOnce, archive=archive))
    return Starlette(
        routes=[
            # DICOMweb first: its requests are the many (routes are tried in turn).
            *dicomweb_routes(archive, settings),
            Route("/health", health),
            Route("/system", system),
            *auth_routes(security, secure_cookies),
            *share_routes(archive, security),
            *viewer_routes(settings),
        ],
        lifespan=lifespan,
        middleware=middleware,
        exception_handlers=error_handlers(),
    )

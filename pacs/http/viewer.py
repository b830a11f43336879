"""The web viewer: its static files at ``/viewer/`` and the ``config.json`` it starts from.

The viewer is a static bundle (``viewer/`` at the top of the source tree) that
knows only DICOMweb URLs and what this server can do, as OHIF's
``public/config/*.js`` does. The server writes that configuration, so the
bundle itself never changes from one installation to another.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

import pacs
from pacs.config import Settings
from pacs.core.access import ANONYMOUS, Principal
from pacs.http.auth import principal_of

VIEWER_DIR = Path(__file__).resolve().parents[2] / "viewer"
"""The bundle in a source checkout (``pip install -e``, ``make serve``)."""


def viewer_config(settings: Settings, principal: Principal = ANONYMOUS) -> dict[str, Any]:
    """What the viewer needs to know: where DICOMweb is, what it offers, who is logged in.

    With accounts, the viewer is authenticated by its HttpOnly session cookie
    (``auth.type = "cookie"``); the anti-CSRF token it sends back on
    state-changing requests comes with the principal here.
    """
    auth: dict[str, Any] = {"type": "none"}
    if principal.via != "anonymous":
        auth = {
            "type": "cookie",
            "user": principal.name,
            "role": principal.role.value,
            "via": principal.via,
            "csrfToken": principal.csrf_token,
        }
    return {
        "version": pacs.__version__,
        # Relative, so that the viewer keeps working behind a reverse proxy.
        "dicomweb": {"root": "../dicom-web"},
        "auth": auth,
        "capabilities": {
            # Frame encodings the server sends, best first; the viewer asks for those
            # it can decode. HTJ2K lossless (converted per frame from what is stored)
            # is ~2.5-3x smaller than raw CT, gzip 2x; images HTJ2K cannot hold
            # (32-bit dose grids, float) come uncompressed.
            "frameMediaTypes": ["image/jphc", "application/octet-stream"],
            "frameContentEncoding": ["gzip"],
            "rendered": True,
            "thumbnails": True,
            "fuzzyMatching": True,
            "caseInsensitiveNames": settings.case_insensitive_names,
            "maxResultsPerQuery": 10_000,
        },
        "studyList": {"pageSize": 25, "fetchSize": 500},
    }


def viewer_routes(settings: Settings, directory: Path = VIEWER_DIR) -> list[BaseRoute]:
    async def config(request: Request) -> Response:
        body = orjson.dumps(viewer_config(settings, principal_of(request)))
        return Response(body, media_type="application/json", headers={"Cache-Control": "no-store"})

    async def home(request: Request) -> Response:
        return RedirectResponse("/viewer/", status_code=302)

    return [
        Route("/", home),
        Route("/viewer/config.json", config),
        # check_dir=False: an installation without the bundle still serves DICOMweb.
        Mount("/viewer", StaticFiles(directory=directory, html=True, check_dir=False)),
    ]

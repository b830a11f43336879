"""Sharing a study for teleconsultation: with a hospital account, or as an expiring link.

::

    GET    /api/studies/{study}/shares          who the study is shared with
    POST   /api/studies/{study}/shares          {"user": "hospital-a"}
    DELETE /api/studies/{study}/shares/{user}
    POST   /api/studies/{study}/links           {"expires": "7d"}: a read-only link
    DELETE /api/links/{id}                      revoke a link at once

Admins and radiologists only (``Permission.SHARE``); with a session cookie a
change needs its X-CSRF-Token (``pacs.http.auth``). A link is shown once:
only its digest is kept.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from pacs.core import Archive
from pacs.core.access import Permission, parse_duration
from pacs.core.attributes import check_uid
from pacs.core.security import PermissionDeniedError, Security
from pacs.errors import ConfigError, InvalidDatasetError, NotFoundError
from pacs.http.auth import client_address, principal_of
from pacs.types import AuditEvent


def share_routes(archive: Archive, security: Security | None) -> list[BaseRoute]:
    def json(content: Any, status: int = 200) -> Response:
        return Response(orjson.dumps(content), status, media_type="application/json")

    def refused(status: int, reason: str) -> Response:
        return PlainTextResponse(reason.replace("\n", " ") + "\n", status)

    async def body(request: Request) -> dict[str, Any]:
        try:
            parsed = orjson.loads(await request.body() or b"{}")
        except orjson.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            raise ConfigError("send a JSON object")
        return parsed

    def study_of(request: Request) -> str:
        return check_uid("StudyInstanceUID", request.path_params["study"])

    async def handle(request: Request) -> Response:
        if security is None or not await run_in_threadpool(lambda: security.enabled):
            return refused(404, "sharing needs user accounts: add one with `pacs user add`")
        principal = principal_of(request)
        address = client_address(request)
        if not principal.may(Permission.SHARE):
            await run_in_threadpool(
                security.audit.record,
                _denied(principal.name, address, request.url.path),
            )
            return refused(403, f"{principal.role.value} accounts may not share studies")
        try:
            route = request.scope["route"].path
            if route == "/api/links/{identifier}":
                identifier = request.path_params["identifier"]
                done = await run_in_threadpool(security.revoke, identifier, principal.name)
                return Response(status_code=204) if done else refused(404, "no such active link")
            study = study_of(request)
            await run_in_threadpool(archive.require_visible, principal.scope, study)
            if route.endswith("/links"):
                seconds = parse_duration(str((await body(request)).get("expires", "7d")))
                text, record = await run_in_threadpool(
                    security.create_link, principal, study, seconds, address
                )
                url = str(request.base_url).rstrip("/") + f"/share/{text}"
                return json(
                    {"url": url, "id": record.identifier, "expires": record.expires_at}, 201
                )
            if request.method == "GET":
                shares = await run_in_threadpool(security.store.shares, "", study)
                links = await run_in_threadpool(security.store.credentials, "", "link")
                return json(
                    {
                        "users": [
                            {"user": s.username, "by": s.granted_by, "since": s.created_at}
                            for s in shares
                        ],
                        "links": [
                            {"id": c.identifier, "by": c.username, "expires": c.expires_at}
                            for c in links
                            if c.study_uid == study and not c.revoked_at
                        ],
                    }
                )
            if request.method == "POST":
                user = str((await body(request)).get("user", ""))
                await run_in_threadpool(security.share, principal, study, user, address)
                return Response(status_code=201)
            user = request.path_params["user"]
            done = await run_in_threadpool(security.unshare, principal, study, user, address)
            return Response(status_code=204) if done else refused(404, "no such active share")
        except (ConfigError, ValueError, InvalidDatasetError) as exc:
            return refused(400, str(exc))
        except PermissionDeniedError as exc:
            return refused(403, str(exc))
        except NotFoundError as exc:
            return refused(404, str(exc))

    return [
        Route("/api/studies/{study}/shares", handle, methods=["GET", "POST"]),
        Route("/api/studies/{study}/shares/{user}", handle, methods=["DELETE"]),
        Route("/api/studies/{study}/links", handle, methods=["POST"]),
        Route("/api/links/{identifier}", handle, methods=["DELETE"]),
    ]


def _denied(actor: str, address: str, path: str) -> AuditEvent:
    return AuditEvent("share", "denied", actor, "user", address, detail=path)

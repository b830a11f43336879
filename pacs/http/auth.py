"""HTTP authentication: bearer tokens, the viewer's session cookie, share links, CSRF, login.

Every request but ``/health``, the login page and a share link's landing
gets a ``Principal`` in ``request.state.principal`` (``ANONYMOUS`` while no
user exists: the embedded, loopback-only default), or is refused:

- no or a bad credential: 401 with ``WWW-Authenticate: Bearer`` for API
  clients, a redirect to ``/login`` for a browser asking for a page;
- a state-changing request (POST, PUT, DELETE) authenticated by the session
  cookie without the session's anti-CSRF token in ``X-CSRF-Token``: 403.
  The cookie is also ``SameSite=Strict`` and ``HttpOnly``; the viewer reads
  the token from ``/session`` (double submit, as OWASP describes it).

A bearer token (``Authorization: Bearer pacs_...``) needs no CSRF token:
browsers never send it by themselves.
"""

from __future__ import annotations

import html
import re
import time
import urllib.parse
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pacs.core.access import ANONYMOUS, Principal
from pacs.core.audit import AuditTrail
from pacs.core.security import AuthenticationError, Security, ThrottledError
from pacs.types import AuditEvent

SESSION_COOKIE = "pacs_session"
CSRF_HEADER = "x-csrf-token"
_SAFE_METHODS = frozenset(("GET", "HEAD", "OPTIONS"))
_OPEN_PATHS = frozenset(("/health", "/login", "/logout"))
_ENABLED_SECONDS = 2.0
"""How long the answer to "does any user exist?" is reused."""


class AuthMiddleware:
    """Pure ASGI middleware (no body buffering: WADO-RS streams through it).

    It also writes the audit trail of DICOMweb and WADO-URI requests: who
    queried, retrieved or stored what, from where, and how it ended (a study
    outside the caller's scope is recorded as denied, though answered 404).
    """

    def __init__(
        self,
        app: ASGIApp,
        security: Security | None,
        secure_cookies: bool,
        audit: AuditTrail | None = None,
    ) -> None:
        self.app = app
        self.security = security
        self.secure_cookies = secure_cookies
        self.audit = audit
        self._enabled: tuple[float, bool] = (0.0, False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})
        action = audited_action(scope["method"], scope["path"]) if self.audit else None
        if action is None:
            await self._authenticate(scope, receive, send)
            return
        status = 500

        async def watched(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self._authenticate(scope, receive, watched)
        finally:
            self._record(scope, action, status)

    def _record(self, scope: Scope, action: str, status: int) -> None:
        assert self.audit is not None
        request = Request(scope)
        principal = scope["state"].get("principal")
        outcome = scope["state"].get("audit_outcome") or (
            "success" if status < 400 else "denied" if status in (401, 403) else "failure"
        )
        # The path and query from the scope: ``request.url`` builds a URL object.
        path = scope.get("root_path", "") + scope["path"]
        query = scope.get("query_string", b"").decode("latin-1")
        study = _study_of(path, request)
        if isinstance(principal, Principal):
            actor = principal.name or "anonymous"
            kind = {"share-link": "share-link", "anonymous": "anonymous"}.get(principal.via, "user")
        else:
            actor, kind = "", "unauthenticated"
        detail = f"{scope['method']} {path}{'?' + query if query else ''} -> {status}"
        # A handler names the patient when the writer could not look it up
        # later (a deleted study); otherwise the writer finds it from the study.
        patient = str(scope["state"].get("audit_patient") or "")
        self.audit.record(
            AuditEvent(
                action, outcome, actor, kind, client_address(request), patient, study, detail
            )
        )

    async def _authenticate(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        if self.security is None or not await self._is_enabled():
            scope["state"]["principal"] = ANONYMOUS
            await self.app(scope, receive, send)
            return
        if path in _OPEN_PATHS or path.startswith("/share/"):
            scope["state"]["principal"] = None
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        address = client_address(request)
        bearer = _bearer(request)
        cookie = request.cookies.get(SESSION_COOKIE, "")
        if not bearer and not cookie:
            await _unauthenticated(request, "this archive needs you to log in")(
                scope, receive, send
            )
            return
        try:
            principal = await run_in_threadpool(
                self.security.authenticate, bearer or cookie, address, cookie=not bearer
            )
        except AuthenticationError as exc:
            response = _unauthenticated(request, str(exc))
            if cookie and not bearer:
                response.delete_cookie(SESSION_COOKIE, path="/")
            await response(scope, receive, send)
            return
        if (
            not bearer
            and request.method not in _SAFE_METHODS
            and request.headers.get(CSRF_HEADER, "") != principal.csrf_token
        ):
            refused = PlainTextResponse(
                "a request that changes something needs the session's X-CSRF-Token\n", 403
            )
            await refused(scope, receive, send)
            return
        scope["state"]["principal"] = principal
        await self.app(scope, receive, send)

    async def _is_enabled(self) -> bool:
        checked, enabled = self._enabled
        now = time.monotonic()
        if now - checked > _ENABLED_SECONDS:
            assert self.security is not None
            enabled = await run_in_threadpool(lambda: self.security.enabled)  # type: ignore[union-attr]
            self._enabled = (now, enabled)
        return enabled


_STUDY_IN_PATH = re.compile(r"/studies/([0-9.]{1,64})(?:/|$)")
_SEARCHES = re.compile(
    r"/dicom-web(?:/studies(?:/[0-9.]+/(?:series|instances))?|/series"
    r"|/instances|/studies/[0-9.]+/series/[0-9.]+/instances)$"
)


def audited_action(method: str, path: str) -> str | None:
    """What a request does, for the audit trail, or ``None`` when it is not audited."""
    if path == "/wado":
        return "retrieve"
    if not path.startswith("/dicom-web/"):
        return None
    if method == "POST":
        return "store"
    if method == "DELETE":
        return "delete"
    return "query" if _SEARCHES.match(path) else "retrieve"


def _study_of(path: str, request: Request) -> str:
    found = _STUDY_IN_PATH.search(path)
    if found:
        return found.group(1)
    params = request.query_params
    return params.get("studyUID") or params.get("StudyInstanceUID") or ""


def principal_of(request: Request) -> Principal:
    """The caller the middleware found (``ANONYMOUS`` when authentication is off)."""
    principal = getattr(request.state, "principal", None)
    return principal if isinstance(principal, Principal) else ANONYMOUS


def client_address(request: Request) -> str:
    return request.client.host if request.client else ""


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    kind, _, value = header.partition(" ")
    return value.strip() if kind.lower() == "bearer" else ""


def _wants_page(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return request.method == "GET" and "text/html" in accept


def _unauthenticated(request: Request, reason: str) -> Response:
    if _wants_page(request):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse("/login?" + urllib.parse.urlencode({"next": target}), 303)
    return PlainTextResponse(
        reason + "\n", 401, headers={"WWW-Authenticate": 'Bearer realm="pacs"'}
    )


def _safe_next(value: str | None) -> str:
    """Where to go after logging in: a path on this server only (no open redirect)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/viewer/"
    return value


def auth_routes(security: Security | None, secure_cookies: bool) -> list[BaseRoute]:
    """``/login`` (page and form), ``/logout``, ``/session`` and ``/share/{link}``."""

    def set_session(response: Response, value: str, max_age: int) -> None:
        response.set_cookie(
            SESSION_COOKIE,
            value,
            max_age=max_age,
            path="/",
            httponly=True,
            samesite="strict",
            secure=secure_cookies,
        )

    async def login(request: Request) -> Response:
        if security is None:
            return RedirectResponse("/viewer/", 303)
        if request.method == "GET":
            return _login_page(_safe_next(request.query_params.get("next")), "", 200)
        address = client_address(request)
        is_json = request.headers.get("content-type", "").startswith("application/json")
        if is_json:
            try:
                body: Any = orjson.loads(await request.body())
                username, password = str(body["username"]), str(body["password"])
            except (orjson.JSONDecodeError, KeyError, TypeError):
                return PlainTextResponse('send {"username": ..., "password": ...}\n', 400)
            target = "/viewer/"
        else:
            # The login form is urlencoded: parsed here, no multipart library needed.
            body_text = (await request.body())[:8192].decode("utf-8", "replace")
            form = {k: v[0] for k, v in urllib.parse.parse_qs(body_text).items()}
            username, password = form.get("username", ""), form.get("password", "")
            target = _safe_next(form.get("next", ""))
        try:
            principal, cookie = await run_in_threadpool(security.login, username, password, address)
        except ThrottledError as exc:
            headers = {"Retry-After": str(int(exc.retry_after) + 1)}
            if is_json:
                return PlainTextResponse(str(exc) + "\n", 429, headers=headers)
            return _login_page(target, str(exc), 429, headers)
        except AuthenticationError as exc:
            if is_json:
                return PlainTextResponse(str(exc) + "\n", 401)
            return _login_page(target, str(exc), 401)
        response: Response
        if is_json:
            response = Response(
                orjson.dumps(_session_json(principal)), media_type="application/json"
            )
        else:
            response = RedirectResponse(target, 303)
        set_session(response, cookie, 12 * 3600)
        return response

    async def logout(request: Request) -> Response:
        cookie = request.cookies.get(SESSION_COOKIE, "")
        if security is not None and cookie:
            try:
                principal = await run_in_threadpool(
                    security.authenticate, cookie, client_address(request), cookie=True
                )
                await run_in_threadpool(security.logout, principal, client_address(request))
            except AuthenticationError:
                pass  # already gone: logging out again is not an error
        response = RedirectResponse("/login", 303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    async def session(request: Request) -> Response:
        return Response(
            orjson.dumps(_session_json(principal_of(request))),
            media_type="application/json",
            headers={"Cache-Control": "no-store"},
        )

    async def share_link(request: Request) -> Response:
        """A share link's landing: the link becomes this browser's session, then the viewer."""
        if security is None:
            return RedirectResponse("/viewer/", 303)
        link = request.path_params["link"]
        try:
            principal = await run_in_threadpool(
                security.authenticate, link, client_address(request)
            )
        except AuthenticationError as exc:
            return _login_page("/viewer/", f"This link cannot be used: {exc}.", 401)
        if principal.via != "share-link":
            return PlainTextResponse("not a share link\n", 400)
        (study,) = principal.scope.study_uids
        response = RedirectResponse(f"/viewer/#/study/{urllib.parse.quote(study)}", 303)
        set_session(response, link, 7 * 86400)
        return response

    return [
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["GET", "POST"]),
        Route("/session", session),
        Route("/share/{link}", share_link),
    ]


def _session_json(principal: Principal) -> dict[str, Any]:
    return {
        "user": principal.name,
        "role": principal.role.value,
        "via": principal.via,
        "csrfToken": principal.csrf_token,
        "studies": sorted(principal.scope.study_uids) if principal.via == "share-link" else None,
    }


def _login_page(
    target: str, message: str, status: int, headers: dict[str, str] | None = None
) -> HTMLResponse:
    notice = f'<p class="error" role="alert">{html.escape(message)}</p>' if message else ""
    return HTMLResponse(
        _LOGIN_PAGE.format(next=html.escape(target, quote=True), notice=notice),
        status_code=status,
        headers={"Cache-Control": "no-store", **(headers or {})},
    )


_LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>pacs: log in</title>
<style>
body {{ background: #0d1117; color: #e6edf3; font: 16px system-ui, sans-serif;
       display: grid; place-items: center; min-height: 100vh; margin: 0; }}
form {{ background: #161b22; padding: 2rem; border-radius: 8px; width: min(22rem, 90vw); }}
h1 {{ font-size: 1.3rem; margin: 0 0 1rem; }}
label {{ display: block; margin: .8rem 0 .3rem; color: #9da7b3; }}
input {{ width: 100%; box-sizing: border-box; padding: .55rem; border-radius: 4px;
        border: 1px solid #30363d; background: #0d1117; color: inherit; font: inherit; }}
button {{ margin-top: 1.2rem; width: 100%; padding: .6rem; border: 0; border-radius: 4px;
         background: #2f81f7; color: white; font: inherit; cursor: pointer; }}
.error {{ color: #f0883e; }}
</style></head>
<body><form method="post" action="/login">
<h1><b>pacs</b> archive</h1>{notice}
<input type="hidden" name="next" value="{next}">
<label for="username">User name</label>
<input id="username" name="username" autocomplete="username" autofocus required>
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required>
<button type="submit">Log in</button>
</form></body></html>
"""

"""Who may use the console, and protection of its actions against cross-site requests.

- Authentication (prod requires one; settings.py): an API key, as `Authorization: Bearer
  <key>` or the HttpOnly cookie the sign-in page sets, or a header set by an authenticating
  proxy (`CHOREO_CONSOLE_TRUSTED_HEADER`).
- CSRF: every request that changes something (POST) must carry the `X-Choreo-CSRF` header
  equal to the `choreo_csrf` cookie (double submit: another site can make a browser send
  the cookie but cannot read it to set the header), and an `Origin`, when sent, must be the
  console's own.
"""

import hmac
import secrets
from collections.abc import Awaitable, Callable
from urllib.parse import quote, urlsplit

from fastapi import Request, Response
from fastapi.responses import JSONResponse, RedirectResponse

from services.console.settings import ConsoleSettings

KEY_COOKIE = "choreo_console_key"
CSRF_COOKIE = "choreo_csrf"
CSRF_HEADER = "x-choreo-csrf"
OPEN_PATHS = ("/healthz", "/readyz", "/metrics", "/login", "/static/")
UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}

Handler = Callable[[Request], Awaitable[Response]]


def authenticated(request: Request, settings: ConsoleSettings) -> bool:
    if settings.console_trusted_header:
        return bool(request.headers.get(settings.console_trusted_header, "").strip())
    if settings.console_api_key is None:
        return True
    expected = settings.console_api_key.get_secret_value()
    given = request.cookies.get(KEY_COOKIE, "")
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        given = token
    return hmac.compare_digest(given.encode(), expected.encode())


def csrf_problem(request: Request) -> str | None:
    """Why an unsafe request is refused, or None."""
    origin = request.headers.get("origin")
    if origin and urlsplit(origin).netloc != request.headers.get("host"):
        return f"cross-origin request from {origin} refused"
    cookie = request.cookies.get(CSRF_COOKIE, "")
    header = request.headers.get(CSRF_HEADER, "")
    if not cookie or not hmac.compare_digest(cookie.encode(), header.encode()):
        return f"missing or wrong {CSRF_HEADER} header (it must equal the {CSRF_COOKIE} cookie)"
    return None


def guard(settings: ConsoleSettings) -> Callable[[Request, Handler], Awaitable[Response]]:
    """The HTTP middleware: authentication, CSRF, and the CSRF cookie on every page."""

    async def middleware(request: Request, call_next: Handler) -> Response:
        path = request.url.path
        if not path.startswith(OPEN_PATHS):
            if not authenticated(request, settings):
                if request.method == "GET" and not path.startswith("/api/"):
                    target = quote(str(request.url.path), safe="/")
                    return RedirectResponse(f"/login?next={target}", status_code=303)
                return JSONResponse({"detail": "not signed in"}, status_code=401)
            if request.method in UNSAFE and (problem := csrf_problem(request)):
                return JSONResponse({"detail": problem}, status_code=403)
        response = await call_next(request)
        if CSRF_COOKIE not in request.cookies and not path.startswith("/api/"):
            response.set_cookie(
                CSRF_COOKIE,
                secrets.token_urlsafe(24),
                samesite="strict",
                secure=request.url.scheme == "https",
            )
        return response

    return middleware


def sign_in(request: Request, key: str, settings: ConsoleSettings, target: str) -> Response:
    """Check a key typed into the sign-in page; on success keep it in an HttpOnly cookie."""
    expected = settings.console_api_key
    if expected is None or not hmac.compare_digest(
        key.encode(), expected.get_secret_value().encode()
    ):
        return RedirectResponse("/login?failed=1", status_code=303)
    local = target if target.startswith("/") and not target.startswith("//") else "/"
    response = RedirectResponse(local, status_code=303)
    response.set_cookie(
        KEY_COOKIE,
        key,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response

"""The console's pages: one HTML shell per URL (shareable), filled in by console.js from
the data endpoints. No template engine, no build step, nothing fetched from the internet."""

import html
from urllib.parse import parse_qs

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse

from services.console.auth import sign_in
from services.console.settings import ConsoleSettings

NAV = (
    ("/", "Runs"),
    ("/workflows", "Workflows"),
    ("/lake", "Lake"),
    ("/fraud", "Fraud"),
    ("/dlq", "Dead letters"),
    ("/system", "System"),
)


def shell(page: str, title: str, arg: str = "", body: str = "") -> HTMLResponse:
    links = "".join(f'<a href="{href}">{name}</a>' for href, name in NAV)
    document = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)} · Choreo</title>
<link rel="stylesheet" href="/static/console.css"></head>
<body data-page="{page}" data-arg="{html.escape(arg)}">
<nav><b>Choreo</b>{links}
<form action="/go" method="get"><input name="id" placeholder="run or event id"
 aria-label="run or event id"></form></nav>
<main id="main">{body}</main>
<script src="/static/console.js"></script>
</body></html>"""
    return HTMLResponse(document, headers={"cache-control": "no-store"})


def pages_router(settings: ConsoleSettings) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/")
    async def runs_page() -> HTMLResponse:
        return shell("runs", "Runs")

    @router.get("/runs/{runid}")
    async def run_page(runid: str) -> HTMLResponse:
        return shell("run", f"Run {runid}", runid)

    @router.get("/events/{event_id}")
    async def event_page(event_id: str) -> HTMLResponse:
        return shell("event", f"Event {event_id}", event_id)

    @router.get("/go")
    async def go(id: str = "") -> HTMLResponse:
        return shell("go", "Find", id.strip())

    @router.get("/lake")
    async def lake_page() -> HTMLResponse:
        return shell("lake", "Lake")

    @router.get("/fraud")
    async def fraud_page() -> HTMLResponse:
        return shell("fraud", "Fraud")

    @router.get("/workflows")
    async def workflows_page() -> HTMLResponse:
        return shell("workflows", "Workflows")

    @router.get("/dlq")
    async def dlq_page() -> HTMLResponse:
        return shell("dlq", "Dead letters")

    @router.get("/system")
    async def system_page() -> HTMLResponse:
        return shell("system", "System")

    @router.get("/login")
    async def login_page(failed: bool = False, next: str = "/") -> HTMLResponse:
        if settings.console_api_key is None:
            return shell("login", "Sign in", body="<p>This console needs no sign-in.</p>")
        problem = '<p class="error">That key is not the right one.</p>' if failed else ""
        form = f"""<h1>Sign in</h1>{problem}
<form method="post" action="/login"><input type="hidden" name="next"
 value="{html.escape(next)}"><label>API key <input type="password" name="key"
 autocomplete="current-password"></label> <button>Sign in</button></form>"""
        return shell("login", "Sign in", body=form)

    @router.post("/login")
    async def login(request: Request) -> Response:
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        key = form.get("key", [""])[0]
        return sign_in(request, key, settings, form.get("next", ["/"])[0])

    return router

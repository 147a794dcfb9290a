"""The dashboard as an ASGI application (FastAPI on Starlette): the HTML views and the JSON API, read-only.

HTML views (GET and HEAD; the filters are query parameters: ``window`` = 1h, 24h, 7d, 30d or all; ``model``,
``region``, ``category``):

- ``/``: the leaderboard (``?by=gpu``: orchestrator x GPU); ``/orchestrator?id=KEY``: one orchestrator;
- ``/workflows``: per model, GPU type, prompt category, region;
- ``/capacity``: coverage, the monitor's budget, SLA-qualified capacity, slots seen; ``/capacity/series``:
  SLA-qualified capacity over time;
- ``/graduation``: the graduation board of a model; ``/demand``: demand gaps per region;
- ``/sessions``: the sessions behind any number the other views show;
- ``/campaigns``: campaigns and monitors; ``/campaign/ID/report``: a campaign's HTML report;
- ``/static/dashboard.css``, ``/healthz``.

The JSON API (``/v1/...``, fleet.dashboard.api) answers the same queries; its OpenAPI document is served at
``/openapi.json`` (no interactive docs page: it would need scripts, which the CSP forbids).

Every query parameter is checked by a pydantic model before any query runs: an unknown parameter, a
repeated one or a value outside what is allowed is a 400 with one line saying so (``text/plain`` for a
page, ``application/problem+json`` for the API, as NaaP's API answers). Every response carries a strict
Content-Security-Policy (no scripts at all), no-sniff, no framing and no referrer; any other method is a
405; an error of our own is a one-line 500, logged as one line.
"""

from __future__ import annotations

import re
import sys
from functools import partial
from collections.abc import Awaitable, Callable, MutableMapping
from importlib.resources import files
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException

from fleet.dashboard import pages, planning
from fleet.dashboard.context import Context
from fleet.dashboard.params import (
    BadRequest,
    GraduationQuery,
    LeaderboardQuery,
    NotConfigured,
    OrchestratorQuery,
    SessionsQuery,
    Unavailable,
    ViewQuery,
    allowed,
    no_repeats,
    said,
)

__all__ = ["create_app"]

CAMPAIGN_ID = re.compile(r"^[A-Za-z0-9._-]{1,200}$")
HEADERS = {
    "content-security-policy": "default-src 'none'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
    "cache-control": "no-store",
}


def _is_api(request: Request) -> bool:
    return request.url.path.startswith("/v1/") or request.url.path == "/openapi.json"


def _problem(status: int, title: str, detail: str) -> JSONResponse:
    """RFC 7807, as NaaP's API answers errors."""
    return JSONResponse({"type": "about:blank", "title": title, "status": status, "detail": detail},
                        status_code=status, media_type="application/problem+json")


def _refusal(request: Request, status: int, detail: str) -> Response:
    titles = {400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 502: "Bad Gateway"}
    if _is_api(request):
        response: Response = _problem(status, titles.get(status, "Error"), detail)
    else:
        prefix = "bad request: " if status == 400 else ""
        response = PlainTextResponse(f"{prefix}{detail}\n", status_code=status)
    if status == 405:
        response.headers["allow"] = "GET, HEAD"
    return response


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGI = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]


class Guard:
    """The edge of every response: HEAD served as GET without its body, the strict headers on everything,
    and an exception of our own turned into a one-line 500 (logged as one line, never a traceback)."""

    def __init__(self, app: ASGI) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        head = scope["method"] == "HEAD"
        if head:
            scope = {**scope, "method": "GET"}
        started = False

        async def guarded(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", []),
                                      *((k.encode(), v.encode()) for k, v in HEADERS.items())]
            elif message["type"] == "http.response.body" and head:
                message = {**message, "body": b""}
            await send(message)

        try:
            await self.app(scope, receive, guarded)
        except Exception as exc:  # noqa: BLE001 - a bug or an engine failure: a 500, never a traceback
            target = (scope.get("path", "") + "?" + scope.get("query_string", b"").decode("latin-1"))[:200]
            print(f"fleet dashboard: {target!r}: {type(exc).__name__}: {str(exc)[:300]}", file=sys.stderr, flush=True)
            if not started:
                await guarded({"type": "http.response.start", "status": 500,
                               "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
                await guarded({"type": "http.response.body", "body": b"internal error (see the server log)\n"})


def create_app(ctx: Context) -> FastAPI:
    """The dashboard's ASGI application over ``ctx``."""
    from fleet.dashboard import api, planning_api, streaming

    app = FastAPI(title="fleet results API", version="1", docs_url=None, redoc_url=None,
                  openapi_url="/openapi.json", description=API_DESCRIPTION)
    app.state.ctx = ctx

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        errors = list(exc.errors())
        return _refusal(request, 400, said(errors[0], allowed(request)) if errors else "invalid request")

    @app.exception_handler(BadRequest)
    async def _bad(request: Request, exc: BadRequest) -> Response:
        return _refusal(request, 400, str(exc))

    @app.exception_handler(NotConfigured)
    async def _not_configured(request: Request, exc: NotConfigured) -> Response:
        return _refusal(request, 404, str(exc))

    @app.exception_handler(Unavailable)
    async def _unavailable(request: Request, exc: Unavailable) -> Response:
        return _refusal(request, 502, str(exc))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> Response:
        detail = {404: "not found", 405: "read-only: GET only"}.get(exc.status_code, str(exc.detail))
        if exc.status_code == 404 and isinstance(exc.detail, str) and exc.detail != "Not Found":
            detail = exc.detail
        return _refusal(request, exc.status_code, detail)

    _pages(app, ctx)
    for router in (api.router, planning_api.router, streaming.router):
        app.include_router(router, dependencies=[Depends(no_repeats)])

    app.openapi = partial(_document, app)  # type: ignore[method-assign]
    app.add_middleware(Guard)   # inside Starlette's own error middleware, so ours answers first
    return app


def _document(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, saying what the API really answers on a refusal: a 400 (not FastAPI's 422), and
    a 502 where an upstream source (NaaP) is read, both RFC 7807 problems."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        doc.setdefault("components", {}).setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
        problem = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
        for path, item in doc.get("paths", {}).items():
            for op in item.values():
                op["responses"].pop("422", None)
                op["responses"]["400"] = {"description": "A parameter outside what is allowed (one line).",
                                          "content": problem}
                if path == "/v1/demand/gaps":
                    op["responses"]["502"] = {"description": "NaaP's demand could not be read.", "content": problem}
                    op["responses"]["404"] = {"description": "The dashboard was started without --demand.",
                                              "content": problem}
        for name in ("HTTPValidationError", "ValidationError"):
            doc["components"]["schemas"].pop(name, None)
        app.openapi_schema = doc
    return app.openapi_schema



PROBLEM_SCHEMA = {"type": "object", "title": "Problem", "required": ["type", "title", "status", "detail"],
                  "properties": {"type": {"type": "string"}, "title": {"type": "string"},
                                 "status": {"type": "integer"}, "detail": {"type": "string"}}}


API_DESCRIPTION = """Read-only JSON over the fleet's stored test sessions and capacity snapshots: the same queries
as the dashboard's pages. Times are UTC (RFC 3339); latencies in milliseconds, durations in seconds, rates in
[0, 1], SLA scores in [0, 100]. Lists are bounded: `limit` (and `offset` or `cursor`) on every one.
Errors are RFC 7807 `application/problem+json`, one line of `detail`. The `/v1/streaming/*` endpoints follow
the shapes of the network's analytics API (NaaP) where they overlap, so tools that read NaaP read these."""


def _pages(app: FastAPI, ctx: Context) -> None:
    site = APIRouter(default_response_class=HTMLResponse, include_in_schema=False, dependencies=[Depends(no_repeats)])

    @site.get("/")
    def leaderboard(v: Annotated[LeaderboardQuery, Query()]) -> str:
        return pages.leaderboard_page(ctx.engine, v.filters(ctx.now()), ctx.options(), by_gpu=v.by == "gpu")

    @site.get("/orchestrator")
    def orchestrator(v: Annotated[OrchestratorQuery, Query()]) -> str:
        return pages.orchestrator_page(ctx.engine, v.filters(ctx.now()), ctx.options(), v.id)

    @site.get("/workflows")
    def workflows(v: Annotated[ViewQuery, Query()]) -> str:
        return pages.workflows_page(ctx.engine, v.filters(ctx.now()), ctx.options())

    @site.get("/capacity")
    def capacity(v: Annotated[ViewQuery, Query()]) -> str:
        return pages.capacity_page(ctx.engine, v.filters(ctx.now()), ctx.options(), pages.read_runs(ctx.results_dir))

    @site.get("/capacity/series")
    def capacity_series(v: Annotated[ViewQuery, Query()]) -> str:
        return planning.series_page(ctx.engine, v.filters(ctx.now()), ctx.options())

    @site.get("/sessions")
    def sessions(v: Annotated[SessionsQuery, Query()]) -> str:
        return pages.sessions_page(ctx.engine, v.filters(ctx.now()), ctx.options(), v.which(), v.limit, v.offset)

    @site.get("/graduation")
    def graduation(v: Annotated[GraduationQuery, Query()]) -> str:
        return pages.graduation_page(ctx.engine, v.filters(ctx.now()), ctx.options(), ctx.rules, v.days)

    @site.get("/demand")
    def demand(v: Annotated[ViewQuery, Query()]) -> str:
        f = v.filters(ctx.now())
        naap, failed = ctx.naap(f)
        return pages.demand_page(ctx.engine, f, ctx.options(), ctx.demand, naap, failed)

    @site.get("/campaigns")
    def campaigns(v: Annotated[ViewQuery, Query()]) -> str:
        return pages.campaigns_page(v.filters(ctx.now()), ctx.options(), pages.read_runs(ctx.results_dir))

    _files(site, ctx)
    app.include_router(site)


def _files(site: APIRouter, ctx: Context) -> None:
    """The routes that serve files and fixed answers: reports, the stylesheet, the icon, the health check."""

    @site.get("/campaign/{campaign_id}/report")
    def report(campaign_id: str) -> Response:
        if ctx.results_dir is None or not CAMPAIGN_ID.match(campaign_id):
            raise HTTPException(404, "no such report")
        path = (ctx.results_dir / f"campaign={campaign_id}" / "report.html").resolve()
        if ctx.results_dir.resolve() not in path.parents or not path.is_file():
            raise HTTPException(404, "no such report")
        return HTMLResponse(path.read_bytes())

    css = files("fleet.dashboard").joinpath("static/dashboard.css").read_bytes()

    @site.get("/static/dashboard.css")
    def stylesheet() -> Response:
        return Response(css, media_type="text/css; charset=utf-8")

    @site.get("/favicon.ico")
    def favicon() -> Response:
        return Response(status_code=204)   # none: a browser asks for it on a plain-text page (a 400)

    @site.get("/healthz")
    def healthz() -> Response:
        return PlainTextResponse("ok\n")


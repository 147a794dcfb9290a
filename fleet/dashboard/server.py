"""``fleet dashboard``: a read-only web view over the stored results.

Routes (GET only; everything else is 405, unknown paths 404):

- ``/``: the leaderboard (``?by=gpu``: orchestrator x GPU);
- ``/orchestrator?id=KEY``: one orchestrator;
- ``/workflows``: per model, GPU type, prompt category, region;
- ``/capacity``: coverage, the monitor's budget, slots seen;
- ``/campaigns``: campaigns and monitors, their verdicts, reports, live progress;
- ``/campaign/ID/report``: a campaign's HTML report; ``/static/dashboard.css``; ``/healthz``.

Filters are query parameters (``window`` = 1h, 24h, 7d, 30d or all; ``model``, ``region``,
``category``), checked before any query runs: an unknown parameter, a repeated one or a value
outside what is allowed is a 400 with one line saying so. Responses carry a strict
Content-Security-Policy (no scripts at all), no-sniff, no framing and no referrer.
"""

from __future__ import annotations

import http.server
import re
import socketserver
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from fleet.dashboard import pages
from fleet.dashboard import queries as q
from fleet.dashboard.engine import Engine

__all__ = ["DashboardServer"]

VALUE = re.compile(r"^[\w .:/@+,()#=-]{1,300}$")
CAMPAIGN_ID = re.compile(r"^[A-Za-z0-9._-]{1,200}$")
ROUTES = {"/": {"by"}, "/orchestrator": {"id"}, "/workflows": set(), "/capacity": set(), "/campaigns": set()}
COMMON = {"window", "model", "region", "category"}
OPTIONS_TTL_S = 30.0
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class BadRequest(Exception):
    pass


def parse_filters(path: str, query: str) -> tuple[q.Filters, dict[str, str]]:
    """The view's filters and its own parameters from a query string, or BadRequest saying what is wrong."""
    try:
        raw = parse_qs(query, keep_blank_values=True, strict_parsing=False, max_num_fields=20)
    except ValueError as exc:
        raise BadRequest(f"unreadable query string ({exc})") from None
    allowed = COMMON | ROUTES[path]
    values: dict[str, str] = {}
    for key, vals in raw.items():
        if key not in allowed:
            raise BadRequest(f"unknown query parameter {key[:40]!r} (allowed: {', '.join(sorted(allowed))})")
        if len(vals) != 1:
            raise BadRequest(f"query parameter {key!r} given {len(vals)} times (give it once)")
        value = vals[0]
        if value == "":
            continue
        if not VALUE.match(value):
            raise BadRequest(f"query parameter {key!r}: not an allowed value (letters, digits, spaces and "
                             f". : / @ + , ( ) # = - only, at most 300 characters)")
        values[key] = value
    window = values.pop("window", "7d")
    if window not in q.WINDOWS:
        raise BadRequest(f"query parameter 'window': {window[:20]!r} is not one of {', '.join(q.WINDOWS)}")
    if path == "/" and values.get("by", "gpu") != "gpu":
        raise BadRequest("query parameter 'by': only 'gpu' is allowed")
    if path == "/orchestrator" and "id" not in values:
        raise BadRequest("query parameter 'id' is required (an orchestrator, as the leaderboard links it)")
    f = q.Filters(window=window, model=values.pop("model", None), region=values.pop("region", None),
                  category=values.pop("category", None))
    return f, values


class DashboardServer:
    def __init__(self, engine: Engine, results_dir: Path | None, host: str = "127.0.0.1", port: int = 8080,
                 quiet: bool = False) -> None:
        self.engine = engine
        self.results_dir = results_dir
        self.quiet = quiet
        self._options: tuple[float, dict[str, list[str]]] | None = None
        self._lock = threading.Lock()
        handler = self._handler()
        socketserver.TCPServer.allow_reuse_address = True
        self.httpd = http.server.ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://{host}:{self.httpd.server_address[1]}"

    def options(self) -> dict[str, list[str]]:
        with self._lock:
            if self._options is None or time.monotonic() - self._options[0] > OPTIONS_TTL_S:
                self._options = (time.monotonic(), q.options(self.engine))
            return self._options[1]

    def render(self, path: str, query: str) -> tuple[int, str, bytes]:
        """(status, content type, body) for one GET."""
        if path == "/healthz":
            return 200, "text/plain; charset=utf-8", b"ok\n"
        if path == "/static/dashboard.css":
            return 200, "text/css; charset=utf-8", pages.CSS.encode()
        report = re.fullmatch(r"/campaign/([^/]+)/report", path)
        if report:
            return self._report(unquote(report.group(1)))
        if path not in ROUTES:
            return 404, "text/plain; charset=utf-8", b"not found\n"
        f, own = parse_filters(path, query)
        opts = self.options()
        if path == "/":
            doc = pages.leaderboard_page(self.engine, f, opts, by_gpu="by" in own)
        elif path == "/orchestrator":
            doc = pages.orchestrator_page(self.engine, f, opts, own["id"])
        elif path == "/workflows":
            doc = pages.workflows_page(self.engine, f, opts)
        elif path == "/capacity":
            doc = pages.capacity_page(self.engine, f, opts, pages.read_runs(self.results_dir))
        else:
            doc = pages.campaigns_page(f, opts, pages.read_runs(self.results_dir))
        return 200, "text/html; charset=utf-8", doc.encode()

    def _report(self, campaign_id: str) -> tuple[int, str, bytes]:
        if self.results_dir is None or not CAMPAIGN_ID.match(campaign_id):
            return 404, "text/plain; charset=utf-8", b"no such report\n"
        path = (self.results_dir / f"campaign={campaign_id}" / "report.html").resolve()
        if self.results_dir.resolve() not in path.parents or not path.is_file():
            return 404, "text/plain; charset=utf-8", b"no such report\n"
        return 200, "text/html; charset=utf-8", path.read_bytes()

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            server_version = "fleet-dashboard"
            sys_version = ""

            def _send(self, status: int, ctype: str, body: bytes, head: bool = False) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in HEADERS.items():
                    self.send_header(k, v)
                if status == 405:
                    self.send_header("Allow", "GET, HEAD")
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _get(self, head: bool) -> None:
                try:
                    parts = urlsplit(self.path)
                    status, ctype, body = server.render(parts.path, parts.query)
                except BadRequest as exc:
                    status, ctype, body = 400, "text/plain; charset=utf-8", f"bad request: {exc}\n".encode()
                except Exception as exc:  # noqa: BLE001 - a bug or an engine failure: a 500, never a traceback
                    print(f"fleet dashboard: {self.path[:200]!r}: {type(exc).__name__}: {str(exc)[:300]}",
                          file=sys.stderr, flush=True)
                    status, ctype, body = 500, "text/plain; charset=utf-8", b"internal error (see the server log)\n"
                self._send(status, ctype, body, head)

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                self._get(head=False)

            def do_HEAD(self) -> None:  # noqa: N802
                self._get(head=True)

            def _refuse(self) -> None:
                self._send(405, "text/plain; charset=utf-8", b"read-only: GET only\n")

            do_POST = do_PUT = do_DELETE = do_PATCH = _refuse  # noqa: N815

            def log_message(self, fmt: str, *args: Any) -> None:
                if not server.quiet:
                    sys.stderr.write(f"fleet dashboard: {self.address_string()} {fmt % args}\n")

        return Handler

    def serve_forever(self) -> None:
        self.httpd.serve_forever(poll_interval=0.5)

    def start(self) -> DashboardServer:
        threading.Thread(target=self.serve_forever, name="fleet-dashboard", daemon=True).start()
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

"""TEST FIXTURE, not a ClickHouse server: the ClickHouse engine (chdb, in process) behind a
minimal front for ClickHouse's HTTP interface, enough for clickhouse-connect.

No ClickHouse server binary can be installed on these machines; chdb is the real engine
(the same SQL parser, MergeTree, insert deduplication), so the DDL, inserts and queries the
fleet sends are checked by ClickHouse itself. What this front does: take the query from the
``query`` parameter and/or the body, run it in one chdb session (``database`` applied with
``USE``; ``param_*`` bound as query parameters), hand an ``INSERT ... FORMAT <fmt>`` body
to the engine through a file, and answer with ClickHouse's headers and exception format. Real-server runs: set FLEET_CLICKHOUSE_URL.

``fail_after_commit`` makes the next N inserts commit and then answer 500, as when a
response is lost after the server took the data: the client's retry must not duplicate rows.
"""

from __future__ import annotations

import json
import re
import tempfile
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from chdb import session as chdb_session

_INSERT = re.compile(r"^\s*INSERT\s+INTO\s+(?P<table>\S+)\s*(?P<cols>\([^)]*\))?\s*FORMAT\s+(?P<fmt>\w+)\s*$",
                     re.IGNORECASE | re.DOTALL)
_FORMAT = re.compile(r"\bFORMAT\s+\w+\s*$", re.IGNORECASE)


class ChdbHttp:
    """``with ChdbHttp() as ch: ch.url`` -- http://127.0.0.1:PORT serving one chdb session."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="chdb-http-")
        self.session = chdb_session.Session(str(Path(self.tmp.name) / "db"))
        self.lock = threading.Lock()
        self.fail_after_commit = 0
        self.inserts = 0
        self.queries: list[str] = []
        fixture = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self._handle(b"")

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                self._handle(self.rfile.read(n) if n else b"")

            def _handle(self, body: bytes) -> None:
                if urlparse(self.path).path == "/ping":
                    return self._answer(200, b"Ok.\n", "text/plain")
                params = {k: v[-1] for k, v in parse_qs(urlparse(self.path).query).items()}
                status, payload, fmt = fixture.execute(params, body)
                self._answer(status, payload, "application/octet-stream", fmt)

            def _answer(self, status: int, payload: bytes, ctype: str, fmt: str = "") -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("X-ClickHouse-Query-Id", uuid.uuid4().hex)
                self.send_header("X-ClickHouse-Timezone", "UTC")
                self.send_header("X-ClickHouse-Summary", json.dumps({"read_rows": "0", "written_rows": "0"}))
                if fmt:
                    self.send_header("X-ClickHouse-Format", fmt)
                if status != 200:
                    self.send_header("X-ClickHouse-Exception-Code", "1000")
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def execute(self, params: dict[str, str], body: bytes) -> tuple[int, bytes, str]:
        query = params.get("query", "")
        data = b""
        if body:
            if query:
                data = body
            else:  # the query is the body's first line when the body also carries data
                head, _, data = body.partition(b"\n")
                query = head.decode()
                if not _INSERT.match(query):
                    query, data = body.decode(), b""
        with self.lock:
            self.queries.append(query)
            try:
                if params.get("database"):
                    self.session.query(f"USE {params['database']}")
                insert = _INSERT.match(query)
                if insert:
                    return self._insert(insert, data, params)
                named = _FORMAT.search(query)
                fmt = named.group(0).split()[-1] if named else "TabSeparated"
                binds = {k[len("param_"):]: v for k, v in params.items() if k.startswith("param_")}
                out = self.session.query(query, fmt, params=binds or None)
                return 200, out.bytes() if out is not None else b"", fmt
            except Exception as exc:  # noqa: BLE001 - the engine's error goes back as ClickHouse would send it
                return 500, f"Code: 1000. DB::Exception: {exc}".encode(), ""

    def _insert(self, m: re.Match, data: bytes, params: dict[str, str]) -> tuple[int, bytes, str]:
        path = Path(self.tmp.name) / f"insert-{uuid.uuid4().hex}.{m['fmt']}"
        path.write_bytes(data)
        settings = ""
        if params.get("insert_deduplication_token"):
            settings = f" SETTINGS insert_deduplication_token = '{params['insert_deduplication_token']}'"
        try:
            self.session.query(f"INSERT INTO {m['table']} {m['cols'] or ''} "
                               f"SELECT * FROM file('{path}', '{m['fmt']}'){settings}")
        finally:
            path.unlink(missing_ok=True)
        self.inserts += 1
        if self.fail_after_commit > 0:
            self.fail_after_commit -= 1
            return 500, b"Code: 209. DB::NetException: Timeout exceeded while writing to socket (fixture)", ""
        return 200, b"", ""

    def __enter__(self) -> ChdbHttp:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.session.close()
        self.tmp.cleanup()

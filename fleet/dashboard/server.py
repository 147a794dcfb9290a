"""``fleet dashboard``'s server: the ASGI application (fleet.dashboard.app) served by uvicorn.

The socket is bound when the server is made, so a port in use is an error at once and ``url`` is known
(port 0 picks a free one); ``start()`` serves from a thread (tests, benchmarks), ``serve_forever()``
from the caller's (the CLI: SIGINT and SIGTERM end it gracefully, and it returns), ``close()`` stops either.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn

from fleet.dashboard.app import create_app
from fleet.dashboard.context import Context
from fleet.dashboard.engine import Engine

__all__ = ["DashboardServer"]

STOP_S = 10.0          # close(): how long the serving thread gets to end
BACKLOG = 128


class _Server(uvicorn.Server):
    """uvicorn's server, except that SIGINT and SIGTERM end it gracefully and that is all: uvicorn would raise
    the signal again once it has stopped, and the command would die of it instead of exiting 0."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


class DashboardServer:
    def __init__(self, engine: Engine, results_dir: Path | None, host: str = "127.0.0.1", port: int = 8080,
                 quiet: bool = False, **context: Any) -> None:
        self.context = Context(engine, results_dir, **context)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind((host, port))
            self.sock.listen(BACKLOG)   # connections wait in the backlog until uvicorn accepts them
        except OSError:
            self.sock.close()
            raise
        bound = self.sock.getsockname()[1]
        self.url = f"http://{'[' + host + ']' if family == socket.AF_INET6 else host}:{bound}"
        config = uvicorn.Config(create_app(self.context), log_level="warning" if quiet else "info",
                                access_log=not quiet, lifespan="off", server_header=False, date_header=False)
        if quiet:
            logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
        self.server = _Server(config)
        self._thread: threading.Thread | None = None

    def serve_forever(self) -> None:
        self.server.run(sockets=[self.sock])

    def start(self) -> DashboardServer:
        self._thread = threading.Thread(target=self.serve_forever, name="fleet-dashboard", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(STOP_S)
        self.sock.close()

"""The reference gateway as a subprocess (``fleet gateway serve``), for tests, benchmarks and local
campaigns. Importing this module loads no WebRTC or HTTP server code."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from fleet.errors import GatewayStartError

if TYPE_CHECKING:
    from fleet.gateway.config import GatewayConfig

__all__ = ["CLI_MARK", "GatewayProcess", "READY_PREFIX", "SHUTDOWN_TIMEOUT_S"]

READY_PREFIX = "fleet gateway listening on "  # the line `fleet gateway serve` prints once it accepts requests
CLI_MARK = "cli "                               # ... then the CLI server's URL (the capacity): "URL cli CLI_URL"
SHUTDOWN_TIMEOUT_S = 10.0                       # the gateway closes every peer connection within this on SIGTERM


class GatewayProcess:
    """``fleet gateway serve`` in a subprocess; ``url`` (media: WHIP, WHEP, status) and ``cli_url`` (the
    capacity, as go-livepeer's CLI server) once its readiness line is read. On ``port`` 0 both ports are
    picked free."""

    def __init__(self, config_path: str | Path | None = None, host: str = "127.0.0.1", port: int = 0,
                 start_timeout_s: float = 30.0, config: GatewayConfig | None = None) -> None:
        self.args = [sys.executable, "-m", "fleet", "gateway", "serve", "--host", host, "--port", str(port)]
        if port == 0:
            self.args += ["--cli-port", "0"]
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if config is not None:  # a config object: handed over as a JSON (hence YAML) file
            self._tmp = tempfile.TemporaryDirectory(prefix="fleet-gateway-")
            config_path = Path(self._tmp.name) / "gateway.json"
            config_path.write_text(config.model_dump_json())
        if config_path is not None:
            self.args += ["--config", str(config_path)]
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen[str] | None = None
        self.url: str | None = None
        self.cli_url: str | None = None

    def __enter__(self) -> GatewayProcess:
        # stderr is inherited: an unread pipe would block a chatty gateway once it filled
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        out = self.proc.stdout
        assert out is not None  # stdout=PIPE
        sel = selectors.DefaultSelector()
        sel.register(out, selectors.EVENT_READ)
        if not sel.select(self.start_timeout_s):
            self.stop()
            raise GatewayStartError(f"the reference gateway did not start within {self.start_timeout_s:g} s")
        line = out.readline()
        if not line.startswith(READY_PREFIX):
            self.stop()
            raise GatewayStartError(f"the reference gateway failed to start (exit {self.proc.returncode}; "
                               f"its stderr says why): {line.strip()}")
        self.url, _, cli = line[len(READY_PREFIX):].strip().partition(f" {CLI_MARK}")
        self.cli_url = cli or None
        return self

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(SHUTDOWN_TIMEOUT_S + 5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

"""``fleet monitor SCENARIO``: probe every orchestrator continuously, within a period and a daily budget."""

from __future__ import annotations

import argparse
import re
from typing import Any


UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> float:
    """``90s``, ``10m``, ``2h``, ``1d`` or plain seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not m or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (allowed: a positive number with s, m, h or "
                                         "d, e.g. 10m)")
    return float(m.group(1)) * UNITS[m.group(2) or "s"]


def http_url(text: str) -> str:
    """A command-line URL: http(s) only (as the scenario's own URLs)."""
    if not text.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"{text!r} is not an http(s) URL (allowed: http://HOST[:PORT], https://...)")
    return text


def add(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("monitor", help="probe the network continuously (the scenario's monitor: section)",
                       description=__doc__)
    p.add_argument("file", metavar="SCENARIO", help="scenario YAML with a monitor: section")
    p.add_argument("--for", dest="for_s", type=duration, metavar="DURATION",
                   help="stop starting sessions after this long, e.g. 10m (default: until SIGINT / SIGTERM)")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a private local Ray)")
    p.add_argument("--out", metavar="DIR", help="results directory (default: the scenario's outputs.dir)")
    p.add_argument("--gateway-url", metavar="URL", type=http_url, help="send every region's sessions to this gateway")
    p.add_argument("--capacity-url", metavar="URL", type=http_url, help="read the gateway's capacity (/getNetworkCapabilities) "
                   "from this CLI URL (default: target.capacity.url, else the gateway's host at port 5935)")
    p.add_argument("--json", action="store_true", help="after the summary, print it as one JSON line")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from fleet.runtime.monitor import MonitorOptions, run_monitor

    return run_monitor(args.file, MonitorOptions(address=args.address, out_dir=args.out, for_s=args.for_s,
                                                 gateway_url=args.gateway_url, capacity_url=args.capacity_url,
                                                 json=args.json))

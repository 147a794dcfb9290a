"""Reading the gateway's stream status into the result.

go-livepeer's status (keyed by ``streamId``) is the runner's status plus ``gateway_status``
(``ingest_metrics.stats.track_stats``, ``error``); see ../shared/LIVEPEER.md. A body of the wrong
shape is the gateway's protocol error: it is recorded (the session degraded with
``gateway_protocol``), never the tester's, and the values it does hold are kept. BYOC's flat
status comes in this shape too (``fleet.probe.adapters.byoc_status_view``). Whether the gateway
kept any status at all (``seen``) tells a stream its auth webhook refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fleet.probe.adapters import gateway_error
from fleet.probe.swaps import SwapTracker
from fleet.probe.types import ProbeResult

Event = Callable[..., None]   # event(kind, **data)


def obj(parent: dict[str, Any], key: str, complain: Callable[[str], None]) -> dict[str, Any]:
    """``parent[key]`` when it is an object; absent gives {}; any other type is a protocol error, also {}."""
    value = parent.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        complain(f"{key} is a {type(value).__name__}, not an object")
        return {}
    return value


def num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def integer(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


class StatusReader:
    """Folds each status read into one session's result, with its events."""

    def __init__(self, result: ProbeResult, event: Event, swaps: SwapTracker | None = None) -> None:
        self.r, self.event = result, event
        self.swaps = swaps if swaps is not None else SwapTracker(event)
        self.seen = False   # the gateway kept a status for the stream (any body read at all)

    def bad(self, why: str) -> None:
        if "gateway_protocol" not in self.r.reasons:
            self.r.reasons.append("gateway_protocol")
            self.event("bad_status", detail=why[:200])

    def read(self, s: Any, t_s: float) -> None:
        """One status read, ``t_s`` seconds into the session."""
        self.seen = True
        if not isinstance(s, dict):
            self.bad(f"the status is a {type(s).__name__}, not an object")
            return
        self.r.gateway_error = gateway_error(s) or self.r.gateway_error
        self._ingest(obj(s, "gateway_status", self.bad))
        if "state" in s:  # else only the gateway's part: the runner has not reported yet
            self._runner(s, t_s)

    def _ingest(self, gw: dict[str, Any]) -> None:
        r = self.r
        stats = obj(obj(gw, "ingest_metrics", self.bad), "stats", self.bad)
        tracks = stats.get("track_stats") or []
        if not isinstance(tracks, list):
            self.bad("ingest_metrics.stats.track_stats is not a list")
            tracks = []
        tracks = [t for t in tracks if isinstance(t, dict) and t.get("type") == "video"]
        if tracks:
            t = tracks[0]
            r.gateway_ingest_latency_s = num(t.get("latency"))
            r.gateway_ingest_jitter_ms = num(t.get("jitter"))  # milliseconds (media/whip_connection.go)
            r.gateway_ingest_packet_loss_pct = num(t.get("packet_loss_pct"))
            rtt = num(t.get("rtt"))  # a Go time.Duration: nanoseconds
            r.gateway_ingest_rtt_ms = None if rtt is None else round(rtt / 1e6, 3)
        if isinstance(stats.get("conn_quality"), str):
            r.gateway_conn_quality = stats["conn_quality"]

    def _runner(self, s: dict[str, Any], t_s: float) -> None:
        r = self.r
        r.request_id = text(s.get("request_id")) or r.request_id
        r.pipeline_id = text(s.get("pipeline_id")) or r.pipeline_id
        inf = obj(s, "inference_status", self.bad)
        orch = obj(s, "orchestrator_info", self.bad)
        address = (text(orch.get("address")) or "").lower()
        state, restarts = text(s.get("state")), integer(inf.get("restart_count"))
        sample = {"t_s": round(t_s, 3), "state": state,
                  "input_fps": num(obj(s, "input_status", self.bad).get("fps")),
                  "inference_fps": num(inf.get("fps")), "restart_count": restarts,
                  "last_error": text(inf.get("last_error")), "orchestrator": address or None}
        # a new runner (another orchestrator, or the same one's new start): a swap, even back to the same one
        self.swaps.runner_seen(t_s, address or None, s.get("start_time"))
        r.swapped = bool(self.swaps.swaps)
        # NaaP keys orchestrators by lower-cased address; go-livepeer leaves it empty without ticket params
        r.orchestrator_address = address or r.orchestrator_address
        r.orchestrator_url = text(orch.get("url")) or r.orchestrator_url
        if state != r.gateway_state:
            self.event("status_change", state=state)
        r.gateway_state = state
        r.restart_count = restarts
        r.status_samples.append(sample)

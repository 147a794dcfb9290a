"""The catalogue of per-session metrics that SLA checks and comparisons may name.

Names follow the network's own vocabulary (NaaP / ``stream_trace`` /
``ai_stream_status``) so the fleet's client-side view joins with it;
docs/METRICS.md defines each one in full.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

__all__ = ["AGGREGATE_HELP", "METRICS", "Metric", "parse_aggregate"]


@dataclass(frozen=True)
class Metric:
    name: str
    kind: Literal["number", "flag"]
    unit: str
    description: str


METRICS: dict[str, Metric] = {
    m.name: m
    for m in [
        Metric("startup_s", "number", "s", "stream request to first processed output frame"),
        Metric("playable_s", "number", "s", "stream request to the first few output frames (prompt-to-playable)"),
        Metric("signaling_ms", "number", "ms", "WHIP request to SDP answer"),
        Metric("ice_ms", "number", "ms", "SDP answer to ICE connected"),
        Metric("output_fps", "number", "fps", "mean output frame rate"),
        Metric("jitter_coeff", "number", "1", "stddev / mean of output frame intervals"),
        Metric("g2g_latency_ms", "number", "ms", "median client-side glass-to-glass latency of the session "
                                                  "(not NaaP's server-side session e2e latency)"),
        Metric("freeze_count", "number", "1", "output freezes"),
        Metric("freeze_s", "number", "s", "total time frozen"),
        Metric("prompt_switch_ms", "number", "ms", "prompt update to visible effect"),
        Metric("packet_loss_pct", "number", "%", "RTP packets lost, from RTCP"),
        Metric("rtt_ms", "number", "ms", "round-trip time, from RTCP"),
        Metric("failed", "flag", "1", "session outcome was failed"),
        Metric("degraded", "flag", "1", "session outcome was degraded"),
        Metric("swapped", "flag", "1", "orchestrator changed during the session"),
        Metric("skipped_no_capacity", "flag", "1", "no idle slot could be leased, or the gateway had no orchestrator"),
        Metric("excused", "flag", "1", "failed for a reason NaaP does not hold against the orchestrator"),
    ]
}

AGGREGATE_HELP = "mean, min, max, pN (N in 0..100, e.g. p95), rate"
_PERCENTILE = re.compile(r"^p(\d{1,2}(?:\.\d+)?|100)$")


def parse_aggregate(text: str) -> tuple[str, float | None]:
    """``"p95"`` -> ``("percentile", 95.0)``; ``"mean"`` -> ``("mean", None)``.

    Raises ValueError with the allowed forms when ``text`` is none of them.
    """
    if text in ("mean", "min", "max", "rate"):
        return text, None
    match = _PERCENTILE.match(text)
    if match:
        return "percentile", float(match.group(1))
    raise ValueError(f"unknown aggregate {text!r} (allowed: {AGGREGATE_HELP})")

"""A finished session's outcome: the SLA checks that make an ``ok`` session ``degraded`` or ``failed``,
and the gateway's own error deciding the outcome of an early end.

Pure functions over the result and the spec, unit-tested on synthetic timelines
(tests/test_probe_units.py).
"""

from __future__ import annotations

from fleet.probe.adapters import classify_gateway_error
from fleet.probe.types import EVENT_PREFIX, ProbeResult, ProbeSpec

AUTH_REFUSED_DETAIL = "201, then no status for the stream: the gateway's auth webhook refused its stream key"


def classify(r: ProbeResult, spec: ProbeSpec, end: float, last_arrival: float | None) -> None:
    """Check an ``ok`` session against the spec's thresholds. Output silent for more than
    ``stall_fail_s`` at the ``end`` (monotonic) fails it; each threshold missed is a reason that makes
    it ``degraded``."""
    if r.outcome != "ok":
        return
    if any(e[1] == EVENT_PREFIX + "black_output" for e in r.events):
        r.reasons.append("black_output")
    if last_arrival is not None and end - last_arrival > spec.options.stall_fail_s:
        r.outcome, r.error_phase, r.error_class = "failed", "pipeline", "output_stalled"
        r.error_detail = f"no output for the last {end - last_arrival:.1f} s"
        return
    checks = (
        ("slow_startup", r.startup_s is not None and r.startup_s > spec.max_startup_s),
        ("low_fps", r.output_fps is not None and r.output_fps < spec.min_output_fps),
        ("jitter", r.jitter_coeff is not None and r.jitter_coeff > spec.max_jitter_coeff),
        ("freezes", r.freeze_s > spec.max_freeze_s),
        ("high_latency", r.g2g_latency_ms is not None and r.g2g_latency_ms > spec.max_g2g_latency_ms),
    )
    r.reasons.extend(reason for reason, missed in checks if missed)
    if r.reasons:
        r.outcome = "degraded"


def blame(r: ProbeResult, message: str | None, status_seen: bool = True, output_seen: bool = False,
          said_no_status: bool = False) -> None:
    """After the 201 the gateway reports failures in its status only: its error decides the outcome of an
    early end (no capacity is a skip, NaaP's excused errors are excused), unless it is one go-livepeer
    writes while the stream goes on: ``gateway_status.error`` keeps the first error only, so a transient
    one never overrides what the probe saw fail.

    No error, no output, and the gateway said it keeps no status (404, never a body): go-livepeer's auth
    webhook refused the stream key (``livepeer`` dialect only; Daydream's auth is its bearer token at
    create, BYOC's its 403). It answers the WHIP with 201 all the same, then closes the peer connection (or,
    losing the race, leaves it up with nothing behind it) and stores no status: every stream it takes has
    one from its start (``server/ai_mediaserver.go`` ``CreateWhip``). That is the tester's configuration (its
    stream key or the gateway's webhook), never the orchestrator's: ``auth_refused`` in phase ``tester``, not
    excused. A status that could not be read (unreachable, 5xx) says nothing of the kind.

    "No orchestrators available" after output was seen (a swap that found no orchestrator) is a failure,
    excused as NaaP's RULE-LIFECYCLE-004 excuses it, not a capacity skip: the session ran."""
    if not message:
        if said_no_status and not status_seen and not output_seen and r.dialect in ("livepeer", "reference"):
            r.error_detail = (f"{AUTH_REFUSED_DETAIL} (then {r.error_class}"
                              + (f": {r.error_detail}" if r.error_detail else "") + ")")[:200]
            r.outcome, r.error_phase, r.error_class, r.excused = "failed", "tester", "auth_refused", False
        return
    verdict = classify_gateway_error(message)
    if verdict is None:
        return
    outcome = "failed" if verdict.outcome == "skipped_no_capacity" and output_seen else verdict.outcome
    r.outcome, r.error_phase, r.error_class = outcome, verdict.phase, verdict.error
    r.excused = verdict.excused or outcome != verdict.outcome
    r.error_detail = message[:200]

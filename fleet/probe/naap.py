"""The network's own rules for a session's start, as NaaP's analytics state them.

Cloud-SPE/livepeer-naap-analytics ``CANONICAL_RULE_REQUIREMENTS.md`` (94d6241e):

- RULE-LIFECYCLE-004: an error is excusable when its message contains, case-insensitively, one of
  exactly these substrings (``EXCUSED_ERRORS``); nothing else is excused by default (go-livepeer's
  "non-h264 video" is not in the set).
- RULE-LIFECYCLE-003: a known stream's startup is ``success`` when playable evidence exists, else
  ``excused`` on explicit no-orchestrator evidence, else ``excused`` when it has errors and every one is
  excusable, else ``unexcused``; a stream that is not known is outside the startup denominator (None).

And go-livepeer's own: ``gateway_status.error`` keeps the first error only (``StoreIfNotExists``), and
non-fatal conditions write it too (``server/ai_live_video.go``: "Missing next handle", "Next segment has
started", "Error publishing, wrote …", "trickle subscribe error reading: …"), so such an error explains
nothing about how a session ended (``NON_FATAL_ERRORS``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

__all__ = ["EXCUSED_ERRORS", "NON_FATAL_ERRORS", "NO_ORCHESTRATORS", "StartupOutcome", "excusable", "no_orchestrator_evidence",
           "non_fatal", "startup_outcome"]

StartupOutcome = Literal["success", "excused", "unexcused"]

NO_ORCHESTRATORS = "no orchestrators available"
# RULE-LIFECYCLE-004, this exact set
EXCUSED_ERRORS = (NO_ORCHESTRATORS, "mediamtx ingest disconnected", "whip disconnected", "missing video",
                  "ice connection state failed", "user disconnected")
# sendErrorEvent calls in server/ai_live_video.go that leave the stream running
NON_FATAL_ERRORS = ("missing next handle", "next segment has started", "error publishing, wrote",
                    "trickle subscribe error reading")


def excusable(message: str) -> bool:
    """RULE-LIFECYCLE-004: case-insensitive substrings of the exact excused set."""
    text = message.lower()
    return any(e in text for e in EXCUSED_ERRORS)


def non_fatal(message: str) -> bool:
    """An error go-livepeer records while the stream goes on: it says nothing about how the session ended."""
    text = message.lower()
    return any(e in text for e in NON_FATAL_ERRORS)


def no_orchestrator_evidence(message: str) -> bool:
    """Whether go-livepeer sent its ``gateway_no_orchestrators_available`` trace with this error: it does
    when every orchestrator was tried and none had room (the error is exactly "no orchestrators
    available"), not when selection outlasted its 2 s timeout ("... within 2s timeout", no trace;
    ``server/ai_process.go`` ``processAIRequest``)."""
    return message.strip().lower() == NO_ORCHESTRATORS


def startup_outcome(known: bool, playable: bool, no_orchestrators: bool,
                    errors: Iterable[str]) -> StartupOutcome | None:
    """RULE-LIFECYCLE-003, in its fixed precedence. ``known``: the gateway received the stream request
    (``gateway_receive_stream_request``); ``playable``: the stream produced playable output
    (``gateway_receive_few_processed_segments``); ``no_orchestrators``: explicit no-orchestrator evidence
    (the ``gateway_no_orchestrators_available`` trace); ``errors``: the session's error messages."""
    if not known:
        return None
    if playable:
        return "success"
    if no_orchestrators:
        return "excused"
    messages = [m for m in errors if m]
    if messages and all(excusable(m) for m in messages):
        return "excused"
    return "unexcused"

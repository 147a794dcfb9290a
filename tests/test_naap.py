"""NaaP's canonical rules for a session's start, case by case from the rule text.

Cloud-SPE/livepeer-naap-analytics ``CANONICAL_RULE_REQUIREMENTS.md`` (94d6241e), RULE-LIFECYCLE-003
(startup outcome precedence) and RULE-LIFECYCLE-004 (excused error taxonomy); each case below names the
sentence of the rule it holds. Plus go-livepeer's first-error rule: an error the stream survives never
replaces the probe's own evidence of what failed.
"""

from __future__ import annotations

import pytest

from fleet.probe.classify import blame
from fleet.probe.naap import excusable, no_orchestrator_evidence, startup_outcome
from fleet.probe.types import ProbeResult

# RULE-LIFECYCLE-004 "currently defined by this exact set", written out here, not imported
RULE_004_SET = ["no orchestrators available", "mediamtx ingest disconnected", "whip disconnected", "missing video",
                "ice connection state failed", "user disconnected"]


@pytest.mark.parametrize("message", RULE_004_SET)
def test_every_message_of_the_exact_set_is_excusable_whatever_its_case_and_context(message):
    # "Error excusability is substring-based, case-insensitive"; "case differences do not change classification"
    assert excusable(message) and excusable(message.upper()) and excusable(message.title())
    assert excusable(f"Live video pipeline finished with error: {message} (after 3 s)")


@pytest.mark.parametrize("message", [
    "non-h264 video",                                   # go-livepeer's codec refusal: not in the set
    "Too many swaps: trickle subscribe stopping, stream not found, err=EOF",
    "orchestrator is slow",
    "Missing next handle: segment writer closed",
    "no orchestrator available",                        # singular: not the substring
    "whip disconnect",                                  # truncated: not the substring
    "ice connection failed",
    "",
])
def test_messages_outside_the_set_are_not_excused(message):
    # "messages outside this set are not treated as excused by default"
    assert not excusable(message)


@pytest.mark.parametrize(("known", "playable", "no_orch", "errors", "expected"), [
    # 1. "if the session is not a known stream, it is outside the startup denominator"
    (False, True, False, [], None),
    (False, False, True, ["no orchestrators available"], None),
    (False, False, False, ["orchestrator is slow"], None),
    # 2. "if playable evidence exists, classify as success" / "success always overrides excused or unexcused"
    (True, True, False, [], "success"),
    (True, True, True, ["no orchestrators available"], "success"),
    (True, True, False, ["orchestrator is slow"], "success"),
    # 3. "else if explicit no-orchestrator evidence exists, classify as excused", whatever the other errors
    (True, False, True, ["no orchestrators available", "orchestrator is slow"], "excused"),
    (True, False, True, [], "excused"),
    # 4. "else if the session has errors and all counted errors are excusable, classify as excused"
    (True, False, False, ["Missing Video"], "excused"),
    (True, False, False, ["whip disconnected", "ICE connection state failed"], "excused"),
    (True, False, False, ["no orchestrators available within 2s timeout"], "excused"),
    # 5. "else if it is a known stream, classify as unexcused": one error outside the set, or none at all
    (True, False, False, ["whip disconnected", "non-h264 video"], "unexcused"),
    (True, False, False, ["orchestrator is slow"], "unexcused"),
    (True, False, False, [], "unexcused"),
])
def test_startup_outcome_follows_the_fixed_precedence(known, playable, no_orch, errors, expected):
    assert startup_outcome(known, playable, no_orch, errors) == expected


def test_no_orchestrator_evidence_is_the_error_sent_with_the_trace_only():
    """go-livepeer sends gateway_no_orchestrators_available with "no orchestrators available" when every
    orchestrator was tried, and no trace with "... within 2s timeout" (server/ai_process.go)."""
    assert no_orchestrator_evidence("no orchestrators available")
    assert no_orchestrator_evidence("No Orchestrators Available ")
    assert not no_orchestrator_evidence("no orchestrators available within 2s timeout")


def _failed(error_class: str) -> ProbeResult:
    return ProbeResult("s1", "livepeer", "http://gw", outcome="failed", error_phase="pipeline",
                       error_class=error_class, error_detail="no output for the last 3.0 s")


@pytest.mark.parametrize("message", ["Missing next handle: segment writer closed", "Next segment has started",
                                     "Error publishing, wrote 1024 dropping EOF",
                                     "trickle subscribe error reading: seq 4 not found"])
def test_an_error_the_stream_survives_never_overrides_what_the_probe_saw_fail(message):
    """gateway_status.error keeps the first error (StoreIfNotExists), and go-livepeer writes these while the
    stream goes on (server/ai_live_video.go): the probe's own evidence stands."""
    r = _failed("output_stalled")
    blame(r, message)
    assert (r.outcome, r.error_phase, r.error_class, r.excused) == ("failed", "pipeline", "output_stalled", False)
    assert r.error_detail == "no output for the last 3.0 s"


@pytest.mark.parametrize(("message", "verdict"), [
    ("orchestrator is slow", ("failed", "pipeline", "gateway_error", False)),
    ("whip disconnected", ("failed", "media", "whip_disconnected", True)),
    # the tester's codec: not excused by NaaP (not in the set), and never the orchestrator's failure
    ("non-h264 video", ("failed", "tester", "codec_refused", False)),
])
def test_an_error_that_ends_the_stream_decides_the_outcome(message, verdict):
    r = _failed("disconnected")
    blame(r, message)
    assert (r.outcome, r.error_phase, r.error_class, r.excused) == verdict and r.error_detail == message

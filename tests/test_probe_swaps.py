"""The probe through an orchestrator swap: the swap's evidence joined into swaps (pure), the swap's gap cut
out of the timing (pure), and a real session against the reference gateway that swaps under it."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from fleet.gateway.config import Delay, Fault, GatewayConfig, Gpu, GpuProfile, OrchestratorSpec
from fleet.gateway.process import GatewayProcess
from fleet.probe.session import run_probe
from fleet.probe.types import ProbeResult
from fleet.probe.swaps import JOIN_S, SwapTracker
from fleet.probe.timing import analyse
from test_probe import MODEL, spec


def _tracker() -> tuple[SwapTracker, list[tuple[str, dict]]]:
    seen: list[tuple[str, dict]] = []
    return SwapTracker(lambda kind, **data: seen.append((kind, data))), seen


# --- evidence into swaps ----------------------------------------------------------------------

def test_the_viewer_losing_its_output_and_the_new_runner_reporting_are_one_swap():
    t, _ = _tracker()
    t.runner_seen(10.0, "0xa", 1000)
    t.runner_seen(12.0, "0xa", 1000)           # the same runner again: nothing
    t.viewer_lost(20.0, last_frame_s=19.9)
    t.output_back(21.4)
    t.runner_seen(30.0, "0xb", 2000)           # its first report, ten seconds later
    (swap,) = t.swaps
    assert (swap.from_orchestrator, swap.to_orchestrator, swap.gap_s) == ("0xa", "0xb", 1.5)
    assert swap.by_viewer and swap.by_status and t.orchestrators == ["0xa", "0xb"]


def test_a_pinned_stream_that_comes_back_to_the_same_orchestrator_is_still_a_swap():
    """go-livepeer keeps the orchestrator filter when it reselects: same address, a new runner."""
    t, _ = _tracker()
    t.runner_seen(10.0, "0xa", 1000)
    t.runner_seen(25.0, "0xa", 5000)           # the runner's start_time changed
    assert len(t.swaps) == 1 and t.orchestrators == ["0xa", "0xa"] and t.swaps[0].gap_s is None


def test_evidence_far_apart_is_two_swaps_and_a_swap_before_the_first_report_is_filled_by_it():
    t, _ = _tracker()
    t.viewer_lost(5.0, last_frame_s=4.9)       # before the runner ever reported
    t.output_back(6.0)
    t.runner_seen(11.0, "0xb", 2000)           # the first report is the new runner's
    assert [(s.from_orchestrator, s.to_orchestrator) for s in t.swaps] == [(None, "0xb")]
    t.viewer_lost(11.0 + JOIN_S + 5, last_frame_s=None)
    t.runner_seen(11.0 + JOIN_S + 6, "0xc", 3000)
    t.runner_seen(11.0 + 3 * JOIN_S, "0xd", 4000)  # long after: a swap of its own, seen only by the status
    assert [(s.from_orchestrator, s.to_orchestrator, s.by_viewer) for s in t.swaps] == [
        (None, "0xb", True), ("0xb", "0xc", True), ("0xc", "0xd", False)]


def test_a_viewer_closed_with_nothing_after_is_no_swap():
    """go-livepeer closes the viewers first whenever it ends a stream (idle input, too many swaps, an error),
    the ingest a moment later: a viewer's loss alone, with no output back and no new runner, is no swap."""
    t, _ = _tracker()
    t.runner_seen(10.0, "0xa", 1000)
    t.viewer_lost(20.0, last_frame_s=19.9)
    r = ProbeResult("s", "livepeer", "http://gw")
    t.fill(r)
    assert (r.swap_count, r.swapped, r.swap_gap_s, r.orchestrators) == (0, False, None, ["0xa"])
    t.output_back(21.0)   # ... until its output comes back on a new subscription
    t.fill(r)
    assert (r.swap_count, r.swapped, r.swap_gap_s) == (1, True, 1.1)


def test_the_swap_gap_is_cut_out_of_fps_jitter_and_freezes():
    fps = 20.0
    before = [k / fps for k in range(100)]
    after = [before[-1] + 2.5 + k / fps for k in range(100)]   # the output gone 2.5 s
    arrivals = before + after
    plain = analyse(arrivals, end=after[-1] + 1 / fps)
    cut = analyse(arrivals, end=after[-1] + 1 / fps, cuts=[100])
    assert plain.freeze_count == 1 and plain.freeze_s == pytest.approx(2.5)
    assert cut.freeze_count == 0 and cut.freeze_s == 0.0
    assert cut.output_fps == pytest.approx(fps, rel=1e-3) and cut.jitter_coeff == pytest.approx(0.0, abs=1e-6)
    assert plain.output_fps < 0.9 * fps


# --- a real session through a swap ----------------------------------------------------------------

@pytest.mark.slow
def test_a_session_through_a_swap_records_it_keeps_measuring_and_blames_nobody():
    profile = GpuProfile(name="Swap GPU", fps_cap=30, cold_start_s=0.0, warmup_frames=0,
                         delay=Delay(dist="fixed", mean_ms=40.0, jitter_ms=0.0))
    orchs = tuple(OrchestratorSpec(address=f"0xswap{i}", uri=f"https://swap-{i}.test:8935",
                                   gpus=(Gpu(id=f"G{i}", profile="p", slots={MODEL: 1}),)) for i in range(2))
    swap = Fault(kind="orchestrator_swap", after_s=3.5, streams=(1,), orchestrator="swap-0")
    cfg = GatewayConfig(profiles={"p": profile}, orchestrators=orchs, faults=(swap,), port=0, status_interval_s=1.0)
    with GatewayProcess(config=cfg) as proc:
        r = asyncio.run(run_probe(spec(proc.url, duration_s=10.0, size=128, orchestrator=None)))
        streams = httpx.get(f"{proc.url}/debug/streams", timeout=10).json()["streams"]
        truth = httpx.get(f"{proc.url}/debug/streams/{streams[0]['id']}", timeout=10).json()
    assert r.outcome in ("ok", "degraded") and r.error_class is None, (r.outcome, r.error_class, r.error_detail)
    assert r.swapped and r.swap_count == 1 and r.orchestrators == ["0xswap0", "0xswap1"], r.orchestrators
    assert r.orchestrator_address == "0xswap1" and "freezes" not in r.reasons
    # the gateway's truth: when it swapped, and when the new output's first frame left it
    events = truth["events"]
    swapped_at = next(e["t"] for e in events if e["type"] == "orchestrator_swap")
    resumed_at = [e["t"] for e in events if e["type"] == "runner_send_first_processed_segment"][1]
    assert r.swap_gap_s is not None and r.swap_gap_s >= resumed_at - swapped_at, (r.swap_gap_s, swapped_at, resumed_at)
    back = next(e[0] for e in r.events if e[1] == "fleet_output_back")
    t0 = r.timeline[0][1] - r.startup_s
    assert sum(1 for _, a in r.timeline if a - t0 > back) >= 4 * 20   # frames after it, for seconds
    assert r.teardown_verified

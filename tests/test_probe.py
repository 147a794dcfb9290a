"""The stream probe against the reference gateway's ground truth, over real loopback WebRTC.

The gateway runs as a subprocess (``fleet gateway serve``), the probe in this process, as in a
campaign. Every number is held against what the gateway knows it did.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random
import time

import httpx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.gateway.config import Delay, Fault, GatewayConfig, Gpu, GpuProfile, OrchestratorSpec, default_config
from fleet.gateway.process import GatewayProcess
from fleet.media import synthetic_clip
from fleet.probe.latency import align, lag_is_exact
from fleet.probe.output import BLACK_RUN
from fleet.probe.session import ProbeOptions, ProbeResult, ProbeSpec, PromptChange, run_probe
from fleet.probe.timing import analyse, freeze_ends, jitter, output_fps
from fleet.webrtc import use_host_addresses

use_host_addresses(["127.0.0.1"])

MODEL = "streamdiffusion"
LATENCY_TOLERANCE_MS = 5.0
FPS_TOLERANCE = 0.02
JITTER_TOLERANCE = 0.02
SEND_JITTER_TOLERANCE = 0.005  # a frame stamped as it is handed to the sender, against its last packet at the gateway
# one sample (not a median), an IDR of many packets, at the busiest moment: 16 sessions starting at once on two
# cores stamped it up to 5.7 ms late (measured); the bound says so rather than the 5 ms of the medians
FIRST_FRAME_TOLERANCE_MS = 10.0


def run(coro):
    return asyncio.run(coro)


def spec(url: str, duration_s: float = 6.0, size: int = 256, orchestrator: str | None = None,
         switch_at: float | None = None, dialect: str = "livepeer", max_jitter_coeff: float = 0.1,
         **options) -> ProbeSpec:
    prompts = [PromptChange(0.0, {"prompt": "a watercolour fox"})]
    if switch_at is not None:
        prompts.append(PromptChange(switch_at, {"prompt": "neon city at night, rain"}))
    return ProbeSpec(url, dialect, MODEL, synthetic_clip(size, size), tuple(prompts), duration_s=duration_s,
                     orchestrator=orchestrator, max_g2g_latency_ms=1000, max_jitter_coeff=max_jitter_coeff,
                     options=ProbeOptions(**{"ice_timeout_s": 5.0, "http_timeout_s": 3.0, "keep_timeline": True,
                                             **options}))


def truth(url: str, stream_name: str) -> dict:
    streams = httpx.get(f"{url}/debug/streams", timeout=10).json()["streams"]
    sid = next(s["id"] for s in streams if s["name"] == stream_name)
    return httpx.get(f"{url}/debug/streams/{sid}", timeout=10).json()


def egress_times(r: ProbeResult, t: dict) -> list[float]:
    """The truth of delivery for the frames the probe received: when each one's last packet left the
    gateway for the probe's viewer (matched by RTP timestamp), in the probe's order."""
    (egress,) = t["egress"]  # the probe is the only viewer
    first = egress[0][0]
    left = {(pts - first) & 0xFFFFFFFF: when for pts, when in egress}
    times = [left.get(ts) for ts, _ in r.timeline]
    assert None not in times, "the probe received a frame the gateway never sent to it"
    return times


def open_streams(url: str) -> int:
    return httpx.get(f"{url}/debug/streams", timeout=10).json()["open"]


async def until_open(url: str, count: int, deadline_s: float = 15.0) -> bool:
    """Wait (polling, with a deadline) until the gateway lists exactly ``count`` open streams."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    async with httpx.AsyncClient() as c:
        while loop.time() < end:
            if (await c.get(f"{url}/debug/streams")).json()["open"] == count:
                return True
            await asyncio.sleep(0.1)
    return False


def settles_to_no_open_streams(url: str, deadline_s: float = 15.0) -> bool:
    """Streams whose signaling the gateway still holds (a timeout fault) close when it gives up."""
    return run(until_open(url, 0, deadline_s))


# of a session's frames, the probe may flag at most this share as stamped in its own stalls (the truth bounds
# widen for those): 5 %, or 8 frames (one 0.4 s stall at 20 fps) in a short session. The most measured with up
# to 3 concurrent sessions in full runs on two cores: 6 frames of 118 (5.1 %), the half-fps session of the
# faults test
SUSPECT_SHARE_MAX = 0.05
SUSPECT_FRAMES_FLOOR = 8
LOADED_SHARE_MAX = 0.15    # ... with 16 sessions in its one process on two cores (over the test)
LOADED_SESSION_SHARE_MAX = 0.2  # ... and in any one of them


def assert_matches_truth(r: ProbeResult, url: str, max_suspect_share: float = SUSPECT_SHARE_MAX,
                         judge_sending: bool = False) -> tuple[float, float, float]:
    """Latency (median within 5 ms), output fps (within 2 %), jitter coefficient (within 0.02) and freezes
    (count exact, duration within one frame interval) against the gateway's truth; returns the errors."""
    assert r.outcome in ("ok", "degraded"), (r.outcome, r.error_phase, r.error_class, r.error_detail)
    assert r.latency_method == "rtp_timestamp"
    t = truth(url, r.stream_id)
    true_ms = t["residence_ms_median"]  # arrival of a frame's last packet -> its output's last packet sent
    err_ms = abs(r.g2g_latency_ms - true_ms)
    sent, flagged = egress_times(r, t), set(r.timeline_suspect)
    # the bounds below widen with the frames the probe flags as stamped in its own stalls: a bounded share
    share = len(flagged) / len(r.timeline)
    assert len(flagged) <= max(max_suspect_share * len(r.timeline), SUSPECT_FRAMES_FLOOR), \
        f"the probe flagged {len(flagged)} of its {len(r.timeline)} frames ({share:.1%}) as its own stalls"
    want = analyse(sent)  # fps, jitter and freezes of the frames as the gateway sent them
    if not flagged and max(np.diff(sent)) < 0.15:
        # no stall of the probe's and no gap that could be a freeze (the threshold is at least the mean + 150
        # ms): the truth worked out here, apart from fleet.probe.timing, which the lines below reuse
        steady = np.diff(sent[9:])  # from the 10th output frame on (playable)
        assert r.output_fps == pytest.approx((len(sent) - 1) / (sent[-1] - sent[0]), rel=FPS_TOLERANCE)
        assert r.jitter_coeff == pytest.approx(steady.std() / steady.mean(), abs=JITTER_TOLERANCE)
        assert r.freeze_count == 0 and r.freeze_s == 0
    # fps over the same frames: those the probe stamped during its own stall do not end its span
    true_fps = output_fps(sent, r.timeline_suspect)
    fps_err = abs(r.output_fps - true_fps) / true_fps
    # jitter over the same intervals: those the probe left out as its own stalls are left out of the truth too
    true_jitter = jitter(sent, suspect_indices=r.timeline_suspect)[0]
    jitter_err = abs(r.jitter_coeff - true_jitter)
    assert err_ms <= LATENCY_TOLERANCE_MS, (r.g2g_latency_ms, true_ms)
    assert fps_err <= FPS_TOLERANCE, (r.output_fps, true_fps, want.output_fps, r.timeline_suspect[:5])
    assert jitter_err <= JITTER_TOLERANCE, (r.jitter_coeff, true_jitter, want.jitter_coeff, r.jitter_suspect_intervals)
    # startup: the first output frame arrived when the gateway sent it (the same clock: one machine); a first
    # frame the probe flagged as stamped during its own stall may be late by that stall (measured with a core
    # taken: 14-15 ms when flagged, at most 5.5 ms when not)
    first_sent = sent[0]
    first_slack = (r.tester_loop_lag_ms_max or 0.0) if 0 in r.timeline_suspect else 0.0
    assert abs(r.timeline[0][1] - first_sent) <= (FIRST_FRAME_TOLERANCE_MS + first_slack) / 1000, \
        (r.timeline[0][1], first_sent, first_slack)
    # freezes: every one the gateway made is counted and none is invented, except that one ending on a frame
    # the probe stamped during its own loop stall may be missed: the probe takes such a frame as arriving at
    # the stall's start (documented in fleet/probe/timing.py), so its own stall is never a freeze (seen once
    # in ~20 full runs, at 16 sessions on a loaded machine: a 0.33 s freeze whose end fell in a stall). A
    # freeze is an interval: one whose first frame was stamped in a stall is as unsure (seen once, 16 sessions:
    # frame 33 flagged, the gateway's freeze ending at 34, the probe's interval too short to be one)
    ends = freeze_ends(sent)
    in_stall = [i for i in ends if i in flagged or i - 1 in flagged]
    assert len(ends) - len(in_stall) <= r.freeze_count <= len(ends), (r.freeze_count, ends, in_stall)
    # W3C: within one frame interval; a freeze whose end the probe stamped during its own stall is late by
    # up to that stall (measured: 46 ms once at 16 sessions, with the loop 50+ ms late): the bound says so
    arrivals = [a for _, a in r.timeline]
    stalled = any(i in flagged for i in range(1, len(arrivals)) if arrivals[i] - arrivals[i - 1] > 0.15)
    slack = (r.tester_loop_lag_ms_max or 0.0) / 1000 if stalled else 0.0
    missed_s = sum(sent[i] - sent[i - 1] for i in in_stall)  # at most, if each was missed
    assert abs(r.freeze_s - want.freeze_s) <= 1 / want.output_fps + slack + missed_s, \
        (r.freeze_s, want.freeze_s, slack, missed_s)
    # the tester's own sending: its frames' intervals as they reached the gateway's socket, from the 10th on, where
    # every frame is there but the last one or two sent (still on the way at the close), socket-stamped, and no
    # interval could be a freeze (those are out of the figure)
    arrived = np.diff([f["t_in"] for f in t["frames"]][9:])
    judgeable = t["arrival_misses"] == 0 and 0 <= r.frames_sent - len(t["frames"]) <= 2 and arrived.max() < 0.15
    assert judgeable or not judge_sending, (t["arrival_misses"], len(t["frames"]), r.frames_sent, arrived.max())
    if judgeable:
        assert r.tester_send_jitter_coeff == pytest.approx(arrived.std() / arrived.mean(), abs=SEND_JITTER_TOLERANCE), \
            (r.tester_send_jitter_coeff, arrived.std() / arrived.mean())
    return err_ms, fps_err, jitter_err


# --- the latency alignment, on its own ----------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(lag_frames=st.integers(-5000, 5000), delay_frames=st.integers(1, 60), seed=st.integers(0, 10_000),
       drop=st.floats(0, 0.3))
def test_align_recovers_the_exact_lag_despite_dropped_frames(lag_frames, delay_frames, seed, drop):
    """Output steps = input steps shifted by an unknown lag, some arriving a frame or two late (drops)."""
    rng = random.Random(seed)
    fps = 30.0
    clip = synthetic_clip(64, 64)
    steps = [(n + loop * clip.frames, d) for loop in range(3) for n, d in clip.steps if n + loop * clip.frames > 0]
    inputs = [(n / fps, d, n / fps) for n, d in steps]
    outs = []
    for i, (n, d) in enumerate(steps[:8]):
        late = 0 if i == 0 or rng.random() >= drop else rng.choice((1, 2))  # the first kept its frame
        outs.append(((n + late + lag_frames) / fps, d, (n + late + delay_frames) / fps))
    fit = align(outs, inputs, tolerance=2.5 / fps, max_latency=20.0)
    assert fit is not None
    lag, matched = fit
    assert [steps[k][0] for k in matched] == [n for n, _ in steps[:8]]
    assert abs(lag - lag_frames / fps) < 1e-9


def test_a_lag_is_exact_only_once_a_step_pins_it_to_one_frame():
    """Every step's first frame dropped: one frame less fits too, until a step shows its neighbour."""
    fps, lag_frames = 30.0, 7
    clip = synthetic_clip(64, 64)
    inputs = [(n / fps, d, n / fps) for n, d in clip.steps if n > 0]
    late = [((n + 1 + lag_frames) / fps, d, (n + 40) / fps) for n, d in clip.steps[1:5]]  # all one frame late
    prev = [(n - 1 + lag_frames) / fps for n, _ in clip.steps[1:5]]  # the frame before each shown step
    lag, matched = align(late, inputs, tolerance=2.5 / fps, max_latency=20.0)
    assert round(lag * fps) == lag_frames + 1
    assert not lag_is_exact(lag, prev, inputs, matched, 1 / fps)
    n, d = clip.steps[5]
    on_time = [*late, ((n + lag_frames) / fps, d, (n + 40) / fps)]
    lag, matched = align(on_time, inputs, tolerance=2.5 / fps, max_latency=20.0)
    assert round(lag * fps) == lag_frames
    assert lag_is_exact(lag, [*prev, (n - 1 + lag_frames) / fps], inputs, matched, 1 / fps)


def test_align_refuses_to_guess_from_too_few_steps():
    inputs = [(i * 0.5, 1 if i % 2 else -1, i * 0.5) for i in range(40)]  # regular steps: every lag fits
    outs = [(t + 3.0, d, t + 3.1) for t, d, _ in inputs[10:16]]
    assert align(outs, inputs, tolerance=0.08, max_latency=20.0) is None
    assert align(outs[:2], inputs, tolerance=0.08, max_latency=20.0) is None


# --- accuracy against the truth ------------------------------------------------------------

@pytest.fixture(scope="module")
def gateway():
    # the runner's first report comes one status interval after its start (10 s in ai-runner): 2 s here, so
    # that these short sessions learn their orchestrator from the status
    cfg = default_config(seed=7, status_interval_s=2.0)
    with GatewayProcess(config=cfg) as proc:
        yield proc.url


@pytest.mark.slow
def test_one_session_latency_fps_and_prompt_switch_match_the_truth(gateway):
    r = run(run_probe(spec(gateway, duration_s=7.0, size=512, switch_at=4.5)))
    assert_matches_truth(r, gateway, judge_sending=True)
    t = truth(gateway, r.stream_id)
    assert r.orchestrator_address == t["orchestrator"]
    assert len(r.latency_samples) >= 0.8 * r.frames_received  # a sample per frame, not per second
    # the prompt switch: effect seen after the update, within the pipeline delay plus a few frames
    assert r.prompt_switch_ms[0] is not None and 0 < r.prompt_switch_ms[0] < t["delay_ms_median"] + 200
    # startup covers the cold start the gateway applied when this was the first stream on its GPU: no output
    # can come before the pipeline has loaded (the gateway says which it applied; its profile, how long)
    (selected,) = [e for e in t["events"] if e["type"] == "orchestrator_selected"]
    cold_s = t["config_cold_start_s"] if selected["cold_start"] else 0.0
    assert r.startup_s >= cold_s, (r.startup_s, selected, cold_s)
    assert r.signaling_ms > 0 and r.ice_ms is not None and r.dtls_ms is not None
    assert r.decoded_frames < r.frames_received  # decoding only in windows
    # the join keys, from the WHEP URL and the status; teardown by closing, verified in the status
    assert r.request_id == t["request_id"] and r.stream_id == t["stream_id"] == r.stream_name
    assert r.orchestrator_url == t["orchestrator_url"] and r.codec == "h264"
    assert r.teardown_verified and open_streams(gateway) == 0
    assert t["e2e_test"]  # the User-Agent says "Headless": go-livepeer tags the session as an e2e test
    assert all(e[1].startswith("fleet_") for e in r.events)  # never mistaken for stream_trace events


@pytest.mark.slow
def test_sixteen_concurrent_sessions_in_one_process_match_the_truth(gateway):
    async def main():
        return await asyncio.gather(*(run_probe(spec(gateway, duration_s=8.0, size=128)) for _ in range(16)))
    results = run(main())
    # 16 sessions in one event loop on two cores do stall it: measured on the 2-vCPU build machine, 8.6 % and
    # 9.1 % of the frames flagged over two rounds, 12.3 % at most in one session, when every frame was stamped
    # by the loop. The caps sit above that, and still far below what would let the truth bounds excuse a
    # session; with frames timed by their socket (fleet.sockstamp) only those the loop stamped can be flagged
    # (none in a run alone: 16 sessions, 48 ms of loop lag at most, every frame within 3.7 ms of its truth), and
    # the output its late sends made late (1 frame of 2,235 in a run; before a late send had to show in the
    # output to count, 1.2 % and 0.1 % in two runs, 2 % at most in one session)
    for r in results:
        assert_matches_truth(r, gateway, max_suspect_share=LOADED_SESSION_SHARE_MAX)
    flagged, frames = sum(len(r.timeline_suspect) for r in results), sum(len(r.timeline) for r in results)
    assert flagged <= LOADED_SHARE_MAX * frames, f"{flagged} of {frames} frames flagged"
    assert len({r.orchestrator_address for r in results}) == 4  # the network spread them
    assert open_streams(gateway) == 0


@pytest.mark.slow
def test_relay_mode_latency_matches_the_truth_and_a_pli_gets_a_keyframe_at_once():
    """Relay mode forwards what the probe sent, so its keyframes show: with a PLI every 0.5 s against a
    1 s GOP, the probe answers by jumping to the clip's next keyframe, and the latency still aligns."""
    with GatewayProcess(config=default_config(relay=True, seed=3, pli_interval_s=0.5)) as proc:
        r = run(run_probe(spec(proc.url, duration_s=8.0, size=256)))
        assert_matches_truth(r, proc.url)
        assert r.prompt_switch_ms == []
        assert r.keyframes_on_request >= 4, r.keyframes_on_request  # ~16 PLIs, some within 300 ms of an IDR


STALL_AT_S, STALL_S = 3.5, 0.3   # the probe's own loop kept busy, into a 7 s session
STALL_DELAY_MS = 500.0          # the gateway's processing delay: frames keep leaving it through the stall


@pytest.mark.slow
def test_frames_that_arrive_while_the_probes_own_loop_is_stalled_are_timed_when_they_arrived():
    """The probe's event loop kept busy for 0.3 s mid-session (as a long garbage collection would): the
    frames the gateway sent meanwhile reached the probe's socket on time and are timed then
    (fleet.sockstamp), not when the loop got to them; none is excused as stamped during the stall, only the
    output of the frames the stall made the probe send late, and the session matches the truth."""
    profile = GpuProfile(name="Slow GPU", fps_cap=30, cold_start_s=0.0, warmup_frames=0,
                         delay=Delay(dist="normal", mean_ms=STALL_DELAY_MS, jitter_ms=1.0))
    orchs = (OrchestratorSpec(address="0xslow", uri="https://slow.truth:8935",
                              gpus=(Gpu(id="G-slow", profile="p", slots={MODEL: 1}),)),)
    with GatewayProcess(config=GatewayConfig(profiles={"p": profile}, orchestrators=orchs, port=0)) as proc:
        async def main() -> tuple[ProbeResult, float]:
            stalled: list[float] = []

            def stall() -> None:  # the fault injected, not a wait: the loop's thread kept on the CPU
                stalled.append(time.monotonic())
                while time.monotonic() < stalled[0] + STALL_S:
                    pass

            asyncio.get_running_loop().call_later(STALL_AT_S, stall)
            return await run_probe(spec(proc.url, duration_s=7.0, size=256)), stalled[0]

        r, at = run(main())
        sent = egress_times(r, truth(proc.url, r.stream_id))
        during = [i for i, t in enumerate(sent) if at <= t < at + STALL_S]
        assert len(during) >= 3, (during, at, sent[:3])  # the gateway did send frames through the stall
        late = [(i, round(1000 * (r.timeline[i][1] - sent[i]), 3)) for i in during
                if abs(r.timeline[i][1] - sent[i]) > LATENCY_TOLERANCE_MS / 1000]
        assert not late, late  # each timed within 5 ms of leaving the gateway; the loop got to it up to 0.3 s later
        # its send loop stalled too: the frames due meanwhile left late, together at the stall's end, and the output
        # of those the gateway kept came STALL_DELAY_MS after: the tester's own (late sends), flagged (judged
        # exactly in tests/test_probe_units.py); none of those that came during the stall
        fps, flagged = synthetic_clip(256, 256).fps, r.timeline_suspect
        assert not set(flagged) & set(during), (flagged, during)
        after = at + STALL_DELAY_MS / 1000
        stalled = [i for i in flagged if after - 0.05 <= r.timeline[i][1] <= after + STALL_S + 0.1]
        # those flagged are the stall's (a late send the gateway's ingest buffer absorbed is not; one other, at
        # most, by a send late for another reason that showed), one at least: the gateway may drop some of them
        assert 1 <= len(stalled) <= STALL_S * fps + 1 and len(flagged) - len(stalled) <= 1, \
            (flagged, [round(r.timeline[i][1] - at, 3) for i in flagged])
        assert r.tester_stall_frames == len(flagged)
        assert (r.tester_loop_lag_ms_max or 0) >= 0.9 * STALL_S * 1000  # the probe's monitor saw its loop stalled
        assert_matches_truth(r, proc.url)


@pytest.mark.slow
def test_a_freeze_an_fps_drop_and_packet_loss_match_the_truth():
    """Under the gateway's faults: the output stalls for a second mid-session (a freeze), a GPU runs at
    half its fps, 5 % of the packets to the viewer are lost. Count, duration, fps, jitter and loss against
    what the gateway sent."""
    profile = GpuProfile(name="Truth GPU", fps_cap=30, cold_start_s=0.0, warmup_frames=0,
                         delay=Delay(dist="normal", mean_ms=50.0, jitter_ms=1.0))
    orchs = tuple(OrchestratorSpec(address=f"0x{name}", uri=f"https://{name}.truth:8935",
                                   gpus=(Gpu(id=f"G-{name}", profile="p", slots={MODEL: 1}),))
                  for name in ("freeze", "half", "lossy"))
    faults = (Fault(kind="output_stall", orchestrator="freeze.truth", after_s=3.0, duration_s=1.0, probability=1.0),
              Fault(kind="fps_drop", orchestrator="half.truth", fps_factor=0.5, probability=1.0),
              # for 5 s of the 8 s session: every drop falls inside the probe's own window, with time left for
              # NACK repair, so the gateway's count and the probe's cover the same packets
              Fault(kind="packet_loss", orchestrator="lossy.truth", loss_pct=10.0, duration_s=5.0, probability=1.0))
    cfg = GatewayConfig(profiles={"p": profile}, orchestrators=orchs, faults=faults, port=0)
    with GatewayProcess(config=cfg) as proc:
        async def main():
            specs = [spec(proc.url, duration_s=8.0, size=128, max_jitter_coeff=1.0, orchestrator=f"{name}.truth")
                     for name in ("freeze", "half", "lossy")]
            specs[0] = dataclasses.replace(specs[0], max_freeze_s=0.5)  # under the fault's 1 s stall
            return await asyncio.gather(*(run_probe(s) for s in specs))
        frozen, half, lossy = run(main())
        assert_matches_truth(frozen, proc.url)
        assert_matches_truth(half, proc.url)
        sent = egress_times(frozen, truth(proc.url, frozen.stream_id))
        gaps = [sent[k] - sent[k - 1] for k in freeze_ends(sent)]
        # the fault, as the gateway did it: one stall of a second. Any other freeze is the gateway's own loop
        # late on two cores (one of 0.28 s was seen); it is real on the wire and the probe matched it above
        assert sum(0.95 <= g <= 1.2 for g in gaps) == 1 and all(g <= 1.2 for g in gaps) and len(gaps) <= 3, gaps
        # the freezes SLA, judged on the gateway's own sending: the stall (over 0.95 s) breaks the frozen session's
        # 0.5 s; the half-fps session keeps the default 2 s (its gaps that could be freezes, at 15 fps over 0.2 s,
        # sum to less)
        assert "freezes" in frozen.reasons, (frozen.reasons, gaps)
        half_sent = np.diff(egress_times(half, truth(proc.url, half.stream_id)))
        assert half_sent[half_sent > 0.2].sum() < 2.0 and "freezes" not in half.reasons, (half.reasons, half.freeze_s)
        assert 14.5 <= half.output_fps <= 15.5 and half.jitter_coeff < 0.1  # half of 30, evenly paced
        # packet loss: the share of packets the gateway dropped on the way to the probe and no NACK resend
        # delivered (the probe counts sequence numbers never received: loss after repair)
        (viewer,) = truth(proc.url, lossy.stream_id)["viewers"]
        true_loss = 100 * viewer["packets_lost"] / viewer["packets_sent"]
        # the fault did drop: 10 % of the ~100 packets the viewer gets inside the fault's 5 s (the first second
        # goes to awaiting a keyframe); fewer than 2 happens by chance once in ~3000 runs (5 % failed one in ~12)
        assert viewer["packets_dropped"] >= 2, viewer
        assert true_loss > 0 and abs(lossy.packet_loss_pct - true_loss) <= 1.0, (lossy.packet_loss_pct, true_loss)
        assert lossy.outcome in ("ok", "degraded")  # lost packets are repaired or the frame skipped; it plays on


# --- faults: each maps to the right outcome and phase -----------------------------------------

# NaaP RULE-LIFECYCLE-003 for the failures: output before the fault is a startup success; an ICE that never
# connects ends in the gateway's excusable "missing video", so NaaP excuses what the fleet counts as ice_failed
NAAP_STARTUP = {"output_stall": "success", "transient_error": "success", "ice_never": "excused"}
FAULTS = {
    # kind: (fault fields, expected (outcome, phase, error) or a check)
    # go-livepeer answers 201 first and tries past an orchestrator that refuses the job or never answers:
    # pinned to it, the session meets "no orchestrators available", exactly as if it were full
    "signaling_error": ({"status": 502}, "refused"),
    "signaling_timeout": ({"delay_s": 3.0}, "refused"),
    "slow_answer": ({"delay_s": 1.0}, "slow"),
    "ice_never": ({}, ("failed", "ice", "ice_failed")),
    "output_stall": ({"after_s": 2.5}, ("failed", "pipeline", "output_stalled")),
    "disconnect": ({"after_s": 3.0}, "swap"),   # the control channel lost: go-livepeer swaps
    "black_frames": ({"after_s": 3.0}, "black"),   # after calibration (2 s): a check must find it
    "fps_drop": ({"fps_factor": 0.3}, "low_fps"),
    "orchestrator_swap": ({"after_s": 2.5}, "swap"),
    "capacity_drop": ({"slots": 1, "after_s": 1.0}, "capacity"),
    "malformed_status": ({"after_s": 0.0}, "protocol"),
    # an error the stream survives comes first and stays gateway_status.error; the stall after it is what failed
    "transient_error": ({"after_s": 1.0}, ("failed", "pipeline", "output_stalled")),
}


@pytest.fixture(scope="module")
def faulty():
    profile = GpuProfile(name="Fault GPU", fps_cap=30, cold_start_s=0.0, warmup_frames=0,
                         delay=Delay(dist="fixed", mean_ms=40.0, jitter_ms=0.0))
    orchs = [OrchestratorSpec(address=f"0xfault-{kind}", uri=f"https://{kind}.fault:8935",
                              gpus=(Gpu(id=f"G-{kind}", profile="p", slots={MODEL: 1}),))
             for kind in [*FAULTS, "spare"]]
    faults = [Fault(kind=kind, orchestrator=f"{kind}.fault", streams=(1,), **fields)
              for kind, (fields, _) in FAULTS.items()]
    faults.append(Fault(kind="output_stall", orchestrator="transient_error.fault", streams=(1,), after_s=2.5))
    # the runner reports every second here (10 s in ai-runner) so a swap shows within the session
    cfg = GatewayConfig(profiles={"p": profile}, orchestrators=tuple(orchs), faults=tuple(faults), port=0,
                        status_interval_s=1.0)
    with GatewayProcess(config=cfg) as proc:
        yield proc.url


@pytest.mark.slow
def test_every_fault_maps_to_its_outcome_and_phase(faulty):
    async def main():
        # jitter is not what this test is about: ten sessions on two cores make some of their own
        return await asyncio.gather(*(run_probe(spec(faulty, duration_s=7.0, size=128, orchestrator=f"{k}.fault",
                                                     max_jitter_coeff=1.0, check_every_s=1.0, stall_fail_s=3.0,
                                                     calibrate_max_s=2.0))
                                      for k in FAULTS))
    results = dict(zip(FAULTS, run(main())))
    for kind, (_, expected) in FAULTS.items():
        r = results[kind]
        got = (r.outcome, r.error_phase, r.error_class)
        if isinstance(expected, tuple):
            assert got == expected, (kind, got, r.error_detail)
            assert not r.excused, kind  # the orchestrator's own failures are never excused
            assert r.startup_outcome == NAAP_STARTUP.get(kind, "unexcused"), (kind, r.startup_outcome)
            if kind == "transient_error":   # stored as the gateway said it, not taken as the cause
                assert r.gateway_error.startswith("Missing next handle"), r.gateway_error
            continue
        if expected == "refused":
            assert got == ("skipped_no_capacity", "capacity", "no_orchestrators_available"), (kind, got)
            assert r.excused and r.startup_outcome == "excused" and r.frames_received == 0, kind
            continue
        assert r.outcome in ("ok", "degraded"), (kind, got, r.error_detail)
        if expected == "slow":
            assert r.startup_s >= 1.0  # the job started a second late; the WHIP answer did not wait
        elif expected == "black":
            assert r.outcome == "degraded" and "black_output" in r.reasons and r.black_frames >= 10
            # the output turns black at 3 s, after the calibration's decoding ended (at 2 s at the latest): a check
            # (one frame every 1 s, the output's next keyframe) sees it, and decodes on until BLACK_RUN black frames
            # in a row. Decoded: at most the calibration's frames (those arrived by its end), the run, and a frame
            # per check; a 0.5 s window per check (the old rule: 10 frames at 20 fps) would pass that bound by
            # about 9 frames for each check served after the first
            aligned_t = next(t for t, k, _ in r.events if k.endswith("latency_aligned"))
            black_t = next(t for t, k, _ in r.events if k.endswith("black_output"))
            assert black_t > aligned_t, r.events   # seen by a check, not by the calibration
            t0 = r.timeline[0][1] - r.startup_s
            calibration = sum(1 for _, arrival in r.timeline if arrival - t0 <= aligned_t)
            checks = math.ceil(r.duration_s / 1.0)
            assert r.decoded_frames <= calibration + BLACK_RUN + checks, (r.decoded_frames, calibration, checks)
        elif expected == "low_fps":
            assert r.outcome == "degraded" and "low_fps" in r.reasons and r.output_fps < 12
        elif expected == "swap":
            # pinned: the gateway keeps the orchestrator filter and comes back to the same one; the viewer's
            # connection closed, the probe subscribed again and measured on; nobody is blamed
            assert r.swap_count == 1 and r.orchestrators == [f"0xfault-{kind}"] * 2, (kind, r.orchestrators)
            assert r.swap_gap_s is not None and 0 < r.swap_gap_s < 3.0, (kind, r.swap_gap_s)
            back = next(e[0] for e in r.events if e[1] == "fleet_output_back")
            t0 = r.timeline[0][1] - r.startup_s   # the session's start on the arrivals' clock
            assert sum(1 for _, arrival in r.timeline if arrival - t0 > back) > 20, kind  # frames after it
            assert "freezes" not in r.reasons and r.error_class is None, (kind, r.reasons)
        elif expected == "protocol":  # the gateway's bug, not the tester's: degraded, the stream measured
            assert r.outcome == "degraded" and "gateway_protocol" in r.reasons and r.error_phase is None, r.reasons
            assert r.frames_received > 100 and any(e[1] == "fleet_bad_status" for e in r.events)
        elif expected == "capacity":
            assert r.outcome == "ok", (r.reasons, r.jitter_coeff, r.freeze_s, r.output_fps)
    assert settles_to_no_open_streams(faulty)


@pytest.mark.slow
def test_a_full_network_is_skipped_not_failed(faulty):
    async def main():
        first = asyncio.ensure_future(run_probe(spec(faulty, duration_s=5.0, size=128, orchestrator="spare.fault")))
        assert await until_open(faulty, 1), "the first session never took the slot"
        second = await run_probe(spec(faulty, duration_s=2.0, size=128, orchestrator="spare.fault"))
        return second, await first
    second, first = run(main())
    # the gateway said 201, then "no orchestrators available" in its status and closed the connection
    assert (second.outcome, second.error_phase, second.error_class) == (
        "skipped_no_capacity", "capacity", "no_orchestrators_available"), second.error_detail
    assert second.gateway_error == "no orchestrators available" and second.excused
    # NaaP RULE-LIFECYCLE-003: explicit no-orchestrator evidence excuses; the first one played
    assert (second.startup_outcome, first.startup_outcome) == ("excused", "success")
    assert first.outcome in ("ok", "degraded")
    assert open_streams(faulty) == 0


# --- slow starts: WHEP blocks until the output exists -----------------------------------------

def _slow_gateway(cold_start_s: float) -> GatewayProcess:
    profile = GpuProfile(name="Slow GPU", fps_cap=30, cold_start_s=cold_start_s, warmup_frames=0,
                         delay=Delay(dist="fixed", mean_ms=40.0, jitter_ms=0.0))
    orchs = tuple(OrchestratorSpec(address=f"0xslow{i}", uri=f"https://slow-{i}.test:8935",  # each GPU starts cold
                                   gpus=(Gpu(id=f"G{i}", profile="p", slots={MODEL: 1}),)) for i in range(2))
    return GatewayProcess(config=GatewayConfig(profiles={"p": profile}, orchestrators=orchs, port=0))


@pytest.mark.slow
def test_a_14_s_start_is_measured_as_a_14_s_start_and_a_hung_whep_is_abandoned_at_the_deadline():
    """go-livepeer's WHEP answers once the output exists: a cold start of 14 s is a WHEP request of 14 s,
    longer than the probe's 3 s HTTP timeout. It is bounded by the startup deadline, never by that."""
    with _slow_gateway(14.0) as proc:
        async def main():
            slow = spec(proc.url, duration_s=17.0, size=128, first_frame_timeout_s=25.0)
            hung = spec(proc.url, duration_s=17.0, size=128, first_frame_timeout_s=5.0)
            return await asyncio.gather(run_probe(slow), run_probe(hung))
        slow, hung = run(main())
        assert slow.outcome == "degraded" and slow.reasons == ["slow_startup"], (slow.error_class, slow.reasons)
        assert 14.0 <= slow.startup_s < 16.0 and slow.whep_signaling_ms >= 13_000, (slow.startup_s, slow.whep_signaling_ms)
        assert (hung.outcome, hung.error_phase, hung.error_class) == ("failed", "pipeline", "startup_deadline")
        assert "5 s startup deadline" in hung.error_detail and hung.duration_s < 9.0, (hung.error_detail, hung.duration_s)
        assert open_streams(proc.url) == 0


# --- teardown on every exit path ---------------------------------------------------------

@pytest.mark.slow
def test_cancellation_and_stop_tear_the_stream_down(gateway):
    async def main():
        stop = asyncio.Event()
        stopped = asyncio.ensure_future(run_probe(spec(gateway, duration_s=30.0), stop=stop))
        cancelled = asyncio.ensure_future(run_probe(spec(gateway, duration_s=30.0)))
        assert await until_open(gateway, 2), "both sessions should be streaming before they are ended"
        stop.set()
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        return await stopped
    r = run(main())
    assert (r.outcome, r.error_phase, r.error_class) == ("failed", "tester", "stopped")
    assert open_streams(gateway) == 0


@pytest.mark.slow
def test_daydream_and_byoc_dialects_run_a_measured_session():
    with GatewayProcess(config=default_config(token="s3cret")) as proc:
        async def main():
            dd = spec(proc.url, duration_s=7.0, size=128, dialect="daydream")
            dd = ProbeSpec(**{**dd.__dict__, "token": "s3cret"})
            byoc = spec(proc.url, duration_s=7.0, size=128, dialect="byoc")
            return await asyncio.gather(run_probe(dd), run_probe(byoc))
        for r in run(main()):
            assert r.outcome in ("ok", "degraded"), (r.dialect, r.error_phase, r.error_class, r.error_detail)
            assert r.frames_received > 30 and r.g2g_latency_ms is not None
            assert "s3cret" not in repr(r.to_dict())
        assert open_streams(proc.url) == 0


def test_the_aiortc_private_api_check_names_what_is_missing(monkeypatch):
    """fleet.webrtc fails at import, naming the attribute and the installed versions, when an aiortc release
    drops what the fleet relies on."""
    import aiortc

    from fleet import webrtc

    webrtc.check_private_api()  # the pinned versions have everything
    monkeypatch.delattr(aiortc.RTCRtpReceiver, "_send_rtcp_pli")
    with pytest.raises(ImportError, match=r"RTCRtpReceiver\._send_rtcp_pli.*aiortc 1\.16"):
        webrtc.check_private_api()

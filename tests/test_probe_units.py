"""The probe's analysis, status reading and outcome rules on synthetic timelines and bodies, without
WebRTC: the latency alignment finds a known delay, black output and prompt effects are seen, a
status of the real shape fills the result (and a wrong shape is the gateway's protocol error), and
the SLA checks classify a session as the spec says."""

from __future__ import annotations

import pytest

from fleet.media import FILE_STEP_LUMA, Clip, PacketTrack
from fleet.probe.classify import blame, classify
from fleet.probe.latency import align, lag_is_exact
from fleet.probe.output import BLACK_RUN, OutputWatch
from fleet.probe.planes import EFFECT_DELTA, EFFECT_FRAMES, effect_start
from fleet.probe.status import StatusReader
from fleet.probe.timing import per_second
from fleet.probe.types import EVENT_PREFIX, ProbeResult, ProbeSpec, PromptChange

FPS = 30.0
RUNS = (17, 29, 11, 41, 23, 37, 13, 31, 19, 43, 7, 29)  # irregular: one alignment only
DARK, BRIGHT = 60.0, 180.0


def clip() -> Clip:
    """A clip of plain levels (no encoded data: nothing here decodes)."""
    luma: list[float] = []
    for k, run in enumerate(RUNS):
        luma += [BRIGHT if k % 2 else DARK] * run
    n = len(luma)
    steps = tuple((i, 1 if luma[i] > luma[i - 1] else -1) for i in range(1, n) if luma[i] != luma[i - 1])
    return Clip("h264", 64, 64, FPS, (b"",) * n, (True,) + (False,) * (n - 1), tuple(luma), steps, 0.0)


def spec(**kw) -> ProbeSpec:
    return ProbeSpec("http://127.0.0.1:1", "livepeer", "streamdiffusion", clip(), (PromptChange(0, {}),), 20.0, **kw)


def sent_track(c: Clip, t0: float, frames: int) -> PacketTrack:
    """A track as if it had sent ``frames`` frames on time from ``t0``."""
    track = PacketTrack(c)
    for n in range(frames):
        i = n % c.frames
        if track.index and abs(c.luma[i] - c.luma[track.index[-1]]) >= FILE_STEP_LUMA:
            track.steps_sent.append((n, 1 if c.luma[i] > c.luma[track.index[-1]] else -1))
        track.index.append(i)
        track.sent.append(t0 + n / FPS)
    track.start = t0
    return track


def watch(s: ProbeSpec, track: PacketTrack, t0: float) -> tuple[OutputWatch, list[tuple[str, dict]]]:
    events: list[tuple[str, dict]] = []
    w = OutputWatch(s, track, t0, lambda kind, **data: events.append((kind, data)), lambda tap: None)
    return w, events


def relay(w: OutputWatch, track: PacketTrack, delay_s: float, lumas=None) -> None:
    """Every input frame comes out ``delay_s`` later with its RTP timestamp kept, and is decoded."""
    for n, sent in enumerate(track.sent):
        arrival = sent + delay_s
        w.arrivals.append(arrival)
        w.out_ts.append(track.clip.pts(n))
        luma = track.clip.luma[track.index[n]] if lumas is None else lumas[n]
        w.look_at((luma, 128.0, 128.0), arrival, n)


@pytest.mark.parametrize("delay_ms", [40.0, 250.0, 1300.0])
def test_the_alignment_recovers_a_known_delay_from_brightness_steps(delay_ms):
    s, t0 = spec(), 1000.0
    track = sent_track(s.clip, t0, 240)
    w, events = watch(s, track, t0)
    relay(w, track, delay_ms / 1000)
    assert not w.calibrating and w.latency_method == "rtp_timestamp"
    assert [k for k, _ in events] == ["latency_aligned"] and events[0][1]["exact"] is True
    samples = w.latency_samples()
    assert len(samples) == 240  # every frame pinned to the input frame it carries
    assert {m for _, _, m in samples} == {"rtp_timestamp"}
    assert all(ms == pytest.approx(delay_ms, abs=1e-3) for _, ms, _ in samples)


def test_the_latency_aligns_at_the_third_step_the_one_the_levels_were_learnt_across_counted():
    """Decoding stops at the clip's third step (the first bright run's start counted, though the levels were
    learnt there): one run of frames sooner than if that step were left out."""
    s, t0 = spec(), 1000.0
    track = sent_track(s.clip, t0, 240)
    w, events = watch(s, track, t0)
    third = RUNS[0] + RUNS[1] + RUNS[2]  # the frame that starts the clip's fourth run
    for n, sent in enumerate(track.sent):
        w.arrivals.append(sent + 0.1)
        w.out_ts.append(s.clip.pts(n))
        w.look_at((s.clip.luma[track.index[n]], 128.0, 128.0), sent + 0.1, n)
        if not w.calibrating:
            break
    assert n == third and w.decoded_frames == third + 1
    assert events == [("latency_aligned", {"method": "rtp_timestamp", "steps": 3, "exact": True})]
    assert all(ms == pytest.approx(100.0, abs=1e-3) for _, ms, _ in w.latency_samples())


def test_a_warm_ups_end_before_the_output_costs_no_frame_and_never_the_latency():
    """The output's first 12 frames are a gateway's bright warm-up, not the input's dark run: its end is a
    tentative step that matches no input step; it is dropped, and the latency aligns, exact, at the same frame
    as without the warm-up (the clip's third step)."""
    s, t0 = spec(), 1000.0
    track = sent_track(s.clip, t0, 240)
    w, events = watch(s, track, t0)
    lumas = [BRIGHT] * 12 + [s.clip.luma[track.index[n]] for n in range(12, 240)]
    assert set(lumas[12:17]) == {DARK}  # the clip's first run is dark: the warm-up's end is a step down
    for n, sent in enumerate(track.sent):
        w.arrivals.append(sent + 0.1)
        w.out_ts.append(s.clip.pts(n))
        w.look_at((lumas[n], 128.0, 128.0), sent + 0.1, n)
        if not w.calibrating:
            break
    assert n == RUNS[0] + RUNS[1] + RUNS[2]
    assert events == [("latency_aligned", {"method": "rtp_timestamp", "steps": 3, "exact": True})]
    assert [round(t * FPS) for t, _, _ in w.detector.steps] == [17, 46, 57] and not w.detector.tentative
    assert all(ms == pytest.approx(100.0, abs=1e-3) for _, ms, _ in w.latency_samples())


# what was sent around keyframe jumps: a natural step to dark at 69, the PLI's jump to a keyframe that ends a
# bright run at 70, dark again at 71 (the frame after that keyframe): one-frame runs, so two dark steps two
# frames apart, both within the alignment's tolerance (2.5 frames) of the one output step at 69
JUMPED_RUNS = ((-1, 20), (1, 5), (-1, 5), (1, 16), (-1, 4), (1, 19), (-1, 1), (1, 1), (-1, 15))


@pytest.mark.parametrize("fps", [15.0, 20.0, 24.0, 25.0, 30.0])
def test_one_frame_runs_left_by_a_keyframe_jump_do_not_shift_the_alignment(fps):
    """Relay: every frame comes out with its timestamp shifted by a known lag, 80 ms after it was sent,
    decoded from frame 48. Whenever the alignment calls its lag exact it is that lag (it was found two
    frames short: each output step matched to the latest input step of its direction in the window)."""
    levels = [level for level, run in JUMPED_RUNS for _ in range(run)]
    steps = [(n, levels[n]) for n in range(1, len(levels)) if levels[n] != levels[n - 1]]
    origin, t0 = 30, 1000.0  # the first frame out was the 30th sent: its timestamp is the output's zero
    lag = -origin / fps
    seen = [(n, d) for n, d in steps if n >= 50]
    outs = [((n - origin) / fps, d, t0 + n / fps + 0.08) for n, d in seen]
    prev = [(n - 1 - origin) / fps for n, _ in seen]
    exact_at = None
    for k in range(3, len(outs) + 1):  # as the watch does: again at each new step, until exact
        inputs = [(n / fps, d, t0 + n / fps) for n, d in steps if t0 + n / fps <= outs[k - 1][2]]
        fit = align(outs[:k], inputs, tolerance=2.5 / fps, max_latency=5.0)
        if fit is not None and lag_is_exact(fit[0], prev[:k], inputs, fit[1], 1 / fps):
            assert fit[0] == pytest.approx(lag, abs=1e-9)
            assert [steps[j][0] for j in fit[1]] == [n for n, _ in seen[:k]]
            exact_at = k
            break
    assert exact_at is not None


def test_a_lag_that_the_frame_before_a_step_rules_out_is_not_exact():
    """The frame shown before a step still showed the old level: a lag that puts it after its step's
    input step matched that step to the wrong one, however well the lag below it is ruled out."""
    fps = 20.0
    inputs = [(1.0, 1, 1.0), (1.5, -1, 1.5), (2.25, 1, 2.25)]
    assert lag_is_exact(0.5, [1.45, 1.95, 2.7], inputs, [0, 1, 2], 1 / fps)  # each previous frame: one before
    assert not lag_is_exact(0.4, [1.45, 1.95, 2.7], inputs, [0, 1, 2], 1 / fps)  # 1.45 - 0.4 is past 1.0


def test_a_run_of_black_frames_is_one_black_output_event_and_is_no_brightness_step():
    s, t0 = spec(), 1000.0
    track = sent_track(s.clip, t0, 60)
    w, events = watch(s, track, t0)
    relay(w, track, 0.1, lumas=[5.0] * 60)
    assert w.black_frames == 60 and w.decoded_frames == 60
    assert [k for k, _ in events] == ["black_output"]  # once, at the BLACK_RUN-th frame
    assert w.detector.steps == [] and BLACK_RUN <= 60


def test_a_prompt_effect_starts_at_the_first_of_enough_changed_frames_in_a_row():
    t_req = 50.0
    before = [(t_req - 1 + i / FPS, 128.0, 128.0) for i in range(30)]
    blip = [(t_req + 0.1, 128.0 + 2 * EFFECT_DELTA, 128.0)]        # one frame is no effect
    calm = [(t_req + 0.2 + i / FPS, 128.0, 128.0) for i in range(5)]
    changed = [(t_req + 0.5 + i / FPS, 128.0, 128.0 + 2 * EFFECT_DELTA) for i in range(EFFECT_FRAMES)]
    assert effect_start(before + blip + calm, t_req, 1.0) is None
    assert effect_start(before + blip + calm + changed, t_req, 1.0) == pytest.approx(t_req + 0.5)
    assert effect_start(changed, t_req, 1.0) is None  # nothing before the switch to compare with


def test_per_second_counts_frames_each_way_and_the_median_latency():
    t0 = 10.0
    rows = per_second(2.5, t0, [10.1, 10.2, 11.5], [10.0, 10.5, 11.0, 12.2],
                      [(0.1, 100.0, "m"), (0.2, 300.0, "m"), (1.5, 50.0, "m")])
    assert rows == [{"t_s": 0, "fps_out": 2, "fps_in": 2, "latency_ms_p50": 200.0},
                    {"t_s": 1, "fps_out": 1, "fps_in": 1, "latency_ms_p50": 50.0},
                    {"t_s": 2, "fps_out": 0, "fps_in": 1, "latency_ms_p50": None}]


def reader() -> tuple[ProbeResult, StatusReader, list[str]]:
    r = ProbeResult("s1", "livepeer", "http://gw")
    events: list[str] = []
    return r, StatusReader(r, lambda kind, **data: events.append(kind)), events


def status(address: str = "0xABC", state: str = "ONLINE") -> dict:
    """A go-livepeer status body: the runner's status plus gateway_status (../shared/LIVEPEER.md)."""
    return {"state": state, "request_id": "req1", "pipeline_id": "pip1",
            "inference_status": {"fps": 23.5, "restart_count": 1, "last_error": None},
            "input_status": {"fps": 30.0},
            "orchestrator_info": {"address": address, "url": "https://o1:8935"},
            "gateway_status": {"ingest_metrics": {"stats": {"conn_quality": "good", "track_stats": [
                {"type": "audio", "jitter": 9.0},
                {"type": "video", "latency": 0.05, "jitter": 2.0, "packet_loss_pct": 1.5, "rtt": 12_000_000}]}}}}


def test_a_status_of_the_real_shape_fills_the_result_and_a_swap_is_seen():
    r, st, events = reader()
    st.read(status(), 1.0)
    assert (r.request_id, r.pipeline_id, r.orchestrator_address, r.orchestrator_url) == \
        ("req1", "pip1", "0xabc", "https://o1:8935")
    assert (r.gateway_ingest_latency_s, r.gateway_ingest_jitter_ms, r.gateway_ingest_packet_loss_pct,
            r.gateway_ingest_rtt_ms, r.gateway_conn_quality) == (0.05, 2.0, 1.5, 12.0, "good")
    assert r.status_samples[0]["inference_fps"] == 23.5 and r.restart_count == 1 and r.gateway_state == "ONLINE"
    st.read(status(address="0xdef", state="DEGRADED_INFERENCE"), 2.0)
    assert r.swapped and r.orchestrator_address == "0xdef"
    assert events == ["status_change", "orchestrator_swap", "status_change"] and not r.reasons


@pytest.mark.parametrize("body", [
    ["not", "an", "object"],
    {"state": "ONLINE", "orchestrator_info": "0xabc"},
    {"gateway_status": {"ingest_metrics": {"stats": {"track_stats": {"type": "video"}}}}},
])
def test_a_status_of_the_wrong_shape_is_the_gateways_protocol_error_once(body):
    r, st, events = reader()
    st.read(body, 1.0)
    st.read(body, 2.0)
    assert r.reasons == ["gateway_protocol"] and events.count("bad_status") == 1


def finished(**kw) -> ProbeResult:
    r = ProbeResult("s1", "livepeer", "http://gw", startup_s=1.0, output_fps=25.0, jitter_coeff=0.02,
                    freeze_s=0.0, g2g_latency_ms=400.0)
    for k, v in kw.items():
        setattr(r, k, v)
    return r


@pytest.mark.parametrize(("change", "reasons"), [
    ({}, []),
    ({"startup_s": 11.0}, ["slow_startup"]),
    ({"output_fps": 11.9}, ["low_fps"]),
    ({"jitter_coeff": 0.11}, ["jitter"]),
    ({"freeze_s": 2.5}, ["freezes"]),
    ({"g2g_latency_ms": 3000.1}, ["high_latency"]),
    ({"output_fps": 5.0, "g2g_latency_ms": 5000.0}, ["low_fps", "high_latency"]),
    ({"events": [(3.0, EVENT_PREFIX + "black_output", {})]}, ["black_output"]),
    # on each threshold exactly: met ("more than" the maximum, "less than" the minimum misses it)
    ({"startup_s": 10.0, "output_fps": 12.0, "jitter_coeff": 0.1, "freeze_s": 2.0, "g2g_latency_ms": 3000.0}, []),
])
def test_each_threshold_missed_is_a_reason_that_degrades_the_session(change, reasons):
    r = finished(**change)
    classify(r, spec(), end=100.0, last_arrival=99.9)
    assert r.reasons == reasons and r.outcome == ("degraded" if reasons else "ok")


def test_output_silent_at_the_end_fails_the_session_and_a_failed_one_is_left_alone():
    r = finished()
    classify(r, spec(), end=100.0, last_arrival=94.0)
    assert (r.outcome, r.error_phase, r.error_class) == ("failed", "pipeline", "output_stalled")
    assert r.error_detail == "no output for the last 6.0 s"
    quiet = finished()  # silent exactly stall_fail_s (5 s): not yet failed
    classify(quiet, spec(), end=100.0, last_arrival=95.0)
    assert quiet.outcome == "ok"
    gone = finished(outcome="failed", output_fps=1.0)
    classify(gone, spec(), end=100.0, last_arrival=None)
    assert gone.outcome == "failed" and gone.reasons == []


@pytest.mark.parametrize(("message", "verdict"), [
    ("no orchestrators available", ("skipped_no_capacity", "capacity", "no_orchestrators_available", True)),
    ("non-h264 video", ("failed", "tester", "codec_refused", False)),
    ("something broke", ("failed", "pipeline", "gateway_error", False)),
])
def test_the_gateways_error_decides_an_early_end(message, verdict):
    r = ProbeResult("s1", "livepeer", "http://gw", outcome="failed", error_phase="media", error_class="disconnected")
    blame(r, message)
    assert (r.outcome, r.error_phase, r.error_class, r.excused) == verdict and r.error_detail == message


def test_the_spec_never_prints_the_token():
    assert "s3cret" not in repr(spec(token="s3cret")) and "http://127.0.0.1:1" in repr(spec(token="s3cret"))


def test_a_swap_before_the_first_frame_still_tells_the_session_its_first_frame():
    """The viewer's connection closes after the WHEP answer but before any frame (a swap): the frames of the
    new subscription are the session's first, so its startup wait ends on them (it used to wait out the
    startup deadline, then fail as no_output with frames flowing)."""
    from fleet.rtp import TapFrame

    s, t0 = spec(), 1000.0
    w, _ = watch(s, sent_track(s.clip, t0, 1), t0)
    told: list[str] = []
    w.on_first = w.first_output = lambda: told.append("first frame")
    w.resubscribed(None, lambda: told.append("output back"))
    w.on_frame(TapFrame(timestamp=90_000, first_arrival=t0 + 1.0, arrival=t0 + 1.0, data=b"", packets=1,
                        keyframe=True, complete=True))
    assert told == ["output back", "first frame"]


def encoded_output(gop: int, codec: str = "vp8") -> tuple[ProbeSpec, list]:
    """A real clip (a keyframe every ``gop`` frames) as the tap would hand it over, one frame per 1/FPS."""
    from fleet.media import synthetic_clip
    from fleet.rtp import TapFrame

    c = synthetic_clip(64, 64, FPS, codec=codec, gop=gop, loop_s=4.0)
    s = ProbeSpec("http://127.0.0.1:1", "livepeer", "streamdiffusion", c, (PromptChange(0, {}),), 20.0)
    frames = [TapFrame(timestamp=3000 * n, first_arrival=n / FPS, arrival=n / FPS, data=bytes(c.packets[n]),
                       packets=1, keyframe=c.keyframes[n], complete=True) for n in range(c.frames)]
    return s, frames


def check_watch(gop: int = 30, codec: str = "vp8"):
    """A watch past its calibration over a real 30-frame-GOP output, recording the indices it decodes and (in
    ``w.served``) the frames that served a waiting check."""
    from types import SimpleNamespace

    s, frames = encoded_output(gop=gop, codec=codec)
    w, events = watch(s, sent_track(s.clip, 0.0, 1), 0.0)
    w.calibrating = False
    w.tap = SimpleNamespace(ssrc=1, codec="H264" if codec == "h264" else "VP8", unsupported=None)
    decoded: list[int] = []
    w.served = []
    look = w.look_at

    def looked(means, arrival, index):
        decoded.append(index)
        waiting = w.check_due is not None
        look(means, arrival, index)
        if waiting and w.check_due is None:
            w.served.append(index)

    w.look_at = looked
    return w, events, frames, decoded


@pytest.mark.parametrize("codec", ["vp8", "h264"])
def test_a_check_decodes_the_next_keyframe_alone_not_the_gop_before_it(codec):
    """A check asked for mid-GOP (frame 40 of 30-frame GOPs) decodes nothing until the keyframe at 60, then
    that keyframe alone (it is not black): none of the 10 frames since the keyframe at 30, no PLI. A fresh
    decoder given that one frame hands it back at once (or the check would go on waiting)."""
    w, events, frames, decoded = check_watch(codec=codec)
    asked: list[float] = []
    w._ask = lambda tap: asked.append(1.0)
    for n, f in enumerate(frames[:100]):
        if n == 40:
            w.check_window(now=f.arrival)
        w.on_frame(f)
    assert frames[60].keyframe and not any(f.keyframe for f in frames[31:60])
    assert decoded == [60] and w.served == [60] and w.check_due is None, decoded
    assert w.decoded_frames == 1 and asked == [] and events == []


def test_a_keyframe_that_arrived_before_the_check_was_asked_is_not_decoded_for_it():
    """The check is asked 10 ms after the keyframe at 60 reached the socket, before it is handed over: that
    keyframe cannot serve it (it came before), so it is not decoded; the keyframe at 90 is."""
    w, events, frames, decoded = check_watch()
    for n, f in enumerate(frames):
        if n == 60:
            w.check_window(now=f.arrival + 0.01)
        w.on_frame(f)
    assert decoded == [90] and w.served == [90] and events == [], decoded


def test_a_check_whose_keyframe_does_not_decode_waits_for_the_next_one():
    """The keyframe at 60 is garbage: no frame is looked at, so the check is not served there and takes the
    keyframe at 90 (1.67 s after it was asked: no PLI yet, nothing missed)."""
    import dataclasses

    w, events, frames, decoded = check_watch()
    frames[60] = dataclasses.replace(frames[60], data=b"\x00" * 16)
    asked: list[int] = []
    w._ask = lambda tap: asked.append(len(w.arrivals) - 1)
    for n, f in enumerate(frames):
        if n == 40:
            w.check_window(now=f.arrival)
        w.on_frame(f)
    assert frames[90].keyframe and len(frames) > 90
    assert decoded == [90] and w.served == [90] and asked == [] and events == [], (decoded, asked, events)


def test_a_check_window_with_no_keyframe_asks_for_one_then_is_given_up_as_missed():
    """An output that brings no keyframe: the check asks with a PLI after CHECK_KEYFRAME_WAIT_S, then every
    PLI_EVERY_S, decodes nothing, and is given up at WINDOW_MAX_S with one event."""
    from types import SimpleNamespace

    from fleet.probe.output import CHECK_KEYFRAME_WAIT_S, PLI_EVERY_S, WINDOW_MAX_S
    from fleet.rtp import TapFrame

    s, _ = encoded_output(gop=30)
    w, events = watch(s, sent_track(s.clip, 0.0, 1), 0.0)
    w.calibrating = False
    w.tap = SimpleNamespace(ssrc=1, codec="VP8", unsupported=None)
    asked: list[float] = []
    seconds = int((WINDOW_MAX_S + 2) * FPS)
    frames = [TapFrame(timestamp=3000 * n, first_arrival=n / FPS, arrival=n / FPS, data=b"\x00", packets=1,
                       keyframe=False, complete=True) for n in range(seconds)]
    w._ask = lambda tap: asked.append(len(w.arrivals) - 1)   # the index of the frame that asked
    w.check_window(now=0.0)
    for f in frames:
        w.on_frame(f)
    # frame 76 is the first past 2.5 s (76/30 = 2.53), then one every 15 frames (0.5 s) up to 286; frame 301
    # is the first past 10 s, where the check is given up
    assert (CHECK_KEYFRAME_WAIT_S, PLI_EVERY_S, WINDOW_MAX_S, FPS) == (2.5, 0.5, 10.0, 30.0)
    assert asked == [76, 91, 106, 121, 136, 151, 166, 181, 196, 211, 226, 241, 256, 271, 286], asked
    assert w.decoded_frames == 0
    assert [k for k, _ in events] == ["check_window_missed"] and events[0][1]["waited_s"] > WINDOW_MAX_S


def test_a_check_waiting_for_a_keyframe_is_served_by_a_switch_window_that_opens_meanwhile():
    """A check asked at frame 40 waits for a keyframe; a prompt switch's window opens at 45 (decoding from the
    kept keyframe at 30) and ends at 50. The check takes frame 40, the first of the kept ones that came after
    it was asked: decoding ends with the switch's window after frame 49, and nothing is decoded at the keyframe
    at 60 (the check was served)."""
    w, events, frames, decoded = check_watch()
    for n, f in enumerate(frames[:100]):
        if n == 40:
            w.check_window(now=f.arrival)
        if n == 45:
            w.switch_windows[0] = (f.arrival, frames[50].arrival)
        w.on_frame(f)
    assert decoded == list(range(30, 50)) and w.served == [40], (decoded, w.served)
    assert w.check_due is None and events == []


def test_a_check_asked_while_decoding_takes_the_next_frame_decoded():
    """A switch window decodes frames 45 to 49 (from the kept keyframe at 30); a check asked 10 ms after frame
    47 arrived, before it is handed over, takes frame 48 (47 came before the check) and decodes nothing beyond
    the switch's window (none of it is black)."""
    w, _, frames, decoded = check_watch()
    for n, f in enumerate(frames[:100]):
        if n == 45:
            w.switch_windows[0] = (f.arrival, frames[50].arrival)
        if n == 47:
            w.check_window(now=f.arrival + 0.01)
        w.on_frame(f)
    assert decoded == list(range(30, 50)) and w.served == [48] and w.check_due is None, (decoded, w.served)


def black_from(w, black: set[int]) -> None:
    """The watch sees the frames in ``black`` as black (their means replaced), the others as decoded."""
    look = w.look_at
    w.look_at = lambda means, arrival, index: look((5.0, 128.0, 128.0) if index in black else means, arrival, index)


def test_a_black_check_frame_decodes_on_until_the_run_is_seen_then_later_checks_take_one_frame():
    """The output is black from frame 50. A check asked at 40 takes the keyframe at 60: black, so it decodes
    on, frame by frame, until BLACK_RUN black frames in a row (60 to 69: one black_output event) and stops
    there; a check asked at 75 takes the keyframe at 90 alone (the run is already known)."""
    w, events, frames, decoded = check_watch()
    black_from(w, set(range(50, len(frames))))
    for n, f in enumerate(frames):
        if n in (40, 75):
            w.check_window(now=f.arrival)
        w.on_frame(f)
    assert BLACK_RUN == 10 and len(frames) > 91
    assert decoded == list(range(60, 70)) + [90], decoded
    assert [k for k, _ in events] == ["black_output"] and w.black_frames == 11


@pytest.mark.parametrize("black, expected", [({60, 61}, [60, 61, 62]), (set(range(60, 120, 2)), [60, 61])],
                         ids=["two", "flickering"])
def test_a_black_run_that_ends_before_black_run_frames_stops_the_decoding_at_its_first_other_frame(black, expected):
    """Frames 60 and 61 black, or every other frame from 60 (a dark scene about the threshold): the check at
    the keyframe at 60 decodes on while the run lasts and stops after the first frame that is not black; no
    black_output, and never decoding every frame."""
    w, events, frames, decoded = check_watch()
    black_from(w, black)
    for n, f in enumerate(frames):
        if n == 40:
            w.check_window(now=f.arrival)
        w.on_frame(f)
    assert decoded == expected and events == [], decoded


def test_decoding_after_a_black_frame_ends_exactly_black_window_s_after_it():
    """Frames 2 fps apart, a check asked at frame 57 (1.5 s before the keyframe at 60: no PLI, nothing missed),
    the keyframe black: the next frame, at exactly 30 s + black_window_s (0.5 s), is past it and not decoded."""
    import dataclasses

    w, events, frames, decoded = check_watch()
    frames = [dataclasses.replace(f, first_arrival=n / 2, arrival=n / 2) for n, f in enumerate(frames)]
    black_from(w, set(range(len(frames))))
    asked: list[int] = []
    w._ask = lambda tap: asked.append(len(w.arrivals) - 1)
    for n, f in enumerate(frames[:100]):
        if n == 57:
            w.check_window(now=f.arrival)
        w.on_frame(f)
    assert w.opt.black_window_s == 0.5 and frames[61].arrival == frames[60].arrival + 0.5
    assert decoded == [60] and asked == [] and events == [], (decoded, asked, events)


def test_a_gap_in_the_decoding_starts_a_black_run_again():
    """All black from frame 60. The check at the keyframe at 60 decodes 60 to 64; then the output freezes for
    1 s (frames from 65 on come 1 s late), past black_window_s, so decoding stops with a run of 5. The check
    asked at 75 takes the keyframe at 90: a run begins again there and is seen whole at 99 (one black_output),
    not at 94 by adding the 5 before the gap."""
    import dataclasses

    w, events, frames, decoded = check_watch()
    frames = [f if n < 65 else dataclasses.replace(f, first_arrival=f.arrival + 1.0, arrival=f.arrival + 1.0)
              for n, f in enumerate(frames)]
    black_from(w, set(range(60, len(frames))))
    for n, f in enumerate(frames):
        if n in (40, 75):
            w.check_window(now=f.arrival)
        w.on_frame(f)
    assert decoded == list(range(60, 65)) + list(range(90, 100)), decoded
    assert [k for k, _ in events] == ["black_output"] and w.black_frames == 15


def test_a_black_run_is_one_orchestrators_a_swap_starts_it_again():
    """Six black frames before a swap and four after are no run of BLACK_RUN."""
    s, t0 = spec(), 1000.0
    w, events = watch(s, sent_track(s.clip, t0, 10), t0)
    for i in range(10):
        if i == 6:
            w.resubscribed(None, lambda: None)
        w.look_at((5.0, 128.0, 128.0), t0 + i / FPS, i)
    assert events == [] and w.black_run == 4 and w.black_frames == 10


def test_a_switch_window_opening_on_a_keyframe_decodes_from_it_and_not_the_gop_before():
    w, _, frames, decoded = check_watch()
    for n, f in enumerate(frames[:100]):
        if n == 60:
            w.switch_windows[0] = (f.arrival, frames[65].arrival)
        w.on_frame(f)
    assert frames[60].keyframe and decoded == [60, 61, 62, 63, 64], decoded


def test_a_check_waiting_when_the_session_subscribes_again_is_dropped():
    """A swap (``resubscribed``) starts a new segment with its own calibration: the old segment's waiting
    check is not carried over, so it is neither opened nor reported missed."""
    w, events, frames, _ = check_watch()
    w.check_window(now=frames[0].arrival)
    w.resubscribed(w.tap, lambda: None)
    assert w.check_due is None
    w.calibrating = False
    for f in frames[1:59]:
        w.on_frame(f)
    assert w.decoded_frames == 0 and events == []


def test_a_check_does_not_open_with_a_window_that_cannot_decode_yet():
    """A switch window (frames 5 to 9, from the kept keyframe at 0) ends mid-GOP, so nothing is kept until the
    keyframe at 30. A check asked at 12 waits; a second switch window (15 to 19) has nothing to decode from
    (it asks for a keyframe), so the check goes on waiting and takes the keyframe at 30, not a frame that
    could not be decoded."""
    w, events, frames, decoded = check_watch()
    asked: list[int] = []
    w._ask = lambda tap: asked.append(len(w.arrivals) - 1)
    for n, f in enumerate(frames[:100]):
        if n == 5:
            w.switch_windows[0] = (f.arrival, frames[10].arrival)
        if n == 12:
            w.check_window(now=f.arrival)
        if n == 15:
            w.switch_windows[1] = (f.arrival, frames[20].arrival)
        w.on_frame(f)
    assert decoded == list(range(10)) + [30], decoded
    assert asked == [15] and events == []   # the second window asked for a keyframe, once in its half second


def test_a_check_still_waiting_past_window_max_s_is_missed_even_if_a_keyframe_comes_then():
    """The first frame past WINDOW_MAX_S (frame 301 at 30 fps) is a keyframe: the check was given up by then."""
    from types import SimpleNamespace

    from fleet.probe.output import WINDOW_MAX_S
    from fleet.rtp import TapFrame

    s, _ = encoded_output(gop=30)
    w, events = watch(s, sent_track(s.clip, 0.0, 1), 0.0)
    w.calibrating = False
    w.tap = SimpleNamespace(ssrc=1, codec="VP8", unsupported=None)
    assert (WINDOW_MAX_S, FPS) == (10.0, 30.0)
    w.check_window(now=0.0)
    for n in range(310):
        w.on_frame(TapFrame(timestamp=3000 * n, first_arrival=n / FPS, arrival=n / FPS, data=b"\x00", packets=1,
                            keyframe=n == 301, complete=True))
    assert [k for k, _ in events] == ["check_window_missed"] and w.decoded_frames == 0


@pytest.mark.parametrize("case", ["sent-late", "network-late", "absorbed", "all-late", "drifting"])
def test_output_late_by_the_testers_own_late_sends_is_neither_a_freeze_nor_jitter(case):
    """Relay, 100 ms. sent-late: the tester's loop stalled from frame 90's time for 310 ms, the frames due meanwhile
    (90 to 99) left together at its end, and their output came as late: the tester's stall, no freeze, the
    intervals ending on them out of the jitter. network-late: the same output, the frames sent on time: the
    network's freeze. absorbed: sent as late, but the output on time (a gateway that buffers its input): nothing
    to excuse. all-late: every frame sent, and out, 5 ms late: no interval moved, nothing to excuse. drifting: as
    sent-late, the gateway's delay growing from 100 to 300 ms over the session: the late frames still stand out
    from the frames near them (a median over the whole session would put the usual delay at the middle's)."""
    s, t0, stall = spec(), 1000.0, 0.310
    track = sent_track(s.clip, t0, 240)
    due = list(track.sent)
    late = [n for n in range(240) if due[90] <= due[n] <= due[90] + stall]  # those due while the loop stalled
    stalled = [due[90] + stall if n in late else due[n] for n in range(240)]
    sent = {"sent-late": stalled, "drifting": stalled,
            "network-late": due, "absorbed": [due[90] + stall if n in late else due[n] for n in range(240)],
            "all-late": [d + 0.005 for d in due]}[case]
    out = {"sent-late": sent, "network-late": stalled, "absorbed": due, "all-late": sent, "drifting": sent}[case]
    arrivals = [t + 0.1 + (0.2 * n / 240 if case == "drifting" else 0.0) for n, t in enumerate(out)]
    track.sent[:] = sent
    w, _ = watch(s, track, t0)
    for n in range(240):
        w.arrivals.append(arrivals[n])
        w.out_ts.append(s.clip.pts(n))
        w.look_at((s.clip.luma[track.index[n]], 128.0, 128.0), arrivals[n], n)
    assert w.latency_method == "rtp_timestamp" and w.exact
    r = ProbeResult("s1", "livepeer", "http://gw", duration_s=8.0)
    w.fill(r, arrivals[-1] + 1 / FPS, [])
    # the truth: frames both sent and out at least SUSPECT_MS (2 ms) later than the rest
    flagged = [n for n in range(240) if sent[n] - due[n] >= 0.002 and out[n] - due[n] >= 0.002 + 0.005 * (case == "all-late")]
    assert late == list(range(90, 100)) and len(flagged) == (10 if case in ("sent-late", "drifting") else 0)
    assert r.freeze_count == (1 if case == "network-late" else 0)
    assert r.tester_stall_frames == len(flagged)
    if case in ("sent-late", "drifting"):  # of the 11 intervals with a late frame at an end, the one across the stall is out
        # of the jitter by its length (as a freeze's is: counted by ``freezes``, which gives it the late send's start)
        assert r.jitter_suspect_intervals == len(flagged)
        assert r.jitter_coeff == pytest.approx(0.0, abs=1e-3 if case == "sent-late" else 0.06)
    assert [ms for _, ms, _ in r.latency_samples] == pytest.approx([1000 * (arrivals[n] - sent[n]) for n in range(240)],
                                                                     abs=1e-3)


def test_late_sends_are_not_excused_on_an_alignment_that_is_not_exact():
    """The output's first frame after each step is lost, so every step looks a frame late and the alignment
    cannot be pinned to one frame: its lag could name each frame's neighbour, so no late send is excused (the
    tester's stall of frames 90 to 99 is then a freeze)."""
    s, t0, stall = spec(), 1000.0, 0.310
    track = sent_track(s.clip, t0, 240)
    due = list(track.sent)
    track.sent[:] = [due[90] + stall if due[90] <= d <= due[90] + stall else d for d in due]
    lost = {n for n in range(1, 240) if s.clip.luma[track.index[n]] != s.clip.luma[track.index[n - 1]]}
    w, _ = watch(s, track, t0)
    for n in (n for n in range(240) if n not in lost):
        w.arrivals.append(track.sent[n] + 0.1)
        w.out_ts.append(s.clip.pts(n))
        w.look_at((s.clip.luma[track.index[n]], 128.0, 128.0), track.sent[n] + 0.1, len(w.arrivals) - 1)
    r = ProbeResult("s1", "livepeer", "http://gw", duration_s=8.0)
    w.fill(r, track.sent[-1] + 0.2, [])
    assert w.latency_method == "rtp_timestamp" and not w.exact and len(lost) >= 5
    assert r.tester_stall_frames == 0 and r.freeze_count == 1


def test_first_packet_ms_is_when_the_first_frame_left_not_when_it_was_due():
    """A session's first frame waits for its send instant and leaves after the sends ahead of it in that turn:
    ``first_packet_ms`` is its send, from the session's start."""
    s, t0 = spec(), 1000.0
    track = sent_track(s.clip, t0 + 0.5, 60)
    track.sent[0] += 0.0031  # it left 3.1 ms after its instant
    w, _ = watch(s, track, t0)
    r = ProbeResult("s1", "livepeer", "http://gw", duration_s=2.0)
    w.fill(r, track.sent[-1] + 0.2, [])
    assert r.first_packet_ms == pytest.approx(503.1, abs=1e-3)

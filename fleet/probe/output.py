"""What the probe sees in the gateway's output: every frame's arrival, decoded windows of it, the
latency alignment against the input's brightness steps, black output and prompt effects.

``OutputWatch`` is fed ``TapFrame``s by the RTP tap (fleet.rtp) and knows nothing of WebRTC or HTTP:
it decodes only inside short windows: until the latency alignment is found; around each prompt switch
until its effect is seen, from the last keyframe before the switch's second (the frames since it are
kept); and one frame every ``check_every_s``, the next keyframe the output brings (a check has no moment
to catch, so it waits for one rather than decoding the GOP before it, or takes a frame another window
decodes meanwhile), decoding on while black frames come (up to ``black_window_s`` apart) until ``BLACK_RUN``
in a row make the output black; a keyframe is asked for with a PLI through ``ask_keyframe`` only when
none came within ``CHECK_KEYFRAME_WAIT_S``. The per-session figures it leaves in the result (latency
samples, the tester's late sends, per-second counts) come from pure functions: ``rtp_latency``, ``late_sends``,
``per_second``.

After an orchestrator swap the session subscribes again (``resubscribed``): the new subscription is a
segment of its own, with its own RTP timestamp origin and its own latency alignment; the latency
samples of earlier segments are kept, and the gaps between segments are cut out of the timing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import av

from fleet.media import PacketTrack
from fleet.probe.latency import Aligner, LatencySample, StepDetector, judge_first, lag_is_exact, late_sends, rtp_latency
from fleet.probe.looplag import SUSPECT_MS
from fleet.probe.planes import effect_start, frame_means
from fleet.probe.timing import PLAYABLE_FRAMES, analyse, holding, jitter, merged, per_second, percentile, suspect_frames
from fleet.probe.types import ProbeResult, ProbeSpec
from fleet.rtp import FrameTap, TapFrame
from fleet.rtpclock import VIDEO_CLOCK

BLACK_LUMA = 24.0             # a decoded frame this dark, with neutral chroma, is black
BLACK_RUN = 10                # decoded black frames in a row that make the output "black"
PLI_EVERY_S = 0.5
WINDOW_BEFORE_SWITCH_S = 1.0  # a switch's window opens this long before it: the look its effect is judged against
WINDOW_AFTER_EFFECT_S = 0.5
WINDOW_MAX_S = 10.0
CHROMA_KEEP = 300             # decoded frames' chroma kept for the effect check (trimmed by a third)
GOP_KEEP = 150                # frames kept since the last keyframe, so that a window decodes from it at once
CHECK_KEYFRAME_WAIT_S = 2.5   # a check waits this long for the output's keyframe (go-livepeer: 2 s GOP), then asks

Event = Callable[..., None]   # event(kind, **data)


class OutputWatch:
    """The output frames of one session, and what decoding some of them found."""

    def __init__(self, spec: ProbeSpec, track: PacketTrack, t0: float, event: Event,
                 ask_keyframe: Callable[[FrameTap], None]) -> None:
        self.spec, self.opt, self.track, self.t0 = spec, spec.options, track, t0
        self.event, self._ask = event, ask_keyframe
        self.tap: FrameTap | None = None
        self.arrivals: list[float] = []
        self.loop_stamped: list[int] = []  # frames whose arrival is when the loop handled them (not ``exact``)
        self.out_ts: list[int] = []        # RTP timestamps relative to the first output frame
        self.ts0: int | None = None
        self.on_first: Callable[[], None] = lambda: None
        self.first_output: Callable[[], None] = lambda: None   # the session's first frame, after a swap too
        # decoding
        self.decoder: Any = None           # av's CodecContext while decoding
        self.gop: list[tuple[TapFrame, int]] = []  # frames since the last keyframe, while not decoding
        self.windows: list[tuple[float, float]] = []  # (start, end) monotonic
        self.check_due: float | None = None  # a check waiting for a keyframe since then
        self.black_until = 0.0             # decoding on after a black frame, to see whether a run follows
        self.switch_windows: dict[int, tuple[float, float]] = {}  # per prompt switch, until its effect is seen
        self.calibrating = True
        self.aligned_at_steps = 0          # detected output steps when the alignment last ran
        self.last_pli, self.prev_decoded_index = 0.0, -2
        self.detector = StepDetector()
        self.black_run = self.black_frames = self.decoded_frames = 0
        self.chroma: list[tuple[float, float, float]] = []  # (arrival, mean U, mean V) of decoded frames
        self.pending_effects: list[tuple[int, float]] = []  # (update index, request time)
        self.prompt_switch_ms: list[float | None] = []  # per prompt switch, once switching starts
        self.latency_method: str | None = None
        self.segments: list[int] = []      # index of the first frame of each subscription after the first
        self.earlier_samples: list[LatencySample] = []  # latency samples of the segments before the current
        self.earlier_late: list[tuple[float, float]] = []  # their late sends' spans (``late_sends``)
        self.calibrate_from = t0
        self._new_alignment()

    def _new_alignment(self) -> None:
        # a latency longer than the clip's loop would be ambiguous (the steps repeat)
        spec = self.spec
        max_latency = min(self.opt.max_latency_s, 0.9 * spec.clip.frames / spec.clip.fps)
        self.aligner = Aligner(tolerance=2.5 / spec.clip.fps, max_latency=max_latency)
        self.recv_aligner = Aligner(tolerance=0.3, max_latency=max_latency)
        self.exact = False  # whether the RTP alignment is pinned to one frame

    def resubscribed(self, tap: FrameTap, on_first: Callable[[], None]) -> None:
        """A new subscription after a swap: its frames start a new segment (``on_first`` at its first, then
        ``first_output``: a swap may come before any output)."""
        self.earlier_samples += self.latency_samples()
        self.earlier_late += self.late_sends()

        def first() -> None:
            on_first()
            self.first_output()

        self.tap, self.on_first = tap, first
        self.ts0 = None
        self.decoder = None
        self.gop = []
        self.check_due, self.black_run, self.black_until = None, 0, 0.0  # a run is one orchestrator's
        self.detector = StepDetector()
        self.prev_decoded_index = -2
        self.aligned_at_steps = 0
        self.latency_method = None
        self.calibrating = True
        self.calibrate_from = time.monotonic()
        self._new_alignment()

    # --- windows ---------------------------------------------------------------------

    def check_window(self, now: float | None = None) -> None:
        """Decode one frame (is the output black?): the next one another window decodes, or the next keyframe
        (``_check_opens``); a black one keeps decoding on (``look_at``)."""
        if self.check_due is None:
            self.check_due = time.monotonic() if now is None else now

    def _check_opens(self, f: TapFrame, decoding: bool) -> bool:
        """Whether a waiting check is served by ``f``: on a frame that can be decoded, because another window
        decodes it (its decoder running, or starting from the kept GOP) or because it is a complete keyframe (a
        frame or a kept one found incomplete then resets the decoder, which asks for a keyframe). A
        check still waiting past WINDOW_MAX_S is given up (missed); past CHECK_KEYFRAME_WAIT_S it asks for a
        keyframe."""
        due = self.check_due
        if due is None:
            return False
        waited = f.arrival - due
        opens = decoding and (self.decoder is not None or bool(self.gop))
        if not opens and waited > WINDOW_MAX_S:
            self.check_due = None
            self.event("check_window_missed", waited_s=round(waited, 3))
            return False
        if opens or (f.keyframe and f.complete and f.arrival >= due):  # one that came after it was asked
            return True  # served once a frame is looked at (``look_at``): a frame that fails to decode is none
        if waited > CHECK_KEYFRAME_WAIT_S:
            self._pli(f.arrival)
        return False

    def _pli(self, now: float) -> None:
        if self.tap is not None and self.tap.ssrc is not None and now - self.last_pli >= PLI_EVERY_S:
            self.last_pli = now
            self._ask(self.tap)

    def switch_coming(self, k: int) -> None:
        """Prompt switch ``k`` is a second away: decode from now until its effect is seen."""
        start = time.monotonic()
        self.switch_windows[k] = (start, start + WINDOW_BEFORE_SWITCH_S + WINDOW_MAX_S)

    def switched(self, k: int, t_req: float) -> None:
        self.pending_effects.append((k, t_req))

    # --- frames ----------------------------------------------------------------------

    def on_frame(self, f: TapFrame) -> None:
        if self.ts0 is None:
            self.ts0 = f.timestamp
            if self.arrivals:
                self.segments.append(len(self.arrivals))
            self.on_first()
        index = len(self.arrivals)
        self.arrivals.append(f.arrival)
        if not f.exact:
            self.loop_stamped.append(index)
        self.out_ts.append(f.timestamp - self.ts0)
        if self.tap is not None and self.tap.unsupported:
            return
        want = self._want_decode(f.arrival)
        if self._check_opens(f, want) or want:
            if self.decoder is None and self.gop and not (f.keyframe and f.complete):
                # a window opens mid-GOP: decode from its keyframe at once
                for kept, i in self.gop:
                    self._decode(kept, i)
            self.gop = []
            self._decode(f, index)
            return
        if self.decoder is not None:
            self.decoder = None
            self.detector.reset_continuity()
        self._keep(f, index)

    def _keep(self, f: TapFrame, index: int) -> None:
        """Frames since the last complete keyframe, for a prompt switch's window (the output's GOP is 2 s
        upstream, and a gateway need not answer a PLI: waiting for the next keyframe could miss the switch)."""
        if f.keyframe and f.complete:
            self.gop = [(f, index)]
        elif self.gop and len(self.gop) < GOP_KEEP:
            self.gop.append((f, index))
        else:
            self.gop = []

    def _want_decode(self, now: float) -> bool:
        if self.calibrating and now - self.calibrate_from > self.opt.calibrate_max_s:
            self.calibrating = False  # no alignment in time (an output without brightness steps): give up
            self.event("latency_aligned", method=self.latency_method, steps=len(self.detector.sure()[0]), exact=False)
        if self.opt.decode == "all" or self.calibrating or self.pending_effects or now < self.black_until:
            return True
        if self.windows:  # most frames come with no window open: nothing to look through
            self.windows = [w for w in self.windows if w[1] > now]
        return bool(self.windows or self.switch_windows) and any(s <= now < e for s, e in (*self.windows, *self.switch_windows.values()))

    def _decode(self, f: TapFrame, index: int) -> None:
        if not f.complete:
            self.decoder = None
            self.detector.reset_continuity()
        if self.decoder is None:
            if not (f.keyframe and f.complete):
                self._pli(f.arrival)
                return
            codec = self.tap.codec if self.tap is not None else None
            self.decoder = av.CodecContext.create("h264" if codec == "H264" else "vp8", "r")
            # one frame out per packet in, at once: frame threads or reorder guesses would hand back an
            # earlier frame and shift every step the latency alignment sees
            self.decoder.thread_count = 1
            self.decoder.flags |= av.codec.context.Flags.low_delay
        try:
            frames = self.decoder.decode(av.Packet(f.data))
        except av.FFmpegError:
            self.decoder = None
            self.detector.reset_continuity()
            return
        for frame in frames:
            self.look_at(frame_means(frame), f.arrival, index)

    def look_at(self, means: tuple[float, float, float], arrival: float, index: int) -> None:
        """One decoded frame's mean Y, U and V (black output, the look, the latency steps)."""
        luma, mu, mv = means
        self.decoded_frames += 1
        if self.check_due is not None and arrival >= self.check_due:
            self.check_due = None  # a waiting check is served (by a frame that came after it was asked)
        consecutive = index == self.prev_decoded_index + 1
        self.prev_decoded_index = index
        black = luma < BLACK_LUMA and abs(mu - 128) < 8 and abs(mv - 128) < 8
        run = self.black_run if consecutive or self.black_run >= BLACK_RUN else 0  # in a row: a gap starts it again
        self.black_run = run + 1 if black else 0
        # a run begun, not yet seen whole: decode on to see whether it is one (ended or seen: no longer for it)
        self.black_until = arrival + self.opt.black_window_s if 0 < self.black_run < BLACK_RUN else 0.0
        if black:
            self.black_frames += 1
            if self.black_run == BLACK_RUN:
                self.event("black_output")
        else:
            self.detector.frame(self.out_ts[index] / VIDEO_CLOCK, arrival, luma, consecutive)
        self.chroma.append((arrival, mu, mv))
        if len(self.chroma) > CHROMA_KEEP:
            del self.chroma[: CHROMA_KEEP // 3]
        self.check_effects()
        if not self.calibrating:
            return
        exact = False
        steps = len(self.detector.steps)
        if steps >= 3 and steps != self.aligned_at_steps:  # align again only when a new step was seen
            exact = self.align()
            self.aligned_at_steps = len(self.detector.steps)  # one fewer: a tentative first one dropped
        if exact:  # found: decoding goes back to short windows (giving up is _want_decode's, on the clock)
            self.calibrating = False
            self.event("latency_aligned", method=self.latency_method, steps=len(self.detector.sure()[0]), exact=exact)

    # --- latency and effects -----------------------------------------------------------

    def input_steps(self) -> list[tuple[float, int, float]]:
        sent = self.track.sent
        return [(self.spec.clip.pts(n) / VIDEO_CLOCK, d, sent[n]) for n, d in self.track.level_steps(len(sent))]

    def align(self) -> bool:
        """Find the alignment; True once it is exact (pinned to one frame)."""
        inputs = self.input_steps()
        self.exact = False
        judge_first(self.detector, inputs, self.aligner, 1 / self.spec.clip.fps)
        steps, prev = self.detector.sure()
        if self.aligner.update([(t, d, a) for t, a, d in steps], inputs) and self.aligner.lag is not None:
            self.latency_method = "rtp_timestamp"
            self.exact = lag_is_exact(self.aligner.lag, prev, inputs, self.aligner.matched, 1 / self.spec.clip.fps)
            return self.exact
        recv = [(a, d, a) for _, a, d in steps]
        recv_in = [(s, d, s) for _, d, s in inputs]
        if self.recv_aligner.update(recv, recv_in):
            # kept, but calibration goes on while the timestamps may still align (a sample per frame, and
            # a few steps can fit two lags of a clip whose runs repeat): it ends at calibrate_max_s
            self.latency_method = "brightness_step"
            return False
        self.latency_method = None
        return False

    def check_effects(self) -> None:
        """For each pending prompt switch: has the look moved away from the second before it?"""
        done = []
        for i, (k, t_req) in enumerate(self.pending_effects):
            if time.monotonic() - t_req > WINDOW_MAX_S:
                done.append(i)
                self.switch_windows.pop(k, None)
                continue
            first = effect_start(self.chroma, t_req, WINDOW_BEFORE_SWITCH_S)
            if first is None:
                continue
            self.prompt_switch_ms[k] = round((first - t_req) * 1000, 3)
            self.event("prompt_effect", index=k, ms=self.prompt_switch_ms[k])
            self.windows.append((first, first + WINDOW_AFTER_EFFECT_S))
            self.switch_windows.pop(k, None)  # seen: decode no longer than the short window after it
            done.append(i)
        for i in reversed(done):
            self.pending_effects.pop(i)

    # --- the result ------------------------------------------------------------------

    def fill(self, r: ProbeResult, end: float | None, suspect: Sequence[tuple[float, float]]) -> None:
        """Put what was seen into the result: ``end`` is the session's end (None when it broke off, so
        the silence before a break is no freeze), ``suspect`` the tester's own loop stalls (those that hold no
        frame stamped by the loop itself are dropped: a socket's stamp is not late by them); with them, its late
        sends (``late_sends``)."""
        a, track, tap = self.arrivals, self.track, self.tap
        samples = self.earlier_samples + self.latency_samples()  # first: it may align once more
        suspect = merged(holding(a, self.loop_stamped, suspect) + self.earlier_late + self.late_sends())
        r.frames_sent, r.frames_received = len(track.sent), len(a)
        if track.sent:
            r.first_packet_ms = _ms(track.sent[0] - self.t0)
            r.pacing_late_ms_mean = _ms(track.late_s_total / len(track.sent))
            r.pacing_late_ms_max, r.tester_send_jitter_coeff = _ms(track.late_s_max), jitter(track.sent)[0]  # as the output's
            r.keyframes_on_request = track.keyframe_jumps
        if tap is not None:
            r.packets_received = tap.packets
            if tap.packets_expected:
                r.packet_loss_pct = round(100 * tap.packets_lost / tap.packets_expected, 3)
            if tap.unsupported:
                r.reasons.append(f"output codec {tap.unsupported} is not measured")
        if a:
            r.startup_s = round(a[0] - self.t0, 4)
            if len(a) >= PLAYABLE_FRAMES:
                r.playable_s = round(a[PLAYABLE_FRAMES - 1] - self.t0, 4)
        if len(a) >= 2:
            t = analyse(a, end=end, suspect=list(suspect), cuts=self.segments)
            r.output_fps, r.jitter_coeff = t.output_fps, t.jitter_coeff
            r.jitter_coeff_p50, r.jitter_coeff_p95 = t.jitter_coeff_p50, t.jitter_coeff_p95
            r.jitter_intervals, r.jitter_suspect_intervals = t.jitter_intervals, t.jitter_suspect_intervals
            r.freeze_count, r.freeze_s = t.freeze_count, t.freeze_s
        flagged = suspect_frames(a, list(suspect)) if suspect else []
        r.tester_stall_frames = len(flagged)
        if self.opt.keep_timeline:
            r.timeline = list(zip(self.out_ts, a))
            r.timeline_suspect = flagged
        r.latency_samples = samples
        r.latency_method = self.latency_method or next((m for _, _, m in self.earlier_samples), None)
        values = [ms for _, ms, _ in r.latency_samples]
        if values:
            r.g2g_latency_ms = round(percentile(values, 50) or 0.0, 3)
            r.g2g_latency_p95_ms = round(percentile(values, 95) or 0.0, 3)
        r.prompt_switch_ms = list(self.prompt_switch_ms)
        r.decoded_frames, r.black_frames = self.decoded_frames, self.black_frames
        r.per_second = per_second(r.duration_s, self.t0, a, track.sent, r.latency_samples)

    def late_sends(self) -> list[tuple[float, float]]:
        """Spans in which the current segment's frames may have come sooner had the tester sent their input frames
        on time (``latency.late_sends``, at least ``SUSPECT_MS``; its timestamps, exactly aligned, name each input)."""
        if not self.exact or self.aligner.lag is None or self.track.start is None:  # exact: aligned on RTP
            return []
        first = self._segment_start()
        return late_sends(self.out_ts[first:], self.arrivals[first:], self.aligner.lag, self.track.sent,
                          self.track.start, self.spec.clip.fps, SUSPECT_MS / 1000)

    def _segment_start(self) -> int:
        """The index of the current subscription's first frame."""
        return self.segments[-1] if self.segments and self.ts0 is not None else 0

    def latency_samples(self) -> list[LatencySample]:
        """Every output frame's glass-to-glass latency the alignment can pin (aligning once more if
        the session ended while still calibrating)."""
        if self.calibrating and len(self.detector.steps) >= 3:
            self.align()
        if self.latency_method == "rtp_timestamp" and self.aligner.lag is not None:
            first = self._segment_start()
            return rtp_latency(self.out_ts[first:], self.arrivals[first:], self.aligner.lag, self.track.sent,
                               self.spec.clip.fps, self.t0)
        if self.latency_method == "brightness_step":
            inputs = self.input_steps()
            return [(round(arrival - self.t0, 4), round((arrival - inputs[k][2]) * 1000, 3), "brightness_step")
                    for (_, arrival, _), k in zip(self.detector.sure()[0], self.recv_aligner.matched)]
        return []


# --- helpers -----------------------------------------------------------------------------

def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)

"""Matching what came back to what was sent, when every pixel was repainted.

The sent clip steps its overall brightness after irregular run lengths. An
image-to-image model changes the look of every pixel but keeps the frame
timing and such coarse steps, so the *sequence of step times* survives even
when nothing else does. ``align`` finds the one offset that lines the output
steps up with the input steps (the irregular runs make any other offset
fail), tolerating frames the gateway dropped.

Two clocks can carry that match:

- ``rtp_timestamp``: the gateway keeps each frame's timestamp (shifted by an
  unknown constant, its RTP origin). Once the constant is known, every output
  frame names the input frame it came from, and its latency is its arrival
  minus that frame's send time: a sample per frame, with no decoding beyond
  what found the constant.
- ``brightness_step``: arrival times of output steps against send times of
  input steps, one sample per step; used when the timestamps do not line up
  (a gateway that re-times frames).
"""

from __future__ import annotations

import bisect
import statistics
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from fleet.rtpclock import VIDEO_CLOCK

__all__ = ["EARLY_KEEP", "Aligner", "LatencySample", "StepDetector", "align", "input_frames", "judge_first", "lag_is_exact",
           "late_sends", "rtp_latency"]

LatencySample = tuple[float, float, str]  # (t_s from the session's start, ms, method)

MIN_STEPS = 3  # output steps needed before an alignment is trusted


def align(out_steps: list[tuple[float, int, float]], in_steps: list[tuple[float, int, float]], tolerance: float,
          max_latency: float, least: int = MIN_STEPS) -> tuple[float, list[int]] | None:
    """The lag L that puts every output step (t, d, arrival) at t - L just after an input step (u, d, sent).

    "Just after" is within ``tolerance`` (frames dropped around a step make it look later). Returns
    (L, index of the matched input step for each output step), or None when no lag fits every step,
    or more than one does. Candidate lags pair the last output step with each input step of the same
    direction sent at most ``max_latency`` before that output step arrived. ``L`` is the smallest
    residual fit, since drops only ever make a step look later.

    Each output step takes the nearest input step in its window, and the steps must come out in the
    order they went in, each once: a keyframe jump can leave one-frame runs, so two steps of the same
    direction two frames apart, both within the tolerance of one output step. Fewer than ``least`` output
    steps give none.
    """
    if len(out_steps) < least:
        return None
    by_dir: dict[int, list[tuple[float, int]]] = {1: [], -1: []}
    for i, (u, d, _) in enumerate(in_steps):
        by_dir[d].append((u, i))
    times = {d: [u for u, _ in v] for d, v in by_dir.items()}
    t_last, d_last, arrived = out_steps[-1]
    fits: list[tuple[float, list[int]]] = []
    for u, k in by_dir[d_last]:
        if not 0 <= arrived - in_steps[k][2] <= max_latency:
            continue
        lag = t_last - u
        matched = _match(out_steps, lag, by_dir, times, tolerance)
        if matched is not None:
            fits.append((lag, matched))
    if not fits:
        return None
    distinct = {round(lag / tolerance) for lag, _ in fits}
    if max(distinct) - min(distinct) > 4:  # two different lags fit: not enough steps seen yet
        return None
    _, matched = min(fits, key=lambda f: f[0])
    lag = min(t - in_steps[k][0] for (t, _, _), k in zip(out_steps, matched))
    return lag, matched


def _match(out_steps: list[tuple[float, int, float]], lag: float, by_dir: dict[int, list[tuple[float, int]]],
           times: dict[int, list[float]], tolerance: float) -> list[int] | None:
    """For each output step, the nearest input step of its direction from ``tolerance`` after its time
    less ``lag`` to twice that before (the earlier on a tie); None when one has none, or when they do not
    follow one another (a step cannot come out twice, nor before one that went in before it)."""
    matched: list[int] = []
    for t, d, _ in out_steps:
        target = t - lag
        best: int | None = None
        j = bisect.bisect_right(times[d], target + tolerance) - 1
        while j >= 0 and target - times[d][j] <= 2 * tolerance:
            if best is None or abs(target - times[d][j]) <= abs(target - times[d][best]):
                best = j
            j -= 1
        if best is None or (matched and by_dir[d][best][1] <= matched[-1]):
            return None
        matched.append(by_dir[d][best][1])
    return matched


def lag_is_exact(lag: float, out_prev: list[float | None], in_steps: list[tuple[float, int, float]],
                 matched: list[int], frame_s: float) -> bool:
    """Whether ``lag`` is pinned to one frame: some step's previous output frame rules out ``lag - frame``.

    ``lag`` is the latest lag that fits (no step earlier than its input step). If every step seen had
    its first frame dropped, one frame less would fit as well; the frame shown just before a step
    still showed the old level, so it came from before the input step: lag > prev - u. A step whose
    previous frame rules out ``lag`` itself was matched to the wrong input step: not exact.
    """
    lower = max((p - in_steps[k][0] for p, k in zip(out_prev, matched) if p is not None), default=None)
    return lower is not None and lag - frame_s <= lower + 1e-6 and lower < lag - frame_s / 2


EARLY_KEEP = 120  # frames kept until the first step, to find the one the levels were learnt across (4 s at 30 fps)


@dataclass
class StepDetector:
    """Finds brightness steps in the mean luma of consecutive decoded output frames.

    The levels are learnt from what is seen (the look may map them anywhere); a step is a crossing
    of the midpoint by more than ``hysteresis`` of the level gap, between two frames known to be
    consecutive. Until the levels are known no step can be; when the first is found, the frames before it are
    judged again by the levels known then, and the last crossing among them (the one the levels were learnt
    across, or the last of several) counts too: a step earlier, one run of the clip less to decode before the
    latency aligns. Only ``tentative``ly: it may be the end of a gateway's warm-up frames rather than the
    output's own, which only an exact alignment can tell (``judge_first``); until then ``sure`` leaves it out.
    """

    hysteresis: float = 0.2
    lo: float | None = None
    hi: float | None = None
    level: int | None = None  # +1 bright, -1 dark
    steps: list[tuple[float, float, int]] = field(default_factory=list)  # (clock time, arrival, direction)
    prev: list[float | None] = field(default_factory=list)  # clock time of the decoded frame before each step
    tentative: bool = False  # the first step is the crossing the levels were learnt across, not yet matched
    _last_t: float | None = None
    # until the first step: (clock time, arrival, luma, consecutive, the frame before's clock time) of each frame
    _early: deque[tuple[float, float, float, bool, float | None]] | None = field(
        default_factory=lambda: deque(maxlen=EARLY_KEEP))

    def _side(self, luma: float) -> int | None:
        assert self.lo is not None and self.hi is not None
        gap, mid = self.hi - self.lo, (self.hi + self.lo) / 2
        return 1 if luma > mid + self.hysteresis * gap else -1 if luma < mid - self.hysteresis * gap else None

    def frame(self, clock_t: float, arrival: float, luma: float, consecutive: bool) -> None:
        last_t, self._last_t = self._last_t, clock_t
        self.lo = luma if self.lo is None else min(self.lo, luma)
        self.hi = luma if self.hi is None else max(self.hi, luma)
        if self._early is not None:
            self._early.append((clock_t, arrival, luma, consecutive, last_t))
        if self.hi - self.lo < 30:  # levels not seen yet
            return
        now = self._side(luma)
        if now is None:
            return
        if consecutive and self.level is not None and now != self.level:
            if self._early is not None:
                self._first_steps(self._early)
                self._early = None
            self.steps.append((clock_t, arrival, now))
            self.prev.append(last_t)
        self.level = now

    def _first_steps(self, early: deque[tuple[float, float, float, bool, float | None]]) -> None:
        """At the first step found: the crossing just before it, judged by the levels known now (its frames
        came while they were being learnt), counted first."""
        level, found = None, None
        for clock_t, arrival, luma, consecutive, last_t in list(early)[:-1]:  # the last frame is the step found
            if last_t is None:  # the first frame, or the first after reset_continuity
                level = None
            now = self._side(luma)
            if now is None:
                continue
            if consecutive and level is not None and now != level:  # as ``frame`` judges a step
                found = (clock_t, arrival, now, last_t)
            level = now
        if found is not None and level == self.level:  # the run the step found ends (as the levels say now)
            self.steps.append(found[:3])
            self.prev.append(found[3])
            self.tentative = True

    def sure(self) -> tuple[list[tuple[float, float, int]], list[float | None]]:
        """The steps and the clock times of the frames before them, less a tentative first step."""
        k = 1 if self.tentative else 0
        return self.steps[k:], self.prev[k:]

    def drop_first(self) -> None:
        """The tentative first step was not the output's (``judge_first``)."""
        if self.tentative:
            del self.steps[0], self.prev[0]
            self.tentative = False

    def reset_continuity(self) -> None:
        self.level = None
        self._last_t = None


@dataclass
class Aligner:
    """Keeps the current alignment of output steps to input steps, in one clock."""

    tolerance: float
    max_latency: float
    lag: float | None = None
    matched: list[int] = field(default_factory=list)
    lost: int = 0  # times a new step contradicted the alignment

    def update(self, out_steps: list[tuple[float, int, float]], in_steps: list[tuple[float, int, float]]) -> bool:
        fit = align(out_steps, in_steps, self.tolerance, self.max_latency)
        if fit is None:
            if self.lag is not None:
                self.lost += 1
            self.lag, self.matched = None, []
            return False
        self.lag, self.matched = fit
        return True


def judge_first(d: StepDetector, in_steps: list[tuple[float, int, float]], rtp: Aligner, frame_s: float) -> None:
    """Keep or drop ``d``'s tentative first step by the output's RTP timestamps, which alone can vouch for it.
    Kept once their alignment with it is exact (pinned to one frame) and the steps after it, alone, fit that one
    lag and no other (two of them are enough to say so): a step that is not the output's own rules the true lag
    out, and could pick, with two runs of the clip that happen to repeat, a wrong one of its own. Dropped once
    the alignment without it is exact. A gateway that re-times its frames leaves it tentative for good, and out
    of every alignment (``StepDetector.sure``): a step's latency sample is all it costs."""
    if not d.tentative:
        return
    outs = [(t, s, a) for t, a, s in d.steps]

    def exact(k: int) -> tuple[float, list[int]] | None:
        fit = align(outs[k:], in_steps, rtp.tolerance, rtp.max_latency)
        return fit if fit is not None and lag_is_exact(fit[0], d.prev[k:], in_steps, fit[1], frame_s) else None

    with_it = exact(0)
    alone = align(outs[1:], in_steps, rtp.tolerance, rtp.max_latency, least=2) if with_it is not None else None
    if with_it is not None and alone is not None and abs(alone[0] - with_it[0]) < frame_s / 2:
        d.tentative = False
    elif exact(1) is not None:
        d.drop_first()


def input_frames(out_ts: Sequence[int], lag: float, fps: float, count: int) -> Iterator[tuple[int, int]]:
    """(output frame, input frame) for each output frame whose RTP timestamp, less the aligned ``lag``, lands on
    one of the first ``count`` input frames (within a tenth of a frame)."""
    for i, ts in enumerate(out_ts):
        exact = (ts / VIDEO_CLOCK - lag) * fps
        n = round(exact)
        if abs(exact - n) < 0.1 and 0 <= n < count:
            yield i, n


def rtp_latency(out_ts: Sequence[int], arrivals: Sequence[float], lag: float, sent: Sequence[float],
                fps: float, t0: float) -> list[LatencySample]:
    """Per output frame whose input frame ``input_frames`` names: its arrival less that frame's send time."""
    return [(round(arrivals[i] - t0, 4), round((arrivals[i] - sent[n]) * 1000, 3), "rtp_timestamp")
            for i, n in input_frames(out_ts, lag, fps, len(sent))]


def late_sends(out_ts: Sequence[int], arrivals: Sequence[float], lag: float, sent: Sequence[float], start: float,
               fps: float, min_s: float, near_s: float = 2.0) -> list[tuple[float, float]]:
    """The tester's own stalls on the sending side, as far as the output shows them. An output frame whose input
    frame (``input_frames``) left ``min_s`` or more after its due time (``start`` + n / ``fps``) may have come
    sooner had the tester sent on time, by as much as it came later than usual: than the median of the delay
    from due time to arrival of the frames within ``near_s`` of it whose input left on time (of all of them
    there, when none did). A gateway that buffers its input absorbs a short lateness, and a lateness every frame
    has moves no interval. Its span: from the later of its arrival less its input's lateness and its usual
    arrival, to its arrival; only spans of ``min_s`` or more."""
    pairs = list(input_frames(out_ts, lag, fps, len(sent)))
    delay = [arrivals[i] - (start + n / fps) for i, n in pairs]
    late = [sent[n] - (start + n / fps) for _, n in pairs]
    on_time = [k for k, x in enumerate(late) if x < min_s]
    reach = max(1, round(near_s * fps))
    spans = []
    for k, (i, _) in enumerate(pairs):
        if late[k] < min_s:
            continue
        near = on_time[bisect.bisect_left(on_time, k - reach):bisect.bisect_right(on_time, k + reach)]
        usual = statistics.median(delay[j] for j in near) if near else \
            statistics.median(delay[max(0, k - reach):k + reach + 1])
        begin = max(arrivals[i] - late[k], arrivals[i] - delay[k] + usual)
        if arrivals[i] - begin >= min_s:
            spans.append((begin, arrivals[i]))
    return spans

"""Output timing from a session's frame arrivals: fps, jitter and freezes. Pure: no WebRTC here.

``suspect`` spans are the tester's own stalls: its loop's, those that hold a frame the loop stamped as it
handled it (``holding``: a frame timed by its socket, ``fleet.sockstamp``, is not late by any stall of the
loop), and its late sends', the spans in which a frame may have come sooner had the tester sent its input on
time (``fleet.probe.latency.late_sends``); ``merged`` into one list. Below, "stamped during the tester's own
stall" is a frame in one of them.

- ``output_fps``: frames per second between the first and the last frame, over the whole session.
  Its ends are the first and last frames not stamped during the tester's own stall (``suspect``): a
  first frame stamped late (16 sessions starting at once on two cores) would shorten the span and
  raise the rate by the tester's delay.
- ``jitter_coeff``: the coefficient of variation (stddev / mean) of the intervals between output
  frames, over the steady state: from the ``PLAYABLE_FRAMES``-th frame on, so that a start-up ramp
  (cold start, warm-up, the first keyframe) is not counted as jitter, and without the freezes (they
  are counted as freezes; one long gap would otherwise be the whole coefficient). Intervals with an
  end stamped while the tester's own event loop was stalled (``suspect``) are left out and counted
  apart: the tester's noise is never reported as the network's jitter. The same coefficient over consecutive
  ``JITTER_WINDOW_S`` windows gives ``jitter_coeff_p50`` / ``_p95``: jitter that comes in bursts.
- freezes, by the W3C webrtc-stats threshold with one difference: an interval is a freeze when it
  is at least max(3 x mean, mean + 150 ms), the mean taken over the last 30 intervals that were not
  freezes (once 5 are known). The W3C text and libwebrtc (video_quality_observer2.cc) average the last
  30 intervals with the freezes in them, so one long freeze raises the bar for the next; here a freeze
  does not hide the one after it. Its whole length counts to ``freeze_s``. Silence from the last frame to
  the session's end counts the same way (an output that stalls for good is a freeze too). A frame
  stamped during the tester's own stall counts as arriving at the stall's start at the latest, so
  the tester's stall is not reported as the stream's freeze.
- an orchestrator swap's gap (the viewer's output gone from the last frame of one subscription to the
  first of the next, ``cuts``) is cut out of the timeline before all of the above, less one typical
  interval: fps, jitter and freezes describe the output while an orchestrator served it, and the gap
  is reported as the swap's own (``swap_gap_s``), never as a freeze.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["FREEZE_MIN_S", "JITTER_WINDOW_S", "PLAYABLE_FRAMES", "Timing", "analyse", "freeze_ends", "freezes", "jitter",
           "holding", "merged", "output_fps", "per_second", "percentile", "splice", "suspect_frames"]

PLAYABLE_FRAMES = 10          # "playable": this many output frames received; the steady state starts there
FREEZE_MIN_S = 0.150          # W3C: an interval > max(3 x mean, mean + 150 ms) is a freeze
FREEZE_WINDOW = 30            # ... the mean over this many recent non-freeze intervals (W3C's 30)
FREEZE_MIN_SAMPLES = 5        # ... once this many are known
JITTER_WINDOW_S = 5.0         # windowed jitter: non-overlapping windows of this length
JITTER_WINDOW_MIN = 20        # ... each with at least this many intervals


@dataclass(frozen=True)
class Timing:
    output_fps: float | None = None
    jitter_coeff: float | None = None
    jitter_coeff_p50: float | None = None
    jitter_coeff_p95: float | None = None
    jitter_intervals: int = 0          # intervals the jitter figure is computed from
    jitter_suspect_intervals: int = 0  # intervals left out: an end in the tester's own stall (``suspect``)
    freeze_count: int = 0
    freeze_s: float = 0.0


def _cv(intervals: np.ndarray) -> float | None:
    if len(intervals) < 2:
        return None
    mean = float(intervals.mean())
    return float(intervals.std()) / mean if mean > 0 else None


def _inside(t: float, starts: list[float], windows: Sequence[tuple[float, float]]) -> bool:
    i = bisect.bisect_right(starts, t) - 1
    return i >= 0 and windows[i][0] <= t <= windows[i][1]


def merged(spans: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """The union of ``spans``, in order, as spans that do not overlap: a time in several (a late send's span
    inside a loop stall's, say) is in one, from the earliest of their starts."""
    out: list[tuple[float, float]] = []
    for lo, hi in sorted(spans):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def holding(arrivals: Sequence[float], indices: Iterable[int], suspect: Sequence[tuple[float, float]]
            ) -> list[tuple[float, float]]:
    """The suspect spans that hold the arrival of a frame at one of ``indices`` (the frames the tester's loop
    stamped as it handled them; the others carry when they reached the socket, which no stall of the loop
    makes late)."""
    stamps = sorted(arrivals[i] for i in indices)
    return [(lo, hi) for lo, hi in suspect if bisect.bisect_left(stamps, lo) < bisect.bisect_right(stamps, hi)]


def suspect_frames(arrivals: Sequence[float], suspect: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the arrivals stamped inside a suspect span."""
    windows = sorted(suspect)
    starts = [w[0] for w in windows]
    return [i for i, t in enumerate(arrivals) if _inside(t, starts, windows)]


def jitter(arrivals: Sequence[float], suspect: Sequence[tuple[float, float]] = (),
           suspect_indices: Iterable[int] | None = None) -> tuple[float | None, float | None, float | None, int, int]:
    """(coefficient, windowed p50, windowed p95, intervals used, intervals left out) over the steady state.

    ``suspect`` holds (from, to) spans in which a stamp may be late by the tester's own stall; or give the
    suspect frames' indices (``suspect_indices``) to judge other stamps of the same frames alike."""
    skip = PLAYABLE_FRAMES - 1 if len(arrivals) >= PLAYABLE_FRAMES + 2 else 0
    steady = np.asarray(arrivals[skip:])
    if len(steady) < 3:
        return None, None, None, 0, 0
    flagged = set(suspect_frames(arrivals, suspect) if suspect_indices is None else suspect_indices)
    bad = np.array([skip + i in flagged for i in range(len(steady))], dtype=bool)
    keep = ~(bad[1:] | bad[:-1])
    intervals = np.diff(steady)
    ends = steady[1:]
    frozen = _freeze_mask(intervals)
    left_out = int((~keep & ~frozen).sum())
    keep &= ~frozen
    clean, clean_ends = intervals[keep], ends[keep]
    cv = _cv(clean)
    slots = np.floor((clean_ends - steady[0]) / JITTER_WINDOW_S).astype(int) if len(clean) else np.array([], int)
    per_window = [c for w in np.unique(slots) if (sel := clean[slots == w]).size >= JITTER_WINDOW_MIN
                  and (c := _cv(sel)) is not None]
    p50 = float(np.percentile(per_window, 50)) if per_window else None
    p95 = float(np.percentile(per_window, 95)) if per_window else None
    return _round4(cv), _round4(p50), _round4(p95), int(len(clean)), left_out


class _FreezeRule:
    """The W3C threshold over the recent non-freeze intervals (module docstring), one interval at a time."""

    def __init__(self) -> None:
        self.recent: deque[float] = deque(maxlen=FREEZE_WINDOW)

    def is_freeze(self, interval: float) -> bool:
        if len(self.recent) < FREEZE_MIN_SAMPLES:
            return False
        mean = sum(self.recent) / len(self.recent)
        return interval >= max(3 * mean, mean + FREEZE_MIN_S)

    def feed(self, interval: float) -> bool:
        frozen = self.is_freeze(interval)
        if not frozen:
            self.recent.append(interval)
        return frozen


def _freeze_mask(intervals: np.ndarray) -> np.ndarray:
    rule = _FreezeRule()
    return np.array([rule.feed(float(i)) for i in intervals], dtype=bool)


def freeze_ends(arrivals: Sequence[float]) -> list[int]:
    """Indices of the frames that end a freeze, by the rule above, on the stamps as given."""
    mask = _freeze_mask(np.diff(np.asarray(arrivals, dtype=float)))
    return [int(i) + 1 for i in np.flatnonzero(mask)]


def freezes(arrivals: Sequence[float], end: float | None = None,
            suspect: Sequence[tuple[float, float]] = ()) -> tuple[int, float]:
    """(freeze count, total freeze seconds); ``end`` (the session's end) makes a final silence count.

    A frame stamped inside a ``suspect`` span (the tester's own loop stalled) may have arrived as early as
    the span's start: its interval is taken at that earliest, so the tester's stall is never a freeze
    of the stream, and a real freeze that ended during one is not lengthened by it."""
    windows = sorted(suspect)
    starts = [w[0] for w in windows]
    rule = _FreezeRule()
    count, total = 0, 0.0
    for a, b in zip(arrivals, arrivals[1:]):
        i = bisect.bisect_right(starts, b) - 1
        if i >= 0 and windows[i][0] <= b <= windows[i][1]:
            b = max(a, windows[i][0])
        if rule.feed(b - a):
            count += 1
            total += b - a
    if end is not None and arrivals and rule.is_freeze(end - arrivals[-1]):
        count += 1
        total += end - arrivals[-1]
    return count, round(total, 3)


def output_fps(arrivals: Sequence[float], suspect_indices: Iterable[int] = ()) -> float | None:
    """Frames per second between the first and last arrivals whose stamps are sound (not in
    ``suspect_indices``); all of them when fewer than two are."""
    flagged = set(suspect_indices)
    sound = [k for k in range(len(arrivals)) if k not in flagged]
    first, last = (sound[0], sound[-1]) if len(sound) >= 2 else (0, len(arrivals) - 1)
    span = arrivals[last] - arrivals[first] if last > first else 0.0
    return round((last - first) / span, 3) if span > 0 else None


def _round4(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def splice(arrivals: Sequence[float], cuts: Sequence[int], end: float | None = None,
           suspect: Sequence[tuple[float, float]] = ()) -> tuple[list[float], float | None, list[tuple[float, float]]]:
    """The timeline with each gap before a ``cuts`` index (the first frame of a new subscription) closed
    to one typical interval (the median of the up to ``FREEZE_WINDOW`` intervals before it); the
    session's ``end`` and the suspect spans after the gap move with it."""
    a, spans = list(arrivals), list(suspect)
    for c in sorted(set(cuts)):
        if not 0 < c < len(a):
            continue
        before = np.diff(np.asarray(a[max(0, c - FREEZE_WINDOW - 1):c]))
        shift = a[c] - a[c - 1] - (float(np.median(before)) if len(before) else 0.0)
        if shift <= 0:
            continue
        boundary = a[c - 1]
        a[c:] = [t - shift for t in a[c:]]
        end = None if end is None else end - shift
        spans = [(s - shift, e - shift) if s > boundary else (s, e) for s, e in spans]
    return a, end, spans


def analyse(arrivals: Sequence[float], end: float | None = None,
            suspect: Sequence[tuple[float, float]] = (), cuts: Sequence[int] = ()) -> Timing:
    """Everything above, for one session's arrivals (time.monotonic(), in order)."""
    if len(arrivals) < 2:
        return Timing()
    if cuts:
        arrivals, end, suspect = splice(arrivals, cuts, end, suspect)
    fps = output_fps(arrivals, suspect_frames(arrivals, suspect) if suspect else ())
    cv, p50, p95, used, left_out = jitter(arrivals, suspect)
    count, total = freezes(arrivals, end, suspect)
    return Timing(output_fps=fps, jitter_coeff=cv,
                  jitter_coeff_p50=p50, jitter_coeff_p95=p95, jitter_intervals=used,
                  jitter_suspect_intervals=left_out, freeze_count=count, freeze_s=total)


def percentile(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values), q)) if len(values) else None


def per_second(duration_s: float, t0: float, arrivals: Sequence[float], sent: Sequence[float],
               latency: Sequence[tuple[float, float, str]]) -> list[dict[str, Any]]:
    """Per whole second of the session: frames out, frames in, median latency."""
    seconds = max(1, math.ceil(duration_s))
    frames_out, frames_in = [0] * seconds, [0] * seconds
    for times, counts in ((arrivals, frames_out), (sent, frames_in)):
        for t in times:
            i = int(t - t0)
            if 0 <= i < seconds:
                counts[i] += 1
    lat: list[list[float]] = [[] for _ in range(seconds)]
    for t, ms, _ in latency:
        if 0 <= int(t) < seconds:
            lat[int(t)].append(ms)
    return [{"t_s": i, "fps_out": frames_out[i], "fps_in": frames_in[i], "latency_ms_p50": percentile(lat[i], 50)}
            for i in range(seconds)]

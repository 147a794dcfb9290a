"""Output timing on synthetic frame timelines (no WebRTC): fps, steady-state and windowed jitter,
W3C freezes, and the tester's own stalls kept out of the jitter figure."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.probe.looplag import LoopMonitor
from fleet.probe.timing import PLAYABLE_FRAMES, analyse, freeze_ends, freezes, holding, jitter, merged, output_fps


def even(n: int, fps: float = 30.0, t0: float = 100.0) -> list[float]:
    return [t0 + i / fps for i in range(n)]


def test_an_even_stream_has_no_jitter_and_no_freezes():
    t = analyse(even(300), end=100 + 300 / 30)
    assert t.output_fps == pytest.approx(30.0) and t.jitter_coeff == pytest.approx(0.0, abs=1e-9)
    assert t.freeze_count == 0 and t.freeze_s == 0.0
    assert t.jitter_intervals == 300 - PLAYABLE_FRAMES and t.jitter_suspect_intervals == 0


@settings(max_examples=100, deadline=None)
@given(sigma_ms=st.floats(0.5, 8.0), seed=st.integers(0, 10_000))
def test_the_coefficient_is_stddev_over_mean_of_the_steady_state_intervals(sigma_ms, seed):
    rng = np.random.default_rng(seed)
    intervals = np.clip(rng.normal(1 / 30, sigma_ms / 1000, 400), 0.005, None)
    arrivals = list(np.concatenate([[0.0], np.cumsum(intervals)]))
    steady = np.diff(arrivals[PLAYABLE_FRAMES - 1:])
    cv, p50, p95, used, left_out = jitter(arrivals)
    assert cv == pytest.approx(steady.std() / steady.mean(), abs=1e-4)
    assert used == len(steady) and left_out == 0
    assert p50 is not None and p95 is not None and p50 <= p95


def test_a_start_up_ramp_is_not_jitter():
    """A cold start: the first frames a second apart, then 30 fps. Only the steady state counts."""
    arrivals = [0.0, 1.0, 1.5, 1.6] + even(5, t0=1.7) + even(200, t0=1.7 + 5 / 30)
    arrivals = sorted(set(round(a, 9) for a in arrivals))
    cv, *_ = jitter(arrivals)
    assert cv is not None and cv < 0.01


def test_windowed_jitter_catches_a_burst_the_session_value_dilutes():
    """40 s at an even 30 fps, with 5 s of heavy jitter in the middle: p95 of the windows shows it."""
    rng = np.random.default_rng(1)
    intervals = np.full(1200, 1 / 30)
    intervals[600:750] += rng.normal(0, 0.01, 150)
    arrivals = list(np.concatenate([[0.0], np.cumsum(intervals)]))
    cv, p50, p95, *_ = jitter(arrivals)
    assert p50 < 0.02 and p95 > 0.15 and p50 < cv < p95


def test_intervals_stamped_during_the_testers_stall_are_left_out():
    arrivals = even(300)
    late = arrivals[:]
    late[150] += 0.025  # the loop was stalled: this frame was stamped 25 ms late
    cv_noisy, *_ = jitter(late)
    cv, _, _, used, left_out = jitter(late, suspect=[(arrivals[150] - 0.002, late[150] + 0.001)])
    assert cv_noisy > 0.05 and cv == pytest.approx(0.0, abs=1e-9)
    assert left_out == 2 and used == 300 - PLAYABLE_FRAMES - 2


@settings(max_examples=200, deadline=None)
@given(data=st.data(), n=st.integers(1, 40))
def test_a_stall_is_suspect_only_while_it_holds_a_frame_the_loop_stamped(data, n):
    """A frame timed by its socket (fleet.sockstamp) is not late by a stall of the loop: a stall window is kept
    for the timing only when a frame stamped by the loop itself falls in it, ends included."""
    arrivals = even(n, fps=20.0, t0=0.0)
    loop_stamped = data.draw(st.lists(st.integers(0, n - 1), unique=True))
    windows = data.draw(st.lists(st.tuples(st.floats(-0.1, 2.1), st.floats(0.0, 0.3)).map(lambda w: (w[0], w[0] + w[1])),
                                 max_size=6))
    kept = holding(arrivals, loop_stamped, windows)
    assert kept == [w for w in windows if any(w[0] <= arrivals[i] <= w[1] for i in loop_stamped)]
    assert holding(arrivals, [], windows) == [] and holding(arrivals, range(n), [(0.0, 0.0)]) == [(0.0, 0.0)]


def test_freezes_follow_the_w3c_rule():
    fps = 30.0
    gap = lambda s: even(60, fps) + even(60, fps, t0=100 + 59 / fps + s)  # noqa: E731 - a pause of s seconds
    # the threshold: max(3 x 33.3 ms, 33.3 + 150 ms) = 183.3 ms
    assert freezes(gap(0.18)) == (0, 0.0)
    count, total = freezes(gap(0.19))
    assert count == 1 and total == pytest.approx(0.19, abs=1e-3)
    count, total = freezes(gap(0.5) + even(60, fps, t0=100 + 119 / fps + 0.5 + 1.0))
    assert count == 2 and total == pytest.approx(0.5 + 1.0 + 1 / fps, abs=1e-3)
    assert freeze_ends(gap(0.18)) == [] and freeze_ends(gap(0.19)) == [60]  # the first frame after the pause
    # unlike W3C's mean (the last 30 intervals, freezes in them), a freeze stays out of the mean, so a second
    # freeze 10 frames after a 1 s one is still one (in W3C's, the mean of 30 with 1 s in it is ~65 ms: its
    # threshold ~215 ms would hide a 0.2 s gap)
    first = even(60, fps)
    after = even(10, fps, t0=first[-1] + 1.0)
    second = even(60, fps, t0=after[-1] + 0.2)
    assert freezes(first + after + second) == (2, pytest.approx(1.2, abs=1e-3))


def test_jitter_worked_by_hand_as_the_testers_sending_figure_takes_it():
    """``jitter`` on send times (``tester_send_jitter_coeff``), worked by hand: intervals of 45 and 55 ms in turn
    have a mean of 50 ms and a spread of 5 ms, 0.1; a 0.3 s stall is a freeze, out of it; frames before the
    10th do not count."""
    alternating = [100.0]
    for i in range(81):   # 72 intervals from the 10th frame: 36 of each
        alternating.append(alternating[-1] + (0.045 if i % 2 else 0.055))
    assert jitter(alternating)[0] == pytest.approx(0.1, abs=1e-9)
    first = even(50, 20.0)
    assert jitter(first + even(30, 20.0, t0=first[-1] + 0.3))[0] == pytest.approx(0.0, abs=1e-9)
    late_start = [100.0 + 2.0 * i for i in range(9)] + even(60, 20.0, t0=118.0)  # uneven before the 10th: not counted
    assert jitter(late_start)[0] == pytest.approx(0.0, abs=1e-9)
    assert jitter(even(2, 20.0))[0] is None  # too few frames to know


def test_a_silent_end_is_a_freeze_and_the_rule_needs_five_intervals_first():
    arrivals = even(60)
    assert freezes(arrivals, end=arrivals[-1] + 2.0) == (1, 2.0)
    assert freezes(arrivals, end=arrivals[-1] + 0.1) == (0, 0.0)
    assert freezes([0.0, 0.033, 1.0]) == (0, 0.0)  # too few intervals to know the mean


async def ticked(monitor: LoopMonitor, ticks: int, deadline_s: float = 5.0) -> None:
    """Wait until the monitor has woken ``ticks`` times in all (it wakes every 10 ms), or fail at the deadline."""
    end = time.monotonic() + deadline_s
    while monitor.ticks < ticks:
        assert time.monotonic() < end, f"the monitor woke {monitor.ticks} times in {deadline_s} s, not {ticks}"
        await asyncio.sleep(0.002)


def test_the_loop_monitor_sees_a_stall_and_marks_its_window():
    async def main():
        monitor = LoopMonitor.for_running_loop()
        mark = monitor.acquire()
        await ticked(monitor, 1)   # running
        t_block, before = time.monotonic(), monitor.ticks
        while time.monotonic() < t_block + 0.04:  # the loop is busy elsewhere: what the monitor exists to see
            pass
        await ticked(monitor, before + 1)   # the wake-up the stall made late
        stats = monitor.since(mark)
        windows = monitor.suspect_windows(t_block - 1, time.monotonic())
        monitor.release()
        return stats, windows, t_block

    stats, windows, t_block = asyncio.run(main())
    # the wake-up was due at most one period (10 ms) into the 40 ms stall: at least 30 ms late (25: the timer's
    # resolution)
    assert stats.max_ms >= 25 and stats.mean_ms > 0
    assert stats.busy_pct > 10  # 40 ms of the loop thread's CPU in ~60 ms
    assert any(a <= t_block + 0.015 <= b for a, b in windows)


def test_a_freeze_is_counted_as_a_freeze_not_as_jitter():
    arrivals = even(150) + even(150, t0=100 + 149 / 30 + 1.0)
    t = analyse(arrivals)
    assert t.freeze_count == 1 and t.jitter_coeff == pytest.approx(0.0, abs=1e-9)
    assert t.jitter_intervals == 300 - PLAYABLE_FRAMES - 1 and t.jitter_suspect_intervals == 0


def test_a_gap_made_by_the_testers_own_stall_is_not_a_freeze_and_a_real_one_is_not_lengthened():
    fps = 30.0
    before = even(60, fps)
    # the tester's loop stalled 0.3 s: the next frame is stamped 0.3 s late, inside the stall's span
    stamped = before[-1] + 1 / fps + 0.3
    arrivals = before + [stamped + k / fps for k in range(30)]
    assert freezes(arrivals) == (1, round(1 / fps + 0.3, 3))  # without the span: a freeze
    stall = [(before[-1] + 1 / fps - 0.01, stamped + 0.001)]
    assert freezes(arrivals, suspect=stall) == (0, 0.0)
    # a real 1 s freeze whose end the tester stamped 0.2 s late: counted once, as 1 s
    real_end = before[-1] + 1.0
    late = real_end + 0.2
    arrivals = before + [late + k / fps for k in range(30)]
    count, total = freezes(arrivals, suspect=[(real_end, late + 0.001)])
    assert count == 1 and abs(total - 1.0) < 1e-6, total


def test_fps_is_not_raised_by_a_first_frame_the_tester_stamped_late():
    """The first frames arrive while the tester's loop is stalled (stamped 0.3 s late, in one burst):
    the span starts at the first frame stamped soundly, and the rate is the stream's 30 fps."""
    arrivals = even(240, 30.0)
    late = [arrivals[2]] * 2 + arrivals[2:]  # frames 0 and 1 stamped with frame 2, when the loop woke
    stall = [(arrivals[0], arrivals[2] + 0.001)]
    assert analyse(late).output_fps == pytest.approx(239 / (arrivals[-1] - arrivals[2]), rel=1e-3)  # 30.25: high
    assert analyse(late, suspect=stall).output_fps == pytest.approx(30.0, rel=1e-3)
    assert output_fps(late, [0, 1, 2]) == pytest.approx(30.0, rel=1e-3)
    assert output_fps(late, range(240)) == analyse(late).output_fps  # nothing sound: the whole span


@settings(max_examples=200, deadline=None)
@given(spans=st.lists(st.tuples(st.integers(0, 60), st.integers(0, 20)).map(lambda s: (s[0] / 4, (s[0] + s[1]) / 4)),
                      max_size=12))
def test_merged_spans_hold_every_time_one_of_the_spans_holds_and_no_other(spans) -> None:
    """Judged at every quarter step from before the first span to past the last (the ends fall on the grid)."""
    out = merged(spans)
    assert all(a[1] < b[0] for a, b in zip(out, out[1:]))  # in order, apart
    for k in range(-4, 90):
        t = k / 4
        assert any(lo <= t <= hi for lo, hi in spans) == any(lo <= t <= hi for lo, hi in out), t

"""The brightness-step detector (fleet.probe.latency ``StepDetector``) on luma sequences whose steps are known:
each step is where the level (bright above the midpoint of the two levels by a fifth of their gap, dark below it
by as much) changes between consecutive frames, with the levels of the whole sequence. The crossing the levels
were learnt across counts, tentatively: an exact alignment in the RTP clock (``judge_first``) keeps it, or drops
it when it was not the output's own (a gateway's warm-up frames ending)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.probe.latency import EARLY_KEEP, Aligner, StepDetector, align, judge_first

FPS = 30.0
DARK, BRIGHT = 60.0, 180.0


def truth(lumas: list[float], lo: float, hi: float, first: int = 0) -> list[tuple[int, int]]:
    """(frame, direction) of each level change between consecutive frames from frame ``first`` on, by the
    definition, with the levels ``lo`` and ``hi``: the same hysteresis the detector is documented to use."""
    level, out = None, []
    for n, luma in enumerate(lumas):
        side = 1 if luma > (lo + hi) / 2 + 0.2 * (hi - lo) else -1 if luma < (lo + hi) / 2 - 0.2 * (hi - lo) else None
        if side is None:
            continue
        if level is not None and side != level and n >= first:
            out.append((n, side))
        level = side
    return out


def detect(lumas: list[float], consecutive=lambda n: True) -> StepDetector:
    d = StepDetector()
    for n, luma in enumerate(lumas):
        if not consecutive(n):
            d.reset_continuity()
        d.frame(n / FPS, 1000.0 + n / FPS, luma, consecutive(n))
    return d


def found(d: StepDetector) -> list[tuple[int, int]]:
    return [(round(t * FPS), direction) for t, _, direction in d.steps]


@settings(max_examples=100, deadline=None)
@given(runs=st.lists(st.integers(2, 30), min_size=3, max_size=12), dark_first=st.booleans())
def test_every_step_between_plain_levels_is_found_the_first_included(runs: list[int], dark_first: bool) -> None:
    lumas = [(DARK if (k % 2 == 0) == dark_first else BRIGHT) for k, run in enumerate(runs) for _ in range(run)]
    d = detect(lumas)
    assert found(d) == truth(lumas, DARK, BRIGHT)
    assert len(d.steps) == len(runs) - 1  # every run's start but the first's
    assert d.prev == pytest.approx([(n - 1) / FPS for n, _ in found(d)])  # the frame before each


def test_a_first_crossing_through_a_fade_is_where_the_full_levels_put_it() -> None:
    """Dark, then a fade (40 %, 80 % of the way) into bright: the levels are learnt at the 40 % frame, but the
    first step is at the 80 % one, as the later steps are judged (a fade down likewise)."""
    lumas = [DARK] * 10 + [DARK + 0.4 * (BRIGHT - DARK), DARK + 0.8 * (BRIGHT - DARK)] + [BRIGHT] * 10 \
        + [DARK + 0.6 * (BRIGHT - DARK), DARK + 0.2 * (BRIGHT - DARK)] + [DARK] * 10 + [BRIGHT] * 5
    d = detect(lumas)
    assert found(d) == truth(lumas, DARK, BRIGHT) == [(11, 1), (23, -1), (34, 1)]
    assert d.prev[0] == pytest.approx(10 / FPS)


LAG = 8  # output frame k carries input frame k - LAG (the clock times below are the input's)
INPUTS = ((3, -1), (12, 1), (21, -1), (27, 1))  # the input's steps (frame, direction)
OUTPUT = [DARK] * 20 + [BRIGHT] * 9 + [DARK] * 6 + [BRIGHT] * 3  # the output's own runs: steps at 20, 29, 35


def judged(lumas: list[float], steps_in=INPUTS) -> tuple[StepDetector, list[tuple[int, int]]]:
    """The detector after ``lumas`` (output frames), and its steps (output frame, direction) before judging
    its first; then judged against the input's steps, as the watch does, in the RTP clock."""
    d = StepDetector()
    for k, luma in enumerate(lumas):
        d.frame((k - LAG) / FPS, 1000.0 + k / FPS + 0.05, luma, True)
    before = found_at(d)
    judge_first(d, [(n / FPS, s, 1000.0 + n / FPS) for n, s in steps_in], Aligner(2.5 / FPS, 5.0), 1 / FPS)
    return d, before


def found_at(d: StepDetector) -> list[tuple[int, int]]:
    """The steps found, as output frame numbers."""
    return [(round(t * FPS) + LAG, direction) for t, _, direction in d.steps]


def test_the_outputs_own_first_step_is_kept_once_the_steps_after_it_alone_fit_its_exact_lag() -> None:
    """With three steps, the two after the first fit two lags (the input's runs from frame 3 and from 12 are
    alike): the first waits; with a fourth, they fit one, the first's: kept."""
    d, before = judged(OUTPUT)
    assert before == [(20, 1), (29, -1), (35, 1)] == truth(OUTPUT, DARK, BRIGHT) and d.tentative
    longer = OUTPUT + [DARK] * 3
    d, before = judged(longer, INPUTS + ((30, -1),))
    assert before == [(20, 1), (29, -1), (35, 1), (38, -1)] == truth(longer, DARK, BRIGHT)
    assert found_at(d) == before and not d.tentative and d.sure() == (d.steps, d.prev)


def test_a_warm_ups_end_that_picks_a_wrong_lag_of_its_own_is_not_kept() -> None:
    """The warm-up ends 12 frames before the output's first step: with the two steps after it, it fits exactly
    a lag 30 frames off (the input's runs from frame 20 repeat, 12 and 9 frames, the output's from 58), and
    rules the true lag out. The two after it alone fit both: it waits, and goes with the next step."""
    steps_in = ((20, -1), (32, 1), (41, -1), (62, 1), (71, -1), (80, 1))
    lumas = [BRIGHT] * 58 + [DARK] * 12 + [BRIGHT] * 9 + [DARK] * 9 + [BRIGHT] * 3
    d, before = judged(lumas[:88], steps_in)
    assert before == [(58, -1), (70, 1), (79, -1)] and d.tentative  # not kept with the wrong lag
    wrong = align([(t, s, a) for t, a, s in d.steps], [(n / FPS, s, 1000.0 + n / FPS) for n, s in steps_in],
                  2.5 / FPS, 5.0)
    assert wrong is not None and round(wrong[0] * FPS) == 30  # the lag the warm-up's end would have given
    d, before = judged(lumas, steps_in)
    assert before == [(58, -1), (70, 1), (79, -1), (88, 1)] and found_at(d) == before[1:] and not d.tentative


@pytest.mark.parametrize("warm_up", [4, 12, 15, 10], ids=["far-from-any-input-step", "1-frame-after-an-input-step",
                                                          "4-frames-after-one", "1-frame-before-one"])
def test_a_warm_ups_end_is_tentative_left_out_and_dropped_once_the_steps_after_it_align(warm_up: int) -> None:
    """Bright warm-up frames, then the output's own runs: the warm-up's end is counted tentatively and left out
    of every alignment (``sure``); it is dropped once the three steps after it align exactly. Ending 1 or 4
    frames after an input step of its direction (frame 3's), it fits an alignment, not an exact one; 1 frame
    before it, it would pull the lag a frame low: none keeps it."""
    lumas = [BRIGHT] * warm_up + OUTPUT[warm_up:]
    d, before = judged(lumas)
    assert before == [(warm_up, -1), (20, 1), (29, -1), (35, 1)] and found_at(d) == before[1:]
    assert not d.tentative and d.prev == pytest.approx([(k - 1 - LAG) / FPS for k in (20, 29, 35)])


def test_a_tentative_first_step_waits_while_too_few_steps_follow_it() -> None:
    lumas = [BRIGHT] * 12 + OUTPUT[12:33]  # the warm-up's end and two steps of the output's own
    d, before = judged(lumas)
    assert before == found_at(d) == [(12, -1), (20, 1), (29, -1)] and d.tentative
    assert d.sure() == (d.steps[1:], d.prev[1:])


def test_a_first_run_longer_than_the_frames_kept_leaves_its_crossing_uncounted() -> None:
    """The frames before the first step are kept up to EARLY_KEEP: a crossing further back is not found
    (the first step is then the second crossing, as if nothing were kept)."""
    lumas = [DARK] * 20 + [BRIGHT] * (EARLY_KEEP + 10) + [DARK] * 5
    d = detect(lumas)
    assert found(d) == [(EARLY_KEEP + 30, -1)] and not d.tentative
    d = detect([DARK] * 20 + [BRIGHT] * (EARLY_KEEP - 10) + [DARK] * 5)
    assert found(d) == [(20, 1), (EARLY_KEEP + 10, -1)] and d.tentative


def test_a_first_crossing_across_a_gap_is_no_step() -> None:
    """Frame 12, the first bright one, came after a gap (frames lost): no step there; the next ones count."""
    lumas = [DARK] * 12 + [BRIGHT] * 10 + [DARK] * 7 + [BRIGHT] * 4
    d = detect(lumas, consecutive=lambda n: n != 12)
    assert found(d) == [(22, -1), (29, 1)]


def test_an_output_with_one_level_has_no_step() -> None:
    d = detect([DARK] * 50 + [DARK + 10] * 50)
    assert d.steps == [] and d.prev == []

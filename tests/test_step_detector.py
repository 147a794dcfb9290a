"""The brightness-step detector (fleet.probe.latency ``StepDetector``) on luma sequences whose steps are known:
each step is where the level (bright above the midpoint of the two levels by a fifth of their gap, dark below it
by as much) changes between consecutive frames, with the levels of the whole sequence. The first crossing,
made while the levels were still being learnt, counts; nothing before it does (a gateway's warm-up frames)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.probe.latency import Aligner, StepDetector, judge_first

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


WARM_UP = [BRIGHT] * 8 + [DARK] * 12 + [BRIGHT] * 9 + [DARK] * 6 + [BRIGHT] * 3  # 8 frames of a bright warm-up
LAG = 8  # output frame n carries input frame n - LAG; the input's steps: its frames 12, 21 and 27


def inputs() -> list[tuple[float, int, float]]:
    """The input's steps, (clock time, direction, sent), on the clock the output's timestamps keep."""
    return [(n / FPS, d, 1000.0 + n / FPS) for n, d in ((12, 1), (21, -1), (27, 1))]


def aligners() -> tuple[Aligner, Aligner]:
    return Aligner(tolerance=2.5 / FPS, max_latency=5.0), Aligner(tolerance=0.3, max_latency=5.0)


def test_a_warm_ups_end_is_a_tentative_first_step_that_the_alignment_drops() -> None:
    """A bright warm-up, then the output's own runs: the crossing the levels were learnt across (the warm-up's
    end) is counted, tentatively; it matches no input step and is dropped once the three after it align."""
    d = StepDetector()
    for n, luma in enumerate(WARM_UP):
        d.frame((n - LAG) / FPS, 1000.0 + n / FPS + 0.05, luma, True)
    assert found_at(d, LAG) == [(8, -1), (20, 1), (29, -1), (35, 1)] and d.tentative
    judge_first(d, inputs(), *aligners())
    assert found_at(d, LAG) == [(20, 1), (29, -1), (35, 1)] == truth(WARM_UP, DARK, BRIGHT, first=20)
    assert not d.tentative and d.prev == pytest.approx([(n - 1 - LAG) / FPS for n in (20, 29, 35)])
    judge_first(d, inputs(), *aligners())  # judged once: nothing more is dropped
    assert len(d.steps) == 3


def test_a_first_step_the_alignment_takes_is_kept() -> None:
    lumas = WARM_UP[8:]  # no warm-up: the output's dark run first
    d = StepDetector()
    for n, luma in enumerate(lumas):
        d.frame((n + 8 - LAG) / FPS, 1000.0 + (n + 8) / FPS + 0.05, luma, True)
    assert found_at(d, LAG - 8) == [(12, 1), (21, -1), (27, 1)] and d.tentative
    judge_first(d, inputs(), *aligners())
    assert len(d.steps) == 3 and not d.tentative


def found_at(d: StepDetector, lag: int) -> list[tuple[int, int]]:
    """The steps found, as output frame numbers (their clock times, ``lag`` frames behind)."""
    return [(round(t * FPS) + lag, direction) for t, _, direction in d.steps]


def test_a_first_crossing_across_a_gap_is_no_step() -> None:
    """Frame 12, the first bright one, came after a gap (frames lost): no step there; the next ones count."""
    lumas = [DARK] * 12 + [BRIGHT] * 10 + [DARK] * 7 + [BRIGHT] * 4
    d = detect(lumas, consecutive=lambda n: n != 12)
    assert found(d) == [(22, -1), (29, 1)]


def test_an_output_with_one_level_has_no_step() -> None:
    d = detect([DARK] * 50 + [DARK + 10] * 50)
    assert d.steps == [] and d.prev == []

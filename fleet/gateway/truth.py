"""The ground truth of one reference-gateway stream, per input frame: what the runner did to it (dropped
and why, the delay drawn, the wait in its queue, inference start to output) and, once its packets left for
the first viewer, its whole residence in the gateway. Tests judge the fleet's measurements against it, so
it is computed here, by the gateway's own code: nothing of the probe's (its package, its RTP tap)."""

from __future__ import annotations

from typing import Any

__all__ = ["FrameTruth", "MAX_TRUTH_FRAMES", "middle"]

MAX_TRUTH_FRAMES = 108_000     # per-frame truth kept (an hour at 30 fps); summaries are always kept
UNSENT_KEPT = 512              # output frames waiting for their packets to leave, at most

# the fields of a frame's record, in order (lists, not objects: an hour of frames is 100 000 of them)
SEQ, PTS, T_IN, DRAWN, DELAY, DROPPED, RESIDENCE, QUEUED = range(8)


def middle(xs: list[float]) -> float | None:
    """The upper median of sorted values."""
    return xs[len(xs) // 2] if xs else None


class FrameTruth:
    """One record per input frame (up to ``MAX_TRUTH_FRAMES``); ``unsent`` maps an output frame's pts on the
    RTP clock to its record until its last packet leaves."""

    def __init__(self) -> None:
        # [seq, pts, t_in, delay_drawn_ms, delay_actual_ms | None, dropped reason, residence_ms | None,
        #  queued_ms | None (arrival to inference start: the wait in the runner's one-frame queue)]
        self.frames: list[list[Any]] = []
        self.unsent: dict[int, int] = {}

    def add(self, seq: int, pts: int | None, t_in: float, drawn_ms: float | None, reason: str | None) -> int:
        """A frame came in at ``t_in`` (seconds since the stream's start): its record's index, or -1 when full."""
        if len(self.frames) >= MAX_TRUTH_FRAMES:
            return -1
        self.frames.append([seq, pts, round(t_in, 6), drawn_ms, None, reason, None, None])
        return len(self.frames) - 1

    def queued(self, index: int, seconds: float) -> None:
        if index >= 0:
            self.frames[index][QUEUED] = round(seconds * 1000, 3)

    def processed(self, index: int, seconds: float, pts90: int | None) -> None:
        """The runner put out the frame ``seconds`` after its inference started, as output pts ``pts90``
        (None: no viewer to time its departure)."""
        if index < 0:
            return
        self.frames[index][DELAY] = round(seconds * 1000, 3)
        if pts90 is not None:
            if len(self.unsent) >= UNSENT_KEPT:
                self.unsent.pop(next(iter(self.unsent)))
            self.unsent[pts90] = index

    def left(self, pts90: int, t: float) -> None:
        """The first viewer's last packet of output ``pts90`` left at ``t`` (seconds since the stream's start):
        its input frame's whole residence in the gateway is known."""
        index = self.unsent.pop(pts90, None)
        if index is not None and index < len(self.frames):
            self.frames[index][RESIDENCE] = round((t - self.frames[index][T_IN]) * 1000, 3)

    def summary(self) -> dict[str, Any]:
        """The medians and every frame's record, as the truth endpoint gives them."""
        delays = sorted(f[DELAY] for f in self.frames if f[DELAY] is not None)
        residence = sorted(f[RESIDENCE] for f in self.frames if f[RESIDENCE] is not None)
        drawn = sorted(f[DRAWN] for f in self.frames if f[DRAWN] is not None)
        return {"delay_ms_median": middle(delays), "delay_drawn_ms_median": middle(drawn),
                "residence_ms_median": middle(residence),
                "frames": [{"seq": s, "pts": p, "t_in": t, "queued_ms": q, "delay_drawn_ms": dr, "delay_ms": da,
                            "dropped": r, "residence_ms": rs} for s, p, t, dr, da, r, rs, q in self.frames]}

"""A session's orchestrator swaps, from what the viewer sees and what the status says.

go-livepeer swaps a live stream's orchestrator mid-stream (``processStream``, server/ai_mediaserver.go):
every WHEP viewer's peer connection is closed while the ingest stays up, and the status keeps the old
runner's report until the new runner's first (about 10 s later). A pinned stream may come back to the
same orchestrator, so a swap is never recognised by a changed address alone:

- the viewer's evidence: the egress connection closed while the ingest lives (``viewer_lost``), and
  the output came back on a new subscription (``output_back``: the gap is how long it was gone);
- the status's evidence: a runner with another identity (address, or the runner's ``start_time``)
  (``runner_seen``).

The two are joined into one swap when they come within ``JOIN_S`` of each other. The status's evidence
alone is a swap; the viewer's only once its output came back (``Swap.confirmed``), since go-livepeer
closes the viewers first whenever it ends a stream. A swap is never a failure of the orchestrator swapped away from: NaaP counts
``orchestrator_swap`` as a swap. Pure: the session feeds it times.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from fleet.probe.types import ProbeResult

__all__ = ["JOIN_S", "Swap", "SwapTracker"]

JOIN_S = 30.0      # a viewer's loss and a new runner in the status this close together are one swap

Event = Callable[..., None]   # event(kind, **data)


@dataclass
class Swap:
    t_s: float                         # seconds into the session it was first seen
    from_orchestrator: str | None
    to_orchestrator: str | None = None  # known once the new runner reports
    gap_s: float | None = None          # the viewer's output was gone this long (None: not seen by the viewer)
    by_viewer: bool = False
    by_status: bool = False

    @property
    def confirmed(self) -> bool:
        """A swap for sure: the status showed a new runner, or the output came back on a new subscription. A
        viewer closed with nothing after is no swap: go-livepeer closes the viewers first whenever it ends a
        stream (idle input, too many swaps, a fatal error, a takeover), the ingest a moment later."""
        return self.by_status or self.gap_s is not None

    def as_event(self) -> dict[str, object]:
        return {"from": self.from_orchestrator, "to": self.to_orchestrator, "gap_s": self.gap_s,
                "by_viewer": self.by_viewer, "by_status": self.by_status}


@dataclass
class SwapTracker:
    event: Event
    swaps: list[Swap] = field(default_factory=list)
    runner: tuple[str, object] | None = None   # (address, start_time) of the runner last reported
    address: str | None = None                 # the orchestrator serving now, as far as known
    lost_at: float | None = None               # the viewer's last frame before its connection closed

    def _open(self, t_s: float, by: str) -> Swap:
        """The swap this evidence belongs to: the last one if within JOIN_S and not yet seen this way."""
        last = self.swaps[-1] if self.swaps else None
        if last is not None and t_s - last.t_s <= JOIN_S and not getattr(last, by):
            return last
        swap = Swap(round(t_s, 3), self.address)
        self.swaps.append(swap)
        return swap

    def viewer_lost(self, t_s: float, last_frame_s: float | None) -> None:
        """The egress peer connection closed while the ingest lives."""
        swap = self._open(t_s, "by_viewer")
        swap.by_viewer = True
        self.lost_at = last_frame_s if last_frame_s is not None else t_s
        self.event("orchestrator_swap", seen_by="viewer", **swap.as_event())

    def output_back(self, t_s: float) -> None:
        """The first frame of the new subscription."""
        if self.lost_at is None or not self.swaps:
            return
        swap = next((s for s in reversed(self.swaps) if s.by_viewer and s.gap_s is None), None)
        if swap is not None:
            swap.gap_s = round(t_s - self.lost_at, 3)
            self.event("output_back", gap_s=swap.gap_s)
        self.lost_at = None

    def runner_seen(self, t_s: float, address: str | None, start_time: object) -> None:
        """A status read's runner. The first is the session's orchestrator; any other is a new runner."""
        key = (address or "", start_time)
        if self.runner is None:
            # the first report; after a swap the viewer saw, it is the new runner's (the old never reported)
            pending = self.swaps[-1] if self.swaps and not self.swaps[-1].by_status else None
            if pending is not None:
                pending.to_orchestrator = address or None
        if self.runner is None or key == self.runner:
            self.runner = key
            self.address = address or self.address
            return
        self.runner = key
        swap = self._open(t_s, "by_status")
        swap.by_status = True
        swap.to_orchestrator = address or None
        self.address = address or self.address
        self.event("orchestrator_swap", seen_by="status", **swap.as_event())

    @property
    def orchestrators(self) -> list[str]:
        """Every orchestrator known to have served the session, in order (a repeat is listed again)."""
        swaps = [s for s in self.swaps if s.confirmed]
        first = swaps[0].from_orchestrator if swaps else self.address
        served = [first] if first else []
        for s in swaps:
            if s.to_orchestrator:
                served.append(s.to_orchestrator)
        return served

    def fill(self, r: ProbeResult) -> None:
        """The session's swap columns: how many (confirmed ones), the output's total gap over them, who
        served it."""
        swaps = [s for s in self.swaps if s.confirmed]
        gaps = [s.gap_s for s in swaps if s.gap_s is not None]
        r.swap_count, r.swapped = len(swaps), bool(swaps)
        r.swap_gap_s = round(sum(gaps), 3) if gaps else None
        r.orchestrators = self.orchestrators

"""go-livepeer's rules for moving a live stream to another orchestrator, re-expressed (not copied) from
go-livepeer 176aa415 ``server/ai_live_video.go`` (``orchestratorSwapper.checkSwap``,
``recentSwapInterval``, ``maxRecentSwapsCount``) and ``server/ai_mediaserver.go`` (``processStream``).

A stream swaps when its orchestrator's output ends (trickle EOS: the runner stopped the stream, e.g. on
its ERROR state), when no output segment came for ``OUT_SEGMENT_TIMEOUT_S``, when no event came for
``MAX_EVENT_GAP_S``, when segments pile up, or when the control channel is lost. A swap within
``RECENT_SWAP_INTERVAL_S`` of the previous one counts towards ``MAX_RECENT_SWAPS``; one more ends the
stream ("Too many swaps"). The swapper's clock starts at the stream's start, as upstream's
``lastSwapped`` does. ``SwapLimiter`` is pure: the stream asks it, a test feeds it times.

``StreamSwaps`` is the swap itself, the part of ``fleet.gateway.stream.Stream`` that moves a live
stream: the old orchestrator's output is closed (every WHEP viewer's peer connection with it, while
the WHEP URL stays valid), its slot given back, the ``orchestrator_swap`` trace emitted with the
cause and the old orchestrator, and a new one selected with the stream's own filter (preferring
another, so a pinned stream may come back to the same one). The status keeps the old runner's last
report until the new runner's first, and is cleared ``status_retention_s`` after the swap, as
go-livepeer clears it when an orchestrator's event subscription ends.
"""

from __future__ import annotations

from dataclasses import dataclass

from fleet.gateway.state import StreamState

__all__ = ["MAX_EVENT_GAP_S", "MAX_RECENT_SWAPS", "OUT_SEGMENT_TIMEOUT_S", "RECENT_SWAP_INTERVAL_S", "StreamSwaps",
           "SwapLimiter", "TOO_MANY_SWAPS"]

RECENT_SWAP_INTERVAL_S = 180.0   # recentSwapInterval
MAX_RECENT_SWAPS = 2             # maxRecentSwapsCount
OUT_SEGMENT_TIMEOUT_S = 30.0     # startTrickleSubscribe: no output segment this long, the orchestrator is swapped
MAX_EVENT_GAP_S = 30.0           # startEventsSubscribe: maxEventGap
TOO_MANY_SWAPS = "Too many swaps"


@dataclass
class SwapLimiter:
    """``checkSwap``: may the stream swap at ``now``? Each call is one attempt, as upstream counts them."""

    last: float                  # the stream's start, then each allowed swap
    recent: int = 0

    def allow(self, now: float) -> bool:
        self.recent = self.recent + 1 if now - self.last < RECENT_SWAP_INTERVAL_S else 1
        if self.recent > MAX_RECENT_SWAPS:
            return False
        self.last = now
        return True


class StreamSwaps(StreamState):
    def swap_soon(self, cause: str) -> None:
        """The orchestrator's context ended with ``cause``: swap, unless one is under way or the input is gone."""
        if not self.swapping and not self.closed and self.lease is not None:
            self.swapping = True
            self._spawn(self._swap(cause))

    def end_output(self) -> None:
        """The current output's writer closes: each WHEP viewer's read fails and its peer connection is
        closed (media/whep_server.go); a WHEP request waiting on it is answered 404."""
        if self.output is not None:
            self.output.closed.set()
        for pc, track in self.whep:
            if not track.finished:
                track.push(None)
                self._spawn(pc.close())

    async def _swap(self, cause: str) -> None:
        old = self.lease
        assert old is not None
        self.generation += 1           # the old runner's frames, reports and faults stop here
        self.end_output()
        self.gw.network.release(old)
        self.lease = None
        self.new_runner()
        if not self.swaps.allow(self.loop.time()):
            self.fail(f"{TOO_MANY_SWAPS}: {cause}")
            return
        o = old.orchestrator
        self.event("orchestrator_swap", message=cause, old=o.address, old_url=o.uri)
        self.loop.call_later(self.gw.config.status_retention_s, self._clear_status)
        lease = await self.acquire(avoid=o.address)
        self.swapping = False
        if lease is not None:
            await self.start_job(lease)

    def _clear_status(self) -> None:
        """clearStreamDelay after an orchestrator's events ended: the whole status goes (the new runner's
        next report and the next ingest stats bring parts of it back; the WHEP URL does not come back)."""
        if not self.closed:
            self.runner_status = None
            self.gateway_status = {}
            self.event("status_cleared")

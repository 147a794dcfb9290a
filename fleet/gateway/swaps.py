"""go-livepeer's rules for moving a live stream to another orchestrator, re-expressed (not copied) from
go-livepeer 176aa415 ``server/ai_live_video.go`` (``orchestratorSwapper.checkSwap``,
``recentSwapInterval``, ``maxRecentSwapsCount``) and ``server/ai_mediaserver.go`` (``processStream``).

A stream swaps when its orchestrator's output ends (trickle EOS: the runner stopped the stream, e.g. on
its ERROR state), when no output segment came for ``OUT_SEGMENT_TIMEOUT_S``, when no event came for
``MAX_EVENT_GAP_S``, when segments pile up, or when the control channel is lost. A swap within
``RECENT_SWAP_INTERVAL_S`` of the previous one counts towards ``MAX_RECENT_SWAPS``; one more ends the
stream ("Too many swaps"). The swapper's clock starts at the stream's start, as upstream's
``lastSwapped`` does. ``SwapLimiter`` is pure: the stream asks it, a test feeds it times.

``Swapper`` is the swap itself, a part the stream holds (``Stream.swapper``) that moves a live
stream: the old orchestrator's output is closed (every WHEP viewer's peer connection with it, while
the WHEP URL stays valid), its slot given back, the ``orchestrator_swap`` trace emitted with the
cause and the old orchestrator, and a new one selected with the stream's own filter (preferring
another, so a pinned stream may come back to the same one). The status keeps the old runner's last
report until the new runner's first, and is cleared ``status_retention_s`` after the swap, as
go-livepeer clears it when an orchestrator's event subscription ends. What it needs of the stream is
``SwapHost``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from fleet.gateway.config import GatewayConfig
from fleet.gateway.network import Lease
from fleet.gateway.selection import Selector

__all__ = ["MAX_EVENT_GAP_S", "MAX_RECENT_SWAPS", "OUT_SEGMENT_TIMEOUT_S", "RECENT_SWAP_INTERVAL_S", "SwapHost",
           "SwapLimiter", "Swapper", "TOO_MANY_SWAPS"]

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


class SwapHost(Protocol):
    """What a swap does to its stream: end the current job (its output, slot and runner), start the next one
    (selected by the stream's ``Selector``); the stream's trace, failure and status clearing."""

    config: GatewayConfig
    loop: asyncio.AbstractEventLoop
    lease: Lease | None
    closed: str | None

    def end_job(self) -> Lease: ...

    async def start_job(self, lease: Lease) -> None: ...

    def fail(self, message: str, trace: str | None = None) -> None: ...

    def event(self, name: str, **data: Any) -> None: ...

    def clear_status(self) -> None: ...

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None: ...


class Swapper:
    def __init__(self, host: SwapHost, selector: Selector) -> None:
        self.host, self.selector = host, selector
        self.limiter = SwapLimiter(host.loop.time())   # upstream's swapper starts its clock at the stream's start
        self.swapping = False

    def swap_soon(self, cause: str) -> None:
        """The orchestrator's context ended with ``cause``: swap, unless one is under way or the input is gone."""
        if not self.swapping and not self.host.closed and self.host.lease is not None:
            self.swapping = True
            self.host.spawn(self._swap(cause))

    async def _swap(self, cause: str) -> None:
        h = self.host
        old = h.end_job()              # the old runner's frames, reports and faults stop here
        if not self.limiter.allow(h.loop.time()):
            h.fail(f"{TOO_MANY_SWAPS}: {cause}")
            return
        o = old.orchestrator
        h.event("orchestrator_swap", message=cause, old=o.address, old_url=o.uri)
        h.loop.call_later(h.config.status_retention_s, h.clear_status)
        lease = await self.selector.acquire(avoid=o.address)
        self.swapping = False
        if lease is not None:
            await h.start_job(lease)

"""How the reference gateway finds an orchestrator for a stream, as go-livepeer's ``processAIRequest``
(``server/ai_process.go``) does: ``Selector`` is that part the stream holds (``Stream.selector``); what
it needs of the stream is ``SelectionHost``.

Each try takes the orchestrator with the most free slots that the stream's filter allows (an
``orchestrator=`` substring of the service URI); one that refuses the job, errs or times out is removed
from this selection and the next is tried; with none left the stream fails with "no orchestrators
available" and its trace. Tries that outlast ``selection_timeout_s`` (checked before each try) fail with
the timeout's own message and no trace.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from fleet.gateway.config import Fault, GatewayConfig
from fleet.gateway.network import Lease, Network

__all__ = ["JOB_FAULTS", "NO_ORCHESTRATORS", "RUN_FAULTS", "SelectionHost", "Selector", "go_duration"]

NO_ORCHESTRATORS = "no orchestrators available"
JOB_FAULTS = ("signaling_error", "slow_answer", "signaling_timeout")
RUN_FAULTS = ("output_stall", "disconnect", "black_frames", "fps_drop", "orchestrator_swap", "capacity_drop",
               "malformed_status", "packet_loss", "transient_error")


def go_duration(seconds: float) -> str:
    """A duration as Go's ``time.Duration`` prints it, for the whole seconds and milliseconds used here."""
    return f"{seconds:g}s" if seconds >= 1 else f"{seconds * 1000:g}ms"


class SelectionHost(Protocol):
    """What selection reads of its stream (settings, network, its filter, whether it closed) and tells it."""

    config: GatewayConfig
    network: Network
    loop: asyncio.AbstractEventLoop
    pipeline: str
    orchestrator: str                 # the stream's orchestrator= filter (a substring of the service URI)
    include_uris: tuple[str, ...]
    exclude_uris: tuple[str, ...]
    closed: str | None
    faults: list[Fault]               # the faults drawn for the orchestrator last asked

    def fail(self, message: str, trace: str | None = None) -> None: ...

    def event(self, name: str, **data: Any) -> None: ...

    async def start_job(self, lease: Lease) -> None: ...


class Selector:
    def __init__(self, host: SelectionHost) -> None:
        self.host = host

    async def first(self) -> None:
        """The first orchestrator: selection, then its job (go-livepeer processStream's first round)."""
        lease = await self.acquire()
        if lease is not None:
            await self.host.start_job(lease)

    async def acquire(self, avoid: str = "") -> Lease | None:
        """A slot, as go-livepeer's processAIRequest finds one: an orchestrator without room, or one that
        refuses the job, errs or times out, is tried past (removed for this selection); when none is left
        the stream fails with "no orchestrators available" (and its trace); tries that outlast
        ``selection_timeout_s`` (checked before each try, as upstream) fail with the timeout's own message
        and no trace. A swap's reselection prefers an orchestrator other than ``avoid`` and keeps the
        stream's filter. The lease comes with its orchestrator's faults drawn (the stream's ``faults``)."""
        h = self.host
        cfg, net = h.config, h.network
        deadline = h.loop.time() + cfg.selection_timeout_s
        removed: set[str] = set()
        while True:
            if h.loop.time() >= deadline:
                h.fail(f"{NO_ORCHESTRATORS} within {go_duration(cfg.selection_timeout_s)} timeout")
                return None
            lease = net.acquire(h.pipeline, h.orchestrator, exclude=avoid, removed=removed,
                                include_uris=h.include_uris, exclude_uris=h.exclude_uris) if avoid else None
            lease = lease or net.acquire(h.pipeline, h.orchestrator, removed=removed,
                                         include_uris=h.include_uris, exclude_uris=h.exclude_uris)
            if lease is None:
                if not h.closed:
                    h.fail(NO_ORCHESTRATORS, trace="gateway_no_orchestrators_available")
                return None
            try:
                refused = None if h.closed else await self._submit(lease)
            except asyncio.CancelledError:   # the stream closed while the job request was pending
                net.release(lease)
                raise
            if h.closed:
                net.release(lease)
                return None
            if refused is None:
                return lease
            net.release(lease)   # upstream: sessManager.Remove, then the next try
            removed.add(lease.orchestrator.address)
            h.event("orchestrator_refused", orchestrator=lease.orchestrator.address,
                       url=lease.orchestrator.uri, error=refused)

    async def _submit(self, lease: Lease) -> str | None:
        """The job request to the orchestrator (submitLiveVideoToVideo): its faults are drawn; None when it
        takes the job (``slow_answer`` after ``delay_s``), else why not (a refusal at once, a timeout after
        ``delay_s``)."""
        o = lease.orchestrator
        self.host.faults = self.host.network.faults_for(o.address, o.uri, kinds=tuple(k for k in JOB_FAULTS + RUN_FAULTS))
        kinds = {f.kind: f for f in self.host.faults}
        if "signaling_error" in kinds:
            return f"HTTP {kinds['signaling_error'].status} (injected fault)"
        if "signaling_timeout" in kinds or "slow_answer" in kinds:
            await asyncio.sleep((kinds.get("signaling_timeout") or kinds["slow_answer"]).delay_s)
            if "signaling_timeout" in kinds:
                return "timeout (injected fault)"
        return None

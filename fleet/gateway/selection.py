"""How the reference gateway finds an orchestrator for a stream, as go-livepeer's ``processAIRequest``
(``server/ai_process.go``) does: ``StreamSelection`` is that part of ``fleet.gateway.stream.Stream``.

Each try takes the orchestrator with the most free slots that the stream's filter allows (an
``orchestrator=`` substring of the service URI); one that refuses the job, errs or times out is removed
from this selection and the next is tried; with none left the stream fails with "no orchestrators
available" and its trace. Tries that outlast ``selection_timeout_s`` (checked before each try) fail with
the timeout's own message and no trace.
"""

from __future__ import annotations

import asyncio

from fleet.gateway.network import Lease
from fleet.gateway.state import StreamState

__all__ = ["JOB_FAULTS", "NO_ORCHESTRATORS", "RUN_FAULTS", "StreamSelection", "go_duration"]

NO_ORCHESTRATORS = "no orchestrators available"
JOB_FAULTS = ("signaling_error", "slow_answer", "signaling_timeout")
RUN_FAULTS = ("output_stall", "disconnect", "black_frames", "fps_drop", "orchestrator_swap", "capacity_drop",
               "malformed_status", "packet_loss", "transient_error")


def go_duration(seconds: float) -> str:
    """A duration as Go's ``time.Duration`` prints it, for the whole seconds and milliseconds used here."""
    return f"{seconds:g}s" if seconds >= 1 else f"{seconds * 1000:g}ms"


class StreamSelection(StreamState):
    async def _select(self) -> None:
        """The first orchestrator: selection, then its job (go-livepeer processStream's first round)."""
        lease = await self.acquire()
        if lease is not None:
            await self.start_job(lease)

    async def acquire(self, avoid: str = "") -> Lease | None:
        """A slot, as go-livepeer's processAIRequest finds one: an orchestrator without room, or one that
        refuses the job, errs or times out, is tried past (removed for this selection); when none is left
        the stream fails with "no orchestrators available" (and its trace); tries that outlast
        ``selection_timeout_s`` (checked before each try, as upstream) fail with the timeout's own message
        and no trace. A swap's reselection prefers an orchestrator other than ``avoid`` and keeps the
        stream's filter. The lease comes with its orchestrator's faults drawn (``self.faults``)."""
        cfg, net = self.gw.config, self.gw.network
        deadline = self.loop.time() + cfg.selection_timeout_s
        removed: set[str] = set()
        while True:
            if self.loop.time() >= deadline:
                self.fail(f"{NO_ORCHESTRATORS} within {go_duration(cfg.selection_timeout_s)} timeout")
                return None
            lease = net.acquire(self.pipeline, self.orchestrator, exclude=avoid, removed=removed,
                                include_uris=self.include_uris, exclude_uris=self.exclude_uris) if avoid else None
            lease = lease or net.acquire(self.pipeline, self.orchestrator, removed=removed,
                                         include_uris=self.include_uris, exclude_uris=self.exclude_uris)
            if lease is None:
                if not self.closed:
                    self.fail(NO_ORCHESTRATORS, trace="gateway_no_orchestrators_available")
                return None
            try:
                refused = None if self.closed else await self._submit(lease)
            except asyncio.CancelledError:   # the stream closed while the job request was pending
                net.release(lease)
                raise
            if self.closed:
                net.release(lease)
                return None
            if refused is None:
                return lease
            net.release(lease)   # upstream: sessManager.Remove, then the next try
            removed.add(lease.orchestrator.address)
            self.event("orchestrator_refused", orchestrator=lease.orchestrator.address,
                       url=lease.orchestrator.uri, error=refused)

    async def _submit(self, lease: Lease) -> str | None:
        """The job request to the orchestrator (submitLiveVideoToVideo): its faults are drawn; None when it
        takes the job (``slow_answer`` after ``delay_s``), else why not (a refusal at once, a timeout after
        ``delay_s``)."""
        o = lease.orchestrator
        self.faults = self.gw.network.faults_for(o.address, o.uri, kinds=tuple(k for k in JOB_FAULTS + RUN_FAULTS))
        kinds = {f.kind: f for f in self.faults}
        if "signaling_error" in kinds:
            return f"HTTP {kinds['signaling_error'].status} (injected fault)"
        if "signaling_timeout" in kinds or "slow_answer" in kinds:
            await asyncio.sleep((kinds.get("signaling_timeout") or kinds["slow_answer"]).delay_s)
            if "signaling_timeout" in kinds:
                return "timeout (injected fault)"
        return None

"""The simulated network behind the reference gateway: orchestrators, GPUs, slots.

One stream takes one slot of its model on one GPU. ``acquire`` picks the
orchestrator and the GPU; ``release`` frees it. Targeting is go-livepeer's:
``orchestrator=`` is a substring of the orchestrator's service URI, never its
address (server/ai_process.go); BYOC's include/exclude lists are exact URIs. A GPU's first stream pays its
profile's cold start. Faults are drawn here too, deterministically per stream.
"""

from __future__ import annotations

import random
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from fleet.gateway.config import Fault, GatewayConfig, GpuProfile, OrchestratorSpec, capabilities_body

__all__ = ["Lease", "Network"]


@dataclass
class _GpuState:
    orch: OrchestratorSpec
    gpu_id: str
    profile: GpuProfile
    slots: dict[str, int]
    busy: dict[str, int] = field(default_factory=dict)
    warmed: bool = False


@dataclass(frozen=True)
class Lease:
    """One slot held by one stream."""

    orchestrator: OrchestratorSpec
    gpu_id: str
    gpu_name: str
    profile: GpuProfile
    model: str
    cold_start: bool  # the GPU's first stream: pays profile.cold_start_s


class Network:
    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self._gpus = [_GpuState(o, g.id, config.profiles[g.profile], dict(g.slots))
                      for o in config.orchestrators for g in o.gpus]
        self._dropped: dict[str, int] = {}  # address -> slots removed by a capacity-drop fault
        self._stream_counts: dict[str, int] = {}  # address -> streams started there
        self._rng = random.Random(f"faults:{config.seed}")

    def _free(self, g: _GpuState, model: str) -> int:
        return g.slots.get(model, 0) - g.busy.get(model, 0)

    def _orch_free(self, address: str, model: str) -> int:
        total = sum(self._free(g, model) for g in self._gpus if g.orch.address == address)
        return total - self._dropped.get(address, 0)

    def acquire(self, model: str, orchestrator: str = "", exclude: str = "", removed: Collection[str] = (),
                include_uris: tuple[str, ...] = (), exclude_uris: tuple[str, ...] = ()) -> Lease | None:
        """A free slot for ``model`` on an orchestrator whose URI contains ``orchestrator``; None if none has one."""
        best: _GpuState | None = None
        for g in self._gpus:
            o = g.orch
            if orchestrator and orchestrator not in o.uri:
                continue
            if (exclude and o.address == exclude) or o.address in removed \
                    or (include_uris and o.uri not in include_uris) or o.uri in exclude_uris:
                continue
            if self._free(g, model) <= 0 or self._orch_free(o.address, model) <= 0:
                continue
            if best is None or self._free(g, model) > self._free(best, model):
                best = g
        if best is None:
            return None
        best.busy[model] = best.busy.get(model, 0) + 1
        cold = not best.warmed
        best.warmed = True
        return Lease(best.orch, best.gpu_id, best.profile.name, best.profile, model, cold)

    def swap(self, lease: Lease) -> Lease | None:
        """Move a stream's slot to another orchestrator (as a gateway does when one fails); None, and the
        old slot kept, when no other orchestrator has room."""
        new = self.acquire(lease.model, exclude=lease.orchestrator.address)
        if new is not None:
            self.release(lease)
        return new

    def release(self, lease: Lease) -> None:
        for g in self._gpus:
            if g.orch.address == lease.orchestrator.address and g.gpu_id == lease.gpu_id:
                g.busy[lease.model] = max(0, g.busy.get(lease.model, 0) - 1)
                return

    def busy(self) -> dict[tuple[str, str], int]:
        out: dict[tuple[str, str], int] = {}
        for g in self._gpus:
            for model, n in g.busy.items():
                out[(g.orch.address, model)] = out.get((g.orch.address, model), 0) + n
        return out

    def capabilities(self) -> dict[str, Any]:
        return capabilities_body(self.config, self.busy(), self._dropped)

    def drop_capacity(self, address: str, slots: int) -> None:
        self._dropped[address] = self._dropped.get(address, 0) + slots

    def restore_capacity(self, address: str, slots: int) -> None:
        self._dropped[address] = max(0, self._dropped.get(address, 0) - slots)

    def has_room(self, model: str, include_uris: tuple[str, ...] = (), exclude_uris: tuple[str, ...] = ()) -> bool:
        return any(self._free(g, model) > 0 and self._orch_free(g.orch.address, model) > 0
                   and (not include_uris or g.orch.uri in include_uris) and g.orch.uri not in exclude_uris
                   for g in self._gpus)

    def faults_for(self, address: str, uri: str, kinds: tuple[str, ...] | None = None) -> list[Fault]:
        """The faults that hit the next stream on this orchestrator (drawn once per stream).

        ``kinds`` limits the draw (the gateway's own faults are drawn before selection, under the
        address ``""``: a fault whose ``orchestrator`` is empty applies there).
        """
        n = self._stream_counts.get(address, 0) + 1
        self._stream_counts[address] = n
        hit = []
        for f in self.config.faults:
            if kinds is not None and f.kind not in kinds:
                continue
            if f.orchestrator and f.orchestrator not in address and f.orchestrator not in uri:
                continue
            if n in f.streams or (f.probability > 0 and self._rng.random() < f.probability):
                hit.append(f)
        return hit

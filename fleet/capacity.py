"""Capacity snapshots: how many slots the network has, where, and how many are idle.

Parsed from the gateway's ``GET /getNetworkCapabilities`` (per orchestrator,
capability 35 = live video-to-video), from NaaP's ``GET /v1/streaming/models``
(per model, no orchestrators), or a static count. NaaP's
``GET /v1/discover/orchestrators`` adds the service URIs of the orchestrators
that offer the model (``targets``): their slots are unknown, but a campaign can
spread its sessions across them and cap each. Pure: no network here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from fleet.errors import CapacityError

__all__ = [
    "LIVE_VIDEO_TO_VIDEO",
    "CapacitySnapshot",
    "OrchestratorSlots",
    "load_capacity_file",
    "parse_capacity",
    "parse_naap",
    "parse_naap_discovery",
    "parse_network_capabilities",
    "static_capacity",
]

LIVE_VIDEO_TO_VIDEO = "35"


@dataclass(frozen=True)
class OrchestratorSlots:
    """One orchestrator's slots for the workflow's model."""

    address: str
    uri: str
    idle: int
    in_use: int
    gpus: tuple[tuple[str, str], ...] = ()  # (id, name)
    warm: bool = False
    price_per_unit: int | None = None        # price_info: wei per pixelsPerUnit pixels
    pixels_per_unit: int | None = None

    @property
    def key(self) -> str:
        """What tells orchestrators apart: the service URI (the address is empty without ticket params)."""
        return self.uri or self.address

    def matches(self, needles: tuple[str, ...]) -> bool:
        return any(n in self.address or n in self.uri for n in needles)


@dataclass(frozen=True)
class CapacitySnapshot:
    """Slots for one model. ``anonymous_idle`` counts slots whose orchestrator is unknown
    (NaaP or a static count): the gateway will choose, so per-orchestrator caps cannot apply."""

    model: str
    orchestrators: tuple[OrchestratorSlots, ...] = ()
    anonymous_idle: int = 0
    anonymous_in_use: int = 0
    targets: tuple[str, ...] = ()  # service URIs offering the model whose slots are unknown (NaaP discovery)
    source: str = "static"
    notes: tuple[str, ...] = field(default=(), compare=False)
    read_unix: float | None = field(default=None, compare=False)   # when the fleet read it (None: a file, a count)

    @cached_property   # asked at every lease: summed once per snapshot (frozen, so it cannot go stale)
    def total(self) -> int:
        return self.idle + sum(o.in_use for o in self.orchestrators) + self.anonymous_in_use

    @cached_property
    def idle(self) -> int:
        return sum(o.idle for o in self.orchestrators) + self.anonymous_idle

    def gpus_of(self, uri: str | None = None, address: str | None = None) -> OrchestratorSlots | None:
        """The first orchestrator that lists GPUs with the URI ``uri`` when given, else the address ``address``."""
        by_uri, by_address = self._with_gpus
        return by_uri.get(uri) if uri else by_address.get(address or "")

    @cached_property   # asked for every session row: indexed once per snapshot
    def _with_gpus(self) -> tuple[dict[str, OrchestratorSlots], dict[str, OrchestratorSlots]]:
        by_uri: dict[str, OrchestratorSlots] = {}
        by_address: dict[str, OrchestratorSlots] = {}
        for o in self.orchestrators:
            if o.gpus:
                by_uri.setdefault(o.uri, o)
                by_address.setdefault(o.address, o)
        return by_uri, by_address

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model, "source": self.source, "total_slots": self.total,
                               "idle_slots": self.idle, "orchestrators": len(self.orchestrators) or len(self.targets)}
        if self.read_unix is not None:   # read live (not a file or a count): when
            out["read_unix"] = self.read_unix
        return out


def static_capacity(slots: int, model: str = "") -> CapacitySnapshot:
    if slots < 0:
        raise CapacityError(f"capacity must be a whole number of slots >= 0, got {slots}")
    return CapacitySnapshot(model=model, anonymous_idle=slots, source="static")


def _int(value: Any, what: str) -> int:
    if value is None:
        return 0  # go-livepeer omits zero fields
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise CapacityError(f"{what}: expected a whole number >= 0, got {value!r}")
    return int(value)


def _opt_int(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def parse_network_capabilities(obj: Any, model: str) -> CapacitySnapshot:
    """Orchestrators offering ``model`` for live video-to-video, with idle and busy slots."""
    if not isinstance(obj, dict) or not isinstance(obj.get("orchestrators"), list):
        raise CapacityError("getNetworkCapabilities: expected an object with an 'orchestrators' list")
    found = []
    for i, orch in enumerate(obj["orchestrators"]):
        if not isinstance(orch, dict):
            raise CapacityError(f"getNetworkCapabilities: orchestrators[{i}] is not an object")
        caps = (((orch.get("capabilities") or {}).get("constraints") or {}).get("PerCapability") or {})
        models = (caps.get(LIVE_VIDEO_TO_VIDEO) or {}).get("models") or {}
        slots = models.get(model)
        if slots is None:
            continue
        where = f"getNetworkCapabilities: orchestrators[{i}].models[{model}]"
        gpus = []
        for hw in orch.get("hardware") or []:
            if hw.get("model_id") in (None, model):
                for gpu in (hw.get("gpu_info") or {}).values():
                    gpus.append((str(gpu.get("id", "")), str(gpu.get("name", ""))))
        price: dict[str, Any] = orch["price_info"] if isinstance(orch.get("price_info"), dict) else {}
        found.append(OrchestratorSlots(
            address=str(orch.get("address") or "").lower(), uri=str(orch.get("orch_uri") or ""),
            price_per_unit=_opt_int(price.get("pricePerUnit")), pixels_per_unit=_opt_int(price.get("pixelsPerUnit")),
            idle=_int(slots.get("capacity"), where + ".capacity"),
            in_use=_int(slots.get("capacityInUse"), where + ".capacityInUse"),
            gpus=tuple(gpus), warm=bool(slots.get("warm", False))))
    found.sort(key=lambda o: (o.uri, o.address))
    anonymous = sum(1 for o in found if not o.address)
    notes = (f"{anonymous} orchestrator(s) have no address (no ticket params): known by service URI only",) \
        if anonymous else ()
    return CapacitySnapshot(model=model, orchestrators=tuple(found), source="gateway", notes=notes)


def parse_naap(obj: Any, model: str) -> CapacitySnapshot:
    """NaaP ``/v1/streaming/models``: a list (or ``{"models": [...]}``) of per-model slot counts."""
    rows = obj.get("models") if isinstance(obj, dict) else obj
    if not isinstance(rows, list):
        raise CapacityError("NaaP /v1/streaming/models: expected a list of models")
    for i, row in enumerate(rows):
        if isinstance(row, dict) and model in (row.get("model"), row.get("model_id"), row.get("pipeline")):
            where = f"NaaP models[{i}]"
            slots = _int(row.get("gpu_slots"), where + ".gpu_slots")
            active = _int(row.get("active_streams"), where + ".active_streams")
            available = row.get("available_capacity", slots - active)
            if isinstance(available, bool) or not isinstance(available, (int, float)):
                raise CapacityError(f"{where}.available_capacity: expected a number, got {available!r}")
            notes: tuple[str, ...] = ()
            if available < 0:  # NaaP reports an oversubscribed model this way: no idle slot, not an error
                notes = (f"NaaP reports {model!r} oversubscribed (available_capacity {available:g}): 0 idle slots",)
            return CapacitySnapshot(model=model, anonymous_idle=max(0, int(available)), anonymous_in_use=active,
                                    source="naap", notes=notes)
    return CapacitySnapshot(model=model, source="naap", notes=(f"NaaP lists no model {model!r}",))


def parse_naap_discovery(obj: Any, model: str, pipeline: str = "live-video-to-video") -> tuple[str, ...]:
    """NaaP ``/v1/discover/orchestrators``: rows ``{address (the service URI), score, capabilities
    ["pipeline/model", ...], last_seen_ms, recent_work}``, one per orchestrator and pipeline. The URIs
    of those offering ``pipeline/model``, sorted, each once."""
    if not isinstance(obj, list):
        raise CapacityError("NaaP /v1/discover/orchestrators: expected a list of orchestrators")
    wanted = f"{pipeline}/{model}"
    uris = set()
    for i, row in enumerate(obj):
        if not isinstance(row, dict):
            raise CapacityError(f"NaaP /v1/discover/orchestrators[{i}]: expected an object")
        caps = row.get("capabilities") or []
        if not isinstance(caps, list):
            raise CapacityError(f"NaaP /v1/discover/orchestrators[{i}].capabilities: expected a list")
        uri = row.get("address")
        if wanted in caps and isinstance(uri, str) and uri.strip():
            uris.add(uri.strip())
    return tuple(sorted(uris))


def parse_capacity(obj: Any, model: str) -> CapacitySnapshot:
    """Any of the shapes above, recognised by its keys."""
    if isinstance(obj, dict) and "orchestrators" in obj:
        return parse_network_capabilities(obj, model)
    if isinstance(obj, dict) and "slots" in obj and len(obj) == 1:
        return static_capacity(_int(obj["slots"], "slots"), model)
    if isinstance(obj, list) or (isinstance(obj, dict) and "models" in obj):
        return parse_naap(obj, model)
    raise CapacityError("unrecognised capacity JSON (allowed: a getNetworkCapabilities response, a NaaP "
                        "/v1/streaming/models response, or {\"slots\": N})")


def load_capacity_file(path: str | Path, model: str) -> CapacitySnapshot:
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CapacityError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CapacityError(f"{path}: cannot read file ({type(exc).__name__})") from exc
    except json.JSONDecodeError as exc:
        raise CapacityError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}") from exc
    try:
        return parse_capacity(obj, model)
    except CapacityError as exc:
        raise CapacityError(f"{path}: {exc}") from None

"""The session row: one frozen, typed record per test session, from the runner to every output.

``SessionRow`` holds every column of the ``sessions`` table, each with its type; the Arrow schema
(``fleet.results.sink.SESSIONS``) is derived from its fields, so a column exists in exactly one place
and a misspelt name fails where it is written, not as a silent null column. Three constructors make
the three kinds of session: ``measured`` (the probe ran: its ``ProbeResult``), ``failed`` (the tester
lost it before it could report) and ``skipped`` (no slot: it never ran). ``Identity`` is what the
driver knows of a session before it runs (campaign, scenario, region, prompt, target); a runner's row
gets it with ``identified``.

Besides its columns a row carries what the other tables and the sketches are made of: its
per-second samples, its events and its metrics' sketches (``non-column`` fields, ``COLUMN=False``).
``record`` is the row as the sessions table stores it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import types
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal, NamedTuple, Union, get_args, get_origin, get_type_hints

import pyarrow as pa

from fleet.errors import AnyErrorClass, Outcome, Phase
from fleet.probe.types import ProbeResult

__all__ = ["Event", "IDENTITY", "Identity", "Second", "SessionRow", "arrow_fields"]

COLUMN = "column"   # field metadata: False for what the row carries but the sessions table does not store
ARROW = "arrow"     # field metadata: the column's Arrow type where the Python type does not say it


class Second(NamedTuple):
    """One second of a session's output (the ``samples`` table)."""

    t_s: float
    fps_out: int | None
    fps_in: int | None
    latency_ms_p50: float | None


class Event(NamedTuple):
    """Something that happened at ``t_s`` seconds into the session (the ``events`` table)."""

    t_s: float
    type: str
    data: Mapping[str, Any]


def _extra(default: Any = None, factory: Any = None) -> Any:
    meta = {COLUMN: False}
    return field(default_factory=factory, metadata=meta) if factory is not None else field(default=default,
                                                                                          metadata=meta)


@dataclass(frozen=True, kw_only=True)
class Identity:
    """What the driver knows of a session before it runs (the identity columns every table carries)."""

    campaign_id: str
    run_id: str
    scenario: str
    scenario_hash: str
    model: str
    dialect: str
    session_id: str
    region: str | None = None
    gateway: str | None = None
    prompt_id: str | None = None
    prompt_category: str | None = None
    planned_start_s: float | None = None
    target_orchestrator: str | None = None


@dataclass(frozen=True, kw_only=True)
class SessionRow:
    # identity (every table carries these first ones: IDENTITY)
    campaign_id: str | None = None
    run_id: str | None = None
    scenario: str | None = None
    scenario_hash: str | None = None
    fleet_version: str | None = None
    schema_version: int | None = field(default=None, metadata={ARROW: pa.int16()})
    session_id: str
    region: str | None = None
    gateway: str | None = None
    orchestrator_address: str | None = None
    orchestrator_url: str | None = None
    gpu_id: str | None = None
    gpu_name: str | None = None
    model: str | None = None
    prompt_id: str | None = None
    prompt_category: str | None = None
    # the session
    dialect: str | None = None
    stream_id: str | None = None
    stream_name: str | None = None
    request_id: str | None = None
    pipeline_id: str | None = None
    codec: str | None = None
    target_orchestrator: str | None = None
    target_idle_slots: int | None = None
    capacity_age_s: float | None = None
    refused_while_idle: bool | None = None
    planned_start_s: float | None = None
    started_at: dt.datetime | None = None
    duration_s: float | None = None
    outcome: Outcome
    error_phase: Phase | None = None
    error_class: AnyErrorClass | None = None
    error_detail: str | None = None
    excused: bool | None = None
    gateway_error: str | None = None
    startup_outcome: str | None = None
    reasons: tuple[str, ...] = ()
    offer_ms: float | None = None
    signaling_ms: float | None = None
    ice_ms: float | None = None
    dtls_ms: float | None = None
    first_packet_ms: float | None = None
    whep_signaling_ms: float | None = None
    startup_s: float | None = None
    playable_s: float | None = None
    frames_sent: int | None = None
    frames_received: int | None = None
    output_fps: float | None = None
    jitter_coeff: float | None = None
    jitter_coeff_p50: float | None = None
    jitter_coeff_p95: float | None = None
    jitter_intervals: int | None = None
    jitter_suspect_intervals: int | None = None
    tester_stall_frames: int | None = None
    freeze_count: int | None = None
    freeze_s: float | None = None
    black_frames: int | None = None
    decoded_frames: int | None = None
    latency_method: str | None = None
    g2g_latency_ms: float | None = None
    g2g_latency_p95_ms: float | None = None
    latency_sample_count: int | None = None
    prompt_switch_ms: tuple[float | None, ...] = ()
    packets_received: int | None = None
    packet_loss_pct: float | None = None
    ingest_packet_loss_pct: float | None = None
    rtt_ms: float | None = None
    pacing_late_ms_mean: float | None = None
    pacing_late_ms_max: float | None = None
    tester_send_jitter_coeff: float | None = None
    keyframes_on_request: int | None = None
    ice_local_candidate: str | None = None
    ice_remote_candidate: str | None = None
    egress_ice_local_candidate: str | None = None
    egress_ice_remote_candidate: str | None = None
    gateway_ingest_latency_s: float | None = None
    gateway_ingest_jitter_ms: float | None = None
    gateway_ingest_packet_loss_pct: float | None = None
    gateway_ingest_rtt_ms: float | None = None
    gateway_conn_quality: str | None = None
    teardown_verified: bool | None = None
    gateway_state: str | None = None
    restart_count: int | None = None
    swapped: bool | None = None
    swap_count: int | None = None
    swap_gap_s: float | None = None
    orchestrators: tuple[str, ...] = ()
    tester_host: str | None = None
    tester_loop_lag_ms_max: float | None = None
    tester_loop_lag_ms_mean: float | None = None
    tester_loop_busy_pct: float | None = None
    tester_cpu_pct: float | None = None
    tester_bottleneck: bool | None = None
    # carried, not stored as columns: the samples and events tables, the sketches (fleet.results.sketches)
    per_second: tuple[Second, ...] = _extra(default=())
    events: tuple[Event, ...] = _extra(default=())
    sketches: Mapping[str, bytes] = _extra(factory=dict)

    @property
    def started_unix(self) -> float | None:
        return None if self.started_at is None else self.started_at.timestamp()

    @staticmethod
    def at(unix: float | None) -> dt.datetime | None:
        """A ``started_at`` from a Unix time."""
        return None if unix is None else dt.datetime.fromtimestamp(unix, dt.timezone.utc)

    @classmethod
    def failed(cls, ident: Identity, error_class: AnyErrorClass, detail: str, *, phase: Phase = "tester",
               started_unix: float, duration_s: float = 0.0, orchestrator_address: str | None = None) -> SessionRow:
        """A session lost before its runner could report it (its runner died, the tester failed)."""
        return cls(**_ident(ident), outcome="failed", error_phase=phase, error_class=error_class, error_detail=detail,
                   started_at=cls.at(started_unix), duration_s=duration_s, orchestrator_address=orchestrator_address)

    @classmethod
    def skipped(cls, ident: Identity, error_class: AnyErrorClass, detail: str, *, started_unix: float,
                orchestrator_address: str | None = None, target_idle_slots: int | None = None,
                capacity_age_s: float | None = None) -> SessionRow:
        """A session that never ran: no slot within the caps (``skipped_no_capacity``), with the capacity
        evidence it was skipped on (the target's idle slots in the broker's snapshot, and its age)."""
        return cls(**_ident(ident), outcome="skipped_no_capacity", error_phase="capacity", error_class=error_class,
                   error_detail=detail, started_at=cls.at(started_unix), duration_s=0.0,
                   orchestrator_address=orchestrator_address, target_idle_slots=target_idle_slots,
                   capacity_age_s=capacity_age_s)

    @classmethod
    def measured(cls, result: ProbeResult, **columns: Any) -> SessionRow:
        """A session the probe ran: every column its ``fleet.probe.types.ProbeResult`` has, then ``columns``
        (the runner's own: region, tester health, capacity evidence, sketches)."""
        values = {f.name: getattr(result, f.name) for f in fields(cls)
                  if f.metadata.get(COLUMN, True) and hasattr(result, f.name)}
        values["started_at"] = cls.at(result.started_unix)
        values["latency_sample_count"] = len(result.latency_samples)
        values["per_second"] = tuple(Second(float(s["t_s"]), s.get("fps_out"), s.get("fps_in"), s.get("latency_ms_p50"))
                                     for s in result.per_second)
        values["events"] = tuple(Event(float(t), str(kind), dict(data)) for t, kind, data in result.events)
        for name in ("reasons", "prompt_switch_ms", "orchestrators"):
            values[name] = tuple(values[name])
        return cls(**{**values, **columns})

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> SessionRow:
        """A row from its columns by name (as ``record`` gives them, or a stored row): an unknown name fails."""
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in record.items()}
        return cls(**values)

    def identified(self, ident: Identity) -> SessionRow:
        """This row with the driver's identity columns (the runner's orchestrator kept where it knows one)."""
        return replace(self, **_ident(ident))

    def record(self) -> dict[str, Any]:
        """The row as the sessions table stores it: its columns, by name."""
        return {f.name: getattr(self, f.name) for f in COLUMNS}


def _ident(ident: Identity) -> dict[str, Any]:
    return dataclasses.asdict(ident)


COLUMNS = tuple(f for f in fields(SessionRow) if f.metadata.get(COLUMN, True))
IDENTITY = tuple(f.name for f in COLUMNS[:16])   # campaign_id ... prompt_category: on every table


def _text(hint: Any) -> bool:
    return hint is str or get_origin(hint) is Literal or getattr(hint, "__supertype__", None) is str


def _arrow_type(hint: Any) -> pa.DataType:
    """The Arrow type of a field's Python type (``X | None`` is nullable ``X``)."""
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        inner = [a for a in get_args(hint) if a is not type(None)]
        if all(_text(a) for a in inner):  # closed vocabularies of names (and NewTypes of str)
            return pa.string()
        (one,) = inner
        return _arrow_type(one)
    if origin is tuple:
        return pa.list_(_arrow_type(get_args(hint)[0]))
    if _text(hint):
        return pa.string()
    simple = {bool: pa.bool_(), int: pa.int64(), float: pa.float64(), dt.datetime: pa.timestamp("ms", tz="UTC")}
    if hint in simple:
        return simple[hint]
    raise TypeError(f"SessionRow: no Arrow type for {hint!r}")


def arrow_fields() -> list[tuple[str, pa.DataType]]:
    """The sessions table's columns and their Arrow types, in the row's order."""
    hints = get_type_hints(SessionRow)
    return [(f.name, f.metadata.get(ARROW) or _arrow_type(hints[f.name])) for f in COLUMNS]

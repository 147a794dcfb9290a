"""The 90 kHz RTP clock of video (RFC 6184, RFC 7741), for the probe's modules that need it without
aiortc (``fleet.probe.latency``). The reference gateway keeps its own (``fleet.gateway.rtpclock``), so that
its truth shares no code with the measurements it judges."""

from __future__ import annotations

__all__ = ["VIDEO_CLOCK"]

VIDEO_CLOCK = 90_000

"""The RTP clock as the reference gateway counts it: the 90 kHz video clock and the unwrapping of RTP's
16-bit sequence numbers and 32-bit timestamps. Written here, not imported from the probe's RTP module,
so that the truth the gateway reports shares no code with the measurements it judges."""

from __future__ import annotations

__all__ = ["VIDEO_CLOCK", "unwrap"]

VIDEO_CLOCK = 90_000  # RTP clock rate of video (RFC 6184, RFC 7741)


def unwrap(previous: int | None, value: int, bits: int) -> int:
    """``value``, a ``bits``-wide RTP counter, unwrapped against the previous unwrapped value (the nearer way round)."""
    if previous is None:
        return value
    delta = (value - previous) & ((1 << bits) - 1)
    if delta >= 1 << (bits - 1):
        delta -= 1 << bits
    return previous + delta

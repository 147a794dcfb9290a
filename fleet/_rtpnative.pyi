"""Types of the optional C extension ``fleet._rtpnative`` (fleet/_rtpnative.c)."""

import builtins
from collections.abc import Callable, Sequence

# RtpView is a struct sequence at run time, with the fields (and their types) of the Python path's view
from fleet.srtpcalls import RtpView as RtpView

API: int
BATCH: int
BUFFER: int
PACKET_MAX: int
TRAILER_MAX: int

def send_frame(fd: int, host: str, port: int, protect: int, srtp: int, head0: int, payload_type: int, seq: int,
               timestamp: int, ssrc: int, ext: bytes, payloads: Sequence[bytes], history: dict[int, bytes],
               history_size: int) -> tuple[int, int, int, list[bytes]]: ...
def unprotect_parse(unprotect: int, srtp: int, data: bytes) -> RtpView | None: ...
def plane_mean(plane: object, width: int, height: int, line_size: int, step: int) -> float: ...

CODEC_VP8: int
CODEC_H264: int
TAKEN: int
MARKER: int
NACK_DUE: int

class Tap:
    """fleet.rtp.TapCore's reassembly, and the receiver's duties for ``take`` (fleet.duties)."""

    packets: int
    bytes: int
    codec: int
    ssrc: int | None
    first_seq: int | None
    seq_unwrapped: int | None
    missing: set[int] | None
    has_base: int
    base_seq: int
    has_max: int
    max_seq: int
    cycles: int
    received: int
    jitter_q4: int
    has_last: int
    last_arrival: int
    last_timestamp: int
    clockrate: int
    nack_has: int
    nack_max: int

    def __init__(self, finish: Callable[..., object]) -> None: ...
    def packet(self, codec: int, ssrc: int, sequence_number: int, timestamp: int, marker: bool, payload: builtins.bytes,
               now: float, exact: bool) -> None: ...
    def take(self, unprotect: int, srtp: int, data: builtins.bytes, codec: int, arrival: float | None,
             wall: float | None = None) -> int: ...
    def stats_add(self, sequence_number: int, timestamp: int, wall: float) -> None: ...

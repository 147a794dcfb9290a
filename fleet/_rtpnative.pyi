"""Types of the optional C extension ``fleet._rtpnative`` (fleet/_rtpnative.c)."""

from collections.abc import Sequence

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

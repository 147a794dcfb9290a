"""The two peer connections of a probe session: publish (WHIP, send only) and watch (WHEP, receive only).

``Peers`` wires aiortc's state callbacks to events the session waits on (ICE connected, DTLS
connected, broken) and sets up the transceivers: the pre-encoded clip out, an RTP tap in. An egress
connection the gateway closes while the ingest lives is no break: go-livepeer closes every viewer on
an orchestrator swap, and the session subscribes again on a new egress connection
(``egress_lost``, ``new_egress``). aiortc's private API is reached only through ``fleet.webrtc``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from fleet.errors import ErrorClass
from fleet.media import H264_PROFILE_LEVEL_ID, PacketTrack
from fleet.probe.types import ProbeResult
from fleet.rtp import FrameTap, TapFrame
from aiortc import RTCPeerConnection

from fleet.leanrtp import lean_sender
from fleet.webrtc import (IceServer, codecs_named, drop_bandwidth_estimator, new_peer_connection, on_keyframe_request,
                          selected_candidate_types)

Event = Callable[..., None]   # event(kind, **data)


class Peers:
    def __init__(self, ice: tuple[IceServer, ...], event: Event) -> None:
        self.ice = ice
        self.pc_in = new_peer_connection(ice)
        self.pc_out = new_peer_connection(ice)
        self.old_out: list[RTCPeerConnection] = []   # egress connections a swap closed
        self.egress_lost = asyncio.Event()  # the gateway closed the egress connection while the ingest lives
        self.event = event
        self.ice_done = asyncio.Event()
        self.dtls_done = asyncio.Event()
        self.broken = asyncio.Event()      # a peer connection failed or was closed by the far end
        self.broken_why = ""
        self.broken_error: ErrorClass = "connection_lost"
        self.t_ice: float | None = None
        self.closing = False               # our own close is no break
        self._wire()

    def _wire(self) -> None:
        @self.pc_in.on("iceconnectionstatechange")
        def on_ice() -> None:
            state = self.pc_in.iceConnectionState
            if state in ("completed", "connected") and not self.ice_done.is_set():
                self.t_ice = time.monotonic()
                self.ice_done.set()
            elif state == "failed":
                self.break_off("ice failed", "ice_failed")

        @self.pc_in.on("connectionstatechange")
        def on_in() -> None:
            state = self.pc_in.connectionState
            if state == "connected":
                self.dtls_done.set()
            elif state in ("failed", "closed") and not self.closing:
                self.break_off(f"ingest connection {state}")

        self._wire_out(self.pc_out)

    def _wire_out(self, pc: RTCPeerConnection) -> None:
        @pc.on("connectionstatechange")
        def on_out() -> None:
            state = pc.connectionState
            if state not in ("failed", "closed") or self.closing or pc is not self.pc_out:
                return
            if state == "closed" and self.pc_in.connectionState == "connected":
                self.event("egress_closed")
                self.egress_lost.set()
            else:
                self.break_off(f"egress connection {state}")

    def break_off(self, why: str, error: ErrorClass = "connection_lost") -> None:
        if not self.broken.is_set():
            self.broken_why, self.broken_error = why, error
            self.event("connection_lost", why=why)
            self.broken.set()

    def transceivers(self, track: PacketTrack, on_frame: Callable[[TapFrame], None],
                     bandwidth_feedback: bool) -> FrameTap:
        """The clip out (H.264 constrained baseline, or VP8), H.264 or VP8 in; the tap on the way in."""
        sender = self.pc_in.addTransceiver(track, direction="sendonly")
        # a send-only transceiver's receiver never sees RTP; its idle estimator is 1,001 objects every garbage
        # collection walks (a full one paused a 40-session probe for ~90 ms)
        drop_bandwidth_estimator(sender.receiver)
        lean_sender(sender.sender)  # pre-encoded packets: a cheaper send loop, the same packets
        on_keyframe_request(sender.sender, track.request_keyframe)  # a PLI: jump to the next keyframe
        if track.clip.codec == "h264":
            sender.setCodecPreferences(codecs_named("video", "H264", profile_level_id=H264_PROFILE_LEVEL_ID))
        else:
            sender.setCodecPreferences(codecs_named("video", "VP8"))
        return self._egress(on_frame, bandwidth_feedback)

    def _egress(self, on_frame: Callable[[TapFrame], None], bandwidth_feedback: bool) -> FrameTap:
        recv = self.pc_out.addTransceiver("video", direction="recvonly")
        recv.setCodecPreferences(codecs_named("video", "H264", "VP8"))
        return FrameTap(recv.receiver, on_frame, decode=False, bandwidth_feedback=bandwidth_feedback)

    def new_egress(self, on_frame: Callable[[TapFrame], None], bandwidth_feedback: bool) -> FrameTap:
        """A fresh egress connection for the same WHEP URL, after the gateway closed the last one."""
        self.old_out.append(self.pc_out)
        self.pc_out = new_peer_connection(self.ice)
        self._wire_out(self.pc_out)
        self.egress_lost.clear()
        return self._egress(on_frame, bandwidth_feedback)

    def candidates(self, r: ProbeResult) -> None:
        """The selected ICE candidate types of both connections (the egress: its latest), read before they close;
        a connection that never got a pair leaves what an earlier read found."""
        local, remote = selected_candidate_types(self.pc_in)
        if local is not None:
            r.ice_local_candidate, r.ice_remote_candidate = local, remote
        local, remote = selected_candidate_types(self.pc_out)
        if local is not None:
            r.egress_ice_local_candidate, r.egress_ice_remote_candidate = local, remote

    async def rtcp(self, r: ProbeResult, frames_sent: int) -> None:
        """Ingest loss and RTT from the gateway's RTCP receiver reports, read before the connections close."""
        try:
            stats = await asyncio.wait_for(self.pc_in.getStats(), 2.0)
        except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - stats are best effort
            return
        for s in stats.values():
            if s.type == "remote-inbound-rtp":
                if getattr(s, "roundTripTime", None) is not None:
                    r.rtt_ms = round(s.roundTripTime * 1000, 3)
                if frames_sent and getattr(s, "packetsLost", None) is not None:
                    r.ingest_packet_loss_pct = round(100 * s.packetsLost / max(1, s.packetsLost + frames_sent), 3)

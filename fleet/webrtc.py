"""WebRTC plumbing shared by the fleet's clients and the reference gateway.

Three settings aiortc does not expose are made here, in one place:

- **Host candidates.** aioice advertises every interface's address as a host
  candidate, except 127.0.0.1. On a machine whose test traffic must stay on
  loopback, and in a fleet whose testers must use a known interface, the
  host candidate addresses are a setting: ``use_host_addresses(["127.0.0.1"])``
  makes every peer connection created afterwards in this process gather
  exactly those.
- **DTLS cipher suites.** aiortc's certificate is ECDSA and, as a DTLS client,
  it offers only ECDHE-ECDSA suites, so a peer with an RSA certificate (OBS,
  GStreamer's webrtcbin) gets "no shared cipher" whenever aiortc answers
  ``a=setup:active``. pion (go-livepeer's stack) offers ECDHE-RSA suites too;
  ``accept_rsa_peers()`` (applied on import) adds them, after the ECDSA ones.
- **Keyframe requests** reach a track that sends pre-encoded packets
  (``on_keyframe_request``): aiortc answers a PLI only when it encodes.
- **Codec preferences** by name (``codecs_named``), and ICE servers as a
  gateway offers them in WHIP ``Link`` headers (RFC 9725, ``parse_ice_links``).
- **The selected candidate pair** (``selected_candidate_types``): aiortc's
  ``getStats`` has no ``candidate-pair``; aioice keeps the nominated pair.

Every use of aiortc's, aioice's and pylibsrtp's private API in the fleet is in this module, in
``fleet.leanrtp``, ``fleet.leansend`` and ``fleet.leanice`` (the probe's cheaper RTP data path: the
receiver's RTP duties, the sender's send loop, RTCP as it arrives, the transports under them),
``fleet.srtpcalls`` (libsrtp on pylibsrtp's session buffer) and ``fleet.media.ClipPayloads`` (aiortc's
packetizers, called once per clip frame); all are checked here.
Here, the receiver's internals the frame tap needs: ``request_keyframe``, ``tap_rtp``,
``receiver_codec``, ``starve_decoder``, ``drop_bandwidth_estimator``, ``timestamp_origin``; the ICE
transport's aioice connection for ``selected_candidate_types``. pyproject.toml pins the three
packages with ``~=``; on import, this module checks that every private attribute it relies on
exists and otherwise fails with an ImportError naming it and the installed versions.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

import aioice.ice
import aioice.turn
import pylibsrtp
from pylibsrtp._binding import lib as srtp_lib  # type: ignore[import-not-found]
from aiortc import (MediaStreamTrack, RTCConfiguration, RTCIceServer, RTCIceTransport, RTCPeerConnection, RTCRtpReceiver,
                    RTCRtpSender)
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder
import aiortc.rtcdtlstransport
from aiortc.rtcdtlstransport import RTCCertificate, RTCDtlsTransport
from aiortc.rtcrtpreceiver import NackGenerator, StreamStatistics
from aiortc.rtcrtpparameters import RTCRtpCodecCapability

__all__ = ["LOOPBACK", "IceServer", "PayloadKinds", "accept_rsa_peers", "codecs_named", "drop_bandwidth_estimator",
           "ice_link_headers", "loopback_pair", "new_peer_connection", "on_keyframe_request",
           "parse_ice_links", "receiver_codec", "request_keyframe", "selected_candidate_types",
           "set_ice_failed_timeout", "starve_decoder", "tap_rtp", "timestamp_origin", "use_host_addresses"]

LOOPBACK = ("127.0.0.1",)
DTLS_CIPHERS = (b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-SHA:"
                b"ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-CHACHA20-POLY1305:"
                b"ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA")
# the private attributes the fleet relies on: (owner, name); a receiver's mangled instance attributes are
# checked among the names its __init__ sets (a sender's: its __init__ and replaceTrack)
_PRIVATE = ((aioice.ice, "get_host_addresses"), (aioice.ice, "CONSENT_FAILURES"), (aioice.ice, "CONSENT_INTERVAL"),
            (aioice.ice.StunProtocol, "datagram_received"), (H264Encoder, "_packetize"),
            (H264Encoder, "_split_bitstream"), (Vp8Encoder, "_packetize"), (pylibsrtp, "ERRORS"),
            (pylibsrtp, "SRTP_MAX_TRAILER_LEN"), (srtp_lib, "srtp_protect"), (srtp_lib, "srtp_unprotect"),
            (RTCCertificate, "_create_ssl_context"), (RTCRtpSender, "_send_keyframe"),
            (RTCRtpSender, "_run_rtp"), (RTCRtpSender, "_retransmit"), (RTCRtpSender, "_next_encoded_frame"),
            (RTCRtpReceiver, "_send_rtcp_pli"), (RTCRtpReceiver, "_send_rtcp_nack"), (RTCRtpReceiver, "_handle_rtp_packet"),
            (RTCDtlsTransport, "_handle_rtcp_data"), (aiortc.rtcdtlstransport, "State"))
_RECEIVER_FIELDS = ("__decoder_queue", "__remote_bitrate_estimator", "__codecs", "__timestamp_mapper", "__active_ssrc",
                    "__remote_streams", "__rtx_ssrc", "__nack_generator")
_SENDER_FIELDS = ("__rtp_history", "__rtp_header_extensions_map", "__rtp_started", "__rtp_exited", "__mid", "__track",
                  "__encoder", "__ntp_timestamp", "__rtp_timestamp", "__octet_count", "__packet_count",
                  "__rtx_payload_type", "__rtx_sequence_number")
# instance attributes set in __init__: (class, name)
_INSTANCE_FIELDS = ((RTCIceTransport, "_connection"), (aioice.ice.Connection, "_nominated"),
                    (aioice.ice.CandidatePair, "protocol"), (aioice.ice.Connection, "_queue"),
                    (RTCDtlsTransport, "_rx_srtp"), (RTCDtlsTransport, "_tx_srtp"), (RTCDtlsTransport, "_state"),
                    (RTCRtpReceiver, "_enabled"), (RTCRtpSender, "_enabled"), (pylibsrtp.Session, "_srtp"),
                    (Vp8Encoder, "picture_id"), (NackGenerator, "max_seq"), (NackGenerator, "missing"),
                    (pylibsrtp.Session, "_cdata"), (pylibsrtp.Session, "_buffer"),
                    (aioice.turn.TurnTransport, "_TurnTransport__inner_protocol"))
_STATISTICS_FIELDS = ("base_seq", "max_seq", "cycles", "packets_received", "_jitter_q4", "_last_arrival",  # fleet.duties
                      "_last_timestamp", "_clockrate", "_expected_prior", "_received_prior")  # keeps them on its tap


def check_private_api() -> None:
    """Fail clearly when an aiortc / aioice release no longer has what the fleet uses."""
    set_in_init = set(RTCRtpReceiver.__init__.__code__.co_names)
    missing = [f"{getattr(o, '__name__', o)}.{n}" for o, n in _PRIVATE if not hasattr(o, n)]
    missing += [f"RTCRtpReceiver.{n}" for n in _RECEIVER_FIELDS if f"_RTCRtpReceiver{n}" not in set_in_init]
    sender_init = set(RTCRtpSender.__init__.__code__.co_names) | set(RTCRtpSender.replaceTrack.__code__.co_names)
    missing += [f"RTCRtpSender.{n}" for n in _SENDER_FIELDS if f"_RTCRtpSender{n}" not in sender_init]
    missing += [f"{c.__name__}.{n}" for c, n in _INSTANCE_FIELDS if n not in c.__init__.__code__.co_names]
    missing += [f"StreamStatistics.{n}" for n in _STATISTICS_FIELDS if n not in StreamStatistics.__init__.__code__.co_names]
    if missing:
        raise ImportError(f"fleet.webrtc relies on {', '.join(missing)}, which aiortc {version('aiortc')} / aioice "
                          f"{version('aioice')} / pylibsrtp {version('pylibsrtp')} no longer have: install the "
                          "versions pyproject.toml pins (aiortc~=1.16.0, aioice~=0.13.0, pylibsrtp~=1.0) or update "
                          "fleet.webrtc for this release")


check_private_api()
_original_gather = aioice.ice.get_host_addresses
_addresses: tuple[str, ...] | None = None
_original_context = RTCCertificate._create_ssl_context


@dataclass(frozen=True)
class IceServer:
    """One STUN/TURN server. ``credential`` is a secret: it is never printed (repr hides it)."""

    urls: str
    username: str | None = None
    credential: str | None = None

    def __repr__(self) -> str:
        return f"IceServer({self.urls!r}{', with credentials' if self.credential else ''})"

    def rtc(self) -> RTCIceServer:
        return RTCIceServer(urls=self.urls, username=self.username, credential=self.credential)


def _configured(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    if _addresses is None:
        return _original_gather(use_ipv4=use_ipv4, use_ipv6=use_ipv6)
    return [a for a in _addresses if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]


def use_host_addresses(addresses: tuple[str, ...] | list[str] | None) -> None:
    """Gather host candidates on exactly ``addresses`` (None: aioice's default, every interface)."""
    global _addresses
    _addresses = tuple(addresses) if addresses is not None else None
    aioice.ice.get_host_addresses = _configured


def _context_with_rsa(self: RTCCertificate, srtp_profiles: list[Any]) -> object:
    ctx = _original_context(self, srtp_profiles)
    ctx.set_cipher_list(DTLS_CIPHERS)
    return ctx


def accept_rsa_peers() -> None:
    """Let aiortc's DTLS client agree a suite with a server whose certificate is RSA."""
    RTCCertificate._create_ssl_context = _context_with_rsa  # type: ignore[method-assign, assignment]


accept_rsa_peers()


def set_ice_failed_timeout(seconds: float, checks: int = 5) -> None:
    """ICE fails after ``seconds`` without consent (aioice: 6 checks 5 s apart, 30 s; pion: 10 s).

    aioice reads these module settings for every connection of the process.
    """
    aioice.ice.CONSENT_FAILURES = checks
    aioice.ice.CONSENT_INTERVAL = seconds / checks  # type: ignore[assignment]  # aioice sleeps on it: a float works


def on_keyframe_request(sender: RTCRtpSender, callback: Callable[[], None]) -> None:
    """Call ``callback`` whenever the far end asks ``sender`` for a keyframe (RTCP PLI or FIR).

    aiortc answers a PLI only on the path where it encodes frames itself; a track that sends
    pre-encoded packets must be told."""
    original = sender._send_keyframe

    def send_keyframe() -> None:
        original()
        callback()

    sender._send_keyframe = send_keyframe  # type: ignore[method-assign]


def request_keyframe(receiver: RTCRtpReceiver, ssrc: int) -> Awaitable[None]:
    """Send the far end an RTCP PLI for ``ssrc`` (aiortc sends one only on a decode error)."""
    return receiver._send_rtcp_pli(ssrc)


def tap_rtp(receiver: RTCRtpReceiver, handler: Callable[[Any, int], Awaitable[None]]) -> Callable[[Any, int], Any]:
    """Route every RTP packet the receiver gets through ``handler``; returns aiortc's own handler, which
    ``handler`` must await to let the packet on."""
    original = receiver._handle_rtp_packet
    receiver._handle_rtp_packet = handler  # type: ignore[method-assign, assignment]
    return original


def receiver_codec(receiver: RTCRtpReceiver, payload_type: int) -> Any:
    """The negotiated codec for a payload type, or None before negotiation / when unknown."""
    return receiver._RTCRtpReceiver__codecs.get(payload_type)  # type: ignore[attr-defined]


class PayloadKinds(dict[int, str | None]):
    """A receiver's payload types to their media codec's name ('VP8', 'H264', ...) or None (unknown, or RTX):
    ``kinds[pt]``, a plain lookup per packet once the type is negotiated (kept then); a type not negotiated
    (yet) is looked up again each time, not kept (codecs are known once negotiation ends)."""

    def __init__(self, receiver: RTCRtpReceiver) -> None:
        super().__init__()
        self.receiver = receiver

    def __missing__(self, payload_type: int) -> str | None:
        codec = receiver_codec(self.receiver, payload_type)
        if codec is None:
            return None
        kind = self[payload_type] = None if codec.name.lower() == "rtx" else codec.name
        return kind


def starve_decoder(receiver: RTCRtpReceiver, queue: Any) -> None:
    """Give the receiver's decoder thread ``queue`` (one that never yields a frame): no decoding at all.
    Call before the receiver starts (the thread takes the queue when it starts)."""
    receiver._RTCRtpReceiver__decoder_queue = queue  # type: ignore[attr-defined]


def drop_bandwidth_estimator(receiver: RTCRtpReceiver) -> None:
    """No receiver-side bandwidth estimate (REMB): the far end's encoder keeps its own bitrate."""
    receiver._RTCRtpReceiver__remote_bitrate_estimator = None  # type: ignore[attr-defined]


def timestamp_origin(receiver: RTCRtpReceiver | None) -> int | None:
    """The RTP timestamp aiortc maps to a decoded frame's pts 0 (pts + origin = the packet's timestamp)."""
    mapper = getattr(receiver, "_RTCRtpReceiver__timestamp_mapper", None)
    return getattr(mapper, "_origin", None)


def selected_candidate_types(pc: RTCPeerConnection) -> tuple[str | None, str | None]:
    """The types (``host``, ``srflx``, ``prflx``, ``relay``) of the local and the remote candidate of the pair
    ``pc`` carries media on (aioice's nominated pair for RTP); (None, None) before ICE selected one and after
    the connection closed (aioice forgets it then)."""
    for transceiver in pc.getTransceivers():
        dtls = transceiver.sender.transport or transceiver.receiver.transport
        pair = dtls.transport._connection._nominated.get(1) if dtls is not None else None
        if pair is not None:
            return pair.local_candidate.type, pair.remote_candidate.type
    return None, None


def new_peer_connection(ice_servers: Sequence[IceServer] = ()) -> RTCPeerConnection:
    """A peer connection with exactly these STUN/TURN servers (none: host candidates only)."""
    return RTCPeerConnection(RTCConfiguration(iceServers=[s.rtc() for s in ice_servers]))


async def loopback_pair(track: MediaStreamTrack, codecs: list[RTCRtpCodecCapability],
                        on_sender: Callable[[RTCRtpSender], None] = lambda s: None,
                        on_receiver: Callable[[RTCRtpReceiver], None] = lambda r: None,
                        ) -> tuple[RTCPeerConnection, RTCPeerConnection, RTCRtpSender, RTCRtpReceiver]:
    """A send-only peer with ``track`` and a receive-only peer, both offering ``codecs`` only, negotiated with
    each other on loopback host candidates (they connect once this returns; nothing here waits for media).
    ``on_sender`` and ``on_receiver`` prepare each side before the negotiation (a lean path, a frame tap).
    For the data path's own tests and benches: no gateway in between. The caller closes both peers."""
    use_host_addresses(list(LOOPBACK))
    a, b = new_peer_connection(), new_peer_connection()
    try:
        sending = a.addTransceiver(track, direction="sendonly")
        sending.setCodecPreferences(codecs)
        on_sender(sending.sender)
        receiving = b.addTransceiver("video", direction="recvonly")
        receiving.setCodecPreferences(codecs)
        on_receiver(receiving.receiver)
        await a.setLocalDescription(await a.createOffer())
        await b.setRemoteDescription(a.localDescription)
        await b.setLocalDescription(await b.createAnswer())
        await a.setRemoteDescription(b.localDescription)
    except BaseException:
        await a.close()
        await b.close()
        raise
    return a, b, sending.sender, receiving.receiver


def codecs_named(kind: str, *names: str, profile_level_id: str | None = None) -> list[RTCRtpCodecCapability]:
    """aiortc's codecs of ``kind`` whose names are in ``names`` (in that order), with their RTX.

    For H.264, ``profile_level_id`` keeps only that profile (e.g. constrained baseline 42e01f).
    """
    caps = RTCRtpSender.getCapabilities(kind).codecs
    chosen = []
    for name in names:
        for c in caps:
            if c.mimeType.lower() != f"{kind}/{name}".lower():
                continue
            if (profile_level_id and name.lower() == "h264"
                    and c.parameters.get("profile-level-id") != profile_level_id):
                continue
            chosen.append(c)
    return chosen + [c for c in caps if c.mimeType.lower() == f"{kind}/rtx"]


_LINK = re.compile(r'<([^>]*)>\s*((?:;\s*[\w-]+(?:="(?:[^"\\]|\\.)*"|=[^;,]*)?\s*)*)')
_PARAM = re.compile(r';\s*([\w-]+)(?:="((?:[^"\\]|\\.)*)"|=([^;,]*))?')


def parse_ice_links(values: Sequence[str]) -> list[IceServer]:
    """ICE servers from WHIP ``Link`` header values (RFC 9725 section 4.6): ``rel="ice-server"`` only."""
    servers = []
    for value in values:
        for m in _LINK.finditer(value):
            params = {k.lower(): (q if q is not None else (u or "").strip()) for k, q, u in _PARAM.findall(m.group(2))}
            if params.get("rel") != "ice-server" or not m.group(1).startswith(("stun:", "stuns:", "turn:", "turns:")):
                continue
            servers.append(IceServer(m.group(1), _unquote(params.get("username")), _unquote(params.get("credential"))))
    return servers


def _unquote(s: str | None) -> str | None:
    return s.replace('\\"', '"').replace("\\\\", "\\") if s else None


def _quote(v: str | None) -> str:
    return (v or "").replace("\\", "\\\\").replace('"', '\\"')


def ice_link_headers(servers: Sequence[IceServer]) -> list[str]:
    """``Link`` header values for ``servers``, as go-livepeer's GenICELinkHeaders writes them."""
    out = []
    for s in servers:
        link = f'<{s.urls}>; rel="ice-server"'
        if s.username:
            link += (f'; username="{_quote(s.username)}"; credential="{_quote(s.credential)}"'
                     '; credential-type="password"')
        out.append(link)
    return out

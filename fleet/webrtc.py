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
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aioice.ice
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCRtpSender
from aiortc.rtcdtlstransport import RTCCertificate
from aiortc.rtcrtpparameters import RTCRtpCodecCapability

__all__ = ["LOOPBACK", "IceServer", "accept_rsa_peers", "codecs_named", "ice_link_headers", "new_peer_connection", "on_keyframe_request",
           "parse_ice_links", "set_ice_failed_timeout", "use_host_addresses"]

LOOPBACK = ("127.0.0.1",)
DTLS_CIPHERS = (b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-SHA:"
                b"ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-CHACHA20-POLY1305:"
                b"ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA")
_original_gather = aioice.ice.get_host_addresses
_addresses: tuple[str, ...] | None = None

if not hasattr(RTCCertificate, "_create_ssl_context"):  # pragma: no cover - an aiortc release moved it
    raise ImportError("aiortc.RTCCertificate._create_ssl_context is gone: fleet.webrtc needs updating "
                      "for this aiortc release (pinned in pyproject.toml)")
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


def _context_with_rsa(self: RTCCertificate, srtp_profiles: list) -> object:
    ctx = _original_context(self, srtp_profiles)
    ctx.set_cipher_list(DTLS_CIPHERS)
    return ctx


def accept_rsa_peers() -> None:
    """Let aiortc's DTLS client agree a suite with a server whose certificate is RSA."""
    RTCCertificate._create_ssl_context = _context_with_rsa  # type: ignore[method-assign]


accept_rsa_peers()


def set_ice_failed_timeout(seconds: float, checks: int = 5) -> None:
    """ICE fails after ``seconds`` without consent (aioice: 6 checks 5 s apart, 30 s; pion: 10 s).

    aioice reads these module settings for every connection of the process.
    """
    aioice.ice.CONSENT_FAILURES = checks
    aioice.ice.CONSENT_INTERVAL = seconds / checks


if not hasattr(RTCRtpSender, "_send_keyframe"):  # pragma: no cover - an aiortc release renamed it
    raise ImportError("aiortc.RTCRtpSender._send_keyframe is gone: fleet.webrtc needs updating for this aiortc "
                      "release (pinned in pyproject.toml)")


def on_keyframe_request(sender: RTCRtpSender, callback: Callable[[], None]) -> None:
    """Call ``callback`` whenever the far end asks ``sender`` for a keyframe (RTCP PLI or FIR).

    aiortc answers a PLI only on the path where it encodes frames itself; a track that sends
    pre-encoded packets must be told."""
    original = sender._send_keyframe

    def send_keyframe() -> None:
        original()
        callback()

    sender._send_keyframe = send_keyframe  # type: ignore[method-assign]


def new_peer_connection(ice_servers: Sequence[IceServer] = ()) -> RTCPeerConnection:
    """A peer connection with exactly these STUN/TURN servers (none: host candidates only)."""
    return RTCPeerConnection(RTCConfiguration(iceServers=[s.rtc() for s in ice_servers]))


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
            unquote = lambda s: s.replace('\\"', '"').replace("\\\\", "\\") if s else None  # noqa: E731
            servers.append(IceServer(m.group(1), unquote(params.get("username")), unquote(params.get("credential"))))
    return servers


def ice_link_headers(servers: Sequence[IceServer]) -> list[str]:
    """``Link`` header values for ``servers``, as go-livepeer's GenICELinkHeaders writes them."""
    out = []
    for s in servers:
        link = f'<{s.urls}>; rel="ice-server"'
        if s.username:
            quote = lambda v: (v or "").replace("\\", "\\\\").replace('"', '\\"')  # noqa: E731
            link += (f'; username="{quote(s.username)}"; credential="{quote(s.credential)}"'
                     '; credential-type="password"')
        out.append(link)
    return out

"""WebRTC plumbing shared by the fleet's clients and the reference gateway.

aioice advertises every interface's address as a host candidate, except
127.0.0.1. On a machine whose test traffic must stay on loopback, and in a
fleet whose testers must use a known interface, the host candidate addresses
are a setting: ``use_host_addresses(["127.0.0.1"])`` makes every peer
connection created afterwards in this process gather exactly those.
"""

from __future__ import annotations

import aioice.ice
from aiortc import RTCConfiguration, RTCPeerConnection

__all__ = ["LOOPBACK", "new_peer_connection", "use_host_addresses"]

LOOPBACK = ("127.0.0.1",)
_original = aioice.ice.get_host_addresses
_addresses: tuple[str, ...] | None = None


def _configured(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    if _addresses is None:
        return _original(use_ipv4=use_ipv4, use_ipv6=use_ipv6)
    return [a for a in _addresses if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]


def use_host_addresses(addresses: tuple[str, ...] | list[str] | None) -> None:
    """Gather host candidates on exactly ``addresses`` (None: aioice's default, every interface)."""
    global _addresses
    _addresses = tuple(addresses) if addresses is not None else None
    aioice.ice.get_host_addresses = _configured


def new_peer_connection() -> RTCPeerConnection:
    """A peer connection with no STUN/TURN servers: host candidates only."""
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))

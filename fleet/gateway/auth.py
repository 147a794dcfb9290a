"""go-livepeer's live-AI auth webhook, as the reference gateway models it.

Read from go-livepeer 176aa415 ``server/auth.go`` (``authenticateAIStream``: the webhook set with
``-liveAIAuthWebhookUrl`` gets the stream key from the WHIP path, and any answer outside 2xx refuses
it) and ``server/ai_mediaserver.go`` ``CreateWhip``: the webhook runs in a goroutine beside
``CreateWHIP``, which answers the offer with 201 whatever the webhook says; a refusal closes the peer
connection (``whipConn.Close``) and returns before the gateway stores any status or registers the
stream. So a refused publisher gets 201 and a working SDP answer, then silence: no status, WHEP 404
"Stream not found". Bearer tokens play no part (nothing on the WHIP route reads ``Authorization``).
BYOC asks the same webhook at ``/process/stream/start`` and answers 403 "live ai auth failed: …"
(``byoc/stream_gateway.go`` ``setupStream``).

The webhook here is ``GatewayConfig.refused_streams``: shell patterns of the stream keys it refuses.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from aiortc import RTCSessionDescription

from fleet.webrtc import codecs_named, new_peer_connection

__all__ = ["AUTH_FAILED", "answer_and_close", "refuses"]

AUTH_FAILED = "live ai auth failed: status=403 error=stream key refused"   # BYOC's 403 body (one line)


def refuses(patterns: tuple[str, ...], stream_key: str) -> bool:
    """Whether the webhook refuses ``stream_key``: it matches one of ``patterns`` (case-sensitive)."""
    return any(fnmatchcase(stream_key, p) for p in patterns)


async def answer_and_close(offer_sdp: str) -> str:
    """``CreateWHIP``'s answer for a stream the webhook refused: a real SDP answer of a peer connection that
    is closed at once, so the publisher's ICE meets no peer. Upstream the two run in a race: when the
    webhook answers before ``CreateWHIP`` has handed over its peer, ``WHIPConnection.Close`` finds none and
    the close is lost (the peer stays up, with no output and no status, until the publisher leaves); the
    model takes the other order. Raises what aiortc raises for an offer it cannot use."""
    pc = new_peer_connection()
    try:
        transceiver = pc.addTransceiver("video", direction="recvonly")
        transceiver.setCodecPreferences(codecs_named("video", "H264"))
        await pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        sdp: str = pc.localDescription.sdp
        return sdp
    finally:
        await pc.close()

"""A third-party WebRTC peer for the interop tests: GStreamer's webrtcbin, publishing over WHIP and
watching over WHEP.

Run with the *system* Python (Debian's python3-gst-1.0 and gir1.2-gst-plugins-bad-1.0, which the
fleet's venv does not see):

    /usr/bin/python3 tests/interop/gst_peer.py WHIP_URL [--codec h264|vp8] [--frames N] [--fps F]
        [--watch] [--timeout S]

It publishes ``--frames`` frames of ``videotestsrc`` (H.264 from x264enc, constrained baseline, or
VP8), optionally subscribes to the ``Livepeer-Playback-URL`` the WHIP answer names and decodes the
output with avdec_h264, and prints one JSON line: the HTTP statuses, frames pushed and frames the
viewer decoded. ICE stays on loopback (libnice is given 127.0.0.1 as its only local address).
Nothing here is the fleet's code: it is the peer the fleet must interoperate with.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import sys
import threading
import time
import urllib.error
import urllib.request

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstWebRTC", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("Nice", "0.1")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC, Nice  # noqa: E402

ENCODERS = {
    "h264": ("x264enc tune=zerolatency speed-preset=ultrafast key-int-max={gop} bitrate=800 ! "
             "video/x-h264,profile=constrained-baseline ! rtph264pay config-interval=-1 aggregate-mode=zero-latency ! "
             "application/x-rtp,media=video,encoding-name=H264,payload=102,clock-rate=90000"),
    "vp8": ("vp8enc deadline=1 keyframe-max-dist={gop} ! rtpvp8pay ! "
            "application/x-rtp,media=video,encoding-name=VP8,payload=96,clock-rate=90000"),
}


def _ice_agent(webrtc: Gst.Element):
    """webrtcbin's ``ice-agent`` property comes back without a reference of its own in GStreamer 1.22's
    bindings (PyGObject then frees the agent under webrtcbin): take the reference it should have had."""
    ice = webrtc.get_property("ice-agent")
    gobject = ctypes.CDLL(ctypes.util.find_library("gobject-2.0"))
    gobject.g_object_ref.argtypes, gobject.g_object_ref.restype = [ctypes.c_void_p], ctypes.c_void_p
    capsule = ctypes.pythonapi.PyCapsule_GetPointer
    capsule.argtypes, capsule.restype = [ctypes.py_object, ctypes.c_char_p], ctypes.c_void_p
    gobject.g_object_ref(capsule(ice.__gpointer__, None))
    return ice


def loopback_only(webrtc: Gst.Element) -> None:
    agent = _ice_agent(webrtc).get_property("agent")
    address = Nice.Address()
    address.set_from_string("127.0.0.1")
    agent.add_local_address(address)


def post_sdp(url: str, sdp: str, timeout: float) -> tuple[int, str, dict[str, str]]:
    request = urllib.request.Request(url, data=sdp.encode(), method="POST",
                                     headers={"Content-Type": "application/sdp",
                                              "User-Agent": "gstreamer-webrtcbin interop test"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode(), dict(response.headers.items())
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace"), dict(err.headers.items())


class Peer:
    """One webrtcbin that offers, waits for ICE gathering to complete (WHIP has no trickle here), POSTs
    the offer and applies the answer."""

    def __init__(self, pipeline: Gst.Pipeline, webrtc: Gst.Element, url: str, timeout: float,
                 on_answer) -> None:
        self.pipeline, self.webrtc, self.url, self.timeout = pipeline, webrtc, url, timeout
        self.on_answer = on_answer
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.body = ""
        loopback_only(webrtc)
        webrtc.connect("on-negotiation-needed", self._negotiate)
        webrtc.connect("notify::ice-gathering-state", self._gathered)

    def _negotiate(self, webrtc: Gst.Element) -> None:
        promise = Gst.Promise.new_with_change_func(self._offered, None)
        webrtc.emit("create-offer", None, promise)

    def _offered(self, promise: Gst.Promise, _data) -> None:
        reply = promise.get_reply()
        offer = reply.get_value("offer")
        if offer is None:
            print("no offer:", reply.to_string(), file=sys.stderr)
        self.webrtc.emit("set-local-description", offer, Gst.Promise.new())

    def _gathered(self, webrtc: Gst.Element, _pspec) -> None:
        if webrtc.get_property("ice-gathering-state") != GstWebRTC.WebRTCICEGatheringState.COMPLETE:
            return
        sdp = webrtc.get_property("local-description").sdp.as_text()
        threading.Thread(target=self._post, args=(sdp,), daemon=True).start()

    def _post(self, sdp: str) -> None:  # off the main loop: a WHEP POST blocks until output exists
        self.status, self.body, self.headers = post_sdp(self.url, sdp, self.timeout)
        GLib.idle_add(self._answer)

    def _answer(self) -> bool:
        if self.status == 201:
            _, message = GstSdp.SDPMessage.new_from_text(self.body)
            answer = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, message)
            self.webrtc.emit("set-remote-description", answer, Gst.Promise.new())
        self.on_answer(self)
        return False


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("whip_url")
    parser.add_argument("--codec", choices=sorted(ENCODERS), default="h264")
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--watch", action="store_true", help="also watch the output over WHEP")
    parser.add_argument("--timeout", type=float, default=40.0)
    parser.add_argument("--drain", type=float, default=2.0, help="seconds without a decoded frame that end the watch")
    args = parser.parse_args()
    Gst.init(None)
    loop = GLib.MainLoop()
    result: dict = {"codec": args.codec, "frames_pushed": 0, "decoded": 0, "first_decoded_s": None}
    t0 = time.monotonic()
    last_decoded = [t0]

    publisher = Gst.parse_launch(
        f"videotestsrc is-live=true pattern=ball num-buffers={args.frames} ! "
        f"video/x-raw,width=320,height=240,framerate={args.fps}/1 ! videoconvert ! identity name=count ! "
        + ENCODERS[args.codec].format(gop=args.fps) + " ! webrtcbin name=w bundle-policy=max-bundle")
    pub_webrtc = publisher.get_by_name("w")

    def pushed(_identity, _buffer) -> None:
        result["frames_pushed"] += 1

    counter = publisher.get_by_name("count")
    counter.set_property("signal-handoffs", True)
    counter.connect("handoff", pushed)

    viewer = Gst.Pipeline.new("viewer")
    view_webrtc = Gst.ElementFactory.make("webrtcbin", "v")
    view_webrtc.set_property("bundle-policy", GstWebRTC.WebRTCBundlePolicy.MAX_BUNDLE)
    viewer.add(view_webrtc)

    def decoded(_sink, _buffer, _pad) -> None:
        now = time.monotonic()
        if result["first_decoded_s"] is None:
            result["first_decoded_s"] = round(now - t0, 3)
        result["decoded"] += 1
        last_decoded[0] = now

    def on_pad(_webrtc, pad: Gst.Pad) -> None:
        if pad.direction != Gst.PadDirection.SRC:
            return
        result["viewer_pads"] = result.get("viewer_pads", 0) + 1
        bin_ = Gst.parse_bin_from_description(
            "rtph264depay ! h264parse ! avdec_h264 ! fakesink name=out signal-handoffs=true sync=false", True)
        viewer.add(bin_)
        bin_.get_by_name("out").connect("handoff", decoded)
        bin_.sync_state_with_parent()
        pad.link(bin_.get_static_pad("sink"))

    view_webrtc.connect("pad-added", on_pad)

    def states(name: str, webrtc: Gst.Element) -> None:
        """Record each peer's ICE and peer-connection state changes, so a viewer that decoded nothing
        says where it stopped."""
        for prop in ("ice-connection-state", "connection-state"):
            seen = result.setdefault(f"{name}_{prop.replace('-', '_')}", [])

            def changed(element: Gst.Element, _pspec, prop=prop, seen=seen) -> None:
                seen.append(f"{element.get_property(prop).value_nick}@{time.monotonic() - t0:.2f}")
            webrtc.connect(f"notify::{prop}", changed)

    states("viewer", view_webrtc)
    states("publisher", pub_webrtc)

    def stop() -> bool:
        loop.quit()
        return False

    def viewer_answered(peer: Peer) -> None:
        result["whep_status"], result["whep_answered_s"] = peer.status, round(time.monotonic() - t0, 3)
        if peer.status != 201:
            result["whep_body"] = peer.body.strip()[:200]

    def publisher_answered(peer: Peer) -> None:
        result["whip_status"], result["whip_answered_s"] = peer.status, round(time.monotonic() - t0, 3)
        result["whip_location"] = bool(peer.headers.get("Location"))
        playback = peer.headers.get("Livepeer-Playback-URL")
        result["playback_url"] = playback
        if peer.status != 201:
            result["whip_body"] = peer.body.strip()[:200]
            stop()
            return
        if args.watch and playback:
            caps = Gst.caps_from_string("application/x-rtp,media=video,encoding-name=H264,payload=102,clock-rate=90000,"
                                        "packetization-mode=(string)1,profile-level-id=(string)42e01f")
            view_webrtc.emit("add-transceiver", GstWebRTC.WebRTCRTPTransceiverDirection.RECVONLY, caps)
            Peer(viewer, view_webrtc, playback, args.timeout, viewer_answered)
            viewer.set_state(Gst.State.PLAYING)

    Peer(publisher, pub_webrtc, args.whip_url, args.timeout, publisher_answered)

    def on_message(_bus, message: Gst.Message) -> None:
        if message.type == Gst.MessageType.ERROR:
            err, _ = message.parse_error()
            result.setdefault("errors", []).append(err.message)
        elif message.type == Gst.MessageType.EOS:
            result["published_s"] = round(time.monotonic() - t0, 3)

    bus = publisher.get_bus()
    bus.add_signal_watch()
    bus.connect("message", on_message)

    def watch_done() -> bool:
        """End once the publisher is done and the viewer has had ``drain`` seconds without a frame."""
        now = time.monotonic()
        if now - t0 > args.timeout:
            result["timed_out"] = True
            return stop()
        published = "published_s" in result or result["frames_pushed"] >= args.frames
        if published and (not args.watch or "whep_status" in result and result.get("whep_status") != 201
                          or now - last_decoded[0] > args.drain):
            return stop()
        return True

    GLib.timeout_add(100, watch_done)
    publisher.set_state(Gst.State.PLAYING)
    loop.run()
    viewer.set_state(Gst.State.NULL)
    publisher.set_state(Gst.State.NULL)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

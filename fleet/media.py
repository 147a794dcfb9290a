"""Test media, encoded once per process and sent as pre-encoded packets.

The synthetic source is a textured frame whose overall brightness steps
between two levels after pseudo-random run lengths (0.27 to 0.93 s), with a
moving box. An image-to-image model repaints every pixel but keeps the
frame's timing and such coarse brightness steps, so the steps are what the
latency method matches between what was sent and what came back; the
irregular run lengths make the match unambiguous (see fleet.probe.latency).

A clip is encoded once per (source, codec, size, fps, GOP, bitrate) in each
process and cached; every session then sends the same ``av.Packet`` bytes,
so a session costs packetization, not encoding. Frame 0 is a keyframe and
the clip loops, so a session may run longer than the clip.
"""

from __future__ import annotations

import asyncio
import bisect
import fractions
import functools
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from struct import Struct
from typing import Any

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.mediastreams import MediaStreamError

from fleet.errors import InputError
from fleet.rtpclock import VIDEO_CLOCK

__all__ = ["CODECS", "Clip", "ClipPayloads", "H264_PROFILE_LEVEL_ID", "PacketTrack", "clip_for", "clip_payloads", "file_clip",
           "first_phase", "phase_offset", "synthetic_clip"]

DARK, BRIGHT = 56, 176
VP8_DESCRIPTOR = Struct("!BBH")   # S bit (first packet of a frame), I bit, M bit + 15-bit picture ID (RFC 7741 4.2)
CLIPS_PACKETIZED = 8              # clips whose packetized frames are kept (a runner has one per scenario media)
RUN_S = (0.27, 0.93)        # brightness run lengths, seconds
TEXTURE_AMPLITUDE = 24
FILE_STEP_LUMA = 20.0       # a file frame whose mean luma moves this much is a brightness step
KEYFRAME_MIN_INTERVAL_S = 0.3  # keyframe requests this soon after a keyframe are not answered again (libwebrtc)


@dataclass(frozen=True)
class Clip:
    """Encoded frames of one loop of a source, with where its brightness steps are."""

    codec: str
    width: int
    height: int
    fps: float
    packets: tuple[bytes, ...]
    keyframes: tuple[bool, ...]
    luma: tuple[float, ...]           # mean luma of each source frame
    steps: tuple[tuple[int, int], ...]  # (frame index, direction +1/-1) where the brightness steps
    encode_s: float                   # what encoding the clip cost, once

    @property
    def frames(self) -> int:
        return len(self.packets)

    @property
    def bitrate_kbps(self) -> float:
        return sum(map(len, self.packets)) * 8 * self.fps / len(self.packets) / 1000

    def pts(self, n: int) -> int:
        """RTP-clock timestamp of the n-th frame sent."""
        return round(n * VIDEO_CLOCK / self.fps)


CODECS = ("h264", "vp8")
H264_PROFILE_LEVEL_ID = "42e01f"   # constrained baseline, level 3.1: what go-livepeer's WHIP server negotiates


def _encoder(codec: str, width: int, height: int, fps: float, gop: int, bitrate_kbps: int) -> Any:
    if codec not in CODECS:
        raise InputError(f"media codec {codec!r} is not supported by the probe (allowed: {', '.join(CODECS)})")
    enc = av.CodecContext.create("libvpx" if codec == "vp8" else "libx264", "w")
    enc.width, enc.height, enc.pix_fmt = width, height, "yuv420p"
    enc.time_base = fractions.Fraction(1, VIDEO_CLOCK)
    enc.framerate = fractions.Fraction(fps).limit_denominator(1001)
    enc.bit_rate = bitrate_kbps * 1000
    enc.gop_size = gop
    if codec == "vp8":
        enc.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0", "error-resilient": "1"}
    else:
        # constrained baseline (no B-frames, CAVLC), an IDR every ``gop`` frames and nowhere else, SPS/PPS
        # before every IDR so a receiver can start at any of them; one packet out per frame in
        enc.profile = "Baseline"
        enc.options = {"preset": "veryfast", "tune": "zerolatency", "level": "31", "forced-idr": "1",
                       "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0:repeat-headers=1"}
    return enc


def _encode(frames: list[np.ndarray], codec: str, width: int, height: int, fps: float, gop: int,
            bitrate_kbps: int) -> tuple[tuple[bytes, ...], tuple[bool, ...]]:
    enc = _encoder(codec, width, height, fps, gop, bitrate_kbps)
    packets: list[bytes] = []
    keys: list[bool] = []
    for i, img in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(img, format="yuv420p")
        frame.pts = round(i * VIDEO_CLOCK / fps)
        if i % gop == 0:
            frame.pict_type = av.video.frame.PictureType.I
        out = list(enc.encode(frame))
        packets.append(b"".join(bytes(p) for p in out))
        keys.append(any(p.is_keyframe for p in out))
    if any(not p for p in packets):
        raise InputError("the encoder delayed frames; the probe needs one packet per frame")
    return tuple(packets), tuple(keys)


def _runs(rng: random.Random, fps: float, frames: int) -> list[int]:
    """Run lengths (frames) covering at least ``frames``, an even count so the loop ends bright->dark."""
    lo, hi = max(2, round(RUN_S[0] * fps)), max(3, round(RUN_S[1] * fps))
    runs: list[int] = []
    while sum(runs) < frames or len(runs) % 2:
        runs.append(rng.randint(lo, hi))
    return runs


def _base(pattern: str, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A zero-mean luma texture for ``pattern`` (int16, added to the brightness level)."""
    y, x = np.mgrid[0:height, 0:width]
    if pattern == "bars":
        tex = ((x * 8 // width) % 2) * 2 - 1
    elif pattern == "gradient":
        tex = (x / max(1, width - 1)) * 2 - 1
    else:
        tex = rng.uniform(-1, 1, size=(height // 8 + 1, width // 8 + 1)).repeat(8, 0).repeat(8, 1)[:height, :width]
    if pattern == "noise":
        tex = tex * 0.5 + rng.uniform(-0.5, 0.5, size=(height, width))
    texture: np.ndarray = (tex * TEXTURE_AMPLITUDE).astype(np.int16)
    return texture


@functools.lru_cache(maxsize=8)
def synthetic_clip(width: int = 512, height: int = 512, fps: float = 20.0, codec: str = "h264", gop: int = 30,
                   bitrate_kbps: int = 1500, pattern: str = "moving-box", loop_s: float = 10.0,
                   seed: int = 0) -> Clip:
    """The synthetic source, encoded once per process for each set of arguments."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    runs = _runs(random.Random(seed), fps, math.ceil(loop_s * fps))
    base = _base(pattern, width, height, rng)
    chroma = np.full((height // 2, width), 128, np.uint8)
    chroma[: height // 4, : width // 2] = 110  # a little colour, so a look change has something to shift
    box = max(8, min(width, height) // 8)
    frames, luma, steps = [], [], []
    n = 0
    for r, run in enumerate(runs):
        level = DARK if r % 2 == 0 else BRIGHT
        steps.append((n, -1 if level == DARK else 1))
        for _ in range(run):
            y = np.clip(base + level, 16, 235).astype(np.uint8)
            bx = (n * 4) % max(1, width - box)
            y[height // 2 - box // 2: height // 2 + box // 2, bx: bx + box] = 235 if level == DARK else 16
            frames.append(np.concatenate([y, chroma]))
            luma.append(float(y.mean()))
            n += 1
    packets, keys = _encode(frames, codec, width, height, fps, gop, bitrate_kbps)
    return Clip(codec, width, height, fps, packets, keys, tuple(luma), tuple(steps), time.perf_counter() - t0)


@functools.lru_cache(maxsize=4)
def file_clip(path: str, width: int, height: int, fps: float, codec: str = "h264", gop: int = 30,
              bitrate_kbps: int = 1500, max_s: float = 60.0) -> Clip:
    """A video file, scaled to ``width`` x ``height``, re-encoded once; its brightness steps are found by luma."""
    t0 = time.perf_counter()
    frames, luma = [], []
    try:
        with av.open(path) as container:
            for frame in container.decode(video=0):
                img = frame.reformat(width=width, height=height, format="yuv420p").to_ndarray()
                frames.append(img)
                luma.append(float(img[:height].mean()))
                if len(frames) >= max_s * fps:
                    break
    except (av.FFmpegError, OSError) as exc:
        raise InputError(f"{path}: cannot read video: {exc}") from None
    if not frames:
        raise InputError(f"{path}: no video frames")
    steps = []
    for i in range(len(luma)):
        d = luma[i] - luma[i - 1]  # i == 0 compares with the last frame: the loop's seam
        if abs(d) >= FILE_STEP_LUMA:
            steps.append((i, 1 if d > 0 else -1))
    packets, keys = _encode(frames, codec, width, height, fps, gop, bitrate_kbps)
    return Clip(codec, width, height, fps, packets, keys, tuple(luma), tuple(steps), time.perf_counter() - t0)


def clip_for(media: object, base_dir: Path | None = None, seed: int = 0) -> Clip:
    """The clip for a scenario's ``media`` section."""
    from fleet.scenario import FileMedia, SyntheticMedia

    if isinstance(media, SyntheticMedia):
        return synthetic_clip(media.width, media.height, media.fps, media.codec, media.gop, media.bitrate_kbps,
                              media.pattern, media.loop_s, seed)
    assert isinstance(media, FileMedia)
    path = Path(media.path)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    return file_clip(str(path), media.width, media.height, media.fps, media.codec, media.gop, media.bitrate_kbps)


_phase_offset = 0.0   # where this process's send instants sit in their spacing


def _new_phase_offset() -> None:
    global _phase_offset
    _phase_offset = random.SystemRandom().random()


_new_phase_offset()
os.register_at_fork(after_in_child=_new_phase_offset)  # a forked child sends at instants of its own too


def phase_offset() -> float:
    """This process's offset of its send instants, a fraction of their spacing (another process draws its own)."""
    return _phase_offset


def first_phase(now: float, phase_s: float, offset: float | None = None) -> float:
    """The first of the instants ``(k + offset) * phase_s`` at or after ``now`` (``offset`` by default this
    process's); ``now`` when ``phase_s`` is 0."""
    if phase_s <= 0:
        return now
    o = phase_offset() if offset is None else offset
    return max(now, (math.ceil(now / phase_s - o) + o) * phase_s)


class PacketTrack(MediaStreamTrack):
    """Sends a clip's packets at its frame rate, looping, and remembers when each frame left.

    ``sent[n]`` is the monotonic time frame ``n`` was handed to the RTP sender (its packets go
    out in the same loop iteration); ``pacing_error`` collects how late each frame was. A keyframe
    request (a PLI from the far end, through ``request_keyframe``) makes the next frame the clip's next
    keyframe, at once, as a live encoder would answer it: the content jumps ahead to it, and
    ``level_steps`` follows what was really sent.

    With ``phases``, the frames of every track of the process with the clip's frame rate leave on one clock:
    ``phases`` instants a frame period on the monotonic clock, at an offset of the process's own (another
    process's tracks keep instants of their own). A track's first frame waits for the next of them (less than
    1 / (fps x phases) s, as a camera's first frame comes at a phase of its own), and its frames then keep it,
    so the loop wakes for every track sharing an instant together instead of once per track.
    """

    kind = "video"

    def __init__(self, clip: Clip, max_frames: int | None = None, phases: int = 0) -> None:
        super().__init__()
        self.clip = clip
        self.max_frames = max_frames
        self.phase_s = 1.0 / (clip.fps * phases) if phases > 0 else 0.0
        self.sent: list[float] = []
        self.index: list[int] = []                   # the clip frame sent as frame n
        self.steps_sent: list[tuple[int, int]] = []  # (n, direction) brightness steps among the frames sent
        self.late_s_total = 0.0
        self.late_s_max = 0.0
        self.start: float | None = None
        self.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self.keyframe_requested = False
        self.keyframe_jumps = 0

    def request_keyframe(self) -> None:
        self.keyframe_requested = True

    def _next_index(self) -> int:
        clip = self.clip
        i = (self.index[-1] + 1) % clip.frames if self.index else 0
        if self.keyframe_requested:
            self.keyframe_requested = False
            # as libwebrtc, a request within KEYFRAME_MIN_INTERVAL_S of the last keyframe is already answered
            recent = round(KEYFRAME_MIN_INTERVAL_S * clip.fps)
            if not clip.keyframes[i] and not any(clip.keyframes[k] for k in self.index[-recent:]):
                i = next((k % clip.frames for k in range(i + 1, i + clip.frames) if clip.keyframes[k % clip.frames]), i)
                self.keyframe_jumps += 1
        return i

    async def recv(self) -> av.Packet[Any]:
        i, pts = await self.next_frame()
        packet = av.Packet(self.clip.packets[i])
        packet.pts = pts
        packet.time_base = self.time_base
        return packet

    async def next_frame(self) -> tuple[int, int]:
        """The next frame, when it is due: its index in the clip and its RTP-clock timestamp (``recv`` without
        the ``av.Packet``, for a sender that packetizes the clip once: fleet.leanrtp)."""
        n = len(self.sent)
        if self.readyState != "live" or (self.max_frames is not None and n >= self.max_frames):
            self.stop()
            raise MediaStreamError
        now = time.monotonic()
        if self.start is None:
            self.start = first_phase(now, self.phase_s)
        due = self.start + n / self.clip.fps
        if due > now:
            await asyncio.sleep(due - now)
            now = time.monotonic()
        late = max(0.0, now - due)
        self.late_s_total += late
        self.late_s_max = max(self.late_s_max, late)
        i = self._next_index()
        if self.index:
            d = self.clip.luma[i] - self.clip.luma[self.index[-1]]
            if abs(d) >= FILE_STEP_LUMA:
                self.steps_sent.append((n, 1 if d > 0 else -1))
        self.index.append(i)
        self.sent.append(now)
        return i, self.clip.pts(n)

    def level_steps(self, upto: int) -> list[tuple[int, int]]:
        """(frame number, direction) of every brightness step among the first ``upto`` frames sent."""
        return self.steps_sent[:bisect.bisect_left(self.steps_sent, (upto, -2))]


class ClipPayloads:
    """A clip's frames packetized once, by aiortc's own packetizers, for every session that sends the clip.

    aiortc packs a pre-encoded frame again each time it is sent (about a tenth of a probe session's CPU,
    measured). H.264's packing depends on the frame alone, so its payloads are kept as they are. VP8's
    payload descriptor carries a picture ID that counts the frames one sender sent; the payloads are kept
    without it (each after a 4-byte descriptor, as aiortc always writes one: extended, I and M bits set) and
    ``frame`` puts it back. What comes out is byte for byte what aiortc's encoder would pack
    (tests/test_lean_rtp.py)."""

    def __init__(self, clip: Clip) -> None:
        self.clip = clip
        self.vp8 = clip.codec == "vp8"
        self._frames: list[tuple[bytes, ...] | None] = [None] * clip.frames

    def frame(self, index: int, picture_id: int) -> tuple[bytes, ...] | list[bytes]:
        """The payloads of clip frame ``index``; for VP8, as the frame ``picture_id`` of its sender."""
        kept = self._frames[index]
        if kept is None:
            kept = self._frames[index] = self._packetize(self.clip.packets[index])
        if not self.vp8:
            return kept
        head = VP8_DESCRIPTOR.pack(0x90, 0x80, 0x8000 | picture_id)
        rest = VP8_DESCRIPTOR.pack(0x80, 0x80, 0x8000 | picture_id)
        return [(rest if k else head) + body for k, body in enumerate(kept)]

    def _packetize(self, data: bytes) -> tuple[bytes, ...]:
        if not self.vp8:
            return tuple(H264Encoder._packetize(H264Encoder._split_bitstream(data)))
        payloads = Vp8Encoder._packetize(data, 0)
        expected = [VP8_DESCRIPTOR.pack(0x80 | (k == 0) << 4, 0x80, 0x8000) for k in range(len(payloads))]
        if [p[:4] for p in payloads] != expected:
            raise RuntimeError("aiortc's VP8 packetizer no longer writes the 4-byte descriptor fleet.leanrtp keeps")
        return tuple(p[4:] for p in payloads)


_clips: dict[int, ClipPayloads] = {}


def clip_payloads(clip: Clip) -> ClipPayloads:
    """The clip's packetized frames, shared by every sender of it in this process (the last CLIPS_PACKETIZED clips)."""
    kept = _clips.get(id(clip))
    if kept is None or kept.clip is not clip:
        if len(_clips) >= CLIPS_PACKETIZED:
            _clips.pop(next(iter(_clips)))
        kept = _clips[id(clip)] = ClipPayloads(clip)
    return kept

"""One stream through the reference gateway, as go-livepeer runs it.

The WHIP offer is answered at once (``201``); orchestrator selection, job start and the media gather then run in the
background, exactly as in go-livepeer's ``CreateWhip`` (server/ai_mediaserver.go) and ``CreateWHIP``
(media/whip_server.go): no orchestrator within ``selection_timeout_s`` records ``gateway_status.error = "no
orchestrators available"`` and closes the peer connection; no video within ``video_gather_timeout_s`` closes it with
"missing video"; a video track that is not H.264 with "non-h264 video". The gateway asks the publisher for a
keyframe every ``pli_interval_s``.

Frames then pass the simulated runner (cold start, warm-up, output fps cap, prompt look, processing delay with
jitter, faults), are encoded once as H.264 (or, in relay mode, forwarded as they came) and go to every WHEP viewer
from its first keyframe on, as go-livepeer's WHEP server does. Everything the runner did to each frame is kept as
ground truth for tests.

This module is the stream's lifecycle: signalling, what go-livepeer does after the 201, teardown. The stream holds
its parts, each seeing it through the narrow ``Protocol`` its module declares: what it reads of its publisher
(``ingest``, fleet.gateway.ingest), the simulated runner and per-frame truth (``runner``, fleet.gateway.runner),
selection (``selector``, fleet.gateway.selection), swaps (``swapper``, fleet.gateway.swaps) and its status
(``reports``, fleet.gateway.records); what goes out to viewers is fleet.gateway.egress.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import secrets
import time
from collections import deque
from collections.abc import Coroutine
from typing import Any, Protocol

import av
from aiortc import MediaStreamTrack, RTCSessionDescription

from fleet.gateway.config import Fault, GatewayConfig
from fleet.gateway.egress import Output, OutputTrack, time_egress
from fleet.gateway.ingest import InFrame, Ingest
from fleet.gateway.network import Lease, Network
from fleet.gateway.records import StreamReports, unix_ms
from fleet.gateway.runner import RunnerModel
from fleet.gateway.selection import Selector
from fleet.gateway.swaps import Swapper
from fleet.gateway.transform import look_for
from fleet.webrtc import codecs_named, new_peer_connection, request_keyframe


class StreamHost(Protocol):
    """What a stream needs of the gateway that holds it (``ReferenceGateway`` in server.py): its settings,
    the network its slots come from, and to be told when the stream has closed."""

    config: GatewayConfig
    network: Network

    def released(self, stream: Stream) -> None: ...

    def whep_url(self, name: str, request_id: str) -> str: ...


__all__ = ["OutputTrack", "Stream", "StreamHost"]

log = logging.getLogger(__name__)

WHEP_HANG_S = 300.0            # a WHEP request waiting for an output that never comes is answered 404 after this
MAX_EVENTS = 10_000            # lifecycle events kept per stream


def _log_crash(task: asyncio.Task[Any]) -> None:
    """A stream's background task died of a bug: say so loudly (faults are not exceptions)."""
    if not task.cancelled() and task.exception() is not None:
        log.error("stream task crashed", exc_info=task.exception())


class Stream:
    def __init__(self, gateway: StreamHost, name: str, stream_id: str, pipeline: str, params: dict[str, Any],
                 orchestrator: str = "", include_uris: tuple[str, ...] = (), exclude_uris: tuple[str, ...] = (),
                 user_agent: str = "", request_id: str | None = None) -> None:
        self.gw = gateway
        self.config, self.network = gateway.config, gateway.network
        self.name = name
        self.id = stream_id                       # the status key (streamId); may be ""
        self.request_id = request_id or secrets.token_hex(4)    # go-livepeer core.RandomManifestID
        self.key = f"{name}-{self.request_id}"    # unique per stream, for the truth endpoints
        self.pipeline = pipeline
        self.orchestrator = orchestrator          # the orchestrator= filter (a substring of the service URI)
        self.include_uris, self.exclude_uris = include_uris, exclude_uris
        self.e2e_test = "Headless" in user_agent  # go-livepeer tags such sessions "e2e" in its logs
        self.lease: Lease | None = None
        self.faults: list[Fault] = []
        self.lossy = False                        # a packet_loss fault applies (set at selection)
        self.loop = asyncio.get_running_loop()
        self.t0 = self.loop.time()
        self.t0_unix = time.time()
        self.rng = random.Random(f"{self.config.seed}:{name}:{stream_id}")
        self.pc = new_peer_connection()
        self.whep: list[tuple[Any, OutputTrack]] = []
        self.params: dict[str, Any] = {}
        self.prompt = ""
        self.closed: str | None = None  # the reason, once closed
        self.closed_unix: float | None = None
        self.closed_at: float | None = None
        self.prompts: list[tuple[float, str, str]] = []  # (t, prompt, params hash)
        self.events: deque[tuple[float, str, dict[str, Any]]] = deque(maxlen=MAX_EVENTS)
        self.params_update: float | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._viewer_closes: list[asyncio.Task[Any]] = []   # never cancelled: aiortc's close must run to its end
        self.ingest: Ingest | None = None
        self.first_packet = asyncio.Event()
        self.output: Output | None = None   # the current orchestrator's output (None before the first job starts)
        self.output_set = asyncio.Event()   # set whenever a new output is made (go-livepeer: OutCond.Broadcast)
        self.generation = 0                 # one per orchestrator the stream has had: a swap starts the next
        self.ended = asyncio.Event()
        self.replaced = False               # a newer stream of the same name took over (go-livepeer registerControl)
        self._closing: asyncio.Task[Any] | None = None
        self.runner = RunnerModel(self)
        self.selector = Selector(self)
        self.swapper = Swapper(self, self.selector)
        self.reports = StreamReports(self, gateway.whep_url(name, self.request_id))
        self.set_params(params, event=False)
        self.event("gateway_receive_stream_request", pipeline=pipeline, e2e=self.e2e_test)

    # --- time and records ---------------------------------------------------

    def now(self) -> float:
        return self.loop.time() - self.t0

    def unix(self, t: float | None) -> float | None:
        """A loop time as Unix seconds."""
        return None if t is None else self.t0_unix + (t - self.t0)

    def event(self, name: str, **data: Any) -> None:
        self.events.append((round(self.now(), 6), name, data))

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        task.add_done_callback(_log_crash)
        self._tasks.append(task)

    def set_params(self, params: dict[str, Any], event: bool = True) -> None:
        self.params = params
        self.prompt = str(params.get("prompt", ""))
        self.look = look_for(self.prompt)
        self.lut = self.look.lut()
        # ai-runner: md5 of the params JSON with sorted keys
        self.params_hash = hashlib.md5(json.dumps(params, sort_keys=True).encode()).hexdigest()
        self.prompts.append((round(self.now(), 6), self.prompt, self.params_hash))
        if event:
            self.params_update = self.loop.time()
            self.event("params_update", params_hash=self.params_hash)

    # --- signaling -------------------------------------------------------------

    async def answer_whip(self, offer_sdp: str) -> str:
        """The SDP answer; raises ValueError (or aiortc's errors) for an offer that cannot be used."""
        relay = self.config.relay
        # H.264 first: the codec the gateway works with. Other codecs are accepted at the SDP level so that
        # the media gather can refuse the track as go-livepeer does ("non-h264 video").
        transceiver = self.pc.addTransceiver("video", direction="recvonly")
        transceiver.setCodecPreferences(codecs_named("video", "H264", "VP8", "VP9", "AV1"))

        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "video" and not relay:
                self.spawn(self.runner.pump(track))

        async def on_ice() -> None:
            state = self.pc.iceConnectionState
            self.event("ingest_ice", state=state)
            if state == "failed" and not self.closed:
                self.fail("ICE connection state failed")

        async def on_state() -> None:
            state = self.pc.connectionState
            self.event("ingest_connection", state=state)
            if state in ("failed", "closed") and not self.closed:
                self.close_soon(f"ingest {state}")

        self.pc.on("track", on_track)
        self.pc.on("iceconnectionstatechange", on_ice)
        self.pc.on("connectionstatechange", on_state)

        await self.pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
        self.ingest = Ingest(transceiver.receiver, self._on_frame, relay=relay)
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        sdp: str = self.pc.localDescription.sdp
        return sdp

    def begin(self) -> None:
        """What go-livepeer does after writing the 201: select, gather media, ask for keyframes, report."""
        self.spawn(self.selector.first())
        self.spawn(self._gather())
        self.spawn(self._ask_keyframes())
        self.spawn(self.reports.stats())
        if self.config.relay:
            self.spawn(self.runner.pump_relay())

    def viewers_open(self) -> int:
        return sum(1 for pc, _ in self.whep if pc.connectionState not in ("failed", "closed"))

    async def answer_whep(self, offer_sdp: str, out: Output) -> str | None:
        """A viewer of ``out``: its reader starts where the output is now (a request that came before the
        first frame gets the first keyframe; a later one waits for the next), then waits for the output's
        first frame (the mpegts reader's Initialize). None when the output closes first."""
        pc = new_peer_connection()
        track = OutputTrack()
        self.whep.append((pc, track))
        if not out.ready.is_set():
            waiters = [asyncio.ensure_future(out.ready.wait()), asyncio.ensure_future(out.closed.wait())]
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waiters:
                    w.cancel()
        if out.closed.is_set():
            track.push(None)
            await pc.close()
            return None

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                track.push(None)
                await pc.close()

        transceiver = pc.addTransceiver(track, direction="sendonly")
        # processing mode encodes H.264; relay mode sends what the publisher sent (known: output exists)
        relayed = self.ingest.codec if self.config.relay and self.ingest is not None else None
        transceiver.setCodecPreferences(codecs_named("video", relayed or "H264"))
        try:
            await pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
        except Exception:  # an unusable offer: this viewer never was
            self.whep.remove((pc, track))
            await pc.close()
            raise
        time_egress(transceiver.sender, track, self.loop.time, self._drop_packet,
                    self._left if len(self.whep) == 1 else None)
        await pc.setLocalDescription(await pc.createAnswer())
        self.event("whep_subscriber", count=len(self.whep), generation=out.generation)
        sdp: str = pc.localDescription.sdp
        return sdp

    def _drop_packet(self) -> bool:
        """The packet_loss fault: lose this media packet on the way to a viewer."""
        loss = self.runner.active("packet_loss") if self.lossy else None
        return loss is not None and self.rng.random() < loss.loss_pct / 100

    def _left(self, pts90: int, t: float) -> None:
        """The first viewer's last packet of output ``pts90`` left at loop time ``t``."""
        self.runner.truth.left(pts90, t - self.t0)

    def _on_frame(self, frame: InFrame) -> None:
        """A frame of the publisher's arrived: the media gather has video; the runner takes it from here."""
        self.first_packet.set()
        self.runner.on_frame(frame)

    def viewing(self) -> bool:
        """A WHEP viewer was attached (the runner then keeps output frames for their departure times)."""
        return bool(self.whep)

    def deliver(self, packet: av.Packet[Any], keyframe: bool, generation: int) -> None:
        """The runner put out ``packet``: the output has its first frame; every viewer still reading gets it."""
        if self.output is not None and not self.output.ready.is_set():
            self.event("runner_send_first_processed_segment", generation=generation)
            self.output.ready.set()
        for _, track in self.whep:
            if not track.finished:
                track.push(packet, keyframe)

    # --- what go-livepeer does after the 201 -------------------------------------------

    def fail(self, message: str, trace: str | None = None) -> None:
        """The gateway's kickInput: record the error, emit it, close the stream."""
        if trace:
            self.event(trace)
        self.error_event(message)
        self.close_soon(message)

    def error_event(self, message: str) -> None:
        """go-livepeer's LiveErrorEventSender: ``gateway_status.error`` keeps the first error only
        (StoreIfNotExists); every error is an ``ai_stream_events`` error event."""
        self.reports.keep_first("error", {"error_message": message, "error_time": unix_ms(time.time())})
        self.event("ai_stream_events", type="error", message=message)

    async def start_job(self, lease: Lease) -> None:
        """The orchestrator took the job: its runner starts, its output is made."""
        self.lease = lease
        o = lease.orchestrator
        kinds = {f.kind: f for f in self.faults}
        self.lossy = "packet_loss" in kinds  # checked per packet: the fault list only when it can matter
        self.event("orchestrator_selected", orchestrator=o.address, url=o.uri, gpu=lease.gpu_id,
                   cold_start=lease.cold_start, faults=sorted(kinds))
        flat = self.reports.flat_status
        if flat is not None:  # BYOC: StoreKey(streamID, "orchestrator", orch.ServiceAddr)
            flat["orchestrator"] = o.uri
        self.runner.start(lease)
        self.output = Output(self.generation)
        self.event("job_started", orchestrator=o.address, generation=self.generation)
        self.output_set.set()        # go-livepeer setOutWriter: a WHEP request waiting for output wakes
        self.output_set = asyncio.Event()
        self.spawn(self.reports.report(self.generation))
        self.spawn(self.runner.watch(self.generation))

    async def wait_output(self) -> Output | None:
        """The output a WHEP request reads (go-livepeer getOutWriter): it waits while the stream has none
        yet, during selection too. None when it waited ``WHEP_HANG_S`` (upstream waits for good: a stream
        that fails before its first job never wakes it). The output may already be closed (a swap)."""
        deadline = self.loop.time() + WHEP_HANG_S
        if self.output is None:
            self.event("whep_waiting")
        while self.output is None:
            if self.replaced:  # registerControl marked it closed and broadcast: getOutWriter gives up
                return None
            woke = self.output_set
            try:
                await asyncio.wait_for(woke.wait(), max(0.0, deadline - self.loop.time()))
            except asyncio.TimeoutError:
                return None
        return self.output

    async def _gather(self) -> None:
        """No video within the gather timeout: "missing video"; a non-H.264 video track: "non-h264 video"."""
        try:
            await asyncio.wait_for(self.first_packet.wait(), self.config.video_gather_timeout_s)
        except asyncio.TimeoutError:
            self.fail("missing video")
            return
        codec = self.ingest.codec if self.ingest else None
        allowed = self.config.video_codecs
        if codec not in allowed:
            self.event("non_h264_video", codec=codec or (self.ingest.unsupported if self.ingest else None))
            self.fail("non-h264 video" if allowed == ("H264",) else f"unsupported video codec {codec}")

    async def _ask_keyframes(self) -> None:
        """A PLI to the publisher every ``pli_interval_s`` (go-livepeer's intervalpli interceptor)."""
        while not self.closed:
            await asyncio.sleep(self.config.pli_interval_s)
            if self.ingest is not None and self.ingest.ssrc is not None:
                await request_keyframe(self.ingest.receiver, self.ingest.ssrc)

    def swap_soon(self, cause: str) -> None:
        self.swapper.swap_soon(cause)

    def end_job(self) -> Lease:
        """A swap: the current orchestrator's frames, reports and faults stop (the next generation), its output
        ends, its slot is given back and the next runner starts from nothing. The old lease."""
        old = self.lease
        assert old is not None
        self.generation += 1
        self.end_output()
        self.network.release(old)
        self.lease = None
        self.runner.new_runner()
        return old

    def clear_status(self) -> None:
        """``status_retention_s`` after a swap, unless the stream has closed (``StreamReports.clear``)."""
        if not self.closed:
            self.reports.clear()
            self.event("status_cleared")

    def end_output(self) -> None:
        """The current output's writer closes: each WHEP viewer's read fails and its peer connection is
        closed (media/whep_server.go); a WHEP request waiting on it is answered 404."""
        if self.output is not None:
            self.output.closed.set()
        for pc, track in self.whep:
            if not track.finished:
                track.push(None)
                self._viewer_closes.append(asyncio.ensure_future(pc.close()))

    # --- teardown ------------------------------------------------------------------

    def close_soon(self, reason: str) -> None:
        if self._closing is None and not self.closed:
            self._closing = asyncio.ensure_future(self.close(reason))

    async def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed, self.closed_unix, self.closed_at = reason, round(time.time(), 3), self.loop.time()
        self.ended.set()
        # go-livepeer: a close without an error is recorded as "whip disconnected"
        self.reports.gateway_status.setdefault("error", {"error_message": "whip disconnected",
                                                         "error_time": unix_ms(time.time())})
        self.event("gateway_ingest_stream_closed", reason=reason)
        self.gw.released(self)   # no last report: go-livepeer stops reading the runner's events here
        current = asyncio.current_task()
        others = [task for task in self._tasks if task is not current]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)  # nothing of this stream outlives its close
        self.end_output()
        # begun viewer closes run to their end: aiortc's second close() of one cancelled midway waits forever
        await asyncio.gather(*self._viewer_closes, return_exceptions=True)
        for pc, _ in self.whep:
            await pc.close()
        await self.pc.close()


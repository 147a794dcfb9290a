"""One measured test session: publish over WHIP, watch over WHEP, time everything.

``run_probe(spec)`` is plain asyncio (it knows nothing of Ray) and never
raises for anything the gateway or the network does: every failure lands in
the result's outcome with the phase it happened in. On every exit path
(success, failure, timeout, cancellation) both peer connections close and
the stream is stopped at the gateway.

The sender sends a pre-encoded clip (fleet.media; H.264 constrained baseline
by default, as go-livepeer accepts nothing else). The receiver does not
decode: a tap below aiortc's jitter buffer (fleet.rtp) times each output
frame at the arrival of its last packet.

The gateway answers the offer before it has an orchestrator, so the status is
read from the answer on: when the stream ends early, ``gateway_status.error``
says why ("no orchestrators available" makes the session
``skipped_no_capacity``, never the orchestrator's failure; NaaP's excused
errors are marked ``excused``). Client-side events are named ``fleet_*`` so
they are never mistaken for the network's ``stream_trace`` events.

The session is split by concept: its inputs and result (``fleet.probe.types``),
the output frames and what decoding some of them finds (``fleet.probe.output``;
docs/METRICS.md gives the cost), the status reads (``fleet.probe.status``) and
the outcome rules (``fleet.probe.classify``). This module is the lifecycle:
signalling, waits with deadlines, teardown. Every task it starts is awaited
before the session returns.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any

import httpx
from aiortc import RTCSessionDescription

from fleet.media import PacketTrack
from fleet.errors import ErrorClass, Phase
from fleet.probe.adapters import USER_AGENT, ProbeFailure, adapter_for, classify_gateway_error, gateway_error
from fleet.probe.classify import blame, classify
from fleet.probe.looplag import LoopMonitor
from fleet.probe.naap import no_orchestrator_evidence, startup_outcome
from fleet.probe.output import WINDOW_BEFORE_SWITCH_S, OutputWatch
from fleet.probe.peers import Peers
from fleet.probe.whep import subscribe
from fleet.probe.status import StatusReader
from fleet.probe.swaps import SwapTracker
from fleet.probe.types import (
    EVENT_PREFIX,
    OUTCOMES,
    PHASES,
    ProbeOptions,
    ProbeResult,
    ProbeSpec,
    PromptChange,
    new_http_client,
)
from fleet.rtp import FrameTap
from fleet.webrtc import IceServer, request_keyframe

__all__ = ["OUTCOMES", "PHASES", "ProbeOptions", "ProbeResult", "ProbeSpec", "PromptChange", "new_http_client",
           "run_probe"]

CAP_GRACE_S = 2.0             # the session ends itself at max_s; this backstop fires only if it cannot
MAX_RESUBSCRIBES = 20         # WHEP subscriptions after swaps, per session (go-livepeer allows 2 swaps in 3 min)
DIAGNOSE_S = 3.0              # after an early end, wait this long at most for the gateway's error in its status
TEARDOWN_VERIFY_S = 3.0       # after closing, wait this long at most for the status to show the stream ended
STATUS_POLL_S = 0.25          # status reads while diagnosing or verifying

_GATEWAY_ICE: dict[str, tuple[IceServer, ...]] = {}  # per WHIP base URL: the ICE servers its Link headers named


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


class _Probe:
    """The state of one running session."""

    def __init__(self, spec: ProbeSpec, stop: asyncio.Event | None = None) -> None:
        self.spec = spec
        self.stop = stop or asyncio.Event()
        self.opt = spec.options
        self.r = ProbeResult(spec.session_id, spec.dialect, spec.gateway_url)
        self.t0 = time.monotonic()
        self.r.started_unix = time.time()
        self.track = PacketTrack(spec.clip, phases=spec.options.send_phases)
        self.base = spec.gateway_url.rstrip("/")
        ice = tuple(self.opt.ice_servers) + (_GATEWAY_ICE.get(self.base, ()) if self.opt.use_gateway_ice_servers else ())
        self.peers = Peers(ice, self.event)
        self.adapter = adapter_for(spec.dialect, spec.gateway_url, spec.pipeline, spec.token, spec.orchestrator)
        self.first_frame = asyncio.Event()
        self.t_answer: float | None = None
        self.end_error: str | None = None   # the gateway's error as read after the teardown
        self.tasks: set[asyncio.Task[Any]] = set()  # every task this session started; teardown awaits them
        self.out = OutputWatch(spec, self.track, self.t0, self.event, self._ask_keyframe)
        self.out.on_first = self.out.first_output = self.first_frame.set
        self.swaps = SwapTracker(self.event)
        self.status = StatusReader(self.r, self.event, self.swaps)
        self.t_end: float | None = None
        self.loop_monitor = LoopMonitor.for_running_loop()
        self.lag_mark = self.loop_monitor.acquire()

    # --- bookkeeping -----------------------------------------------------------

    def now(self) -> float:
        return time.monotonic() - self.t0

    def event(self, kind: str, **data: Any) -> None:
        self.r.events.append((round(self.now(), 4), EVENT_PREFIX + kind, data))

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def _cancel(self, *tasks: asyncio.Task[Any]) -> None:
        """Cancel and await: nothing this session started outlives it, and no error is left unread."""
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _headers(self) -> dict[str, str]:
        return {"User-Agent": USER_AGENT, **self.adapter.auth()}

    def _ask_keyframe(self, tap: FrameTap) -> None:
        if tap.ssrc is not None:
            self.spawn(request_keyframe(tap.receiver, tap.ssrc))

    # --- the session ---------------------------------------------------------------

    async def _first_of(self, events: tuple[asyncio.Event, ...], timeout: float) -> None:
        """Until one of ``events`` is set or ``timeout`` seconds pass."""
        waiters = [asyncio.ensure_future(e.wait()) for e in events]
        try:
            await asyncio.wait(waiters, timeout=max(0.0, timeout), return_when=asyncio.FIRST_COMPLETED)
        finally:
            await self._cancel(*waiters)

    async def _wait(self, event: asyncio.Event, timeout: float, phase: Phase, error: ErrorClass) -> None:
        await self._first_of((event, self.peers.broken, self.stop), timeout)
        if event.is_set():
            return
        if self.stop.is_set():
            raise ProbeFailure("tester", "stopped", "the campaign was stopped")
        if self.peers.broken.is_set():
            raise ProbeFailure(phase, self.peers.broken_error, self.peers.broken_why)
        raise ProbeFailure(phase, error, f"not within {timeout:g} s")

    async def run(self, client: httpx.AsyncClient) -> None:
        spec, opt, r = self.spec, self.opt, self.r
        r.codec = spec.clip.codec
        self.out.tap = self.peers.transceivers(self.track, self.out.on_frame, opt.bandwidth_feedback)
        t = time.monotonic()
        await self.peers.pc_in.setLocalDescription(await self.peers.pc_in.createOffer())
        r.offer_ms = _ms(time.monotonic() - t)
        self.event("whip_offer_sent")
        started = await self.adapter.start(client, self.peers.pc_in.localDescription.sdp, spec.prompts[0].params)
        self.t_answer = time.monotonic()
        r.signaling_ms = _ms(self.t_answer - self.t0)
        r.stream_id, r.stream_name = started.stream_id or self.adapter.name, self.adapter.name
        r.request_id = started.request_id
        if started.ice_servers:
            _GATEWAY_ICE[self.base] = tuple(started.ice_servers)
        self.spawn(self._poll_status(client))
        stop_req = self.adapter.stop_request()
        if spec.on_stream is not None and stop_req is not None:
            spec.on_stream(*stop_req)
        try:
            await self.peers.pc_in.setRemoteDescription(RTCSessionDescription(started.answer_sdp, "answer"))
        except (ValueError, AttributeError) as exc:
            raise ProbeFailure("signaling", "bad_answer", str(exc)[:120]) from None
        whep = self.spawn(self._whep(client, started.whep_url))
        try:
            await self._wait(self.peers.ice_done, opt.ice_timeout_s, "ice", "ice_timeout")
            r.ice_ms = _ms(self.peers.t_ice - self.t_answer) if self.peers.t_ice is not None else None
            self.peers.candidates(r)
            await self._wait(self.peers.dtls_done, opt.ice_timeout_s, "dtls", "dtls_timeout")
            r.dtls_ms = _ms(time.monotonic() - self.peers.t_ice) if self.peers.t_ice is not None else None
            await whep
        finally:
            await self._cancel(whep)
        await self._wait(self.first_frame, self._first_frame_timeout() - self.now(), "pipeline", "no_output")
        self.event("first_output_frame")
        await self._hold(client)

    def _first_frame_timeout(self) -> float:
        return self.opt.first_frame_timeout_s or max(2 * self.spec.max_startup_s, 20.0)

    async def _hold(self, client: httpx.AsyncClient) -> None:
        """Output flows: switch prompts and check for black output until the session's end, a break or a stop."""
        tasks = [self.spawn(self._switch_prompts(client)), self.spawn(self._checks())]
        try:
            await self._first_of((self.peers.broken, self.stop), min(self.spec.duration_s, self.spec.max_s) - self.now())
            if self.stop.is_set() and not self.peers.broken.is_set():
                raise ProbeFailure("tester", "stopped", "the campaign was stopped")
            for task in tasks:  # a failed update is the session's failure
                if task.done() and not task.cancelled() and task.exception():
                    raise task.exception()  # type: ignore[misc]
            if self.peers.broken.is_set():
                raise ProbeFailure("media", "disconnected", self.peers.broken_why)
        finally:
            await self._cancel(*tasks)

    async def _whep(self, client: httpx.AsyncClient, url: str) -> None:
        """Subscribe, within the startup deadline (go-livepeer's WHEP answers once the output exists); then
        keep subscribed: after a swap closes the egress connection, subscribe again to the same URL."""
        deadline = self.t0 + self._first_frame_timeout()
        took = await subscribe(client, url, self.peers.pc_out, self._headers(), deadline,
                               (self.peers.broken, self.stop), f"the {self._first_frame_timeout():g} s startup deadline")
        if took is not None:
            self.r.whep_signaling_ms = _ms(took)
            self.spawn(self._resubscribe(client, url))

    async def _resubscribe(self, client: httpx.AsyncClient, url: str) -> None:
        """Each time the gateway closes the egress connection while the ingest lives (a swap), a new one."""
        end = self.t0 + min(self.spec.duration_s, self.spec.max_s)
        for _ in range(MAX_RESUBSCRIBES):
            await self._first_of((self.peers.egress_lost, self.peers.broken, self.stop), end - time.monotonic())
            if not self.peers.egress_lost.is_set() or self.peers.broken.is_set() or self.stop.is_set():
                return
            last = self.out.arrivals[-1] - self.t0 if self.out.arrivals else None
            self.swaps.viewer_lost(self.now(), last)
            tap = self.peers.new_egress(self.out.on_frame, self.opt.bandwidth_feedback)
            self.out.resubscribed(tap, lambda: self.swaps.output_back(self.now()))
            try:
                took = await subscribe(client, url, self.peers.pc_out, self._headers(), end,
                                       (self.peers.broken, self.stop), "the session")
            except ProbeFailure as f:   # the output stays gone: the end-of-session stall check judges it
                self.event("resubscribe_failed", error=f.error, detail=f.detail)
                return
            if took is None:
                return
            self.event("resubscribed", whep_ms=_ms(took))

    async def _switch_prompts(self, client: httpx.AsyncClient) -> None:
        self.out.prompt_switch_ms = [None] * (len(self.spec.prompts) - 1)
        for k, change in enumerate(self.spec.prompts[1:]):
            wait = change.at_s - self.now()
            if wait > WINDOW_BEFORE_SWITCH_S:
                await asyncio.sleep(wait - WINDOW_BEFORE_SWITCH_S)
            self.out.switch_coming(k)
            await asyncio.sleep(max(0.0, change.at_s - self.now()))
            t_req = time.monotonic()
            await self.adapter.update(client, change.params)
            self.event("params_update", index=k, prompt_id=change.prompt_id, category=change.category)
            self.out.switched(k, t_req)

    async def _checks(self) -> None:
        """A frame decoded every ``check_every_s`` (a keyframe, or one another window decodes): is the output black?"""
        while self.opt.check_every_s:
            await asyncio.sleep(self.opt.check_every_s)
            self.out.check_window()

    # --- status ------------------------------------------------------------------------

    async def _poll_status(self, client: httpx.AsyncClient) -> None:
        """The status every ``status_every_s``; an error in it that ends the stream ends the session's waits at
        once (go-livepeer closes the connection, which ICE alone would notice only at its timeout)."""
        while True:
            await self._read_status(client)
            message = self.r.gateway_error
            if message and classify_gateway_error(message) is not None:
                self.peers.break_off(f"the gateway's error: {message[:120]}", "gateway_error")
                return
            await asyncio.sleep(self.opt.status_every_s)

    async def _fetch_status(self, client: httpx.AsyncClient) -> Any:
        """The gateway's status of the stream, or None (none kept, or unreachable: status is best effort;
        a body that is not JSON is the gateway's protocol error)."""
        try:
            return await self.adapter.status(client)
        except ProbeFailure as f:
            if f.error == "bad_json":
                self.status.bad(f"the status is not JSON: {f.detail}")
            return None

    async def _read_status(self, client: httpx.AsyncClient) -> Any:
        status = await self._fetch_status(client)
        if status:
            self.status.read(status, self.now())
        return status

    async def diagnose(self, client: httpx.AsyncClient) -> str | None:
        """The gateway's own error for an early end, waiting for it up to ``DIAGNOSE_S`` (selection may still run)."""
        deadline = time.monotonic() + DIAGNOSE_S
        while not self.r.gateway_error and time.monotonic() < deadline:
            await self._read_status(client)
            if not self.r.gateway_error:
                await asyncio.sleep(STATUS_POLL_S)
        return self.r.gateway_error

    # --- teardown and results --------------------------------------------------------

    async def rtcp(self) -> None:
        await self.peers.rtcp(self.r, len(self.track.sent))

    async def teardown(self, client: httpx.AsyncClient) -> None:
        """Close both peer connections (that ends a go-livepeer stream), call the dialect's stop if it has
        one, then check in the status that the gateway saw the end."""
        self.peers.closing = True
        if self.t_end is None:
            self.t_end = time.monotonic()
        self.track.stop()  # no frame leaves after the session's end (its send times end with it)
        await self._cancel(*self.tasks)
        self.peers.candidates(self.r)   # before the close: aioice forgets the pair then
        steps = [*(pc.close() for pc in (self.peers.pc_out, *self.peers.old_out)), self.peers.pc_in.close(),
                 self.adapter.stop(client)]
        for step in steps:
            try:
                await asyncio.wait_for(step, self.opt.teardown_timeout_s)
            except (asyncio.TimeoutError, ProbeFailure, httpx.HTTPError, ConnectionError) as exc:
                self.event("teardown_error", error=type(exc).__name__)
        if self.t_answer is not None:
            self.r.teardown_verified = await self._verify_ended(client)
        self.event("teardown_done", verified=self.r.teardown_verified)

    async def _verify_ended(self, client: httpx.AsyncClient) -> bool:
        """The status shows the stream ended (an error recorded, OFFLINE, or no status any more)."""
        deadline = time.monotonic() + TEARDOWN_VERIFY_S
        while True:
            status = await self._fetch_status(client)  # not recorded: the end we caused is no session error
            if self.r.orchestrator_address is None and isinstance(status, dict) and "orchestrator_info" in status:
                self.status.read(status, self.now())   # but who served it, if the runner first reported late
            error = gateway_error(status)
            if error:
                self.end_error = error
            if status is None or error or status.get("state") == "OFFLINE":
                return True
            if not isinstance(status, dict) or time.monotonic() >= deadline:  # a wrong shape proves nothing
                return False
            await asyncio.sleep(STATUS_POLL_S)

    def finish(self) -> ProbeResult:
        r, a = self.r, self.out.arrivals
        end = self.t_end if self.t_end is not None else time.monotonic()
        r.duration_s = round(end - self.t0, 3)
        lag = self.loop_monitor.since(self.lag_mark)
        r.tester_loop_lag_ms_mean, r.tester_loop_lag_ms_max, r.tester_loop_busy_pct = \
            lag.mean_ms, lag.max_ms, lag.busy_pct
        suspect = self.loop_monitor.suspect_windows(a[0], a[-1]) if a else []
        self.out.fill(r, None if self.peers.broken.is_set() else end, suspect)
        self.swaps.fill(r)
        errors = [m for m in (r.gateway_error, self.end_error) if m]
        known = self.t_answer is not None and r.error_class != "auth_refused"  # refused before the trace
        r.startup_outcome = startup_outcome(known, r.playable_s is not None,  # playable: PLAYABLE_FRAMES out
                                            any(no_orchestrator_evidence(m) for m in errors), errors)
        self.loop_monitor.release()
        return r

    def classify(self) -> None:
        end = self.t_end if self.t_end is not None else time.monotonic()
        classify(self.r, self.spec, end, self.out.arrivals[-1] if self.out.arrivals else None)


async def run_probe(spec: ProbeSpec, stop: asyncio.Event | None = None,
                    client: httpx.AsyncClient | None = None) -> ProbeResult:
    """Run one session to its end and return what was measured; never raises for gateway behaviour.

    Setting ``stop`` ends the session early (outcome failed, phase tester, error ``stopped``) with a
    full teardown; cancelling the task tears down too, then re-raises. Sessions of one process
    should share ``client`` (making one loads the CA bundle: ~20 ms of CPU).
    """
    if client is None:
        async with new_http_client(spec.options) as own:
            return await run_probe(spec, stop, own)
    probe = _Probe(spec, stop)
    r = probe.r
    try:
        await asyncio.wait_for(probe.run(client), spec.max_s + CAP_GRACE_S)
    except ProbeFailure as f:
        probe.t_end = time.monotonic()
        r.outcome = "skipped_no_capacity" if f.skipped else "failed"
        r.error_phase, r.error_class, r.error_detail, r.excused = f.phase, f.error, f.detail or None, f.excused
        if probe.t_answer is not None and f.phase != "tester":
            blame(r, await probe.diagnose(client), probe.status.seen, bool(probe.out.arrivals),
                  probe.adapter.said_no_status)
    except asyncio.TimeoutError:
        r.outcome, r.error_phase, r.error_class = "failed", "timeout", "session_cap"
        r.error_detail = f"the session ran into its {spec.max_s:g} s cap"
    except asyncio.CancelledError:
        r.outcome, r.error_phase, r.error_class = "failed", "tester", "cancelled"
        await probe.rtcp()
        await probe.teardown(client)
        probe.finish()
        raise
    except Exception as exc:  # noqa: BLE001 - a tester bug must still end in a result and a teardown
        r.outcome, r.error_phase, r.error_class = "failed", "tester", "tester_exception"
        r.error_detail = f"{type(exc).__name__}: {exc}"[:200]
    if r.outcome == "ok":
        await probe.rtcp()
    await probe.teardown(client)
    probe.finish()
    probe.classify()
    if r.outcome != "ok" and r.error_class:
        probe.event("session_error", phase=r.error_phase, error=r.error_class, excused=r.excused)
    return r

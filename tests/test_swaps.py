"""Orchestrator swaps and the runner's own rules, as go-livepeer 176aa415 and ai-runner 50a742ce have them.

Pure rules first (the swap limit, the 24 fps input cap), then the reference gateway over real loopback
WebRTC: a swap closes every WHEP viewer while the WHEP URL stays valid, a WHEP request meets 404 "Failed
to initialize mpegts reader" while the new orchestrator starts, then blocks until its output exists;
a pinned stream comes back to the same orchestrator; a third swap within three minutes ends the stream;
a runner's ERROR restarts it and makes the gateway swap.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from fleet.gateway.config import Fault
from fleet.gateway.records import track_stats
from fleet.gateway.runner import max_framerate
from fleet.gateway.swaps import RECENT_SWAP_INTERVAL_S, SwapLimiter
from test_gateway import DEADLINE_S, config, gateway_error, run, running, session, status, truth, wait_until
from webrtc_client import Received, whep_subscribe

EOS = "trickle subscribe stopping, stream not found, err=EOF"


# --- pure rules ---------------------------------------------------------------------------

def test_a_third_swap_within_three_minutes_of_the_last_is_refused():
    """checkSwap: the clock starts at the stream's start; a swap within 180 s of the previous counts."""
    limiter = SwapLimiter(last=0.0)
    assert [limiter.allow(t) for t in (10.0, 20.0, 30.0)] == [True, True, False]
    # a swap long after the last allowed one starts counting again
    assert limiter.allow(20.0 + RECENT_SWAP_INTERVAL_S + 1)
    assert SwapLimiter(last=0.0).allow(RECENT_SWAP_INTERVAL_S + 1) and SwapLimiter(last=0.0).allow(1.0)


def test_ingest_track_stats_are_in_milliseconds_with_no_rtt_and_go_livepeers_thresholds():
    """media/whip_connection.go: jitter = RTP jitter / clock rate * 1000 (ms), rtt never measured (0), quality
    bad above 50 ms jitter or 2 % loss, with one warning each. 90 kHz: 4500 ticks are 50 ms."""
    track, quality = track_stats(4500, lost=2, received=98, last_in=3.0, last_out=2.5)
    assert (track["jitter"], track["rtt"], track["packet_loss_pct"], track["latency"]) == (50.0, 0, 2.0, 0.5)
    assert quality == "good" and "warnings" not in track
    track, quality = track_stats(4509, lost=3, received=97, last_in=0.0, last_out=0.0)
    assert track["jitter"] == 50.1 and quality == "bad"
    assert track["warnings"] == ["jitter greater than 50 ms", "packet loss greater than 2%"]


def _kept(fps: float, seconds: float, origin: float = 0.0) -> int:
    nxt, kept = 0.0, 0
    for n in range(round(fps * seconds)):
        drop, nxt = max_framerate(nxt, origin + n / fps)
        kept += not drop
    return kept


def test_the_runner_takes_at_most_24_frames_a_second_by_media_time():
    """ai-runner trickle/decoder.py MAX_FRAMERATE: 30 fps in gives 24 a second; 20 fps passes whole."""
    assert _kept(30.0, 10.0) in (240, 241)            # 4 of every 5
    assert _kept(20.0, 10.0) == 200
    assert _kept(23.976, 10.0) == round(23.976 * 10)
    assert _kept(30.0, 10.0, origin=12_345.678) in (240, 241)  # a clock that does not start at 0
    # exactly 24 fps drifts against the slots it is measured by: a frame now and then is lost, never more
    assert 235 <= _kept(24.0, 10.0) <= 240


# --- the reference gateway --------------------------------------------------------------------

async def _viewer_closed(sub) -> None:
    async def closed():
        return sub.connectionState in ("closed", "failed")
    await wait_until(closed, "the viewer's peer connection to be closed by the swap")


async def _whep(url: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as c:
        return await c.post(url, content="v=0\r\n", headers={"Content-Type": "application/sdp"})


@pytest.mark.slow
def test_a_swap_closes_the_viewers_and_the_same_whep_url_serves_the_new_output():
    async def main():
        # a viewer that came before the first frame gets the first keyframe: frames before the swap
        faults = (Fault(kind="disconnect", after_s=3.0, streams=(1,), orchestrator="orch-0"),
                  # the reselected job starts late: the window in which the old output is closed
                  Fault(kind="slow_answer", delay_s=3.0, streams=(2,), orchestrator="orch-0"),
                  Fault(kind="orchestrator_swap", after_s=3.0, streams=(1,), orchestrator="orch-1"))
        async with running(config(slots=1, orchestrators=3, faults=faults, status_interval_s=0.5)) as gw:
            _, pc_a, resp_a, rec_a, sub_a = await session(gw, name="a", frames=600, target=5, orchestrator="orch-0")
            _, pc_b, resp_b, rec_b, sub_b = await session(gw, name="b", frames=600, target=5)
            await asyncio.wait_for(asyncio.gather(rec_a.got.wait(), rec_b.got.wait()), DEADLINE_S)
            runner_before = (await status(gw, "a"))[1]["start_time"]
            await _viewer_closed(sub_a)
            url = resp_a.headers["Livepeer-Playback-URL"]
            early = await _whep(url)   # the old output is closed, the new job not started yet
            assert (early.status_code, early.text.strip()) == (404, "Failed to initialize mpegts reader")
            # the status still shows the old runner: the new one has not started, let alone reported
            assert (await status(gw, "a"))[1]["start_time"] == runner_before
            async def reselected():
                return sum(e["type"] == "job_started" for e in (await truth(gw, "a"))["events"]) == 2
            await wait_until(reselected, "the new job to start")
            again = Received(target=10)
            sub_a2 = await whep_subscribe(url, again)  # blocks until the new output exists, then plays
            await asyncio.wait_for(again.got.wait(), DEADLINE_S)

            async def new_runner():
                return (await status(gw, "a"))[1]["start_time"] != runner_before
            await wait_until(new_runner, "the new runner's first report")

            t = await truth(gw, "a")
            swaps = [e for e in t["events"] if e["type"] == "orchestrator_swap"]
            chosen = [e["orchestrator"] for e in t["events"] if e["type"] == "orchestrator_selected"]
            assert [(e["message"], e["old"]) for e in swaps] == [("control channel does not exist", "0xorch0")]
            assert chosen == ["0xorch0", "0xorch0"]   # pinned: the orchestrator filter is kept
            assert t["open"] and t["closed_reason"] is None

            await _viewer_closed(sub_b)
            tb = await truth(gw, "b")
            swap_b = next(e for e in tb["events"] if e["type"] == "orchestrator_swap")
            assert (swap_b["message"], swap_b["old"]) == (EOS, "0xorch1")
            assert tb["orchestrator"] == "0xorch2"   # unpinned: another orchestrator with room

            async def new_runner_reported():
                code, body = await status(gw, "b")
                return code == 200 and (body.get("orchestrator_info") or {}).get("address") == "0xorch2"
            await wait_until(new_runner_reported, "the new runner's first report")
            for p in (pc_a, sub_a, sub_a2, pc_b, sub_b):
                await p.close()
    run(main())


@pytest.mark.slow
def test_a_third_swap_within_three_minutes_ends_the_stream():
    async def main():
        # a swap 2 s into each run of the stream: the viewer is subscribed before the first one even on loaded
        # cores (at 0.3 s a full run's WHEP answer met a viewer the first swap had closed)
        every = Fault(kind="orchestrator_swap", after_s=2.0, probability=1.0, orchestrator="orch-0")
        async with running(config(slots=1, orchestrators=1, faults=(every,))) as gw:
            _, pc, resp, rec, sub = await session(gw, name="s", frames=600, target=1, orchestrator="orch-0")
            assert await gateway_error(gw, "s") == f"Too many swaps: {EOS}"
            t = await truth(gw, "s")
            assert len([e for e in t["events"] if e["type"] == "orchestrator_swap"]) == 2
            assert not t["open"]
            # the stream ended in the step that closed its viewer: the viewer's close is awaited, not cancelled,
            # so the close goes on to the publisher's peer connection (a cancelled one left it open for good)
            stream = next(x for x in gw.history.values() if x.name == "s")

            async def publisher_closed():
                return stream.pc.connectionState == "closed" and all(v.connectionState == "closed"
                                                                      for v, _ in stream.whep)
            await wait_until(publisher_closed, "the gateway to close the publisher's and the viewer's connections")
            for p in (pc, sub):
                await p.close()
    run(main())


@pytest.mark.slow
def test_a_runner_error_restarts_the_runner_and_the_gateway_swaps():
    """ai-runner: output stalled over 5 s while input flows is ERROR; the stream stops, the process restarts
    (restart_count + 1) and the gateway swaps, here back to the one orchestrator the stream is pinned to."""
    async def main():
        # the stall starts 3 s in: the viewer has its 5 frames first even on loaded cores (at 0.5 s, a full
        # run's viewer subscribed too late, and the swap closed it before any frame)
        stall = Fault(kind="output_stall", after_s=3.0, streams=(1,), orchestrator="orch-0")
        async with running(config(slots=1, orchestrators=2, faults=(stall,), status_interval_s=0.5)) as gw:
            _, pc, resp, rec, sub = await session(gw, name="s", frames=900, target=5, orchestrator="orch-0")
            await asyncio.wait_for(rec.got.wait(), DEADLINE_S)
            await _viewer_closed(sub)
            t = await truth(gw, "s")
            restart = next(e for e in t["events"] if e["type"] == "runner_restart")
            swap = next(e for e in t["events"] if e["type"] == "orchestrator_swap")
            assert restart["restart_count"] == 1 and swap["message"] == EOS and swap["old"] == "0xorch0"
            stalled_for = swap["t"] - next(e["t"] for e in t["events"] if e["type"] == "orchestrator_selected")
            assert stalled_for >= 3.0 + 5.0     # the stall began 3 s in; ERROR after 5 s of it

            async def restarted():
                code, body = await status(gw, "s")
                inf = (body or {}).get("inference_status") or {}
                return inf.get("restart_count") == 1
            await wait_until(restarted, "the restarted runner's report with restart_count 1")
            for p in (pc, sub):
                await p.close()
    run(main())

"""Over a stream's life, as go-livepeer 176aa415 has it: BYOC's flat status, the auth webhook's refusal, a
second stream of the same name, a publisher that leaves. The reference gateway over real loopback WebRTC;
docs/FIDELITY.md names the upstream function of each.
"""

from __future__ import annotations

import asyncio
import base64
import json

import httpx
from aiortc import RTCSessionDescription

from fleet.gateway.config import Fault
from test_gateway import (
    DEADLINE_S,
    MODEL,
    config,
    gateway_error,
    idle_slots,
    open_count,
    run,
    running,
    session,
    status,
    truth,
    wait_until,
)
from webrtc_client import Received, SyntheticTrack, whep_subscribe, whip_publish

from fleet.webrtc import new_peer_connection

FLAGS = {"enable_video_ingress": True, "enable_video_egress": True}


def byoc_header(capability: str = MODEL) -> str:
    job = {"request": json.dumps({}), "parameters": json.dumps(FLAGS), "capability": capability, "timeout_seconds": 60}
    return base64.b64encode(json.dumps(job).encode()).decode()


async def byoc_start(gw, stream_id: str, stream_name: str = "") -> httpx.Response:
    body = {"stream_name": stream_name, "rtmp_output": "", "stream_id": stream_id, "params": json.dumps({"prompt": "x"})}
    async with httpx.AsyncClient() as c:
        return await c.post(f"{gw.url}/process/stream/start", json=body, headers={"Livepeer": byoc_header()})


async def flat(url: str) -> dict:
    async with httpx.AsyncClient() as c:
        resp = await c.get(url)
    assert resp.status_code == 200, resp.text
    return resp.json()


async def whep_post(url: str) -> httpx.Response:
    """A WHEP request with a real offer, as a viewer sends it."""
    pc = new_peer_connection()
    pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    try:
        async with httpx.AsyncClient(timeout=DEADLINE_S) as c:
            return await c.post(url, content=pc.localDescription.sdp, headers={"Content-Type": "application/sdp"})
    finally:
        await pc.close()


# --- BYOC's status: one flat map ----------------------------------------------------------------

def test_byoc_status_is_one_flat_map_replaced_whole_by_each_runner_report():
    """byoc/stream_gateway.go StoreKey whep_url at the start, orchestrator at the job, ingest_metrics every
    stats tick; byoc/trickle.go Store(streamId, event): each runner report replaces the whole map."""
    async def main():
        async with running(config(status_interval_s=2.0, stats_interval_s=0.3)) as gw:
            started = (await byoc_start(gw, "f1")).json()
            assert await flat(started["status_url"]) == {"whep_url": started["whep_url"]}  # before any WHIP
            pc, resp = await whip_publish(gw.url, "f1", SyntheticTrack(), path=started["whip_url"])
            assert resp.status_code == 201 and resp.headers["Livepeer-Playback-URL"] == started["whep_url"]

            async def gateway_keys_only():
                body = await flat(started["status_url"])
                return "ingest_metrics" in body and "orchestrator" in body and "state" not in body
            await wait_until(gateway_keys_only, "the gateway's keys before the runner's first report")
            body = await flat(started["status_url"])
            assert body["whep_url"] == started["whep_url"] and body["orchestrator"].startswith("https://orch-")
            assert "gateway_status" not in body and body["ingest_metrics"]["stats"]["track_stats"][0]["type"] == "video"
            orchestrator = body["orchestrator"]

            async def reported():
                return "state" in await flat(started["status_url"])
            await wait_until(reported, "the runner's first report")
            body = await flat(started["status_url"])  # replaced whole: the gateway's keys are gone
            assert not {"whep_url", "orchestrator", "gateway_status"} & set(body), body
            assert body["stream_id"] == "f1" and body["orchestrator_info"]["url"] == orchestrator

            async def metrics_back():
                return "ingest_metrics" in await flat(started["status_url"])
            await wait_until(metrics_back, "the next stats tick to store ingest_metrics again")
            body = await flat(started["status_url"])
            assert "state" in body and "whep_url" not in body and "gateway_status" not in body
            await pc.close()
    run(main())


def test_a_byoc_streams_error_is_at_the_top_level_of_its_status():
    """byoc/trickle.go LiveErrorEventSender: StoreIfNotExists(streamID, "error", …) into the same flat map."""
    async def main():
        cfg = config(faults=(Fault(kind="signaling_error", probability=1.0),))  # every orchestrator refuses the job
        async with running(cfg) as gw:
            started = (await byoc_start(gw, "e1")).json()
            pc, resp = await whip_publish(gw.url, "e1", SyntheticTrack(), path=started["whip_url"])
            assert resp.status_code == 201

            async def errored():
                return "error" in await flat(started["status_url"])
            await wait_until(errored, "the error in the BYOC status")
            body = await flat(started["status_url"])
            assert body["error"]["error_message"] == "no orchestrators available" and "gateway_status" not in body
            await pc.close()
    run(main())


# --- the auth webhook ---------------------------------------------------------------------------

async def publish_raw(gw, name: str, token: str) -> tuple:
    """A WHIP publish that carries a bearer token (go-livepeer reads none on this route)."""
    pc = new_peer_connection()
    pc.addTransceiver(SyntheticTrack(), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    async with httpx.AsyncClient(timeout=DEADLINE_S) as c:
        resp = await c.post(f"{gw.url}/live/video-to-video/{name}/whip", params={"pipeline": MODEL, "streamId": name},
                            content=pc.localDescription.sdp,
                            headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {token}"})
    if resp.status_code == 201:
        await pc.setRemoteDescription(RTCSessionDescription(resp.text, "answer"))
    return pc, resp


def test_a_refused_stream_key_gets_201_then_a_closed_peer_and_no_status():
    """server/ai_mediaserver.go CreateWhip: the webhook refuses beside CreateWHIP's 201, closes the peer and
    returns before any status is stored; bearer tokens play no part. BYOC's start answers 403."""
    async def main():
        async with running(config(refused_streams=("banned_*",))) as gw:
            refused, r1 = await publish_raw(gw, "banned_1", token="a-valid-looking-token")
            taken, r2 = await publish_raw(gw, "fine_1", token="nonsense")
            assert r1.status_code == r2.status_code == 201
            assert r1.text.startswith("v=0") and r1.headers["Location"] and r1.headers["ETag"].startswith('W/"')
            playback = r1.headers["Livepeer-Playback-URL"]
            assert playback.startswith(f"{gw.url}/live/video-to-video/banned_1-") and playback.endswith("-out/whep")
            rec = Received(target=10)
            sub = await whep_subscribe(r2.headers["Livepeer-Playback-URL"], rec)
            await asyncio.wait_for(rec.got.wait(), DEADLINE_S)  # the taken stream connected and played meanwhile
            assert refused.iceConnectionState not in ("connected", "completed")  # no peer behind the answer
            assert (await status(gw, "banned_1"))[0] == 404 and (await status(gw, "fine_1"))[0] == 200
            whep = await whep_post(playback)
            assert (whep.status_code, whep.text) == (404, "Stream not found\n")
            assert await open_count(gw) == 1
            async with httpx.AsyncClient() as c:
                assert (await c.get(f"{gw.url}/debug/streams/banned_1")).status_code == 404  # never a stream
            byoc = await byoc_start(gw, "b1", stream_name="banned_b")
            assert (byoc.status_code, byoc.text) == (403, "live ai auth failed: status=403 error=stream key refused\n")
            assert (await byoc_start(gw, "b2", stream_name="open")).status_code == 200
            for p in (refused, taken, sub):
                await p.close()
    run(main())


# --- the same stream name twice -----------------------------------------------------------------

def test_a_second_stream_of_the_same_name_replaces_the_first_without_a_409():
    """server/ai_live_video.go registerControl: the newer stream takes the name; the older's control channel is
    closed, its publisher kicked, no swap; with one streamId, its error lands in the newer's status."""
    async def main():
        async with running(config(status_interval_s=0.5)) as gw:
            _, pc_a, resp_a, rec_a, sub_a = await session(gw, name="dup", frames=None, target=10)
            await asyncio.wait_for(rec_a.got.wait(), DEADLINE_S)
            _, pc_b, resp_b, rec_b, sub_b = await session(gw, name="dup", frames=None, target=10)
            assert resp_b.status_code == 201  # no 409
            await asyncio.wait_for(rec_b.got.wait(), DEADLINE_S)  # the newer stream plays

            async def older_kicked():
                return pc_a.connectionState in ("closed", "failed") and sub_a.connectionState in ("closed", "failed")
            await wait_until(older_kicked, "the older publisher and its viewer to be closed")
            url_a, url_b = resp_a.headers["Livepeer-Playback-URL"], resp_b.headers["Livepeer-Playback-URL"]
            key_a, key_b = (url.rsplit("/", 2)[-2].removesuffix("-out") for url in (url_a, url_b))
            older, newer = await truth(gw, key_a), await truth(gw, key_b)
            assert older["closed_reason"] == "control channel does not exist" and newer["open"]
            assert not any(e["type"] == "orchestrator_swap" for e in older["events"])
            assert await open_count(gw) == 1
            whep = await whep_post(url_a)  # the older's request id no longer matches the name's stream
            assert (whep.status_code, whep.text) == (404, "Stream not found\n")
            code, st = await status(gw, "dup")  # one status per streamId: the newer's, with the older's error
            assert code == 200 and st["gateway_status"]["whep_url"] == url_b
            assert st["gateway_status"]["error"]["error_message"] == "control channel does not exist"
            for p in (pc_b, sub_b):
                await p.close()
    run(main())


def test_a_replaced_stream_still_selecting_wakes_its_waiting_viewer_with_404():
    """registerControl marks the older entry closed and broadcasts: a WHEP request waiting in getOutWriter for
    output that never came gets 404 at once; the older, still selecting, ends with "control session did not
    exist" (startControlPublish finds the newer's entry)."""
    async def main():
        slow = Fault(kind="slow_answer", streams=(1,), delay_s=60.0)  # the first stream's job never starts in time
        async with running(config(orchestrators=1, faults=(slow,))) as gw:
            pc_a, resp_a = await whip_publish(gw.url, "same", SyntheticTrack(), pipeline=MODEL, streamId="a")
            waiting = asyncio.ensure_future(whep_post(resp_a.headers["Livepeer-Playback-URL"]))
            key_a = resp_a.headers["Livepeer-Playback-URL"].rsplit("/", 2)[-2].removesuffix("-out")

            async def viewer_waits():
                assert not waiting.done(), "the WHEP request was answered before the older stream had output"
                return any(e["type"] == "whep_waiting" for e in (await truth(gw, key_a))["events"])
            await wait_until(viewer_waits, "the WHEP request to wait for the older stream's output")
            _, pc_b, resp_b, rec_b, sub_b = await session(gw, name="same", streamId="b", frames=None, target=5)
            assert resp_b.status_code == 201
            whep = await asyncio.wait_for(waiting, DEADLINE_S)
            assert (whep.status_code, whep.text) == (404, "Stream not found\n")
            older = await truth(gw, key_a)
            assert older["closed_reason"] == "control session did not exist"
            await asyncio.wait_for(rec_b.got.wait(), DEADLINE_S)
            assert (await status(gw, "a"))[1]["gateway_status"]["error"]["error_message"] == \
                "control session did not exist"  # another streamId: the older's own status
            for p in (pc_a, pc_b, sub_b):
                await p.close()
    run(main())


# --- the publisher leaves -----------------------------------------------------------------------

def test_a_publisher_that_leaves_ends_the_stream_without_a_swap_and_the_status_never_says_offline():
    """server/ai_mediaserver.go CreateWhip: AwaitClose, "whip disconnected", cleanupControl (the name is
    gone: WHEP 404), orchCancel (no swap: the input no longer exists); startEventsSubscribe stops reading
    events, so the status keeps the runner's last report."""
    async def main():
        async with running(config(status_interval_s=0.3)) as gw:
            free = await idle_slots(gw)
            _, pc, resp, rec, sub = await session(gw, name="gone", frames=None, target=10)
            await asyncio.wait_for(rec.got.wait(), DEADLINE_S)

            async def reported_twice():
                return sum(e["type"] == "ai_stream_status" for e in (await truth(gw, "gone"))["events"]) >= 2
            await wait_until(reported_twice, "two runner reports")
            await pc.close()
            assert await gateway_error(gw, "gone") == "whip disconnected"
            t = await truth(gw, "gone")
            assert not t["open"] and not any(e["type"] == "orchestrator_swap" for e in t["events"])
            reports = [e for e in t["events"] if e["type"] == "ai_stream_status"]
            closed = next(e for e in t["events"] if e["type"] == "gateway_ingest_stream_closed")
            assert reports[-1]["t"] < closed["t"]  # nothing reported at or after the end
            code, st = await status(gw, "gone")
            assert code == 200 and st["state"] == reports[-1]["state"] != "OFFLINE"
            whep = await whep_post(resp.headers["Livepeer-Playback-URL"])
            assert (whep.status_code, whep.text) == (404, "Stream not found\n")
            assert await idle_slots(gw) == free
            await sub.close()
    run(main())

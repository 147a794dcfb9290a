"""The reference gateway, driven by real aiortc clients over loopback WebRTC."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time

import httpx
import pytest

from fleet.capacity import parse_network_capabilities
from fleet.gateway.config import Delay, Fault, GatewayConfig, Gpu, GpuProfile, OrchestratorSpec
from fleet.gateway.server import GatewayProcess, ReferenceGateway
from webrtc_client import Received, SyntheticTrack, whep_subscribe, whip_publish

MODEL = "streamdiffusion"
DEADLINE_S = 20.0


def config(slots: int = 2, orchestrators: int = 2, faults: tuple = (), delay_ms: float = 100.0, **kw) -> GatewayConfig:
    profile = GpuProfile(name="Test GPU", fps_cap=30.0, prompt_cost=0.0, cold_start_s=0.0, warmup_frames=0,
                         delay=Delay(dist="fixed", mean_ms=delay_ms, jitter_ms=0.0))
    orchs = tuple(OrchestratorSpec(address=f"0xorch{i}", uri=f"https://orch-{i}.test:8935",
                                   gpus=(Gpu(id=f"GPU-{i}", profile="p", slots={MODEL: slots}),))
                  for i in range(orchestrators))
    return GatewayConfig(port=0, profiles={"p": profile}, orchestrators=orchs, faults=faults, **kw)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 90))


@contextlib.asynccontextmanager
async def running(cfg: GatewayConfig):
    """An in-process gateway for the duration of the block, stopped however the block ends."""
    gw = ReferenceGateway(cfg)
    await gw.start()
    try:
        yield gw
    finally:
        await gw.stop()


async def wait_until(predicate, what: str, deadline: float = DEADLINE_S):
    """Poll ``predicate`` (a coroutine function) until true; fail after ``deadline``."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def truth(gw: ReferenceGateway, stream_id: str) -> dict:
    async with httpx.AsyncClient() as c:
        return (await c.get(f"{gw.url}/debug/streams/{stream_id}")).json()


async def open_count(gw: ReferenceGateway) -> int:
    async with httpx.AsyncClient() as c:
        return (await c.get(f"{gw.url}/debug/streams")).json()["open"]


async def idle_slots(gw: ReferenceGateway) -> int:
    async with httpx.AsyncClient() as c:
        body = (await c.get(f"{gw.url}/getNetworkCapabilities")).json()
    return parse_network_capabilities(body, MODEL).idle


async def session(gw, name="s", frames=60, target=40, fps=30.0, **query):
    """Publish ``frames`` frames, subscribe, wait for ``target`` output frames; return everything."""
    track = SyntheticTrack(fps=fps, frames=frames)
    pc, resp = await whip_publish(gw.url, name, track, pipeline=MODEL, **query)
    assert resp.status_code == 201, resp.text
    received = Received(target=target)
    sub = await whep_subscribe(resp.headers["Livepeer-Playback-URL"], received)
    return track, pc, resp, received, sub


# --- the go-livepeer dialect -----------------------------------------------------------

def test_whip_to_whep_processes_video_and_truth_matches_config():
    async def main():
        async with running(config(delay_ms=100.0)) as gw:
            track, pc, resp, rec, sub = await session(gw, params=json.dumps({"prompt": "oil painting"}))
            assert resp.headers["Content-Type"].startswith("application/sdp")
            assert resp.headers["Location"].startswith("/live/video-to-video/s/whip/")
            assert resp.headers["ETag"]
            await asyncio.wait_for(rec.got.wait(), DEADLINE_S)
            t = await truth(gw, resp.headers["X-Stream-Id"])
            assert t["open"] and t["frames_out"] >= 40
            assert abs(t["delay_ms_median"] - 100.0) <= 1.0  # the delay it applied, within 1 ms
            assert t["prompts"][0]["prompt"] == "oil painting"
            kinds = [e["type"] for e in t["events"]]
            assert kinds[:1] == ["gateway_receive_stream_request"]
            assert "runner_send_first_processed_segment" in kinds
            # timing is preserved: output frames carry input timestamps (to RTP rounding, 3 ticks of
            # 90 kHz), in order, 1/30 s apart
            pts = [p for p, _, _ in rec.frames]
            assert pts == sorted(pts)
            assert all(min(abs(p - s) for s in track.sent) <= 3 for p in pts)
            assert all(abs(b - a - 3000) <= 3 for a, b in zip(pts, pts[1:]))
            # every pixel's look changed (chroma shifted), coarse brightness kept (dark < bright)
            assert all(abs(c - 128) >= 16 for c in rec.chroma)
            dark = [y for p, _, y in rec.frames if (round(p / 3000) // 15) % 2 == 0]
            bright = [y for p, _, y in rec.frames if (round(p / 3000) // 15) % 2 == 1]
            assert dark and bright and max(dark) < min(bright)
            async with httpx.AsyncClient() as c:
                status = (await c.get(f"{gw.url}/live/video-to-video/s/status")).json()
                assert status["state"] == "ONLINE"
                assert status["orchestrator_info"]["address"].startswith("0xorch")
                assert status["inference_status"]["last_params"] == {"prompt": "oil painting"}
                assert (await c.delete(gw.url + resp.headers["Location"])).status_code == 200
            assert await open_count(gw) == 0
            await pc.close()
            await sub.close()
    run(main())


def test_update_changes_the_prompt_in_force():
    async def main():
        async with running(config()) as gw:
            _, pc, resp, rec, sub = await session(gw, frames=90, target=20, params=json.dumps({"prompt": "a"}))
            await asyncio.wait_for(rec.got.wait(), DEADLINE_S)
            chroma_before = rec.chroma[-1]
            async with httpx.AsyncClient() as c:
                r = await c.post(f"{gw.url}/live/video-to-video/s/update", content=json.dumps({"prompt": "cyberpunk"}))
                assert r.status_code == 200
                big = await c.post(f"{gw.url}/live/video-to-video/s/update", content=b"x" * 1_100_000)
                assert big.status_code == 413
            n = len(rec.frames)
            rec.target, rec.got = n + 20, asyncio.Event()
            await asyncio.wait_for(rec.got.wait(), DEADLINE_S)
            t = await truth(gw, resp.headers["X-Stream-Id"])
            assert [p["prompt"] for p in t["prompts"]] == ["a", "cyberpunk"]
            assert rec.chroma[-1] != chroma_before  # the new prompt's look reached the output
            await pc.close()
            await sub.close()
    run(main())


def test_bad_requests_are_refused_clearly():
    async def main():
        async with running(config()) as gw:
            async with httpx.AsyncClient() as c:
                r = await c.post(f"{gw.url}/live/video-to-video/x/whip", content="v=0", headers={"Content-Type": "text/plain"})
                assert r.status_code == 415
                r = await c.post(f"{gw.url}/live/video-to-video/x/whip", params={"params": "{bad"},
                                 content="v=0", headers={"Content-Type": "application/sdp"})
                assert r.status_code == 400 and "params is not JSON" in r.json()["error"]
                r = await c.post(f"{gw.url}/live/video-to-video/x/whip", content="not sdp",
                                 headers={"Content-Type": "application/sdp"})
                assert r.status_code == 400
                assert (await c.get(f"{gw.url}/live/video-to-video/none/status")).status_code == 404
                pre = await c.options(f"{gw.url}/live/video-to-video/x/whip")  # a browser's preflight
                assert pre.status_code == 204 and pre.headers["Accept-Post"] == "application/sdp"
                assert "Livepeer-Playback-URL" in pre.headers["Access-Control-Expose-Headers"]
            assert await idle_slots(gw) == 4  # nothing leaked by the refusals
    run(main())


def test_full_network_refuses_like_go_livepeer_and_frees_on_delete():
    async def main():
        async with running(config(slots=1, orchestrators=2)) as gw:
            pcs, resps = [], []
            for i in range(2):
                pc, resp = await whip_publish(gw.url, f"f{i}", SyntheticTrack(frames=300), pipeline=MODEL)
                assert resp.status_code == 201
                pcs.append(pc)
                resps.append(resp)
            assert await idle_slots(gw) == 0
            pc, full = await whip_publish(gw.url, "f2", SyntheticTrack(frames=10), pipeline=MODEL)
            assert full.status_code == 503
            assert full.json() == {"error": "no orchestrators available", "trace": "gateway_no_orchestrators_available",
                                   "pipeline": MODEL}
            await pc.close()
            async with httpx.AsyncClient() as c:
                assert (await c.delete(gw.url + resps[0].headers["Location"])).status_code == 200
            assert await idle_slots(gw) == 1
            freed = gw.history[resps[0].headers["X-Stream-Id"]].lease.orchestrator.address
            pc3, again = await whip_publish(gw.url, "f3", SyntheticTrack(frames=10), pipeline=MODEL,
                                            orchestrator=freed)  # the freed slot, and only it, takes it
            assert again.status_code == 201
            for p in pcs + [pc3]:
                await p.close()
    run(main())


def test_orchestrator_query_targets_one_orchestrator():
    async def main():
        async with running(config(slots=1, orchestrators=3)) as gw:
            pc, resp = await whip_publish(gw.url, "t", SyntheticTrack(frames=10), pipeline=MODEL, orchestrator="orch-2.test")
            assert resp.status_code == 201
            assert gw.live["t"].lease.orchestrator.address == "0xorch2"
            pc2, resp2 = await whip_publish(gw.url, "u", SyntheticTrack(frames=10), pipeline=MODEL, orchestrator="orch-2.test")
            assert resp2.status_code == 503  # that orchestrator is full, though others are idle
            for p in (pc, pc2):
                await p.close()
    run(main())


def test_slot_freed_when_the_client_closes_and_after_idle_input():
    async def main():
        async with running(config(idle_timeout_s=1.0)) as gw:
            _, pc, resp, rec, sub = await session(gw, frames=300, target=5)
            await asyncio.wait_for(rec.got.wait(), DEADLINE_S)
            await pc.close()
            await sub.close()

            async def closed():
                return await open_count(gw) == 0
            await wait_until(closed, "the stream to close after the client left")
            # a publisher that stops sending frames but keeps its connection: freed after idle_timeout_s
            _, pc2, resp2, rec2, sub2 = await session(gw, name="idle", frames=15, target=5)
            await wait_until(closed, "the idle stream to time out")
            t = await truth(gw, resp2.headers["X-Stream-Id"])
            assert t["closed_reason"] == "no input for 1 s"
            assert await idle_slots(gw) == 4
            await pc2.close()
            await sub2.close()
    run(main())


def test_capabilities_and_truth_list_show_leaks():
    async def main():
        async with running(config()) as gw:
            pc, resp = await whip_publish(gw.url, "leak", SyntheticTrack(frames=300), pipeline=MODEL)
            async with httpx.AsyncClient() as c:
                listing = (await c.get(f"{gw.url}/debug/streams")).json()
                caps = (await c.get(f"{gw.url}/getNetworkCapabilities")).json()
            assert listing["open"] == 1 and listing["streams"][0]["name"] == "leak"
            snap = parse_network_capabilities(caps, MODEL)
            assert (snap.total, snap.idle) == (4, 3)
            assert snap.orchestrators[0].gpus == (("GPU-0", "Test GPU"),)
            await pc.close()
        assert all(s.closed for s in gw.history.values())  # clean shutdown closed every stream
    run(main())


# --- faults ----------------------------------------------------------------------

def fault_config(**fault) -> GatewayConfig:
    return config(faults=(Fault(streams=(1,), **fault),))


def test_fault_signaling_error_and_timeout_and_slow_answer():
    async def main():
        for fault, expected in ((dict(kind="signaling_error", status=502), 502),
                                (dict(kind="signaling_timeout", delay_s=0.5), 504),
                                (dict(kind="slow_answer", delay_s=1.0), 201)):
            async with running(fault_config(orchestrator="0xorch0", **fault)) as gw:
                began = time.monotonic()
                pc, resp = await whip_publish(gw.url, "s", SyntheticTrack(frames=10), pipeline=MODEL,
                                              orchestrator="0xorch0")
                assert resp.status_code == expected, fault
                if "delay_s" in fault:
                    assert time.monotonic() - began >= fault["delay_s"]
                if expected != 201:
                    assert await idle_slots(gw) == 4  # the failed stream's slot is back
                await pc.close()
    run(main())


def test_fault_ice_never_completes():
    async def main():
        async with running(fault_config(kind="ice_never")) as gw:
            pc, resp = await whip_publish(gw.url, "s", SyntheticTrack(frames=30), pipeline=MODEL)
            assert resp.status_code == 201 and "a=candidate" not in resp.text

            async def failed():
                return pc.connectionState == "failed" or pc.iceConnectionState == "failed"
            await wait_until(failed, "ICE to fail", deadline=40)
            await pc.close()
    run(main())


def test_fault_output_stall_while_input_flows():
    async def main():
        async with running(fault_config(kind="output_stall", after_s=0.5)) as gw:
            _, pc, resp, rec, sub = await session(gw, frames=120, target=1)
            sid = resp.headers["X-Stream-Id"]

            async def stalled():
                return (await truth(gw, sid))["dropped"].get("fault:output_stall", 0) >= 30
            await wait_until(stalled, "30 input frames dropped by the stall")
            t = await truth(gw, sid)
            assert t["frames_in"] >= t["frames_out"] + 30
            # t_in is the arrival of the last packet; the fault acts after aiortc reassembles (a frame later)
            assert all(f["dropped"] == "fault:output_stall" for f in t["frames"] if f["t_in"] >= 0.6)
            await pc.close()
            await sub.close()
    run(main())


def test_fault_black_frames_and_fps_drop():
    async def main():
        async with running(config(faults=(Fault(kind="black_frames", streams=(1,), orchestrator="0xorch0"),
                                             Fault(kind="fps_drop", fps_factor=0.5, streams=(1,),
                                                   orchestrator="0xorch1")))) as gw:
            _, pc, resp, rec, sub = await session(gw, name="black", target=20, orchestrator="0xorch0")
            _, pc2, resp2, rec2, sub2 = await session(gw, name="slow", frames=90, target=20, orchestrator="0xorch1")
            await asyncio.wait_for(asyncio.gather(rec.got.wait(), rec2.got.wait()), DEADLINE_S)
            assert max(y for _, _, y in rec.frames) < 24  # black (video range 16)
            slow = await truth(gw, resp2.headers["X-Stream-Id"])
            assert slow["fps_cap"] == 15.0
            kept = [f for f in slow["frames"] if f["dropped"] is None]
            assert 0.4 <= len(kept) / len(slow["frames"]) <= 0.6  # half the frames pass a halved cap
            for p in (pc, pc2, sub, sub2):
                await p.close()
    run(main())


def test_fault_disconnect_swap_and_capacity_drop():
    async def main():
        async with running(config(slots=1, orchestrators=3, faults=(
            Fault(kind="disconnect", after_s=0.5, streams=(1,), orchestrator="0xorch0"),
            # well after the disconnect has freed orch0, the only place the swap can go
            Fault(kind="orchestrator_swap", after_s=1.5, streams=(1,), orchestrator="0xorch1"),
            Fault(kind="capacity_drop", after_s=0.2, slots=1, streams=(1,), orchestrator="0xorch2")))) as gw:
            pcs, ids = [], []
            for i in range(3):
                pc, resp = await whip_publish(gw.url, f"s{i}", SyntheticTrack(frames=120), pipeline=MODEL,
                                              orchestrator=f"0xorch{i}")
                assert resp.status_code == 201
                pcs.append(pc)
                ids.append(resp.headers["X-Stream-Id"])

            async def disconnected():
                return (await truth(gw, ids[0]))["closed_reason"] == "fault: disconnect"
            await wait_until(disconnected, "the disconnect fault")

            async def swapped():
                return any(e["type"] == "orchestrator_swap" for e in (await truth(gw, ids[1]))["events"])
            await wait_until(swapped, "the swap fault")
            t = await truth(gw, ids[1])
            swap = next(e for e in t["events"] if e["type"] == "orchestrator_swap")
            assert (swap["old"], swap["new"]) == ("0xorch1", "0xorch0")  # the only orchestrator with room
            assert t["orchestrator"] == "0xorch0"

            async def dropped():
                caps = parse_network_capabilities(gw.network.capabilities(), MODEL)
                return {o.address: o.idle for o in caps.orchestrators}["0xorch1"] == 1
            await wait_until(dropped, "orch1's slot to be free after the swap")
            assert gw.network._dropped == {"0xorch2": 1}
            for p in pcs:
                await p.close()
    run(main())


# --- other dialects, relay mode, subprocess ----------------------------------------------

def test_daydream_facade_checks_the_token_and_streams():
    async def main():
        async with running(config(token="sekrit")) as gw:
            async with httpx.AsyncClient() as c:
                body = {"pipeline": MODEL, "params": {"prompt": "anime"}}
                assert (await c.post(f"{gw.url}/v1/streams", json=body)).status_code == 401
                auth = {"Authorization": "Bearer sekrit"}
                created = (await c.post(f"{gw.url}/v1/streams", json=body, headers=auth)).json()
            name = created["id"]
            track = SyntheticTrack(frames=60)
            pc, resp = await whip_publish(created["whip_url"].rsplit("/live/", 1)[0], name, track)
            assert resp.status_code == 201
            async with httpx.AsyncClient() as c:
                got = (await c.get(f"{gw.url}/v1/streams/{name}", headers=auth)).json()
                assert got["inference_status"]["last_params"] == {"prompt": "anime"}
                patched = await c.patch(f"{gw.url}/v1/streams/{name}", json={"params": {"prompt": "noir"}}, headers=auth)
                assert patched.json()["params"] == {"prompt": "noir"}
                assert (await c.delete(f"{gw.url}/v1/streams/{name}", headers=auth)).status_code == 204
            assert await open_count(gw) == 0
            await pc.close()
    run(main())


def test_byoc_facade():
    async def main():
        async with running(config()) as gw:
            job = base64.b64encode(json.dumps({"capability": MODEL, "parameters": {"prompt": "x"}}).encode()).decode()
            async with httpx.AsyncClient() as c:
                started = (await c.post(f"{gw.url}/process/stream/start", headers={"Livepeer": job})).json()
                assert (await c.post(f"{gw.url}/process/stream/start", headers={"Livepeer": "%%"})).status_code == 400
            assert set(started) == {"stream_id", "whip_url", "whep_url", "update_url", "status_url", "stop_url"}
            pc, resp = await whip_publish(gw.url, started["stream_id"], SyntheticTrack(frames=30))
            assert resp.status_code == 201
            async with httpx.AsyncClient() as c:
                assert (await c.get(started["status_url"])).json()["inference_status"]["last_params"] == {"prompt": "x"}
                assert (await c.post(started["stop_url"])).status_code == 200
            assert await open_count(gw) == 0
            await pc.close()
    run(main())


def test_relay_mode_forwards_frames_untransformed():
    async def main():
        async with running(config(relay=True)) as gw:
            _, pc, resp, rec, sub = await session(gw, target=20)
            await asyncio.wait_for(rec.got.wait(), DEADLINE_S)
            assert all(abs(c - 128) < 2 for c in rec.chroma)  # no look applied
            for p in (pc, sub):
                await p.close()
    run(main())


def test_serve_as_a_subprocess_and_stop_cleanly(tmp_path):
    cfg = tmp_path / "gw.yaml"
    cfg.write_text("profiles:\n  p: {name: Sub GPU}\norchestrators:\n"
                   "  - {address: '0xsub', uri: 'https://sub:8935', gpus: [{id: G0, profile: p, slots: {sd: 3}}]}\n")
    with GatewayProcess(cfg) as proc:
        caps = httpx.get(f"{proc.url}/getNetworkCapabilities", timeout=10).json()
        assert parse_network_capabilities(caps, "sd").idle == 3
        assert proc.stop() == 0


def test_example_config_loads_and_bad_config_is_located(tmp_path):
    from fleet.errors import InputError
    from fleet.gateway.config import load_gateway_config
    from conftest import REPO
    cfg = load_gateway_config(REPO / "docs" / "reference-gateway.yaml")
    assert len(cfg.orchestrators) == 3 and {f.kind for f in cfg.faults} >= {"slow_answer", "output_stall"}
    bad = tmp_path / "bad.yaml"
    body = "profiles: {p: {name: x}}\norchestrators:\n  - {address: a, uri: u, gpus: [{id: g, profile: q, slots: {}}]}\n"
    bad.write_text(body)
    with pytest.raises(InputError) as info:
        load_gateway_config(bad)
    assert str(info.value) == f"{bad}:1:1: GPU g of a names profile 'q' (allowed: p)"
    bad.write_text(body + "faults:\n  - {kind: meteor, probability: 0.1}\n")
    with pytest.raises(InputError) as info:
        load_gateway_config(bad)
    assert str(info.value) == (
        f"{bad}:5:12: faults[0].kind: 'meteor' is not allowed (allowed: signaling_error, slow_answer, "
        "signaling_timeout, ice_never, output_stall, disconnect, black_frames, fps_drop, orchestrator_swap, "
        "capacity_drop)")


def test_cold_start_and_warmup_drop_the_first_frames_of_a_gpu():
    async def main():
        profile = GpuProfile(name="Cold GPU", prompt_cost=0.0, cold_start_s=0.5, warmup_frames=5,
                             delay=Delay(dist="fixed", mean_ms=10.0, jitter_ms=0.0))
        cfg = GatewayConfig(port=0, profiles={"p": profile}, orchestrators=(OrchestratorSpec(
            address="0xcold", uri="https://cold", gpus=(Gpu(id="G", profile="p", slots={MODEL: 2}),)),))
        async with running(cfg) as gw:
            _, pc, resp, rec, sub = await session(gw, name="first", frames=60, target=10)
            await asyncio.wait_for(rec.got.wait(), DEADLINE_S)
            first = await truth(gw, resp.headers["X-Stream-Id"])
            reasons = [f["dropped"] for f in first["frames"]]
            cold = [f for f in first["frames"] if f["dropped"] == "cold_start"]
            assert cold and all(f["t_in"] < 0.5 for f in cold)
            assert reasons.count("warmup") == 5
            assert reasons.index("warmup") == len(cold)  # warm-up follows the cold start, then frames pass
            _, pc2, resp2, rec2, sub2 = await session(gw, name="second", frames=60, target=10)
            await asyncio.wait_for(rec2.got.wait(), DEADLINE_S)
            second = await truth(gw, resp2.headers["X-Stream-Id"])
            assert "cold_start" not in second["dropped"]  # the GPU is warm now
            assert second["dropped"].get("warmup") == 5
            for p in (pc, sub, pc2, sub2):
                await p.close()
    run(main())


def test_truth_of_closed_streams_is_bounded(monkeypatch):
    from fleet.gateway import server
    monkeypatch.setattr(server, "MAX_CLOSED_STREAMS", 2)

    async def main():
        async with running(fault_config(kind="signaling_error", probability=1.0)) as gw:
            for i in range(5):
                pc, resp = await whip_publish(gw.url, f"s{i}", SyntheticTrack(frames=1), pipeline=MODEL)
                assert resp.status_code == 503
                await pc.close()
            pc, _ = await whip_publish(gw.url, "last", SyntheticTrack(frames=1), pipeline=MODEL)
            await pc.close()
            assert len(gw.history) == 3  # the two newest closed ones, plus the stream just refused
            assert [s.name for s in gw.history.values()] == ["s3", "s4", "last"]
    run(main())


def test_subprocess_that_cannot_start_says_so(tmp_path, capfd):
    bad = tmp_path / "gw.yaml"
    bad.write_text("orchestrators: []\n")
    with pytest.raises(RuntimeError, match=r"failed to start \(exit 1; its stderr says why\)"):
        with GatewayProcess(bad):
            pass
    err = capfd.readouterr().err
    assert f"{bad}:1:16: orchestrators: needs at least 1 item, got 0" in err
    assert "Traceback" not in err

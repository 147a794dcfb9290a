"""The shared frame clock: a track with ``phases`` starts at the next of that many instants a frame period (at
the process's offset), so tracks started at different moments send on the same instants; without, a track
starts at once. The tracks run on a real event loop; waits are on their own frames, each with a deadline."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet.media import Clip, PacketTrack, first_phase
from fleet.probe import session
from fleet.probe.types import ProbeOptions, ProbeSpec, PromptChange

FPS = 30.0
FRAMES = 90


def clip() -> Clip:
    return Clip("h264", 64, 64, FPS, (b"",) * FRAMES, (True,) + (False,) * (FRAMES - 1), (100.0,) * FRAMES, (), 0.0)


def whole(x: float) -> bool:
    return abs(x - round(x)) < 1e-6


@given(now=st.floats(0, 1e6), phases=st.integers(1, 8), offset=st.floats(0, 1, exclude_max=True))
def test_the_first_instant_is_the_next_one_on_the_grid(now, phases, offset):
    spacing = 1 / (FPS * phases)
    t = first_phase(now, spacing, offset)
    assert whole(t / spacing - offset), "one of the instants (k + offset) x spacing"
    assert now <= t < now + spacing + 1e-9, "never one before now, nor one skipped"


def test_without_a_spacing_the_first_instant_is_now():
    assert first_phase(1234.5678, 0.0) == 1234.5678


async def first_frames(track: PacketTrack, count: int) -> float:
    """``count`` frames of ``track`` taken; the monotonic time just before asking for the first."""
    before = time.monotonic()
    for _ in range(count):
        await asyncio.wait_for(track.next_frame(), timeout=5)
    return before


@pytest.mark.parametrize("phases", [1, 4])
def test_tracks_started_apart_send_on_shared_instants(phases):
    spacing = 1 / (FPS * phases)

    async def main():
        tracks = [PacketTrack(clip(), phases=phases) for _ in range(3)]
        asked = []
        for k, track in enumerate(tracks):  # each started after the one before sent frames of its own
            asked.append(await first_frames(track, 2 + k))
        return tracks, asked

    tracks, asked = asyncio.run(main())
    for track, before in zip(tracks, asked):
        assert track.start is not None and before <= track.start, "no instant before the first frame was asked for"
        assert all(t >= track.start + n / FPS - 1e-9 for n, t in enumerate(track.sent)), "each frame waited for its instant"
    assert len({track.start for track in tracks}) == 3, "started apart"
    for track in tracks[1:]:
        assert whole((track.start - tracks[0].start) / spacing), "the tracks' frames are due on the same instants"


# run in a process of its own (the test's process never forks): its offset, then its forked child's
FORKED = """
import os
import fleet.media as m
read, write = os.pipe()
child = os.fork()
if child == 0:
    try:
        os.write(write, repr(m.phase_offset()).encode())
    finally:
        os._exit(0)
os.close(write)
with os.fdopen(read) as f:
    theirs = f.read()
_, status = os.waitpid(child, 0)
print(m.phase_offset(), theirs if status == 0 else "failed")
"""


def test_each_process_draws_its_own_offset_and_so_does_a_forked_child():
    def run() -> list[float]:
        done = subprocess.run([sys.executable, "-c", FORKED], capture_output=True, text=True, check=True, timeout=60)
        return [float(x) for x in done.stdout.split()]

    (a, a_child), (b, _) = run(), run()
    assert len({a, a_child, b}) == 3 and all(0.0 <= x < 1.0 for x in (a, a_child, b))


def test_without_phases_a_track_starts_at_once():
    async def main():
        track = PacketTrack(clip())
        before = await first_frames(track, 1)
        return track, before, time.monotonic()

    track, before, after = asyncio.run(main())
    assert before <= track.start <= after and track.sent[0] == track.start


@pytest.mark.parametrize("phases", [0, 2, 4])
def test_a_probe_session_sends_on_the_options_phases(monkeypatch, phases):
    made = []

    class Made(Exception):
        pass

    def track(clip, **kw):  # the session's track, and nothing after it built
        made.append(kw)
        raise Made

    monkeypatch.setattr(session, "PacketTrack", track)
    spec = ProbeSpec("http://127.0.0.1:1", "livepeer", "streamdiffusion", clip(), (PromptChange(0, {}),), 5.0,
                     options=ProbeOptions(send_phases=phases))
    with pytest.raises(Made):
        session._Probe(spec)
    assert made == [{"phases": phases}]


@pytest.mark.parametrize(("fragment", "phases", "status_every"), [
    ("", 4, 2.0),
    ("media: {source: synthetic, send_phases: 0}\n", 0, 2.0),
    ("media: {source: synthetic, send_phases: 7}\ntarget: {dialect: reference, status_every_s: 5}\n", 7, 5.0),
    ("target: {dialect: reference, status_every_s: 0.5}\n", 4, 0.5)])
def test_a_runner_gives_its_sessions_the_scenarios_probe_options(tmp_path, fragment, phases, status_every):
    """The scenario's ``media.send_phases`` and ``target.status_every_s`` reach every session's options."""
    from conftest import REPO
    from fleet.runtime.runner import RegionRunner
    from fleet.scenario import load_scenario

    path = tmp_path / "s.yaml"
    path.write_text(f"extends: {REPO / 'tests' / 'scenarios' / 'base.yaml'}\n{fragment}")
    scenario = load_scenario(path)
    runner = RegionRunner("local", scenario.model_dump(mode="json"), str(tmp_path))
    options = runner.probe_options()
    assert (options.send_phases, options.status_every_s) == (phases, status_every)


HANG_S = 10.0  # a status loop that never ends fails the test after this (its waits are not waited)


@pytest.mark.parametrize("every", [0.5, 7.5])
def test_a_session_reads_the_status_every_status_every_s(monkeypatch, every):
    """A session reads the status at once, then after a wait of ``status_every_s`` each time, until the
    gateway's status carries an error that ends the stream (then the reads stop, the session's waits broken
    off). The gateway is a fake (httpx's MockTransport); the session's waits are recorded, not waited."""
    reads: list[int] = []   # how many waits came before each read
    waits: list[float] = []
    last = 4
    sleep = asyncio.sleep

    async def recorded_sleep(delay: float, *args, **kwargs):
        if sys._getframe(1).f_code is not session._Probe._poll_status.__code__:
            return await sleep(delay, *args, **kwargs)  # another's wait (the loop's lag monitor): as it was
        waits.append(delay)
        await sleep(0)

    def gateway(request: httpx.Request) -> httpx.Response:
        reads.append(len(waits))
        error = {"error_message": "no orchestrators available"} if len(reads) == last else None
        return httpx.Response(200, json={"gateway_status": {"error": error}})

    async def main():
        spec = ProbeSpec("http://127.0.0.1:1", "livepeer", "streamdiffusion", clip(), (PromptChange(0, {}),), 5.0,
                         options=ProbeOptions(status_every_s=every))
        probe = session._Probe(spec)
        try:
            async with httpx.AsyncClient(transport=httpx.MockTransport(gateway)) as client:
                with monkeypatch.context() as patched:
                    patched.setattr(session.asyncio, "sleep", recorded_sleep)
                    await asyncio.wait_for(probe._poll_status(client), HANG_S)
        finally:
            for pc in (probe.peers.pc_in, probe.peers.pc_out):
                await pc.close()
            probe.loop_monitor.release()
        return probe

    probe = asyncio.run(main())
    assert reads == [0, 1, 2, 3] and waits == [every] * (last - 1)
    assert probe.r.gateway_error == "no orchestrators available"
    assert probe.peers.broken.is_set() and probe.peers.broken_error == "gateway_error"

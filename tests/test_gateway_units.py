"""The reference gateway's pure units, in the fast tier: ai-runner's state rules, the example config and a
located config error, and a WHEP viewer's wait for its first keyframe (no server, no WebRTC)."""

from __future__ import annotations

import av
import pytest

from fleet.gateway.egress import OutputTrack


def test_runner_states_follow_ai_runner_rules():
    from fleet.gateway.runner_state import RunnerClock, runner_state

    def clock(**kw):
        base = dict(now=100.0, start=0.0, ready=5.0, running=True, last_input=99.9, last_output=99.9,
                    params_update=None, last_error=None, last_restart=None, input_fps=30.0, output_fps=30.0)
        return RunnerClock(**{**base, **kw})
    assert runner_state(clock()) == "ONLINE"
    assert runner_state(clock(ready=None, now=50.0)) == "LOADING"
    assert runner_state(clock(ready=None, now=183.0)) == "ERROR"          # loading over 180 s
    assert runner_state(clock(input_fps=14.0)) == "DEGRADED_INPUT"        # input below 15 fps
    assert runner_state(clock(output_fps=9.0)) == "DEGRADED_INFERENCE"    # output below min(10, 0.8 x input)
    assert runner_state(clock(last_error=90.0)) == "DEGRADED_INFERENCE"   # an error in the last 15 s
    assert runner_state(clock(last_restart=45.0)) == "DEGRADED_INFERENCE"  # a restart in the last 60 s
    assert runner_state(clock(last_output=94.0)) == "ERROR"               # output stalled > 5 s, input flowing
    assert runner_state(clock(last_input=30.0, last_output=30.0)) == "DEGRADED_INPUT"  # 70 s without input
    assert runner_state(clock(last_input=5.0, last_output=5.0)) == "ERROR"            # 95 s without input
    assert runner_state(clock(running=False, last_input=90.0)) == "OFFLINE"
    assert runner_state(clock(running=False, last_input=98.0)) == "DEGRADED_INPUT"


def test_a_viewer_is_sent_nothing_before_its_first_keyframe_then_everything():
    """go-livepeer's WHEP track waits for an IDR (hasIDR): frames before it are dropped and counted."""
    track = OutputTrack()
    frames = [(av.Packet(bytes([k])), k in (3, 6)) for k in range(8)]  # keyframes at 3 and 6
    for packet, key in frames:
        track.push(packet, keyframe=key)
    assert track.awaiting_keyframe == 3 and track.started
    queued = [track.queue.get_nowait() for _ in range(track.queue.qsize())]
    assert [bytes(p) for p in queued] == [bytes([k]) for k in range(3, 8)]  # from the keyframe on, in order


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
        "capacity_drop, malformed_status, packet_loss, transient_error)")

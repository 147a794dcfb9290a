from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.capacity import (CapacitySnapshot, OrchestratorSlots, load_capacity_file, parse_capacity, parse_naap,
                            parse_naap_discovery, parse_network_capabilities)
from fleet.errors import CapacityError
from fleet.gateway.config import capabilities_body, default_config, reference_capacity

CAPS = {"orchestrators": [
    {"address": "0xb", "orch_uri": "https://b:8935",
     "capabilities": {"constraints": {"PerCapability": {"35": {"models": {
         "sd": {"warm": True, "capacity": 2, "capacityInUse": 1}, "other": {"capacity": 9}}}}}},
     "hardware": [{"pipeline": "live-video-to-video", "model_id": "sd",
                   "gpu_info": {"0": {"id": "GPU-b0", "name": "RTX 4090"}, "1": {"id": "GPU-b1", "name": "RTX 4090"}}}]},
    {"address": "0xa", "orch_uri": "https://a:8935",  # zero fields omitted: all slots busy
     "capabilities": {"constraints": {"PerCapability": {"35": {"models": {"sd": {"capacityInUse": 3}}}}}}},
    {"address": "0xc", "orch_uri": "https://c:8935", "capabilities": {}},  # does not offer live video
]}


def test_network_capabilities_counts_idle_and_busy_per_orchestrator():
    snap = parse_network_capabilities(CAPS, "sd")
    assert [(o.address, o.idle, o.in_use) for o in snap.orchestrators] == [("0xa", 0, 3), ("0xb", 2, 1)]
    assert snap.orchestrators[1].gpus == (("GPU-b0", "RTX 4090"), ("GPU-b1", "RTX 4090"))
    assert (snap.total, snap.idle) == (6, 2)


def test_naap_shape():
    snap = parse_naap({"models": [{"model": "sd", "gpu_slots": 10, "active_streams": 4}]}, "sd")
    assert (snap.total, snap.idle, snap.orchestrators) == (10, 6, ())
    assert parse_naap([], "sd").notes == ("NaaP lists no model 'sd'",)


def test_shape_detection_and_errors(tmp_path):
    assert parse_capacity({"slots": 7}, "sd").idle == 7
    with pytest.raises(CapacityError, match="unrecognised capacity JSON"):
        parse_capacity({"foo": 1}, "sd")
    with pytest.raises(CapacityError, match=r"expected a whole number >= 0, got -1"):
        parse_network_capabilities({"orchestrators": [{"capabilities": {"constraints": {"PerCapability": {
            "35": {"models": {"sd": {"capacity": -1}}}}}}}]}, "sd")
    bad = tmp_path / "c.json"
    bad.write_text("{\n  oops")
    with pytest.raises(CapacityError) as info:
        load_capacity_file(bad, "sd")
    assert str(info.value).startswith(f"{bad}:2:3: not valid JSON")


def test_reference_network_round_trips_through_the_gateway_shape():
    cfg = default_config()
    snap = reference_capacity("streamdiffusion", cfg)
    assert (len(snap.orchestrators), snap.total, snap.idle) == (4, 16, 16)
    busy = {(cfg.orchestrators[0].address, "streamdiffusion"): 2}
    body = json.loads(json.dumps(capabilities_body(cfg, busy)))
    first = parse_network_capabilities(body, "streamdiffusion").orchestrators[0]
    assert (first.idle, first.in_use) == (2, 2)
    fully_busy = capabilities_body(cfg, {(cfg.orchestrators[0].address, "streamdiffusion"): 4})
    models = fully_busy["orchestrators"][0]["capabilities"]["constraints"]["PerCapability"]["35"]["models"]
    assert "capacity" not in models["streamdiffusion"]  # zero fields are omitted, as go-livepeer does


def test_naap_negative_available_capacity_is_clamped_with_a_note():
    snap = parse_naap([{"model": "sd", "gpu_slots": 4, "active_streams": 6, "available_capacity": -2}], "sd")
    assert (snap.idle, snap.anonymous_in_use) == (0, 6)
    assert snap.notes == ("NaaP reports 'sd' oversubscribed (available_capacity -2): 0 idle slots",)


def test_capacity_as_go_livepeer_sends_it_empty_addresses_and_prices():
    body = {"orchestrators": [
        {"address": "", "orch_uri": "https://a.example:8935", "price_info": {"pricePerUnit": 7, "pixelsPerUnit": 1},
         "capabilities": {"constraints": {"PerCapability": {"35": {"models": {"sd": {"capacity": 1}}}}}}},
        {"address": "0xABCdef", "orch_uri": "https://b.example:8935",
         "capabilities": {"constraints": {"PerCapability": {"35": {"models": {"sd": {"capacity": 2}}}}}}}]}
    snap = parse_network_capabilities(body, "sd")
    a, b = snap.orchestrators
    assert (a.address, a.key, a.price_per_unit, a.pixels_per_unit) == ("", "https://a.example:8935", 7, 1)
    assert b.address == "0xabcdef" and b.key == "https://b.example:8935"  # lower-cased, as NaaP keys it
    assert snap.notes == ("1 orchestrator(s) have no address (no ticket params): known by service URI only",)


def test_naap_discovery_lists_the_uris_offering_the_model():
    rows = [  # the shape of NaaP's handlers_test.go: one row per orchestrator and pipeline
        {"address": "https://a.example:8935", "score": 0.95, "capabilities": ["live-video-to-video/sd"],
         "last_seen_ms": 1776164007740, "last_seen": "2026-04-14T10:53:27.740Z", "recent_work": True},
        {"address": "https://a.example:8935", "score": 0.88, "capabilities": ["llm/x"], "recent_work": True},
        {"address": "https://b.example:8935", "score": 0.0, "capabilities": ["live-video-to-video/other",
                                                                             "live-video-to-video/sd"]},
        {"address": "https://c.example:8935", "capabilities": ["live-video-to-video/other"]},
        {"address": "", "capabilities": ["live-video-to-video/sd"]},
    ]
    assert parse_naap_discovery(rows, "sd") == ("https://a.example:8935", "https://b.example:8935")
    assert parse_naap_discovery([], "sd") == ()
    with pytest.raises(CapacityError, match="expected a list"):
        parse_naap_discovery({"orchestrators": []}, "sd")
    with pytest.raises(CapacityError, match=r"\[0\].capabilities: expected a list"):
        parse_naap_discovery([{"address": "x", "capabilities": "live-video-to-video/sd"}], "sd")


def test_read_capacity_from_naap_with_discovery_over_http():
    """NaaP's two endpoints served from loopback: slots per model, orchestrators by URI."""
    import http.server
    import threading

    from fleet.runtime.broker import capacity_url, read_capacity
    from fleet.scenario import Scenario

    seen = []

    class NaaP(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            seen.append(self.path)
            body = ([{"model": "sd", "gpu_slots": 8, "active_streams": 2, "available_capacity": 6}]
                    if self.path.startswith("/v1/streaming/models") else
                    [{"address": "https://o1:8935", "capabilities": ["live-video-to-video/sd"]}])
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NaaP)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        sc = Scenario.model_validate({
            "name": "t", "target": {"dialect": "reference", "capacity": {
                "source": "naap", "url": f"{base}/v1/streaming/models",
                "discover_url": f"{base}/v1/discover/orchestrators"}},
            "workflow": {"pipeline": "sd"}, "prompts": {"sets": [{"set": "bootstrap"}]},
            "load": {"shape": "stages", "stages": [{"concurrency": 1, "duration_s": 10}],
                     "session": {"duration": 5}}})
        snap = read_capacity(sc, capacity_url(sc, "http://127.0.0.1:1"))
    finally:
        server.shutdown()
        server.server_close()
    assert snap.idle == 6 and snap.targets == ("https://o1:8935",) and snap.read_unix is not None
    assert "/v1/discover/orchestrators?caps=live-video-to-video%2Fsd" in seen
    assert any("NaaP discovery lists 1 orchestrator" in n for n in snap.notes)



def _scenario(capacity: dict):
    from fleet.scenario import Scenario

    return Scenario.model_validate({
        "name": "t", "target": {"dialect": "livepeer", "url": "https://gw.example:8935", "capacity": capacity},
        "workflow": {"pipeline": "sd"}, "prompts": {"sets": [{"set": "bootstrap"}]},
        "load": {"shape": "stages", "stages": [{"concurrency": 1, "duration_s": 10}], "session": {"duration": 5}}})


def test_the_gateways_capacity_is_read_from_its_cli_address_not_its_media_port():
    """go-livepeer serves /getNetworkCapabilities from its CLI server (server/webserver.go, -cliAddr, default
    127.0.0.1:5935): by default the gateway's host at port 5935; the scenario's URL, the command line's, or
    the local reference gateway's CLI URL when given."""
    from fleet.runtime.broker import capacity_url

    gateway = _scenario({"source": "gateway"})
    assert capacity_url(gateway, "https://gw.example:8935") == "http://gw.example:5935"
    assert capacity_url(gateway, "http://[::1]:8935/") == "http://[::1]:5935"
    assert capacity_url(gateway, "https://gw:8935", local_cli="http://127.0.0.1:41000") == "http://127.0.0.1:41000"
    named = _scenario({"source": "gateway", "url": "http://10.0.0.5:7935"})
    assert capacity_url(named, "https://gw:8935") == "http://10.0.0.5:7935"
    assert capacity_url(named, "https://gw:8935", override="http://127.0.0.1:5936") == "http://127.0.0.1:5936"
    assert capacity_url(_scenario({"source": "static", "slots": 3}), "https://gw:8935") is None


def test_an_unreachable_capacity_source_is_an_error_at_the_scenario_line_that_names_it(tmp_path):
    from fleet.errors import CapacityError
    from fleet.runtime.broker import capacity_url, read_capacity
    from fleet.scenario import load_scenario

    path = tmp_path / "s.yaml"
    path.write_text("name: t\ntarget:\n  dialect: livepeer\n  url: http://127.0.0.1:1\n"
                    "  capacity: {source: gateway, url: 'http://127.0.0.1:1'}\n"
                    "workflow: {pipeline: sd}\nprompts: {sets: [{set: bootstrap}]}\n"
                    "load: {shape: stages, stages: [{concurrency: 1, duration_s: 10}], session: {duration: 5}}\n")
    sc = load_scenario(path)
    with pytest.raises(CapacityError) as err:
        read_capacity(sc, capacity_url(sc, "http://127.0.0.1:1"))
    message = str(err.value)
    assert message.startswith(f"{path.resolve()}:5:") and "target.capacity: cannot read capacity from " \
        "http://127.0.0.1:1/getNetworkCapabilities: ConnectError" in message, message
    assert "-cliAddr" in message and "\n" not in message


_GPUS = st.lists(st.tuples(st.sampled_from(["0", "1"]), st.sampled_from(["RTX 4090", "A100"])), max_size=2)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["", "0xa", "0xb"]), st.sampled_from(["", "https://a", "https://b"]), _GPUS),
                max_size=5),
       st.sampled_from([None, "", "https://a", "https://b", "https://c"]),
       st.sampled_from([None, "", "0xa", "0xb", "0xc"]),
       st.sampled_from([None, "g7"]))
def test_a_rows_gpu_comes_from_the_first_orchestrator_with_gpus_by_url_else_by_address(rows, url, address, gpu_id):
    """``with_gpu`` (through the snapshot's index) fills what a scan of the orchestrators in order fills."""
    from types import SimpleNamespace

    from fleet.results.row import SessionRow
    from fleet.runtime.lifecycle import with_gpu

    snap = CapacitySnapshot("m", tuple(OrchestratorSlots(a, u, 1, 0, tuple(g)) for a, u, g in rows), source="gateway")
    row = SessionRow(session_id="s", outcome="ok", orchestrator_url=url, orchestrator_address=address, gpu_id=gpu_id)
    found = next((o for o in snap.orchestrators if o.gpus and (o.uri == url if url else o.address == address)), None)
    filled = with_gpu(SimpleNamespace(snapshot=snap), row)   # type: ignore[arg-type]  # only its snapshot is read
    if found is None or not (url or address):
        assert filled == row
    else:
        names = {n for _, n in found.gpus}
        assert (filled.gpu_name, filled.gpu_id) == (names.pop() if len(names) == 1 else None,
                                                     gpu_id or (found.gpus[0][0] if len(found.gpus) == 1 else None))

"""The probe against the reference gateway (a subprocess) where go-livepeer 176aa415 says little or nothing:
a stream its auth webhook refused (201, then silence; BYOC: 403) is the tester's configuration, and a BYOC
stream's error is read from BYOC's flat status map.
"""

from __future__ import annotations

import asyncio

import pytest

from fleet.gateway.config import Fault, default_config
from fleet.gateway.process import GatewayProcess
from fleet.probe.session import run_probe
from test_probe import open_streams, run, spec

pytestmark = pytest.mark.slow  # a real gateway and real WebRTC: the full tier


def test_a_stream_the_auth_webhook_refuses_is_the_testers_configuration_in_both_dialects():
    """Live video: 201, the peer closed, no status ever, no output: auth_refused, outside NaaP's startup
    denominator (refused before gateway_receive_stream_request). BYOC: 403 "live ai auth failed" at start.
    The fleet's stream names are fleet_<hex>; its BYOC starts send no stream_name (the key is "")."""
    with GatewayProcess(config=default_config(refused_streams=("fleet_*", ""))) as proc:
        async def main():
            return await asyncio.gather(run_probe(spec(proc.url, ice_timeout_s=3.0)),
                                        run_probe(spec(proc.url, dialect="byoc")))
        live, byoc = run(main())
        for r in (live, byoc):
            assert (r.outcome, r.error_phase, r.error_class, r.excused) == ("failed", "tester", "auth_refused", False), \
                (r.dialect, r.error_phase, r.error_class, r.error_detail)
            assert r.startup_outcome is None and r.frames_received == 0
        assert live.error_detail.startswith("201, then no status for the stream") and "ice_timeout" in live.error_detail
        assert byoc.error_detail == "live ai auth failed: status=403 error=stream key refused"
        assert open_streams(proc.url) == 0


def test_a_byoc_streams_error_is_read_from_its_flat_status():
    """Every orchestrator refuses the job: "no orchestrators available" lands at the top level of BYOC's flat
    status map (no gateway_status there); the probe reads it and skips the session, as for live video."""
    cfg = default_config(faults=(Fault(kind="signaling_error", probability=1.0),))
    with GatewayProcess(config=cfg) as proc:
        r = run(run_probe(spec(proc.url, dialect="byoc")))
        assert (r.outcome, r.error_phase, r.error_class, r.excused) == \
            ("skipped_no_capacity", "capacity", "no_orchestrators_available", True), (r.error_class, r.error_detail)
        assert r.gateway_error == "no orchestrators available" and r.startup_outcome == "excused"
        assert open_streams(proc.url) == 0

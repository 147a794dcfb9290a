"""The probe's reading of BYOC's flat status and its rule for a stream the auth webhook refused, on exact
bodies and answers (httpx's MockTransport stands in for a gateway), without WebRTC.

go-livepeer 176aa415: BYOC keeps one flat map per stream in ``StreamStatusStore`` (byoc/stream_gateway.go
``StoreKey`` of ``whep_url``, ``orchestrator``, ``ingest_metrics``; byoc/trickle.go ``Store`` of each runner
report, ``StoreIfNotExists`` of ``error``); the live-video auth webhook's refusal is 201 and no status
(server/ai_mediaserver.go ``CreateWhip``), BYOC's is 403 "live ai auth failed: …" (``setupStream``).
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from fleet.errors import ProbeFailure
from fleet.probe.adapters import ByocAdapter, byoc_status_view, gateway_error
from fleet.probe.classify import AUTH_REFUSED_DETAIL, blame
from fleet.probe.status import StatusReader
from fleet.probe.types import ProbeResult

TRACK = {"type": "video", "latency": 0.2, "jitter": 3.5, "packet_loss_pct": 0.5, "rtt": 0}
METRICS = {"stats": {"conn_quality": "good", "track_stats": [TRACK]}}
ERROR = {"error_message": "no orchestrators available", "error_time": 1_700_000_000_000}
# the runner's report as go-livepeer stores it (the event plus stream_id, request_id, pipeline_id, orchestrator_info)
REPORT = {"type": "status", "state": "ONLINE", "start_time": 1_700_000_000_000, "input_status": {"fps": 20.0},
          "inference_status": {"fps": 19.5, "restart_count": 0}, "stream_id": "s1", "request_id": "r1",
          "pipeline_id": "", "orchestrator_info": {"address": "0xABC", "url": "https://o1:8935"}}


def reader() -> tuple[ProbeResult, StatusReader]:
    r = ProbeResult("s1", "byoc", "http://gw")
    return r, StatusReader(r, lambda kind, **data: None)


def test_byocs_flat_gateway_keys_are_read_as_the_live_video_shape():
    flat = {"whep_url": "http://mtx/s1-r1-out/whep", "orchestrator": "https://o1:8935", "ingest_metrics": METRICS,
            "error": ERROR}
    view = byoc_status_view(flat)
    assert view == {"gateway_status": flat}
    assert gateway_error(view) == "no orchestrators available" and gateway_error(flat) is None  # the flat map as is
    r, st = reader()
    st.read(view, 1.0)
    assert r.gateway_error == "no orchestrators available"
    assert (r.gateway_ingest_latency_s, r.gateway_ingest_jitter_ms, r.gateway_conn_quality) == (0.2, 3.5, "good")
    assert r.gateway_state is None and not r.reasons and st.seen


def test_a_runner_report_in_the_flat_map_is_read_with_what_was_stored_after_it():
    view = byoc_status_view({**REPORT, "ingest_metrics": METRICS})   # a stats tick after the report
    assert view["gateway_status"] == {"ingest_metrics": METRICS} and view["state"] == "ONLINE"
    r, st = reader()
    st.read(view, 2.0)
    assert (r.gateway_state, r.request_id, r.orchestrator_address, r.orchestrator_url) == \
        ("ONLINE", "r1", "0xabc", "https://o1:8935")
    assert r.gateway_ingest_jitter_ms == 3.5 and r.gateway_error is None and not r.reasons
    assert byoc_status_view(["not", "a", "map"]) == ["not", "a", "map"]  # left for the reader to report


def test_the_byoc_adapter_reads_its_status_flat_and_a_403_from_the_webhook_is_auth_refused():
    seen: list[str] = []

    def gateway(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path}")
        if request.url.path == "/process/stream/start":
            refused = json.loads(request.content)["stream_id"] == "refused"
            if refused:
                return httpx.Response(403, text="live ai auth failed: status=403 error=stream key refused\n")
            return httpx.Response(200, json={"stream_id": "ok", "whip_url": "/process/stream/ok/whip",
                                             "whep_url": "http://mtx/ok-r1-out/whep", "update_url": "",
                                             "status_url": "http://gw/process/stream/ok/status", "stop_url": ""})
        if request.url.path.endswith("/whip"):
            return httpx.Response(201, text="v=0\r\n", headers={"Location": "/x"})
        return httpx.Response(200, json={"whep_url": "http://mtx/ok-r1-out/whep", "error": ERROR})

    async def main() -> tuple:
        async with httpx.AsyncClient(transport=httpx.MockTransport(gateway)) as client:
            refused = ByocAdapter("http://gw", "streamdiffusion")
            refused.name = "refused"
            with pytest.raises(ProbeFailure) as info:
                await refused.start(client, "v=0", {})
            taken = ByocAdapter("http://gw", "streamdiffusion")
            await taken.start(client, "v=0", {})
            return info.value, await taken.status(client)

    failure, status = asyncio.run(main())
    assert (failure.phase, failure.error, failure.skipped, failure.excused) == ("tester", "auth_refused", False, False)
    assert failure.detail == "live ai auth failed: status=403 error=stream key refused"
    assert status == {"gateway_status": {"whep_url": "http://mtx/ok-r1-out/whep", "error": ERROR}}
    assert gateway_error(status) == "no orchestrators available" and "GET /process/stream/ok/status" in seen


def early_end(dialect: str = "livepeer", **kw) -> ProbeResult:
    return ProbeResult("s1", dialect, "http://gw", outcome="failed", error_phase="ice", error_class="ice_timeout",
                       error_detail="not within 5 s", **kw)


def test_201_then_no_status_ever_and_no_output_is_the_tester_refused_by_the_auth_webhook():
    r = early_end()
    blame(r, None, status_seen=False, output_seen=False, said_no_status=True)
    assert (r.outcome, r.error_phase, r.error_class, r.excused) == ("failed", "tester", "auth_refused", False)
    assert r.error_detail == f"{AUTH_REFUSED_DETAIL} (then ice_timeout: not within 5 s)"


@pytest.mark.parametrize(("status_seen", "output_seen"), [(True, False), (False, True), (True, True)])
def test_a_status_or_any_output_means_the_gateway_took_the_stream(status_seen, output_seen):
    r = early_end()
    blame(r, None, status_seen=status_seen, output_seen=output_seen)
    assert (r.outcome, r.error_phase, r.error_class, r.error_detail) == ("failed", "ice", "ice_timeout", "not within 5 s")


@pytest.mark.parametrize(("dialect", "said_no_status"), [("livepeer", False), ("daydream", True), ("byoc", True)])
def test_only_a_livepeer_gateway_saying_it_keeps_no_status_is_the_auth_webhook(dialect, said_no_status):
    """A status that could not be read (unreachable, a 502) says nothing of the stream; Daydream's auth is its
    bearer token at create and BYOC's its 403: neither is read from a missing status."""
    r = early_end(dialect)
    blame(r, None, status_seen=False, output_seen=False, said_no_status=said_no_status)
    assert (r.outcome, r.error_phase, r.error_class, r.error_detail) == ("failed", "ice", "ice_timeout", "not within 5 s")


def test_no_orchestrators_after_output_is_an_excused_failure_not_a_capacity_skip():
    """A swap that found no orchestrator ends a session that ran: it stays counted, excused (RULE-LIFECYCLE-004),
    and is no refusal of the orchestrator that served it."""
    r = early_end()
    blame(r, "no orchestrators available", status_seen=True, output_seen=True)
    assert (r.outcome, r.error_phase, r.error_class, r.excused) == \
        ("failed", "capacity", "no_orchestrators_available", True)


def test_the_gateways_own_error_still_decides_when_there_is_one():
    r = early_end()
    blame(r, "no orchestrators available", status_seen=False, output_seen=False)
    assert (r.outcome, r.error_phase, r.error_class, r.excused) == \
        ("skipped_no_capacity", "capacity", "no_orchestrators_available", True)


@pytest.mark.parametrize(("code", "said"), [(404, True), (502, False), (500, False)])
def test_only_a_404_to_a_status_read_says_the_gateway_keeps_no_status(code, said):
    from fleet.probe.adapters import LivepeerAdapter

    async def main() -> tuple:
        transport = httpx.MockTransport(lambda request: httpx.Response(code, text="Stream not found"))
        async with httpx.AsyncClient(transport=transport) as client:
            adapter = LivepeerAdapter("http://gw", "streamdiffusion")
            return await adapter.status(client), adapter.said_no_status

    assert asyncio.run(main()) == (None, said)


def test_every_status_read_is_a_fresh_get_with_the_sessions_headers_on_the_client_it_is_given():
    """The status read's request is built once and sent again (``Adapter._status_request``): each read must
    still reach the gateway as its own GET, with the User-Agent and the token, and get that read's body;
    another client gets it too, a new status URL is read from then on, and cookies the gateway sets reach
    the reads after."""
    from fleet.probe.adapters import USER_AGENT, DaydreamAdapter

    seen: list[tuple[str, str, str, str, str]] = []

    def gateway(name: str):
        def answer(request: httpx.Request) -> httpx.Response:
            assert request.headers["User-Agent"] == USER_AGENT
            assert request.headers["X-Client"] == name  # built on the client that sends it
            seen.append((name, request.method, str(request.url), request.headers.get("Authorization", ""),
                         request.headers.get("Cookie", "")))
            cookie = {"Set-Cookie": f"lb=n{len(seen)}"} if name == "c" else {}
            return httpx.Response(200, json={"data": {"read": len(seen)}}, headers=cookie)
        return answer

    async def main() -> tuple[str, list]:
        adapter = DaydreamAdapter("http://gw", "streamdiffusion", token="tok-1")
        first = adapter.name
        bodies = []
        def client(name: str) -> httpx.AsyncClient:
            return httpx.AsyncClient(transport=httpx.MockTransport(gateway(name)), headers={"X-Client": name})

        async with client("a") as a, client("b") as b, client("c") as c:
            for reader in (a, a, a, b, a):
                bodies.append(await adapter.status(reader))
            adapter.name = "fleet_renamed"  # as Daydream's create names the stream
            for reader in (a, c, c, c):
                bodies.append(await adapter.status(reader))
        return first, bodies

    first, bodies = asyncio.run(main())
    assert bodies == [{"read": k} for k in range(1, 10)]
    old, new = (f"http://gw/v1/streams/{name}/status" for name in (first, "fleet_renamed"))
    assert seen == [(c, "GET", old, "Bearer tok-1", "") for c in "aaaba"] + [
        ("a", "GET", new, "Bearer tok-1", ""), ("c", "GET", new, "Bearer tok-1", ""),
        ("c", "GET", new, "Bearer tok-1", "lb=n7"), ("c", "GET", new, "Bearer tok-1", "lb=n8")]


@pytest.mark.parametrize(("raised", "error"), [(httpx.ReadTimeout, "timeout"), (httpx.ConnectError, "http_transport")])
def test_an_http_failure_names_the_method_and_the_url_without_its_query_or_credentials(raised, error):
    from fleet.probe.adapters import LivepeerAdapter

    def refuse(request: httpx.Request) -> httpx.Response:
        raise raised("refused", request=request)

    async def main() -> tuple[str, list[ProbeFailure]]:
        adapter = LivepeerAdapter("http://user:secret-pw@gw", "streamdiffusion", token="secret-token")
        failures = []
        async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as client:
            for call in (lambda: adapter.start(client, "v=0", {"prompt": "secret-prompt"}),
                         lambda: adapter.update(client, {"prompt": "x"}), lambda: adapter.status(client)):
                with pytest.raises(ProbeFailure) as info:
                    await call()
                failures.append(info.value)
        return adapter.name, failures

    name, (start, update, status) = asyncio.run(main())
    tail = "" if error == "timeout" else ": ConnectError"  # the start's URL carried the params in its query
    assert (start.phase, start.error, start.detail) == (
        "signaling", error, f"POST http://gw/live/video-to-video/{name}/whip{tail}")
    assert (update.phase, update.error, update.detail) == (
        "pipeline", error, f"POST http://gw/live/video-to-video/{name}/update{tail}")
    assert (status.phase, status.error, status.detail) == (
        "pipeline", error, f"GET http://gw/live/video-to-video/{name}/status{tail}")
    assert "secret" not in str(start) + str(update) + str(status)

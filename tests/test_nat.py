"""A tester behind NAT reaches the gateway's media only through a TURN server, and says so in its row.

Two network namespaces the test creates, joined by one veth pair, every address from the benchmarking
range 198.18.0.0/15 and every one inside those namespaces: the machine's own namespace gets no address,
no route and no interface, and neither namespace has a default route, so nothing leaves the machine.

    gateway ns  veth  198.18.0.1/30  the gateway's HTTP (signalling) and coturn's listener: the TURN host
                lo    198.19.0.1/32  the gateway's media (its ICE host candidates, go-livepeer's
                                     LIVE_AI_WHIP_ADDR apart from its HTTP address) and coturn's relays
    runner ns   veth  198.18.0.2/30  the probe; its only route is the veth's /30

The probe signals to the gateway directly but no packet of it can reach a media address of the gateway:
ICE succeeds only on coturn's relay (Debian's ``coturn``, long-term credentials from environment variables
the scenario names). The probe runs as a campaign's runner does (``RegionRunner``, tests/interop/nat_probe.py)
inside the runner namespace. Needs root, ``ip`` (iproute2) and ``turnserver`` (coturn): without them the
test skips, and fails when ``FLEET_REQUIRE_INTEROP`` is set (.ci/run installs them).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fleet.gateway.config import default_config
from fleet.gateway.process import GatewayProcess
from fleet.results.row import SessionRow
from fleet.results.sink import ParquetSink, read_sessions
from services import unavailable

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
NAT_PROBE = REPO / "tests" / "interop" / "nat_probe.py"
TURNSERVER = os.environ.get("FLEET_TURNSERVER", "/usr/bin/turnserver")
TURN_HOST, RUNNER, MEDIA, PREFIX = "198.18.0.1", "198.18.0.2", "198.19.0.1", 30
TURN_PORT = 3478
USER_ENV, CREDENTIAL_ENV = "FLEET_NAT_TURN_USER", "FLEET_NAT_TURN_CREDENTIAL"
SESSION_S = 6.0
PROBE_TIMEOUT_S = 120.0    # the probe process: imports, clip encoding, the session and its teardown
READY_TIMEOUT_S = 15.0     # coturn listening
STOP_TIMEOUT_S = 10.0


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def netns_exec(ns: str) -> list[str]:
    return ["ip", "netns", "exec", ns]


@dataclass
class NatNetwork:
    """The two namespaces, coturn and the gateway; ``close`` removes all of it, whatever was made."""

    tmp: Path
    gw_ns: str = f"fleet-nat-gw-{os.getpid()}"
    run_ns: str = f"fleet-nat-run-{os.getpid()}"
    user: str = "fleet-nat"
    credential: str = field(default_factory=lambda: secrets.token_hex(16))
    turn: subprocess.Popen[bytes] | None = None
    gateway: GatewayProcess | None = None

    def build(self) -> None:
        veth_gw, veth_run = f"vg{os.getpid()}", f"vr{os.getpid()}"
        ip("netns", "add", self.gw_ns)
        ip("netns", "add", self.run_ns)
        ip("link", "add", veth_gw, "netns", self.gw_ns, "type", "veth", "peer", "name", veth_run, "netns", self.run_ns)
        for ns, dev, addr in ((self.gw_ns, veth_gw, TURN_HOST), (self.run_ns, veth_run, RUNNER)):
            ip("-n", ns, "addr", "add", f"{addr}/{PREFIX}", "dev", dev)
            ip("-n", ns, "link", "set", dev, "up")
            ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", self.gw_ns, "addr", "add", f"{MEDIA}/32", "dev", "lo")

    def start_turn(self) -> None:
        conf = self.tmp / "turnserver.conf"
        conf.write_text("\n".join([
            f"listening-ip={TURN_HOST}", f"listening-port={TURN_PORT}", f"relay-ip={MEDIA}",
            "min-port=49160", "max-port=49260", "lt-cred-mech", f"user={self.user}:{self.credential}",
            "realm=fleet.test", "fingerprint", "no-tls", "no-dtls", "no-tcp-relay", "no-cli", "no-multicast-peers",
            f"log-file={self.tmp / 'turnserver.log'}", "simple-log", f"pidfile={self.tmp / 'turnserver.pid'}", ""]))
        self.turn = subprocess.Popen([*netns_exec(self.gw_ns), TURNSERVER, "-c", str(conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while f"{TURN_HOST}:{TURN_PORT}" not in ip("netns", "exec", self.gw_ns, "ss", "-Hlun").stdout:
            if self.turn.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"coturn did not listen on {TURN_HOST}:{TURN_PORT}: "
                            f"{(self.tmp / 'turnserver.log').read_text(errors='replace')[-2000:]}")
            time.sleep(0.1)  # polling its socket, with the deadline above

    def start_gateway(self) -> str:
        config = default_config(media_host=MEDIA)
        config = config.model_copy(update={"profiles": {
            name: p.model_copy(update={"cold_start_s": 0.0}) for name, p in config.profiles.items()}})
        self.gateway = GatewayProcess(config=config, host=TURN_HOST, port=0)
        self.gateway.args = [*netns_exec(self.gw_ns), *self.gateway.args]
        self.gateway.__enter__()
        assert self.gateway.url is not None
        return self.gateway.url

    def close(self) -> None:
        if self.gateway is not None:
            self.gateway.__exit__(None, None, None)
        if self.turn is not None and self.turn.poll() is None:
            self.turn.terminate()
            try:
                self.turn.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.turn.kill()
                self.turn.wait(STOP_TIMEOUT_S)
        for ns in (self.run_ns, self.gw_ns):  # the veth pair goes with them
            ip("netns", "del", ns, check=False)
        left = ip("netns", "list").stdout
        assert self.gw_ns not in left and self.run_ns not in left, left


def require_namespaces() -> None:
    if os.geteuid() != 0:
        unavailable("network namespaces need root")
    if shutil.which("ip") is None:
        unavailable("`ip` is missing (apt-get install iproute2)")
    if not os.access(TURNSERVER, os.X_OK):
        unavailable(f"{TURNSERVER} is missing (apt-get install coturn)")


@pytest.fixture(scope="module")
def nat(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NatNetwork, str]]:
    require_namespaces()
    net = NatNetwork(tmp_path_factory.mktemp("nat"))
    try:
        try:
            net.build()
        except subprocess.CalledProcessError as exc:
            unavailable(f"cannot make network namespaces here: {' '.join(exc.cmd)}: {exc.stderr.strip()}")
        net.start_turn()
        yield net, net.start_gateway()
    finally:
        net.close()


def write_scenario(path: Path, gateway_url: str, turn: bool) -> Path:
    ice = {"servers": [{"urls": f"turn:{TURN_HOST}:{TURN_PORT}?transport=udp", "username_env": USER_ENV,
                        "credential_env": CREDENTIAL_ENV}] if turn else [], "use_gateway_servers": False}
    scenario = {
        "name": "behind-nat", "target": {"dialect": "livepeer", "url": gateway_url, "ice": ice},
        # loose thresholds: the outcome says the session ran, not how fast a shared two-core machine is
        "workflow": {"pipeline": "streamdiffusion", "thresholds": {
            "max_startup_s": 30, "min_output_fps": 1, "max_jitter_coeff": 10, "max_g2g_latency_ms": 10000,
            "max_freeze_s": 10}},
        "media": {"source": "synthetic", "width": 256, "height": 256},
        "prompts": {"sets": [{"set": "bootstrap"}]},
        "load": {"shape": "stages", "stages": [{"concurrency": 1, "duration_s": 10}]},
    }
    path.write_text(json.dumps(scenario))  # JSON is YAML
    return path


def probe_behind_nat(net: NatNetwork, scenario: Path, gateway_url: str) -> tuple[dict, str]:
    """One session in the runner namespace: its row, and everything the process printed."""
    env = {**os.environ, USER_ENV: net.user, CREDENTIAL_ENV: net.credential, "PYTHONPATH": str(REPO)}
    env.pop("FLEET_ICE_ADDRESSES", None)   # every address of the namespace: its veth only
    done = subprocess.run([*netns_exec(net.run_ns), sys.executable, str(NAT_PROBE), str(scenario), gateway_url,
                           str(SESSION_S)], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=PROBE_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stdout + done.stderr


def test_the_runner_namespace_routes_only_to_the_turn_host(nat):
    net, _ = nat
    routes = ip("-n", net.run_ns, "route", "show").stdout.splitlines()
    assert [r.split()[0] for r in routes] == ["198.18.0.0/30"], routes   # no default route
    assert ip("-n", net.run_ns, "route", "get", MEDIA, check=False).returncode != 0   # the gateway's media
    assert ip("-n", net.run_ns, "route", "get", "1.1.1.1", check=False).returncode != 0   # the world
    assert ip("-n", net.run_ns, "route", "get", TURN_HOST).returncode == 0


def test_a_session_behind_nat_completes_on_the_turn_relay_and_records_it(nat, tmp_path):
    net, url = nat
    row, printed = probe_behind_nat(net, write_scenario(tmp_path / "nat.yaml", url, turn=True), url)
    assert (row["outcome"], row["error_class"], row["error_detail"]) == ("ok", None, None)
    assert row["frames_received"] > 0 and row["frames_sent"] > 0
    # the tester's side of both connections is coturn's relay; the gateway's is its own host address
    assert (row["ice_local_candidate"], row["ice_remote_candidate"]) == ("relay", "host")
    assert (row["egress_ice_local_candidate"], row["egress_ice_remote_candidate"]) == ("relay", "host")
    assert net.credential not in printed   # the secret is in no row, log or error
    sink = ParquetSink(tmp_path / "results", "nat", {})
    sink.write([SessionRow.from_record({**row, "started_at": dt.datetime.fromisoformat(row["started_at"])})])
    stored = read_sessions(sink.dir).to_pylist()
    assert [(s["ice_local_candidate"], s["egress_ice_local_candidate"]) for s in stored] == [("relay", "relay")]


def test_without_the_turn_server_the_same_runner_cannot_connect(nat, tmp_path):
    """The control: the layout, not the probe's preference, is what puts the session on the relay."""
    net, url = nat
    row, _ = probe_behind_nat(net, write_scenario(tmp_path / "direct.yaml", url, turn=False), url)
    # ICE never connects; the gateway gives up on the video first (go-livepeer's 5 s gather timeout) and the
    # probe, at its own ICE deadline, takes the gateway's reason, as it would from go-livepeer
    assert (row["outcome"], row["error_class"], row["gateway_error"]) == ("failed", "missing_video", "missing video")
    assert row["ice_ms"] is None and row["ice_local_candidate"] is None and row["frames_received"] == 0


def test_the_selected_pair_is_read_from_a_live_connection_and_forgotten_after_close():
    """``selected_candidate_types`` on loopback, no TURN: host to host while connected, nothing after."""
    from fleet.webrtc import new_peer_connection, selected_candidate_types, use_host_addresses

    use_host_addresses(["127.0.0.1"])

    async def pair() -> tuple[tuple, tuple, tuple]:
        a, b = new_peer_connection(), new_peer_connection()
        connected = asyncio.Event()
        a.on("iceconnectionstatechange", lambda: a.iceConnectionState == "completed" and connected.set())
        a.addTransceiver("video", direction="recvonly")
        before = selected_candidate_types(a)
        await a.setLocalDescription(await a.createOffer())
        await b.setRemoteDescription(a.localDescription)
        await b.setLocalDescription(await b.createAnswer())
        await a.setRemoteDescription(b.localDescription)
        await asyncio.wait_for(connected.wait(), 10)
        during = selected_candidate_types(a)
        await a.close()
        await b.close()
        return before, during, selected_candidate_types(a)

    assert asyncio.run(pair()) == ((None, None), ("host", "host"), (None, None))

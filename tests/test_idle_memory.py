"""After a burst of large requests, the real `lookalike serve` gives the memory back once idle."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from lookalike.client import LookalikeClient
from tests.conftest import corpus_photos
from tests.processes import ServerProcess, end_leftovers

CHECKS = 24
"""At once, each of a 30 MiB image: on fd25e5f the idle server process then kept 930 MiB more than at
its start (133 → 1063 MiB), a worker 90 MiB more (71 → 162); with the fix each stays within a few MiB."""
IMAGE_BYTES = 30 * 1024 * 1024
SERVER_BOUND_KIB = 64 * 1024
WORKER_BOUND_KIB = 40 * 1024
SETTLE_S = 15.0


@pytest.fixture(autouse=True)
def no_server_left_behind() -> Iterator[None]:
    yield
    end_leftovers()


def large_image() -> bytes:
    """A photo padded with zeros after its end marker: the server receives, hashes and hands a worker
    every byte, while decoding stays quick, so the test's time goes to the bytes."""
    buffer = io.BytesIO()
    Image.open(corpus_photos()[0]).convert("RGB").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue() + bytes(IMAGE_BYTES - buffer.tell())


def settled(server: ServerProcess, bounds: dict[int, int]) -> dict[int, int]:
    """Each process's anonymous RSS once all are within their bounds, or as it is after `SETTLE_S`."""
    deadline = time.monotonic() + SETTLE_S
    while True:
        now = server.anonymous_rss_kib_by_pid()
        if all(now.get(pid, 0) <= bound for pid, bound in bounds.items()) or time.monotonic() > deadline:
            return now
        time.sleep(0.5)


def test_idle_memory_returns_near_its_start_after_concurrent_large_checks(tmp_path: Path) -> None:
    image = large_image()  # first: without the corpus the test skips before a server starts
    server = ServerProcess(tmp_path / "data")
    try:
        server.client.create_list("big")
        assert server.client.check(image, ["big"]).decision == "accept"  # models loaded, buffers made once
        time.sleep(3)  # idle, as it will be after the burst
        start = server.anonymous_rss_kib_by_pid()
        with ThreadPoolExecutor(CHECKS) as pool:
            clients = [LookalikeClient(server.address) for _ in range(CHECKS)]
            decisions = list(pool.map(lambda client: client.check(image, ["big"]).decision, clients))
            for client in clients:
                client.close()
        assert decisions == ["accept"] * CHECKS
        peak = server.anonymous_rss_kib_by_pid()
        bounds = {
            pid: kib + (SERVER_BOUND_KIB if pid == server.process.pid else WORKER_BOUND_KIB)
            for pid, kib in start.items()
        }
        idle = settled(server, bounds)

        def report(pid: int) -> str:
            return f"{start[pid] // 1024} → {peak.get(pid, 0) // 1024} → {idle.get(pid, 0) // 1024} MiB"

        assert idle[server.process.pid] <= bounds[server.process.pid], f"server: {report(server.process.pid)}"
        for pid in start:
            assert idle.get(pid, 0) <= bounds[pid], f"worker {pid}: {report(pid)}"
    finally:
        assert server.stop() == 0

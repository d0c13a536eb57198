"""Acknowledged adds and removes survive SIGTERM and SIGKILL of a real `lookalike serve` process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from client import LookalikeClient
from tests.conftest import distinct_photos, jpeg_bytes

LOOKALIKE = Path(sys.executable).parent / "lookalike"


class ServerProcess:
    """`lookalike serve` in its own process, on a free loopback port."""

    def __init__(self, data: Path) -> None:
        self.log = data.parent / f"serve-{time.monotonic_ns()}.log"
        self._log_file = self.log.open("w")
        self.process = subprocess.Popen(
            [str(LOOKALIKE), "serve", "--data", str(data), "--listen", "127.0.0.1:0", "--grace", "2"],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, "LOOKALIKE_SNAPSHOT_INTERVAL": "3600"},
        )
        self.port = self._wait_for_port()
        self.client = LookalikeClient(f"127.0.0.1:{self.port}")

    def _wait_for_port(self) -> int:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = re.search(r"\(port (\d+)\)", self.log.read_text())
            if found:
                return int(found.group(1))
            if self.process.poll() is not None:
                raise AssertionError(f"server exited: {self.log.read_text()}")
            time.sleep(0.1)
        raise AssertionError(f"server did not start: {self.log.read_text()}")

    def stop(self, signum: int) -> int:
        self.client.close()
        self.process.send_signal(signum)
        code = self.process.wait(timeout=30)
        self._log_file.close()
        return code


@pytest.fixture
def data(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "data"


def edit_of(path: Path) -> bytes:
    from PIL import Image

    with Image.open(path) as image:
        small = image.convert("RGB").resize((image.width * 2 // 3, image.height * 2 // 3))
    return jpeg_bytes(small, quality=60)


@pytest.mark.slow
def test_sigkill_loses_no_acknowledged_change_and_sigterm_snapshots(data: Path) -> None:
    photos = distinct_photos(8, seed=3)
    server = ServerProcess(data)
    server.client.create_list("banned")
    kept = [server.client.add("banned", path).id for path in photos[:4]]
    assert server.stop(signal.SIGTERM) == 0
    assert "index snapshots written" in server.log.read_text()

    server = ServerProcess(data)
    assert server.client.get_list("banned").entry_count == 4
    later = [server.client.add("banned", path).id for path in photos[4:]]
    server.client.remove("banned", kept[0])
    server.client.remove("banned", later[0])
    server.stop(signal.SIGKILL)  # no snapshot: the restart must replay the change log

    server = ServerProcess(data)
    try:
        assert server.client.get_list("banned").entry_count == 6
        ids = kept + later
        for position, path in enumerate(photos):
            result = server.client.check(edit_of(path), ["banned"])
            if position in (0, 4):
                assert result.decision == "accept", (path.name, result.matches[:1])
            else:
                assert result.decision in ("reject", "review"), (path.name, result.matches[:1])
                assert result.matches[0].id == ids[position]
    finally:
        assert server.stop(signal.SIGTERM) == 0

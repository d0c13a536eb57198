"""`lookalike serve` as a real subprocess, for tests that kill it or watch its memory."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from client import LookalikeClient

LOOKALIKE = Path(sys.executable).parent / "lookalike"


class ServerProcess:
    """`lookalike serve` on a free loopback port, its log in a file beside the data folder."""

    def __init__(self, data: Path, *flags: str) -> None:
        self.log = data.parent / f"serve-{time.monotonic_ns()}.log"
        self._log_file = self.log.open("w")
        self.process = subprocess.Popen(
            [str(LOOKALIKE), "serve", "--data", str(data), "--listen", "127.0.0.1:0", "--grace", "2", *flags],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=os.environ.copy(),
        )
        self.port = self._wait_for_port()
        self.address = f"127.0.0.1:{self.port}"
        self.client = LookalikeClient(self.address)

    def _wait_for_port(self) -> int:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            found = re.search(r"\(port (\d+)\)", self.log.read_text())
            if found:
                return int(found.group(1))
            if self.process.poll() is not None:
                raise AssertionError(f"server exited: {self.log.read_text()}")
            time.sleep(0.1)
        raise AssertionError(f"server did not start: {self.log.read_text()}")

    def anonymous_rss_kib(self) -> int:
        """Resident memory the process allocated itself (heap, arenas), leaving out the mapped
        LMDB file and shared libraries, whose pages come and go with the page cache."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        found = re.search(r"^RssAnon:\s+(\d+) kB", status, re.MULTILINE)
        assert found, status
        return int(found.group(1))

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a power cut or an OOM kill."""
        self.process.send_signal(signal.SIGKILL)
        assert self.process.wait(timeout=30) == -signal.SIGKILL
        self.client.close()
        self._log_file.close()

    def stop(self) -> int:
        """SIGTERM: graceful shutdown; returns the exit code."""
        self.client.close()
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=60)
        self._log_file.close()
        return code

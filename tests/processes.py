"""The real `lookalike` command in subprocesses: `serve`, for tests that kill it or watch its memory,
and client commands with `--json` output."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from lookalike.client import LookalikeClient

LOOKALIKE = Path(sys.executable).parent / "lookalike"
_started: list[ServerProcess] = []


def json_cli(address: str, *args: str, key: str = "", check: bool = False) -> tuple[int, list[dict[str, Any]]]:
    """Run `lookalike ARGS --json` against the server at `address` (with API key `key`); its exit code
    and the JSON lines it printed. `check`: a non-zero exit raises CalledProcessError."""
    env = {**os.environ, "LOOKALIKE_SERVER": address} | ({"LOOKALIKE_API_KEY": key} if key else {})
    completed = subprocess.run(
        [str(LOOKALIKE), *args, "--json"], capture_output=True, text=True, timeout=120, env=env, check=check
    )
    return completed.returncode, [json.loads(line) for line in completed.stdout.splitlines() if line.strip()]


def end_leftovers() -> None:
    """Stop every server a test started and left running (it failed midway): SIGTERM, then
    SIGKILL for the whole tree, so no server or worker outlives the test session."""
    while _started:
        server = _started.pop()
        if server.process.poll() is not None:
            continue
        tree = server.tree()
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            for pid in tree:
                if _running(pid):
                    os.kill(pid, signal.SIGKILL)


class ServerProcess:
    """`lookalike serve` on a free loopback port, its log in a file beside the data folder."""

    def __init__(self, data: Path, *flags: str, relay_log: bool = False) -> None:
        """`relay_log`: the server logs into a pipe that a thread here copies to the log file, so that its
        log is kept while the server's own writes to files fail (under a file size limit, say)."""
        self.log = data.parent / f"serve-{time.monotonic_ns()}.log"
        self._log_file = self.log.open("w")
        self.process = subprocess.Popen(
            [str(LOOKALIKE), "serve", "--data", str(data), "--listen", "127.0.0.1:0", "--http-listen", "off"]
            + ["--grace", "2", *flags],
            stdout=subprocess.PIPE if relay_log else self._log_file,
            stderr=subprocess.STDOUT,
            env=os.environ.copy(),
        )
        self._relay: threading.Thread | None = None
        if self.process.stdout is not None:
            self._relay = threading.Thread(target=self._copy_log, args=(self.process.stdout,), daemon=True)
            self._relay.start()
        _started.append(self)
        self.port = self._wait_for_port()
        self.address = f"127.0.0.1:{self.port}"
        self.client = LookalikeClient(self.address)

    def _copy_log(self, pipe: IO[bytes]) -> None:
        for line in iter(pipe.readline, b""):
            self._log_file.write(line.decode(errors="replace"))
            self._log_file.flush()

    def _close_log(self) -> None:
        if self._relay is not None and self.process.stdout is not None:
            self._relay.join(timeout=30)
            self.process.stdout.close()
        self._log_file.close()

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

    def tree(self) -> list[int]:
        """The server's pid and those of its descendants (fingerprint workers and their helpers)."""
        return [self.process.pid, *descendants(self.process.pid)]

    def anonymous_rss_kib(self) -> int:
        """Resident memory the server and its workers allocated themselves (heap, arenas), leaving
        out the mapped LMDB file and shared libraries, whose pages come and go with the page cache."""
        return sum(self.anonymous_rss_kib_by_pid().values())

    def anonymous_rss_kib_by_pid(self) -> dict[int, int]:
        """`anonymous_rss_kib` of each process: the server's pid first, then its workers'."""
        found: dict[int, int] = {}
        for pid in self.tree():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue  # ended between listing and reading
            rss = re.search(r"^RssAnon:\s+(\d+) kB", status, re.MULTILINE)
            found[pid] = int(rss.group(1)) if rss else 0
        return found

    def kill(self) -> None:
        """SIGKILL the server alone, as the kernel's OOM killer or `kill -9` would: no shutdown code
        runs. Its worker processes must then end by themselves; any still running after a grace
        period would pile up with every crash, so they fail the test (and are ended)."""
        workers = descendants(self.process.pid)
        self.process.send_signal(signal.SIGKILL)
        assert self.process.wait(timeout=30) == -signal.SIGKILL
        self.client.close()
        self._close_log()
        deadline = time.monotonic() + 20
        while (alive := [pid for pid in workers if _running(pid)]) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in alive:
            os.kill(pid, signal.SIGKILL)
        assert not alive, f"{len(alive)} worker processes outlived the killed server"

    def stop(self) -> int:
        """SIGTERM: graceful shutdown; returns the exit code."""
        self.client.close()
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()  # the server dumped its threads' stacks into the log first (SHUTDOWN_DUMP_SECONDS)
            self.process.wait()
            self._close_log()
            raise AssertionError(f"the server did not stop within 60 s of SIGTERM:\n{self.log.read_text()}") from None
        self._close_log()
        return code


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, from /proc (which lists each process's parent)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found: list[int] = []
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, of in parents.items() if of == parent]
        found += children
        frontier += children
    return found


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting for its parent to collect it."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return False
    return fields[0] != "Z"

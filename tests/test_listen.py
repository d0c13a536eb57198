"""A server owns its address: a second one on a taken port (or unix socket) refuses to start,
in one line and leaving nothing behind, instead of sharing the port and answering half the calls
from an empty, keyless server that accepts everything."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from lookalike.client import LookalikeClient
from lookalike.client.errors import FailedPrecondition
from tests.conftest import ServerHandle, start_server
from tests.processes import LOOKALIKE, ServerProcess, descendants, end_leftovers

IN_USE = "the address is in use (is another lookalike serve running? choose another {flag})"


@pytest.fixture(autouse=True)
def no_server_left_behind() -> Iterator[None]:
    yield
    end_leftovers()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def worker_processes() -> list[int]:
    """This process's fingerprint workers (spawned children; multiprocessing's resource tracker aside)."""
    found = []
    for pid in descendants(os.getpid()):
        try:
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            continue  # ended meanwhile
    return found


def failed_serve(data: Path, *flags: str) -> str:
    """Run `lookalike serve`, which must exit non-zero within a minute; what it printed."""
    process = subprocess.Popen(
        [str(LOOKALIKE), "serve", "--data", str(data), "--workers", "0", "--http-listen", "off", *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise AssertionError("the second server started (it shares the port) instead of exiting") from None
    assert process.returncode != 0, output
    assert "Traceback" not in output, output
    return output


def test_a_second_serve_on_a_taken_port_exits_and_every_call_reaches_the_first(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    first = ServerProcess(tmp_path / "first", "--listen", address, "--workers", "0")
    first.client.create_list("only-on-the-first")

    output = failed_serve(tmp_path / "second", "--listen", address)

    assert f"cannot listen on {address}: {IN_USE.format(flag='--listen')}" in output
    assert "add_port" not in output  # gRPC's own log line of the failed bind is held back
    for _ in range(24):  # each a fresh connection: with a shared port, about half would reach the second
        client = LookalikeClient(address)
        try:
            assert [info.name for info in client.lists()] == ["only-on-the-first"]
        finally:
            client.close()
    assert first.stop() == 0


def test_a_second_serve_on_a_taken_metrics_port_exits_with_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        metrics = f"127.0.0.1:{taken.getsockname()[1]}"
        output = failed_serve(tmp_path / "data", "--listen", "127.0.0.1:0", "--metrics-listen", metrics)
    assert f"cannot listen on {metrics}: {IN_USE.format(flag='--metrics-listen')}" in output
    assert len(output.strip().splitlines()) == 1, output


def test_create_server_on_a_taken_port_refuses_and_leaves_nothing_started(
    lookalike: ServerHandle, tmp_path: Path
) -> None:
    data = tmp_path / "other"
    with pytest.raises(
        FailedPrecondition, match=f"cannot listen on {lookalike.address}: the address is in use"
    ) as raised:
        start_server(data, listen=lookalike.address, workers=1, metrics_listen="127.0.0.1:0")
    assert raised.value.reason == "ADDRESS_IN_USE"
    assert worker_processes() == []
    again = start_server(data, metrics_listen="127.0.0.1:0")  # data-folder lock released, LMDB closed
    again.stop()
    assert lookalike.client.lists() == []


def test_a_unix_socket_in_use_is_not_taken_over(tmp_path: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="lk-") as folder:  # short: a socket path has at most 107 bytes
        address = f"unix:{folder}/lookalike.sock"
        first = start_server(tmp_path / "first", listen=address)
        client = LookalikeClient(address)
        try:
            client.create_list("only-on-the-first")
            with pytest.raises(FailedPrecondition, match=f"cannot listen on {address}: the address is in use"):
                start_server(tmp_path / "second", listen=address)
            assert [info.name for info in LookalikeClient(address).lists()] == ["only-on-the-first"]
        finally:
            client.close()
            first.stop()

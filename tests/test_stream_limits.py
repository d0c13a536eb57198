"""Streams that hold the server hostage, against a real server: a key's open streams are limited, idle
streams end, and other callers' checks, admin calls and health checks answer all the while."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lookalike.client import LookalikeClient
from lookalike.client.errors import DeadlineExceeded, ResourceExhausted
from lookalike.client.lookalike_pb import lookalike_pb2 as pb
from lookalike.client.lookalike_pb import lookalike_pb2_grpc as pb_grpc
from lookalike.client.stub import translate
from lookalike.server.config import parse_config
from tests.conftest import ServerHandle, distinct_photos, start_server

IDLE_TIMEOUT = 3.0


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    return [path.read_bytes() for path in distinct_photos(3, seed=23)]


class HeldStreams:
    """Raw streams that send what they are given, then nothing until released (or the test ends)."""

    def __init__(self, address: str) -> None:
        self._channel = grpc.insecure_channel(address)
        self.stub = pb_grpc.LookalikeStub(self._channel)
        self._release = threading.Event()
        self._readers = ThreadPoolExecutor(max_workers=16)

    def _requests(self, first: list[Any]) -> Iterator[Any]:
        yield from first
        self._release.wait(120)

    def open(self, method: str, secret: str, first: list[Any] | None = None) -> Future[tuple[list[Any], Exception]]:
        """Open a stream; the future gives its replies and how it ended (a LookalikeError), with its end time."""
        call = getattr(self.stub, method)(
            self._requests(first or []), metadata=[("authorization", f"Bearer {secret}")], timeout=120
        )

        def drain() -> tuple[list[Any], Exception]:
            replies: list[Any] = []
            try:
                for reply in call:
                    replies.append(reply)
            except grpc.RpcError as error:
                return replies, translate(error)
            return replies, AssertionError("the stream ended OK though it never closed")

        return self._readers.submit(drain)

    def close(self) -> None:
        self._release.set()
        self._readers.shutdown(wait=True)
        self._channel.close()


@pytest.fixture
def keyed(tmp_path: Path) -> Iterator[tuple[ServerHandle, dict[str, str]]]:
    """Four worker threads, two streams per key, a short idle timeout; an admin and two checker keys."""
    handle = start_server(
        tmp_path / "data", threads=4, max_streams_per_key=2, stream_idle_timeout=IDLE_TIMEOUT, max_concurrent_requests=8
    )
    boot = handle.client
    boot.create_list("banned")
    root = boot.create_key("admin", name="root")
    with LookalikeClient(handle.address, api_key=root.secret) as admin:
        secrets = {"admin": root.secret} | {
            name: admin.create_key("checker", name=name).secret for name in ("greedy", "other")
        }
    yield handle, secrets
    handle.stop()


def stream_readers() -> int:
    return sum(thread.name == "stream-reader" for thread in threading.enumerate())


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_one_keys_idle_streams_are_limited_and_ended_while_other_callers_are_answered(
    keyed: tuple[ServerHandle, dict[str, str]], photos: list[bytes]
) -> None:
    handle, secrets = keyed
    admin = LookalikeClient(handle.address, api_key=secrets["admin"])
    other = LookalikeClient(handle.address, api_key=secrets["other"])
    held = HeldStreams(handle.address)
    health_channel = grpc.insecure_channel(handle.address)
    health = health_pb2_grpc.HealthStub(health_channel)
    try:
        admin.add("banned", photos[0])
        assert other.check(photos[0], ["banned"]).decision == "reject"  # the model is loaded before the clock runs

        # More streams than the key may open, and more than the server has worker threads, none sending.
        streams = [held.open("CheckStream", secrets["greedy"]) for _ in range(6)]
        wait_for(lambda: sum(s.done() for s in streams) == 4, IDLE_TIMEOUT / 2, "excess streams not refused at once")
        refused = [s.result()[1] for s in streams if s.done()]
        assert all(isinstance(e, ResourceExhausted) and e.reason == "STREAMS_PER_KEY" for e in refused), refused
        assert "--max-streams-per-key" in str(refused[0]) and "2 streams" in str(refused[0])
        open_streams = [s for s in streams if not s.done()]

        # While the key's two streams sit idle, everyone else is answered.
        started = time.monotonic()
        assert other.check(photos[1], ["banned"]).decision == "accept"
        assert [key.name for key in admin.keys()] == ["root", "greedy", "other"]
        admin.create_list("allowed")
        reply = health.Check(health_pb2.HealthCheckRequest(service="lookalike.v1.Lookalike"), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert not any(s.done() for s in open_streams), "the calls above waited until the idle streams ended"
        assert time.monotonic() - started < IDLE_TIMEOUT

        # The idle ones end after the timeout, with a reason naming the flag, and their places come back.
        for stream in open_streams:
            replies, error = stream.result(timeout=IDLE_TIMEOUT * 3)
            assert replies == [] and isinstance(error, DeadlineExceeded), error
            assert error.reason == "STREAM_IDLE" and "--stream-idle-timeout" in error.message
        wait_for(lambda: stream_readers() == 0, 5, "the ended streams' reader threads are still running")
        again = [
            held.open("CheckStream", secrets["greedy"], [LookalikeClient.check_request(photos[0])]) for _ in range(2)
        ]
        for stream in again:
            replies, error = stream.result(timeout=IDLE_TIMEOUT * 3)
            assert [r.response.decision for r in replies] == [pb.REJECT], error
            assert isinstance(error, DeadlineExceeded) and error.reason == "STREAM_IDLE"
    finally:
        held.close()
        health_channel.close()
        admin.close()
        other.close()


@pytest.mark.parametrize("method", ["AddEntries", "ImportEntries", "CheckStream"])
def test_a_stream_idle_after_its_replies_ends_and_one_owed_a_reply_is_never_idle(
    keyed: tuple[ServerHandle, dict[str, str]], photos: list[bytes], method: str
) -> None:
    handle, secrets = keyed
    first = {
        "AddEntries": pb.AddEntryRequest(list="banned", image=pb.Image(data=photos[2])),
        "ImportEntries": pb.ImportEntriesRequest(list="banned", entries=[pb.HashEntry(id="h1", md5="0" * 32)]),
        "CheckStream": LookalikeClient.check_request(photos[2], ["banned"]),
    }[method]
    held = HeldStreams(handle.address)
    try:
        started = time.monotonic()
        replies, error = held.open(method, secrets["admin"], [first]).result(timeout=IDLE_TIMEOUT * 5)
        assert len(replies) == 1, error
        assert isinstance(error, DeadlineExceeded) and error.reason == "STREAM_IDLE", error
        assert time.monotonic() - started >= IDLE_TIMEOUT
        wait_for(lambda: stream_readers() == 0, 5, "the ended stream's reader thread is still running")
    finally:
        held.close()


def test_stream_limits_come_from_flags_and_environment_and_must_leave_room_for_others() -> None:
    config = parse_config(["--max-streams-per-key", "3"], {"LOOKALIKE_STREAM_IDLE_TIMEOUT": "7.5"})
    assert (config.max_streams_per_key, config.stream_idle_timeout) == (3, 7.5)
    for flags in (["--max-streams-per-key", "0"], ["--stream-idle-timeout", "0"], ["--threads", "4"]):
        with pytest.raises(SystemExit):
            parse_config(flags, {})  # --threads 4: the default 4 streams per key would hold every thread
    with pytest.raises(SystemExit):
        parse_config(["--max-concurrent-requests", "2", "--max-streams-per-key", "2"], {})


def test_an_export_is_one_of_the_keys_streams(keyed: tuple[ServerHandle, dict[str, str]]) -> None:
    handle, secrets = keyed
    held = HeldStreams(handle.address)
    admin = LookalikeClient(handle.address, api_key=secrets["admin"])

    def export_refused() -> bool:
        try:
            return list(admin.export_entries("banned")) != []
        except ResourceExhausted as error:
            assert error.reason == "STREAMS_PER_KEY", error
            return True

    try:
        streams = [held.open("AddEntries", secrets["admin"]) for _ in range(2)]
        wait_for(export_refused, IDLE_TIMEOUT / 2, "an export was answered while its key held two streams")
        assert not any(stream.done() for stream in streams)
        ends = [stream.result(timeout=IDLE_TIMEOUT * 3)[1] for stream in streams]
        assert all(isinstance(end, DeadlineExceeded) and end.reason == "STREAM_IDLE" for end in ends), ends
        assert not export_refused()
    finally:
        held.close()
        admin.close()

"""Operations end to end on a real server: metrics over HTTP, request log lines, readiness, limits, deadlines."""

from __future__ import annotations

import logging
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from lookalike.client import LookalikeClient, NotFound, ResourceExhausted
from lookalike.client.errors import DeadlineExceeded, FailedPrecondition, Unavailable
from lookalike.client.lookalike_pb import lookalike_pb2 as pb
from lookalike.client.lookalike_pb import lookalike_pb2_grpc as pb_grpc
from lookalike.client.stub import translate
from lookalike.index import EMBEDDING_DIM
from lookalike.index.list_index import ID_BYTES, ID_LOOKUP_BYTES, PDQ_BYTES
from lookalike.server.app import create_server
from lookalike.server.config import ServerConfig, parse_config
from tests.conftest import ServerHandle, distinct_photos, start_server


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    """Eight photos, no two of them near-duplicates: a check of one against another is accepted."""
    return [path.read_bytes() for path in distinct_photos(8, seed=11)]


class Scrape:
    """One read of the `/metrics` endpoint over HTTP; absent samples read as 0."""

    def __init__(self, port: int) -> None:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            text = reply.read().decode()
        self.samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value

    def __call__(self, name: str, **labels: str) -> float:
        return self.samples.get((name, tuple(sorted(labels.items()))), 0.0)


def scrape_until(port: int, name: str, value: float, timeout: float = 30.0, **labels: str) -> Scrape:
    """Scrape until a sample reaches `value`: calls end on the server a moment after the client gives up."""
    deadline = time.monotonic() + timeout
    while True:
        scrape = Scrape(port)
        if scrape(name, **labels) >= value or time.monotonic() > deadline:
            return scrape
        time.sleep(0.05)


@pytest.fixture
def observed(tmp_path: Path) -> Iterator[ServerHandle]:
    """A server with its metrics endpoint on a free loopback port."""
    handle = start_server(tmp_path / "data", metrics_listen="127.0.0.1:0")
    yield handle
    handle.stop()


def metrics_port(handle: ServerHandle) -> int:
    port = handle.running.metrics_port
    assert port is not None
    return port


def test_metrics_count_calls_by_method_and_code_and_report_lists(observed: ServerHandle, photos: list[bytes]) -> None:
    client = observed.client
    client.create_list("banned")
    client.add("banned", photos[1])
    assert client.check(photos[1], ["banned"]).decision == "reject"
    assert client.check(photos[2], ["banned"]).decision == "accept"
    with pytest.raises(NotFound):
        client.get_list("missing")
    with pytest.raises(NotFound):
        client.check(photos[3], ["missing"])

    scrape = Scrape(metrics_port(observed))
    assert scrape("lookalike_requests_total", method="CreateList", code="OK") == 1
    assert scrape("lookalike_requests_total", method="AddEntry", code="OK") == 1
    assert scrape("lookalike_requests_total", method="Check", code="OK") == 2
    assert scrape("lookalike_requests_total", method="Check", code="NOT_FOUND") == 1
    assert scrape("lookalike_requests_total", method="GetList", code="NOT_FOUND") == 1
    assert scrape("lookalike_request_seconds_count", method="Check") == 3
    assert scrape("lookalike_check_decisions_total", decision="reject") == 1
    assert scrape("lookalike_check_decisions_total", decision="accept") == 1
    # The check of a missing list is refused before its image is looked at.
    assert scrape("lookalike_fingerprints_started_total") == 3
    assert scrape("lookalike_stage_seconds_count", stage="decode") == 3
    assert scrape("lookalike_stage_seconds_count", stage="hash") == 3
    assert scrape("lookalike_stage_seconds_count", stage="embed") >= 3
    assert scrape("lookalike_stage_seconds_count", stage="pdq_search") == 2
    assert scrape("lookalike_stage_seconds_count", stage="vector_search") == 2
    assert scrape("lookalike_list_entries", list="banned") == 1
    per_id = ID_BYTES + ID_LOOKUP_BYTES
    floats_and_half_copy = EMBEDDING_DIM * (4 + 2) + 2 * per_id  # an exact list's embeddings, twice
    assert scrape("lookalike_index_bytes", list="banned") == (PDQ_BYTES + per_id) + floats_and_half_copy
    assert scrape("lookalike_requests_in_flight") == 0
    assert scrape("lookalike_ready") == 1


def test_streams_are_counted_once_with_a_tally_of_decisions(
    observed: ServerHandle, photos: list[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lookalike.requests")
    client = observed.client
    client.create_list("banned")
    added = list(client.add_many(pb.AddEntryRequest(list="banned", image=pb.Image(data=photos[s])) for s in (1, 2)))
    assert [index for index, _ in added] == [0, 1]
    checks = [client.check_request(photos[seed], ["banned"]) for seed in (1, 2, 3)]
    decisions = [result.decision for _, result in client.check_many(checks)]  # type: ignore[union-attr]
    assert decisions == ["reject", "reject", "accept"]

    scrape = Scrape(metrics_port(observed))
    assert scrape("lookalike_requests_total", method="AddEntries", code="OK") == 1
    assert scrape("lookalike_requests_total", method="CheckStream", code="OK") == 1
    assert scrape("lookalike_check_decisions_total", decision="reject") == 2
    assert scrape("lookalike_list_entries", list="banned") == 2
    lines = [r.getMessage() for r in caplog.records if r.name == "lookalike.requests"]
    assert any("method=AddEntries lists=banned items=2 decision=- code=OK" in line for line in lines), lines
    assert any("method=CheckStream lists=banned items=3 decision=accept:1,reject:2 code=OK" in line for line in lines)


def test_every_call_logs_one_line_with_id_method_lists_decision_code_and_latency(
    lookalike: ServerHandle, photos: list[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lookalike.requests")
    client = lookalike.client
    client.create_list("banned")
    client.add("banned", photos[1])
    client.check(photos[1], ["banned"], request_id="upload-42")
    unnamed = client.check(photos[2])
    with pytest.raises(NotFound):
        client.get_list("missing")
    with pytest.raises(Exception):  # noqa: B017 - any refusal: the point is the log line stays one line
        client.get_list("evil\nmethod=Forged")
    channel = grpc.insecure_channel(lookalike.address)
    pb_grpc.LookalikeStub(channel).ListLists(pb.ListListsRequest(), metadata=[("x-request-id", "trace-7")])
    channel.close()

    lines = [r.getMessage() for r in caplog.records if r.name == "lookalike.requests"]
    assert len(lines) == 7, lines
    assert all("\n" not in line for line in lines)
    check = next(line for line in lines if "id=upload-42 " in line)
    assert check.startswith("request id=upload-42 method=Check lists=banned items=1 decision=reject code=OK ms=")
    assert float(check.rsplit("ms=", 1)[1]) > 0
    assert f"request id={unnamed.id} method=Check lists=* items=1 decision=accept code=OK" in "\n".join(lines)
    assert any("method=GetList lists=missing items=1 decision=- code=NOT_FOUND" in line for line in lines)
    assert any('method=GetList lists="evil\\nmethod=Forged"' in line for line in lines), lines
    assert any(line.startswith("request id=trace-7 method=ListLists lists=- ") for line in lines)


def test_health_is_not_serving_and_calls_are_unavailable_until_indexes_load(
    tmp_path: Path, photos: list[bytes]
) -> None:
    first = start_server(tmp_path / "data")
    first.client.create_list("banned")
    entry = first.client.add("banned", photos[1])
    first.stop()

    seen: dict[str, object] = {}

    def while_loading(port: int) -> None:
        """Runs inside create_server after the port accepts calls, before the indexes load."""
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        health = health_pb2_grpc.HealthStub(channel)
        seen["health"] = health.Check(health_pb2.HealthCheckRequest(service="lookalike.v1.Lookalike"), timeout=10)
        try:
            pb_grpc.LookalikeStub(channel).Check(LookalikeClient.check_request(photos[1], ["banned"]), timeout=10)
        except grpc.RpcError as error:
            seen["check"] = translate(error)
        channel.close()

    config = ServerConfig(listen="127.0.0.1:0", data=tmp_path / "data", map_size=1 << 30, http_listen="off")
    running = create_server(config, on_listening=while_loading)
    try:
        assert seen["health"].status == health_pb2.HealthCheckResponse.NOT_SERVING  # type: ignore[attr-defined]
        refused = seen["check"]
        assert isinstance(refused, Unavailable) and refused.reason == "NOT_READY", refused
        with LookalikeClient(f"127.0.0.1:{running.port}") as client:
            channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
            health = health_pb2_grpc.HealthStub(channel)
            status = health.Check(health_pb2.HealthCheckRequest(service="lookalike.v1.Lookalike"), timeout=10).status
            assert status == health_pb2.HealthCheckResponse.SERVING
            channel.close()
            result = client.check(photos[1], ["banned"])
            assert result.decision == "reject" and result.matches[0].id == entry.id
    finally:
        running.stop(grace=1)


def test_calls_past_the_concurrency_limit_are_refused_at_once_and_counted_while_health_answers(
    tmp_path: Path,
) -> None:
    # Two held streams take both places and both worker threads.
    handle = start_server(tmp_path / "data", threads=2, max_concurrent_requests=2, metrics_listen="127.0.0.1:0")
    release = threading.Event()

    def held_open() -> Iterator[pb.CheckRequest]:
        release.wait(60)
        return
        yield  # a stream that sends nothing until released

    channel = grpc.insecure_channel(handle.address)
    try:
        stub = pb_grpc.LookalikeStub(channel)
        streams = [stub.CheckStream(held_open(), timeout=60) for _ in range(2)]
        try:
            in_flight = scrape_until(metrics_port(handle), "lookalike_requests_in_flight", 2)
            assert in_flight("lookalike_requests_in_flight") == 2
            with pytest.raises(ResourceExhausted) as refused:
                handle.client.lists()  # refused at once, not queued for a thread
            assert refused.value.reason == "TOO_MANY_REQUESTS" and "--max-concurrent-requests" in refused.value.message
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            assert health.status == health_pb2.HealthCheckResponse.SERVING  # not counted, on threads of its own
            scrape = scrape_until(
                metrics_port(handle), "lookalike_requests_total", 1, method="ListLists", code="RESOURCE_EXHAUSTED"
            )
            assert scrape("lookalike_requests_total", method="ListLists", code="RESOURCE_EXHAUSTED") == 1
        finally:
            release.set()
        assert [list(stream) for stream in streams] == [[], []]
        deadline = time.monotonic() + 10
        while True:  # gRPC frees a call's place a moment after its client has seen the end
            try:
                assert handle.client.lists() == []
                break
            except ResourceExhausted:
                assert time.monotonic() < deadline, "calls still refused after the held ones ended"
                time.sleep(0.05)
    finally:
        channel.close()
        handle.stop()


def test_a_stream_longer_than_the_batch_limit_is_answered_up_to_it_then_refused(
    tmp_path: Path, photos: list[bytes]
) -> None:
    handle = start_server(tmp_path / "data", max_batch_images=3)
    client = handle.client
    try:
        client.create_list("banned")
        answered = []
        with pytest.raises(ResourceExhausted) as refused:
            for index, result in client.add_many(
                pb.AddEntryRequest(list="banned", image=pb.Image(data=photos[seed])) for seed in range(5)
            ):
                assert not isinstance(result, Exception), result
                answered.append(index)
        assert answered == [0, 1, 2]
        assert refused.value.reason == "BATCH_TOO_LARGE" and "--max-batch-images" in refused.value.message
        assert "3" in refused.value.message
        assert client.get_list("banned").entry_count == 3  # what was answered was kept

        checks = [client.check_request(photos[seed], ["banned"]) for seed in range(3)]
        assert [result.decision for _, result in client.check_many(checks)] == ["reject"] * 3  # type: ignore[union-attr]
        with pytest.raises(ResourceExhausted):
            list(client.check_many(checks + checks))
    finally:
        handle.stop()


def test_a_check_whose_deadline_passes_while_the_server_is_busy_is_never_fingerprinted(
    tmp_path: Path, photos: list[bytes]
) -> None:
    handle = start_server(tmp_path / "data", cpu_slots=1, metrics_listen="127.0.0.1:0")
    port = metrics_port(handle)
    try:
        handle.client.create_list("banned")
        handle.client.add("banned", photos[1])
        started = Scrape(port)("lookalike_fingerprints_started_total")
        impatient = LookalikeClient(handle.address, timeout=0.3)
        channel = grpc.insecure_channel(handle.address)
        with handle.running.service.cpu_slot():  # the server is busy: its one CPU slot is taken
            with pytest.raises(DeadlineExceeded):
                impatient.check(photos[2], ["banned"])
            with pytest.raises(grpc.RpcError) as stream_error:
                stream = pb_grpc.LookalikeStub(channel).CheckStream(
                    iter([LookalikeClient.check_request(photos[seed], ["banned"]) for seed in range(3, 7)]),
                    timeout=0.3,
                )
                list(stream)
            assert stream_error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]
            scrape = scrape_until(port, "lookalike_requests_total", 1, method="Check", code="DEADLINE_EXCEEDED")
            assert scrape("lookalike_requests_total", method="Check", code="DEADLINE_EXCEEDED") == 1
            scrape = scrape_until(port, "lookalike_requests_total", 1, method="CheckStream", code="DEADLINE_EXCEEDED")
            assert scrape("lookalike_requests_total", method="CheckStream", code="DEADLINE_EXCEEDED") == 1
            assert scrape("lookalike_fingerprints_started_total") == started
        time.sleep(0.5)  # stream items still queued would start now if they ignored their deadline
        assert Scrape(port)("lookalike_fingerprints_started_total") == started
        impatient.close()
        channel.close()
        assert handle.client.check(photos[1], ["banned"]).decision == "reject"
        assert Scrape(port)("lookalike_fingerprints_started_total") == started + 1
    finally:
        handle.stop()


def test_limits_and_metrics_settings_come_from_flags_and_environment() -> None:
    config = parse_config(
        ["--max-batch-images", "500", "--max-concurrent-requests", "8"],
        {"LOOKALIKE_METRICS_LISTEN": "127.0.0.1:9464"},
    )
    assert (config.max_batch_images, config.max_concurrent_requests, config.metrics_listen) == (
        500,
        8,
        "127.0.0.1:9464",
    )
    assert parse_config([], {}).metrics_listen == ""
    scan = parse_config(["--vector-scan-budget", "300000"], {"LOOKALIKE_PDQ_SCAN_BUDGET": "50000"})
    assert (scan.vector_scan_budget, scan.pdq_scan_budget) == (300_000, 50_000)
    for flag in ("--max-batch-images", "--max-concurrent-requests", "--vector-scan-budget", "--pdq-scan-budget"):
        with pytest.raises(SystemExit):
            parse_config([flag, "0"], {})


def test_a_metrics_address_already_taken_stops_start_up_with_a_clear_error(observed: ServerHandle) -> None:
    taken = f"127.0.0.1:{metrics_port(observed)}"
    with pytest.raises(FailedPrecondition, match=f"cannot listen on {taken}: the address is in use") as raised:
        create_server(
            ServerConfig(
                listen="127.0.0.1:0",
                data=observed.config.data.parent / "other",
                metrics_listen=taken,
                http_listen="off",
            )
        )
    assert raised.value.reason == "ADDRESS_IN_USE"

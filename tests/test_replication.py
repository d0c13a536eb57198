"""The replication layer (server/replication) against real nats-server processes on loopback: the change
log's appends, de-duplication and ordered follow; failing fast and recovering when NATS goes away; no
acknowledged append lost when one of three NATS servers is killed; snapshots, leases, the work queue and
key-value maps."""

from __future__ import annotations

import ast
import asyncio
import hashlib
import os
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.msg import Msg

from lookalike.client.errors import FailedPrecondition, InvalidArgument, Unavailable
from lookalike.server.replication import LOG_UNAVAILABLE, ChangeLog
from tests.nats_servers import NatsCluster, nats_cluster

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def nats_one(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    """One NATS server shared by the tests that never stop it (each uses streams of its own)."""
    with nats_cluster(tmp_path_factory.mktemp("nats"), 1) as cluster:
        yield cluster


@pytest.fixture
def nats_alone(tmp_path: Path) -> Iterator[NatsCluster]:
    """One NATS server of the test's own, to stop and start."""
    with nats_cluster(tmp_path / "nats", 1) as cluster:
        yield cluster


@pytest.fixture
def nats_three(tmp_path: Path) -> Iterator[NatsCluster]:
    with nats_cluster(tmp_path / "nats", 3) as cluster:
        yield cluster


class Applied:
    """What a follower applied, in order; the last sequence stands for the one a node stores."""

    def __init__(self) -> None:
        self.records: list[tuple[int, bytes]] = []

    def __call__(self, seq: int, record: bytes) -> None:
        self.records.append((seq, record))

    @property
    def seqs(self) -> list[int]:
        return [seq for seq, _ in self.records]


def append_until_stored(log: ChangeLog, record: bytes, dedup_id: str, within: float) -> int:
    """Append, retrying on Unavailable with the same id as a caller would; the sequence."""
    deadline = time.monotonic() + within
    while True:
        try:
            return log.append(record, dedup_id, timeout=5.0)
        except Unavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_records_are_applied_in_order_exactly_as_stored_and_a_retried_append_is_stored_once(
    nats_one: NatsCluster,
) -> None:
    records = [b"", bytes(range(256)), os.urandom(64 * 1024)] + [b"change %d" % i for i in range(197)]
    with ChangeLog(nats_one.urls, "ORDER", node="a") as log:
        seqs = [log.append(record, f"request-{i}") for i, record in enumerate(records)]
        assert seqs == list(range(1, len(records) + 1))
        # A client retrying a write (same id) gets the first sequence back; nothing is stored twice.
        assert log.append(records[5], "request-5") == 6
        assert log.append(b"a different body", "request-0") == 1
        assert log.last_seq() == len(records)

        everything, tail = Applied(), Applied()
        from_start = log.follow(0, everything)
        from_150 = log.follow(150, tail)
        assert from_start.wait_for(len(records), 10) and from_150.wait_for(len(records), 10)
        assert everything.records == list(zip(seqs, records, strict=True))
        assert tail.records == everything.records[150:]
        assert log.lag(from_start.applied_seq).messages == 0
        behind = log.lag(len(records) - 10)
        assert behind.messages == 10 and behind.seconds >= 0

        log.append(b"one more", "request-late")
        assert from_start.wait_for(len(records) + 1, 5)
        assert everything.records[-1] == (len(records) + 1, b"one more")


def test_bad_input_gets_clear_errors(nats_one: NatsCluster) -> None:
    with pytest.raises(InvalidArgument, match="stream name"):
        ChangeLog(nats_one.urls, "has.dots")
    with pytest.raises(InvalidArgument, match="NATS server URL"):
        ChangeLog([], "EMPTY")
    with ChangeLog(nats_one.urls, "BAD") as log:
        with pytest.raises(InvalidArgument, match="de-duplication id"):
            log.append(b"x", "")
        with pytest.raises(InvalidArgument) as too_large:
            log.append(b"x" * (2 << 20), "too-large")
        assert too_large.value.reason == "RECORD_TOO_LARGE"
        with pytest.raises(InvalidArgument, match="lease name"):
            log.try_lease("no spaces", "a", 1)
        with pytest.raises(InvalidArgument, match="key"):
            log.key_value("MAP").put("a b", b"x")
        with pytest.raises(InvalidArgument, match="work queue name"):
            log.work_queue("a.b")
        assert log.last_seq() == 0


def test_a_follower_restarted_from_its_stored_sequence_misses_and_repeats_nothing(nats_one: NatsCluster) -> None:
    with ChangeLog(nats_one.urls, "RESUME", node="writer") as writer:
        for i in range(40):
            writer.append(b"r%d" % i, f"id-{i}")
        first_run = Applied()
        with ChangeLog(nats_one.urls, "RESUME", node="reader") as reader:
            follower = reader.follow(0, first_run)
            assert follower.wait_for(40, 10)
            follower.stop()
        stored = first_run.seqs[-1]
        for i in range(40, 70):
            writer.append(b"r%d" % i, f"id-{i}")
        second_run = Applied()
        with ChangeLog(nats_one.urls, "RESUME", node="reader") as reader:
            assert reader.follow(stored, second_run).wait_for(70, 10)
        assert first_run.seqs + second_run.seqs == list(range(1, 71))
        assert [record for _, record in first_run.records + second_run.records] == [b"r%d" % i for i in range(70)]


def test_with_its_only_nats_server_down_appends_fail_fast_and_resume_by_themselves(nats_alone: NatsCluster) -> None:
    server = nats_alone.servers[0]
    server.stop()
    started = time.monotonic()
    log = ChangeLog(nats_alone.urls, "OUTAGE", node="a", connect_wait=0.5)  # NATS down from the start
    try:
        assert time.monotonic() - started < 2
        with pytest.raises(Unavailable) as before_start:
            log.append(b"too early", "early")
        assert before_start.value.reason == LOG_UNAVAILABLE
        server.start()
        nats_alone.wait_ready()
        append_until_stored(log, b"first", "first", within=10)
        applied = Applied()
        follower = log.follow(0, applied)

        server.stop()
        for attempt in range(3):
            started = time.monotonic()
            with pytest.raises(Unavailable) as down:
                log.append(b"while down", f"down-{attempt}", timeout=10)
            assert down.value.reason == LOG_UNAVAILABLE
            assert time.monotonic() - started < 2, "append waited out the reconnect cycle"
        started = time.monotonic()
        with pytest.raises(Unavailable):
            log.last_seq(timeout=10)
        assert time.monotonic() - started < 2

        server.start()
        nats_alone.wait_ready()
        seq = append_until_stored(log, b"after", "after", within=10)  # the same ChangeLog, not recreated
        assert follower.wait_for(seq, 10) and follower.error is None
        assert applied.seqs == list(range(1, seq + 1))  # the follower resumed without gaps or repeats
        assert applied.records[-1] == (seq, b"after")
    finally:
        log.close()


def test_killing_one_of_three_nats_servers_loses_no_acknowledged_append(nats_three: NatsCluster) -> None:
    writers, per_writer = 4, 150
    acknowledged: dict[str, int] = {}
    lock = threading.Lock()
    halt = threading.Event()
    failures: list[BaseException] = []
    with ChangeLog(nats_three.urls, "BURST", node="a") as log:
        assert log.replicas == 3

        def write(writer: int) -> None:
            try:
                for i in range(per_writer):
                    if halt.is_set():
                        return
                    dedup_id = f"w{writer}-{i}"
                    seq = append_until_stored(log, dedup_id.encode(), dedup_id, within=30)
                    with lock:
                        acknowledged[dedup_id] = seq
            except BaseException as error:  # noqa: BLE001 - reported by the test below
                failures.append(error)

        threads = [threading.Thread(target=write, args=(writer,)) for writer in range(writers)]
        for thread in threads:
            thread.start()
        try:
            while len(acknowledged) < writers * per_writer // 3 and not failures:
                time.sleep(0.005)
            victim = nats_three.stream_leader("BURST")  # the hardest one to lose
            victim.kill()
            acknowledged_at_kill = len(acknowledged)
        except BaseException:
            halt.set()
            raise
        finally:
            for thread in threads:
                thread.join(60)
        assert not failures, failures
        assert len(acknowledged) == writers * per_writer > acknowledged_at_kill
        assert sorted(acknowledged.values()) == list(range(1, writers * per_writer + 1))

        victim.start()
        nats_three.wait_ready()
        nats_three.wait_replicas_current("BURST", writers * per_writer)
    for server in nats_three.servers:
        state = nats_three.stream_state(server, "BURST")
        assert (state["messages"], state["last_seq"]) == (writers * per_writer, writers * per_writer), server.name
        stored = read_through(server.url, "BURST", writers * per_writer)
        assert stored == {seq: dedup_id.encode() for dedup_id, seq in acknowledged.items()}, server.name


def test_a_cluster_that_cannot_place_replicas_yet_is_a_retry_later_not_an_internal_error(
    nats_three: NatsCluster,
) -> None:
    async def refused_placement() -> nats.js.errors.APIError:
        """JetStream's own answer when it has too few servers for the replicas asked (as right after
        a cluster forms, before the leader knows every peer)."""
        client = await nats.connect(nats_three.servers[0].url, allow_reconnect=False)
        try:
            await client.jetstream().add_stream(name="FIVE", subjects=["five"], num_replicas=5)
        except nats.js.errors.APIError as error:
            return error
        finally:
            await client.close()
        raise AssertionError("a three-server cluster placed five replicas")

    refused = asyncio.run(refused_placement())
    with ChangeLog(nats_three.urls, "PLACE", node="a") as log:
        error = log.connection.translate(refused, "create the map")
    assert isinstance(error, Unavailable) and error.reason == LOG_UNAVAILABLE
    assert "no suitable peers for placement" in str(error) and "retry later" in str(error)


def read_through(url: str, stream: str, last: int) -> dict[int, bytes]:
    """Every message of `stream` read by sequence through the server at `url` (direct gets: any current
    replica may answer one, and NATS prefers a responder on the server the client is connected to)."""

    async def read() -> dict[int, bytes]:
        client = await nats.connect(url, allow_reconnect=False)
        try:
            js = client.jetstream()
            return {seq: (await js.get_msg(stream, seq=seq, direct=True)).data or b"" for seq in range(1, last + 1)}
        finally:
            await client.close()

    return asyncio.run(read())


def test_snapshots_stream_through_the_object_store_and_the_newest_few_are_kept(
    nats_one: NatsCluster, tmp_path: Path
) -> None:
    blob = tmp_path / "state.lmdb"
    size = 40 << 20
    with blob.open("wb") as out:
        for _ in range(size >> 20):
            out.write(os.urandom(1 << 20))
    digest = hashlib.sha256(blob.read_bytes()).hexdigest()
    with ChangeLog(nats_one.urls, "SNAP", node="a", keep_snapshots=2) as log:
        assert log.latest_snapshot(tmp_path) is None
        tracemalloc.start()
        try:
            log.put_snapshot(blob, 1000)
            put_peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.reset_peak()
            latest = log.latest_snapshot(tmp_path)
            get_peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert latest is not None
        seq, reader = latest
        with reader:
            assert seq == 1000
            assert hashlib.sha256(reader.read()).hexdigest() == digest
        assert put_peak < size // 4 and get_peak < size // 4, (put_peak, get_peak)  # streamed, never whole

        with blob.open("rb") as reader:  # a reader as well as a path
            log.put_snapshot(reader, 2000)
        log.put_snapshot(Path(os.devnull), 3000)
        assert log.snapshots() == [2000, 3000]
        latest = log.latest_snapshot(tmp_path)
        assert latest is not None and latest[0] == 3000
        with latest[1] as reader:
            assert reader.read() == b""


def test_a_lease_is_held_by_one_node_until_its_ttl_passes_unrenewed(nats_one: NatsCluster) -> None:
    with ChangeLog(nats_one.urls, "LEASE", node="a") as a, ChangeLog(nats_one.urls, "LEASE", node="b") as b:
        assert a.try_lease("snapshots", "a", ttl=2)
        renewed = time.monotonic()
        for _ in range(6):  # renewing keeps it past its first ttl
            time.sleep(0.5)
            assert not b.try_lease("snapshots", "b", ttl=2)
            assert a.try_lease("snapshots", "a", ttl=2)
            renewed = time.monotonic()
        while not b.try_lease("snapshots", "b", ttl=2):
            assert time.monotonic() - renewed < 5, "the lease did not expire"
            time.sleep(0.1)
        assert time.monotonic() - renewed >= 1.9
        assert not a.try_lease("snapshots", "a", ttl=2)
        assert a.try_lease("other", "a", ttl=2)  # leases are independent


def test_work_items_are_taken_once_each_and_come_back_when_their_taker_dies(nats_one: NatsCluster) -> None:
    with ChangeLog(nats_one.urls, "WORK", node="a") as a, ChangeLog(nats_one.urls, "WORK", node="b") as b:
        queues = {"a": a.work_queue("checks", ack_wait=1.0), "b": b.work_queue("checks", ack_wait=1.0)}
        for i in range(40):
            queues["a"].put(b"item %d" % i, dedup_id=f"item-{i}")
        queues["a"].put(b"item 0", dedup_id="item-0")  # a retried put queues nothing
        taken: dict[str, list[bytes]] = {"a": [], "b": []}

        def work(node: str) -> None:
            while (item := queues[node].take(wait=1.0)) is not None:
                time.sleep(0.01)  # the work
                item.ack()
                taken[node].append(item.data)

        threads = [threading.Thread(target=work, args=(node,)) for node in queues]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert sorted(taken["a"] + taken["b"]) == sorted(b"item %d" % i for i in range(40))
        assert taken["a"] and taken["b"]

        queues["a"].put(b"orphan")
        with ChangeLog(nats_one.urls, "WORK", node="c") as c:
            item = c.work_queue("checks", ack_wait=1.0).take(wait=2)
            assert item is not None and item.data == b"orphan" and item.deliveries == 1
            given_at = time.monotonic()
        # c is gone without acknowledging: after the ack wait the item goes to another node.
        again = queues["b"].take(wait=5)
        assert again is not None and (again.data, again.seq, again.deliveries) == (b"orphan", item.seq, 2)
        assert time.monotonic() - given_at >= 0.9
        again.ack()
        assert queues["a"].take(wait=1.5) is None


def test_key_value_maps_are_shared_and_watched_across_nodes(nats_one: NatsCluster) -> None:
    with ChangeLog(nats_one.urls, "KV", node="a") as a, ChangeLog(nats_one.urls, "KV", node="b") as b:
        on_a, on_b = a.key_value("REVOKED"), b.key_value("REVOKED")
        on_a.put("key.k1", b"2026-01-01")
        seen: list[tuple[str, bytes | None]] = []
        changed = threading.Event()

        def record(key: str, value: bytes | None) -> None:
            seen.append((key, value))
            changed.set()

        watch = on_b.watch(record)
        assert watch.wait_for(1, 5) and seen == [("key.k1", b"2026-01-01")]  # the current value first
        changed.clear()
        started = time.monotonic()
        on_a.put("key.k2", b"now")
        assert changed.wait(5) and time.monotonic() - started < 1
        on_a.delete("key.k1")
        deadline = time.monotonic() + 5
        while len(seen) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert seen[1:] == [("key.k2", b"now"), ("key.k1", None)]
        assert on_b.get("key.k1") is None
        entry = on_b.get("key.k2")
        assert entry is not None and entry.value == b"now"

        # Compare-and-set: of two nodes bumping one counter from the same revision, one wins.
        first = on_a.update("flood.e1", b"1", 0)
        assert first is not None and on_b.update("flood.e1", b"1", 0) is None
        second = on_b.update("flood.e1", b"2", first)
        assert second is not None and on_a.update("flood.e1", b"2", first) is None
        stored = on_a.get("flood.e1")
        assert stored is not None and (stored.value, stored.revision) == (b"2", second)


def test_a_follower_behind_the_trimmed_log_stops_with_a_clear_error(nats_one: NatsCluster) -> None:
    with ChangeLog(nats_one.urls, "TRIM", node="a") as log:
        for i in range(20):
            log.append(b"r%d" % i, f"id-{i}")
        log.trim_before(11)
        applied = Applied()
        assert log.follow(10, applied).wait_for(20, 5)  # a node that had applied 10 goes on
        assert applied.seqs == list(range(11, 21))
        late = log.follow(5, Applied())
        assert not late.wait_for(20, 5)
        assert isinstance(late.error, FailedPrecondition) and late.error.reason == "LOG_TRIMMED"


def test_a_sequence_handed_over_again_is_not_applied_twice(nats_one: NatsCluster) -> None:
    """The follower asks NATS for what follows its last applied sequence, but does not rely on it: the
    same real messages handed to it again (as a redelivering consumer would) are skipped by sequence,
    and one past a hole stops it."""
    with ChangeLog(nats_one.urls, "AGAIN", node="a") as log:
        for i in range(3):
            log.append(b"r%d" % i, f"id-{i}")
        applied = Applied()
        follower = log.follow(0, applied)
        assert follower.wait_for(3, 5)
        follower.stop()
        messages = read_messages(nats_one.urls[0], "AGAIN")
        for message in messages:
            follower._deliver(message)
        assert applied.records == [(1, b"r0"), (2, b"r1"), (3, b"r2")]

        behind = log.follow(1, Applied())
        behind.stop()
        with pytest.raises(FailedPrecondition) as hole:
            behind._deliver(messages[2])  # 3 after 1: 2 is missing
        assert hole.value.reason == "LOG_TRIMMED"


def test_the_follower_thread_gets_its_settings_before_the_first_record(nats_one: NatsCluster) -> None:
    """A node's follower adds to FAISS indexes: it runs with one OpenMP thread, as request threads do, not
    OpenMP's default (which made every applied add about 30 times costlier)."""
    faiss = pytest.importorskip("faiss")
    from lookalike.index import configure_threads

    seen: list[int] = []
    with ChangeLog(nats_one.urls, "SETTINGS", node="a") as log:
        log.append(b"r0", "id-0")
        follower = log.follow(
            0, lambda seq, record: seen.append(faiss.omp_get_max_threads()), on_start=lambda: configure_threads(1)
        )
        assert follower.wait_for(1, 5)
        follower.stop()
    assert seen == [1]


def read_messages(url: str, stream: str) -> list[Msg]:
    """Every message of `stream` as a consumer delivers it (with its stream sequence)."""

    async def read() -> list[Msg]:
        client = await nats.connect(url, allow_reconnect=False)
        try:
            reader = await client.jetstream().pull_subscribe("", stream=stream)
            return await reader.fetch(100, timeout=2)
        finally:
            await client.close()

    return asyncio.run(read())


def test_the_replication_package_imports_no_grpc_and_nothing_else_of_the_server() -> None:
    for path in (REPO / "server" / "replication").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in {"grpc", "google", "lmdb", "faiss", "numpy", "PIL"}, (path, name)
                if name.startswith(("server.", "client")):
                    assert name.startswith("server.replication") or name == "client.errors", (path.name, name)

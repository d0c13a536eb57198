"""Cluster mode (issue #19): real Lookalike servers on loopback sharing one change log on real nats-server
processes. Writes on any node reach every node through the log; a write's consistency token lets a check on
another node read it; NATS going away stops writes at once and never checks."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from lookalike.client import LookalikeClient
from lookalike.client.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    LookalikeError,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from lookalike.client.lookalike_pb import lookalike_pb2 as pb
from lookalike.server.config import parse_config
from lookalike.server.storage import schema
from tests.conftest import ServerHandle, corpus_photos, start_server
from tests.nats_servers import NatsCluster, nats_cluster
from tests.processes import ServerProcess, end_leftovers, json_cli

PDQ_A = "f" * 32 + "0" * 32
PDQ_B = "0f" * 32


@pytest.fixture
def nats_one(tmp_path: Path) -> Iterator[NatsCluster]:
    with nats_cluster(tmp_path / "nats", 1) as cluster:
        yield cluster


class Nodes:
    """Lookalike nodes of one cluster, each with its own data folder; every one stopped at the end."""

    def __init__(self, root: Path, nats: NatsCluster) -> None:
        self.root = root
        self.nats = nats
        self.started: dict[str, ServerHandle] = {}

    @property
    def handles(self) -> list[ServerHandle]:
        return list(self.started.values())

    def start(self, name: str, **overrides: object) -> ServerHandle:
        handle = start_server(self.root / name, cluster=",".join(self.nats.urls), node=name, **overrides)
        self.started[name] = handle
        return handle

    def stop_all(self) -> None:
        for handle in self.started.values():
            handle.stop()


@pytest.fixture
def three(tmp_path: Path, nats_one: NatsCluster) -> Iterator[Nodes]:
    nodes = Nodes(tmp_path, nats_one)
    try:
        for name in ("a", "b", "c"):
            nodes.start(name)
        yield nodes
    finally:
        nodes.stop_all()


def eventually[T](probe: Callable[[], T], within: float = 1.0) -> T:
    """`probe()`'s first value that raises nothing and is truthy, polled until `within` seconds passed."""
    deadline = time.monotonic() + within
    while True:
        try:
            value = probe()
            if value:
                return value
        except LookalikeError:
            if time.monotonic() >= deadline:
                raise
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {within} s: {value!r}")
        time.sleep(0.02)


def contents(handle: ServerHandle) -> dict[bytes, list[tuple[bytes, bytes]]]:
    return handle.running.service.store.replicated_contents()


def wait_same(handles: list[ServerHandle], within: float = 5.0) -> None:
    """Every node holds the same replicated bytes (they applied the same log), within `within` seconds."""
    eventually(lambda: all(contents(h) == contents(handles[0]) for h in handles[1:]), within)


def test_an_add_on_one_node_is_checked_on_another_with_its_token_and_soon_without(
    three: Nodes,
) -> None:
    a, b, c = three.handles
    created = a.client.create_list("banned")
    assert int(created.consistency_token) >= 1
    photo, other = corpus_photos()[:2]
    added = a.client.add("banned", photo)
    assert int(added.consistency_token) > int(created.consistency_token)
    result = b.client.check(photo, ["banned"], after=added.consistency_token)
    assert result.decision == "reject" and result.matches[0].id == added.id

    hashed = c.client.add_hash("banned", c.client.hash_entry(pdq=PDQ_A, id="by-hash"))
    found = eventually(lambda: a.client.check_hashes(["banned"], pdq=PDQ_A).matches)
    assert found[0].id == "by-hash"
    assert b.client.get_entry("banned", hashed.id).id == "by-hash"
    wait_same(three.handles)
    exports = [sorted(e.id for e in h.client.export_entries("banned")) for h in three.handles]
    assert exports[0] == exports[1] == exports[2] == sorted([added.id, "by-hash"])
    assert other  # a second photo exists: the corpus is the one the suite expects


def test_a_refusal_reaches_its_caller_and_every_node_ends_alike(three: Nodes) -> None:
    """Two nodes create the same list at once: the log orders them, the second is refused on every node
    (ALREADY_EXISTS to its caller), and every node holds the same bytes."""
    outcomes: list[object] = []

    def create(handle: ServerHandle) -> None:
        try:
            outcomes.append(handle.client.create_list("race", description=handle.running.cluster.node))  # type: ignore[union-attr]
        except LookalikeError as error:
            outcomes.append(error)

    a, b, c = three.handles
    threads = [threading.Thread(target=create, args=(handle,)) for handle in (a, b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    refused = [o for o in outcomes if isinstance(o, AlreadyExists)]
    assert len(refused) == 1 and len(outcomes) == 2, outcomes
    with pytest.raises(AlreadyExists):
        c.client.create_list("race")
    wait_same(three.handles)
    assert c.client.get_list("race").description in ("a", "b")


def test_a_revoked_key_is_refused_on_every_node_within_a_second(three: Nodes) -> None:
    a, b, c = three.handles
    admin = a.client.create_key("admin", name="ops").secret
    with LookalikeClient(a.address, api_key=admin) as as_admin:
        checker = as_admin.create_key("checker", name="uploads")
        eventually(lambda: all(h.running.access is not None and not h.running.access.open for h in three.handles))
        for handle in (b, c):
            with LookalikeClient(handle.address, api_key=checker.secret) as client:
                eventually(lambda client=client: client.check_hashes(pdq=PDQ_A).decision == "accept")  # type: ignore[misc]
        revoked = as_admin.revoke_key(checker.info.id)
        assert int(revoked.consistency_token) >= 1
    started = time.monotonic()
    for handle in (b, c):
        with LookalikeClient(handle.address, api_key=checker.secret) as client:

            def refused(client: LookalikeClient = client) -> bool:
                try:
                    client.check_hashes(pdq=PDQ_A)
                except (Unauthenticated, PermissionDenied):
                    return True
                return False

            eventually(refused, within=1.0 - (time.monotonic() - started) + 0.5)
    assert time.monotonic() - started < 1.5


def test_tokens_out_of_reach_or_malformed_are_refused_clearly(three: Nodes) -> None:
    a, b, _ = three.handles
    token = a.client.create_list("banned").consistency_token
    with pytest.raises(Unavailable) as behind:
        LookalikeClient(b.address, timeout=1.5).check_hashes(pdq=PDQ_A, after=str(int(token) + 1000))
    assert behind.value.reason == "REPLICA_BEHIND"
    assert "short of the token" in behind.value.message
    with pytest.raises(InvalidArgument) as malformed:
        b.client.check_hashes(pdq=PDQ_A, after="seven")
    assert malformed.value.reason == "CONSISTENCY_TOKEN_INVALID"


def test_a_single_node_gives_tokens_and_honours_its_own(lookalike: ServerHandle) -> None:
    """Without --cluster a node numbers its own changes: the same client code works against it."""
    created = lookalike.client.create_list("banned")
    added = lookalike.client.add_hash("banned", lookalike.client.hash_entry(pdq=PDQ_A))
    assert int(added.consistency_token) == int(created.consistency_token) + 1
    assert lookalike.client.check_hashes(["banned"], pdq=PDQ_A, after=added.consistency_token).matches
    with pytest.raises(Unavailable) as ahead:
        lookalike.client.check_hashes(["banned"], pdq=PDQ_A, after=str(int(added.consistency_token) + 1))
    assert ahead.value.reason == "REPLICA_BEHIND"


def test_the_cli_prints_tokens_and_checks_after_one(three: Nodes) -> None:
    a, b, _ = three.handles
    a.client.create_list("banned")
    photo = corpus_photos()[0]
    code, added = json_cli(a.address, "add", "banned", str(photo))
    assert code == 0 and int(added[0]["consistency_token"]) >= 2
    code, checked = json_cli(b.address, "check", "banned", str(photo), "--after", added[0]["consistency_token"])
    assert code == 0 and checked[0]["decision"] == "reject" and checked[0]["matches"][0]["id"] == added[0]["id"]


def test_writes_fail_fast_while_nats_is_down_checks_go_on_and_writes_resume(three: Nodes) -> None:
    a, b, _ = three.handles
    a.client.create_list("banned")
    token = a.client.add_hash("banned", a.client.hash_entry(pdq=PDQ_A)).consistency_token
    b.client.check_hashes(["banned"], pdq=PDQ_A, after=token)
    nats = three.nats
    nats.servers[0].stop()
    started = time.monotonic()
    with pytest.raises(Unavailable) as down:
        a.client.add_hash("banned", a.client.hash_entry(pdq=PDQ_B))
    assert down.value.reason == "LOG_UNAVAILABLE"
    assert time.monotonic() - started < 5.0
    three.started["c"].stop()
    c = three.start("c")  # starts without NATS: serves checks from its replica, refuses writes
    for handle in three.handles:
        assert handle.client.check_hashes(["banned"], pdq=PDQ_A).decision == "reject"
    assert [info.name for info in c.client.lists()] == ["banned"]
    with pytest.raises(Unavailable) as still_down:
        c.client.create_list("other")
    assert still_down.value.reason == "LOG_UNAVAILABLE"
    nats.servers[0].start()
    nats.wait_ready()
    added = eventually(lambda: _try(lambda: b.client.add_hash("banned", b.client.hash_entry(pdq=PDQ_B))), 20.0)
    assert a.client.check_hashes(["banned"], pdq=PDQ_B, after=added.consistency_token).decision == "reject"
    assert c.client.check_hashes(["banned"], pdq=PDQ_B, after=added.consistency_token).decision == "reject"
    wait_same(three.handles)
    scraped = generate_latest(c.running.service.metrics.registry).decode()
    assert f"lookalike_applied_sequence {float(added.consistency_token)}" in scraped
    assert "lookalike_replication_lag_messages 0.0" in scraped


def test_a_node_started_without_nats_shares_its_node_state_once_nats_answers(
    tmp_path: Path, nats_one: NatsCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """b starts while NATS is down (node-local checks), then NATS returns: without a restart, a check deferred on
    b goes on the cluster's work queue (a runs it while b's only worker is busy), a check b stored meanwhile is
    read on a, and the checks deferred on b before still run on b and are read on a too."""
    nodes = Nodes(tmp_path, nats_one)
    try:
        a, b = nodes.start("a"), nodes.start("b")
        token = a.client.create_list("banned").consistency_token
        b.client.check_hashes(["banned"], pdq=PDQ_A, after=token)
        b.stop()
        nats_one.servers[0].stop()
        b = nodes.start("b", cpu_slots=1, deferred_workers=1)
        assert b.running.checks is not None and not b.running.checks.shared.deferred.shared
        photos = [path.read_bytes() for path in corpus_photos()[:3]]
        stored_apart = b.client.check(photos[0], ["banned"])
        with b.running.service.cpu_slot():  # b's only worker takes the first deferred check and waits for it
            deferred_apart = [b.client.check(photo, ["banned"], defer=True).id for photo in photos[:2]]
            caplog.set_level(logging.INFO, "lookalike")
            nats_one.servers[0].start()
            nats_one.wait_ready()
            eventually(lambda: b.running.checks is not None and b.running.checks.shared.deferred.shared, 20.0)
            assert any("NATS answers" in record.getMessage() for record in caplog.records)
            deferred_joined = b.client.check(photos[2], ["banned"], defer=True).id
            assert a.client.wait_for_check(deferred_joined, timeout=30.0).status == "done"  # b's worker is busy
            assert b.client.get_check(deferred_joined).status == "done"
            assert eventually(lambda: a.client.get_check(stored_apart.id), 5.0).status == "done"
            assert [b.client.get_check(check_id).status for check_id in deferred_apart] == ["pending", "pending"]
        for check_id in deferred_apart:
            assert b.client.wait_for_check(check_id, timeout=30.0).status == "done"
            assert eventually(lambda check_id=check_id: a.client.get_check(check_id), 5.0).status == "done"  # type: ignore[misc]
        assert eventually(lambda: b.running.checks is not None and b.running.checks.pending == 0, 5.0)
    finally:
        nodes.stop_all()


def test_a_node_down_while_others_write_catches_up_and_a_new_node_joins(tmp_path: Path, nats_one: NatsCluster) -> None:
    nodes = Nodes(tmp_path, nats_one)
    try:
        a, b = nodes.start("a"), nodes.start("b")
        a.client.create_list("banned")
        b.stop()
        tokens = [
            a.client.add_hash("banned", a.client.hash_entry(pdq=f"{n:064x}")).consistency_token for n in range(1, 6)
        ]
        b = nodes.start("b")  # the same folder, behind by five changes
        assert len(b.client.check_hashes(["banned"], pdq=f"{5:064x}", after=tokens[-1]).matches) >= 1
        late = nodes.start("late")
        late.client.check_hashes(pdq=PDQ_A, after=tokens[-1])
        wait_same([a, b, late])
        assert late.client.get_list("banned").entry_count == 5
    finally:
        nodes.stop_all()


def test_a_new_node_starts_from_a_snapshot_and_the_tail_after_the_log_was_trimmed(
    tmp_path: Path, nats_one: NatsCluster
) -> None:
    """The node holding the lease snapshots the replicated data every few changes and trims the log; a node
    with an empty folder then starts from the snapshot (the log alone could not rebuild it) plus the tail,
    and holds what the others hold; stored checks, kept in the shared node state, read the same from it."""
    nodes = Nodes(tmp_path, nats_one)
    try:
        a = nodes.start("a", cluster_snapshot_every=5, cluster_snapshot_interval=0.2)
        a.client.create_list("banned")
        for entry in hash_entries(a.client, 1, 12):
            a.client.add_hash("banned", entry)
        stored_check = a.client.check_hashes(["banned"], pdq=f"{1:064x}")
        assert stored_check.decision == "reject"
        log = a.running.cluster.log  # type: ignore[union-attr]
        eventually(lambda: nats_one.stream_state(nats_one.servers[0], "LOOKALIKE")["first_seq"] > 10, 10.0)
        assert log.snapshots()[-1] >= 10
        tail = [a.client.add_hash("banned", entry) for entry in hash_entries(a.client, 13, 2)]
        late = nodes.start("late")
        assert late.client.check_hashes(["banned"], pdq=f"{1:064x}", after=tail[-1].consistency_token).matches
        assert late.client.check_hashes(["banned"], pdq=f"{14:064x}").matches
        wait_same([a, late])
        assert exports([a], "banned") == exports([late], "banned")
        assert late.client.get_check(stored_check.id).id == a.client.get_check(stored_check.id).id == stored_check.id
    finally:
        nodes.stop_all()


def test_a_node_the_trimmed_log_left_behind_installs_the_newest_snapshot_and_keeps_its_own_data(
    tmp_path: Path, nats_one: NatsCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """A node stopped while the others write, snapshot and trim the log past its position: restarted, it
    installs the newest snapshot over its replicated data (an entry removed meanwhile is gone from it too),
    follows the tail, and holds what the others hold, while its own stored check and webhook secret stay."""
    nodes = Nodes(tmp_path, nats_one)
    try:
        a = nodes.start("a", cluster_snapshot_every=5, cluster_snapshot_interval=0.2)
        b = nodes.start("b")
        a.client.create_list("banned")
        added = [a.client.add_hash("banned", entry) for entry in hash_entries(a.client, 1, 3)]
        stored_check = b.client.check_hashes(["banned"], pdq=f"{1:064x}", after=added[-1].consistency_token)
        assert stored_check.decision == "reject"
        behind = b.running.service.store.applied_sequence()
        secret = node_local(b, schema.DB_META, schema.KEY_WEBHOOK_SECRET)
        assert secret is not None
        b.stop()
        a.client.remove("banned", "e1")
        for entry in hash_entries(a.client, 4, 20):
            a.client.add_hash("banned", entry)
        eventually(lambda: nats_one.stream_state(nats_one.servers[0], "LOOKALIKE")["first_seq"] > behind + 1, 10.0)
        tail = a.client.add_hash("banned", next(hash_entries(a.client, 24, 1)))
        caplog.clear()
        b = nodes.start("b")
        assert b.client.check_hashes(["banned"], pdq=f"{24:064x}", after=tail.consistency_token).matches
        assert b.running.cluster is not None and b.running.cluster._following()
        installed = [r.getMessage() for r in caplog.records if "installed the cluster's snapshot" in r.getMessage()]
        assert len(installed) == 1 and f"up to change {behind} " in installed[0], installed
        wait_same([a, b])
        assert exports([a], "banned") == exports([b], "banned")
        assert "e1" not in {entry_id for entry_id, _ in exports([b], "banned")[0]}
        matched = {match.id for match in b.client.check_hashes(["banned"], pdq=f"{1:064x}").matches}
        assert "e1" not in matched and "e2" in matched  # its index was built from the installed entries
        owned = schema.owned_key("", stored_check.id)
        assert node_local(b, schema.DB_CHECKS, owned) is not None
        assert node_local(b, schema.DB_META, schema.KEY_WEBHOOK_SECRET) == secret
    finally:
        nodes.stop_all()


def test_a_node_the_trimmed_log_left_behind_with_no_snapshot_to_cover_it_stops_following_clearly(
    tmp_path: Path, nats_one: NatsCluster
) -> None:
    nodes = Nodes(tmp_path, nats_one)
    try:
        a, b = nodes.start("a"), nodes.start("b")
        a.client.create_list("banned")
        token = a.client.add_hash("banned", next(hash_entries(a.client, 1, 1))).consistency_token
        b.client.check_hashes(["banned"], pdq=PDQ_A, after=token)
        b.stop()
        for entry in hash_entries(a.client, 2, 5):
            a.client.add_hash("banned", entry)
        assert a.running.cluster is not None and not a.running.cluster.log.snapshots()
        a.running.cluster.log.trim_before(int(token) + 3)
        b = nodes.start("b")
        assert b.running.cluster is not None
        follower = b.running.cluster._follower
        assert follower is not None
        eventually(lambda: not follower.running, 10.0)
        assert isinstance(follower.error, FailedPrecondition) and follower.error.reason == "LOG_TRIMMED"
        assert "once the cluster holds a snapshot" in follower.error.message
        assert b.client.check_hashes(["banned"], pdq=f"{1:064x}").matches  # its own data still answers checks
        with pytest.raises(LookalikeError) as refused:
            b.client.create_list("other")
        assert refused.value.reason == "FOLLOWER_STOPPED"
        assert "trimmed before this node applied them" in refused.value.message
    finally:
        nodes.stop_all()


def node_local(handle: ServerHandle, database: bytes, key: bytes) -> bytes | None:
    """A record of the node's own LMDB, read directly (what no other node holds)."""
    environment = handle.running.service.store.environment
    with environment.read() as txn:
        return txn.get(key, db=environment.db(database))


def hash_entries(client: LookalikeClient, first: int, count: int) -> Iterator[pb.HashEntry]:
    """Entries by PDQ hash, one per number: distinct, and cheap to add (no picture to fingerprint)."""
    for number in range(first, first + count):
        yield client.hash_entry(pdq=f"{number:064x}", id=f"e{number}")


def exports(handles: list[ServerHandle], list_name: str) -> list[list[tuple[str, str]]]:
    return [[(e.id, e.hashes.pdq) for e in h.client.export_entries(list_name)] for h in handles]


def test_a_node_killed_during_a_bulk_add_loses_no_acknowledged_entry_on_any_node(
    tmp_path: Path, nats_one: NatsCluster
) -> None:
    """kill -9 of the node taking a bulk add: what it acknowledged is in the log, so every node has it, the
    killed one too once restarted, and the nodes' exports agree entry for entry."""
    nodes = Nodes(tmp_path, nats_one)
    flags = ("--cluster", nats_one.urls[0], "--node", "a", "--workers", "0", "--map-size", str(1 << 30))
    killed = ServerProcess(tmp_path / "a", *flags)
    try:
        b, c = nodes.start("b"), nodes.start("c")
        killed.client.create_list("bulk")
        acknowledged: list[str] = []
        for _, result in killed.client.import_stream("bulk", hash_entries(killed.client, 1, 100_000), batch=20):
            assert not isinstance(result, LookalikeError), result
            acknowledged.append(result.id)
            if len(acknowledged) == 300:
                killed.kill()
                break
        restarted = ServerProcess(tmp_path / "a", *flags)
        with LookalikeClient(restarted.address) as client:
            everyone = [b, c]
            wait_same(everyone)
            listed = {e.id for e in client.export_entries("bulk")}
            for handle in everyone:
                assert eventually(lambda h=handle: h.client.get_list("bulk").entry_count == len(listed), 5.0)  # type: ignore[misc]
            assert set(acknowledged) <= listed
            assert exports(everyone, "bulk")[0] == [(e.id, e.hashes.pdq) for e in client.export_entries("bulk")]
        restarted.stop()
    finally:
        nodes.stop_all()
        end_leftovers()


def test_writes_go_on_when_one_of_three_nats_servers_is_killed(tmp_path: Path) -> None:
    """On a three-server NATS cluster the log keeps three replicas: kill -9 one server during writes, the
    writes go on and no acknowledged one is lost."""
    with nats_cluster(tmp_path / "nats", 3) as nats:
        nodes = Nodes(tmp_path, nats)
        try:
            a, b = nodes.start("a"), nodes.start("b")
            assert a.running.cluster is not None and a.running.cluster.log.replicas == 3
            a.client.create_list("banned")
            acknowledged: list[str] = []
            for number in range(1, 41):
                if number == 15:
                    nats.stream_leader("LOOKALIKE").kill()
                client = (a if number % 2 else b).client
                entry = client.hash_entry(pdq=f"{number:064x}", id=f"e{number}")
                added = eventually(
                    lambda client=client, entry=entry: _try(lambda: client.add_hash("banned", entry)), 10.0
                )  # type: ignore[misc]
                acknowledged.append(added.id)
            wait_same([a, b])
            assert [entry for entry, _ in exports([a], "banned")[0]] == acknowledged
        finally:
            nodes.stop_all()


def test_bad_cluster_urls_and_node_names_are_refused_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    for flags, said in (
        (["--cluster", "localhost:4222"], "--cluster: 'localhost:4222' is not nats://HOST:PORT"),
        (["--cluster", "nats://127.0.0.1:4222,nats://:1"], "is not nats://HOST:PORT"),
        (["--cluster", "nats://127.0.0.1:4222", "--node", "a b"], "--node: 'a b' is not"),
    ):
        with pytest.raises(SystemExit):
            parse_config(flags, environ={})
        assert said in capsys.readouterr().err
    config = parse_config([], environ={"LOOKALIKE_CLUSTER": "nats://127.0.0.1:4222", "LOOKALIKE_NODE": "n1"})
    assert (config.cluster, config.node) == ("nats://127.0.0.1:4222", "n1")


def _try[T](call: Callable[[], T]) -> T | None:
    try:
        return call()
    except Unavailable:
        return None

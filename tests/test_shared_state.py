"""Cluster mode's shared node state (issue #19), on real Lookalike servers in-process and a real nats-server:
deferred checks on a JetStream work queue that any node takes from, stored checks readable from any node,
each check's webhook sent by one node (a dead claimer's taken over).

Each test has streams of its own (a fresh stream name) on one NATS server shared by the module. Lists are
created on every node by hand: replicating them is the change log's business, not this module's.
"""

from __future__ import annotations

import io
import random
import time
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from lookalike.client import NotFound, Unavailable
from lookalike.server.replication import ChangeLog
from lookalike.server.shared_state import BUSY, MINE, SETTLED, ClusterClaims, NodeState, node_state
from lookalike.server.storage.schema import owned_key
from tests.conftest import ServerHandle, distinct_photos, start_server
from tests.nats_servers import NatsCluster, nats_cluster
from tests.test_deferred import FAST_WEBHOOKS, Receiver, receiver  # noqa: F401  (a fixture)

ACK_WAIT_S = 30.0
"""How long a taken deferred check may go unacknowledged before another node takes it (tests of a node
that dies or stalls shorten it)."""


@pytest.fixture(scope="module")
def nats_one(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    with nats_cluster(tmp_path_factory.mktemp("nats"), 1) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    return [path.read_bytes() for path in distinct_photos(4, seed=19)]


class Nodes:
    """Lookalike nodes sharing one set of streams, each with its own data folder and NATS connection."""

    def __init__(self, root: Path, urls: list[str]) -> None:
        self.root = root
        self.urls = urls
        self.stream = f"T{uuid.uuid4().hex[:12]}"
        self.handles: dict[str, ServerHandle] = {}
        self.logs: dict[str, ChangeLog] = {}

    def changelog(self, name: str, urls: list[str] | None = None) -> ChangeLog:
        """Node `name`'s own connection to the shared streams (through `urls`; default: every server)."""
        changelog = ChangeLog(urls or self.urls, self.stream, node=name)
        self.logs[name] = changelog
        return changelog

    def state(self, name: str, ack_wait: float = ACK_WAIT_S, urls: list[str] | None = None) -> NodeState:
        return node_state(self.changelog(name, urls), name, 3600.0, order_ack_wait=ack_wait)

    def start(
        self, name: str, ack_wait: float = ACK_WAIT_S, urls: list[str] | None = None, **overrides: Any
    ) -> ServerHandle:
        shared = self.state(name, ack_wait, urls)
        handle = start_server(self.root / name, shared, **FAST_WEBHOOKS, **overrides)
        self.handles[name] = handle
        return handle

    def stop(self, name: str) -> None:
        """Stop the node and drop its NATS connection: what it took and did not acknowledge is handed out again."""
        self.handles.pop(name).stop()
        self.logs.pop(name).close()

    def close(self) -> None:
        for name in list(self.handles):
            self.stop(name)
        for changelog in self.logs.values():
            changelog.close()


@pytest.fixture
def nodes(tmp_path: Path, nats_one: NatsCluster) -> Iterator[Nodes]:
    started = Nodes(tmp_path, nats_one.urls)
    yield started
    started.close()


def retried[T](call: Callable[[], T], timeout: float = 30.0) -> T:
    """`call` again, with its request id, while the cluster answers UNAVAILABLE, as that error asks: a new
    cluster's streams may still be electing their leaders."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except Unavailable:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.2)


def wait_until(condition: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def ran_here(handle: ServerHandle) -> set[str]:
    """Ids of the finished checks this node stored itself (its own LMDB)."""
    assert handle.running.checks is not None
    return {check.id for check in handle.running.checks.finished()}


def large_picture(size: int = 1800) -> bytes:
    """A JPEG of noise, well over NATS's 1 MiB message limit."""
    rng = random.Random(19)
    image = Image.frombytes("RGB", (size, size), rng.randbytes(size * size * 3))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def test_deferred_checks_are_taken_by_any_node_and_read_from_every_node(nodes: Nodes, photos: list[bytes]) -> None:
    a = nodes.start("a", cpu_slots=1, deferred_workers=1)
    b = nodes.start("b")
    for node in (a, b):
        node.client.create_list("banned")
        node.client.add("banned", photos[0], id="listed")
    big = large_picture()
    assert len(big) > 1 << 20
    with a.running.service.cpu_slot():  # a's only worker blocks on the one it takes: b runs the others
        queued = [a.client.check(photo, ["banned"], defer=True) for photo in photos]
        queued.append(a.client.check(big, ["banned"], defer=True))
        assert all(check.status == "pending" for check in queued)
        assert b.client.get_check(queued[0].id).status in ("pending", "done")  # b reads what a queued
        wait_until(lambda: len(ran_here(b)) >= len(queued) - 1)
    ids = {check.id for check in queued}
    for node in (a, b):
        records = {check_id: node.client.wait_for_check(check_id, timeout=30) for check_id in ids}
        assert {record.status for record in records.values()} == {"done"}
        first = records[queued[0].id].result
        assert first is not None and first.decision == "reject" and first.matches[0].id == "listed"
    assert ran_here(a) | ran_here(b) == ids and not ran_here(a) & ran_here(b)  # each run once, by one node


def test_a_resubmitted_deferred_check_is_queued_once_cluster_wide(nodes: Nodes, photos: list[bytes]) -> None:
    a = nodes.start("a")
    b = nodes.start("b")
    for node in (a, b):
        node.client.create_list("banned")
    first = a.client.check(photos[1], ["banned"], defer=True, request_id="upload-9")
    again = b.client.check(photos[1], ["banned"], defer=True, request_id="upload-9")
    assert again.id == first.id == "upload-9"
    for node in (a, b):
        assert node.client.wait_for_check("upload-9").status == "done"
    assert len(ran_here(a)) + len(ran_here(b)) == 1


def test_a_check_a_dead_node_took_is_finished_by_another(nodes: Nodes, photos: list[bytes]) -> None:
    a = nodes.start("a", ack_wait=5.0, cpu_slots=1, deferred_workers=1)
    a.client.create_list("banned")
    with a.running.service.cpu_slot():  # a takes the check, then waits for its only CPU slot
        queued = a.client.check(photos[2], ["banned"], defer=True)
        wait_until(lambda: a.running.checks is not None and a.running.checks.pending == 1)
        b = nodes.start("b", ack_wait=5.0)
        b.client.create_list("banned")
        b.client.add("banned", photos[2], id="listed")
        nodes.stop("a")  # it dies holding the check, unacknowledged
    record = b.client.wait_for_check(queued.id, timeout=30)  # handed out again after the ack wait
    assert record.status == "done" and record.result is not None
    assert record.result.matches[0].id == "listed" and ran_here(b) == {queued.id}


def test_checks_a_single_node_left_pending_go_to_the_cluster_when_it_joins(
    nodes: Nodes, tmp_path: Path, photos: list[bytes]
) -> None:
    alone = start_server(tmp_path / "a", cpu_slots=1, deferred_workers=1)  # the data folder node a starts on
    alone.client.create_list("banned")
    with alone.running.service.cpu_slot():
        queued = alone.client.check(photos[3], ["banned"], defer=True)
        alone.stop()  # pending in its LMDB
    b = nodes.start("b")
    b.client.create_list("banned")
    nodes.start("a")
    record = wait_until(partial(_done, b, queued.id))
    assert record.result is not None and record.result.decision == "accept"


def test_a_check_answered_by_one_node_is_read_on_another(nodes: Nodes, photos: list[bytes]) -> None:
    a = nodes.start("a")
    b = nodes.start("b")
    for node in (a, b):
        node.client.create_list("banned")
    result = a.client.check(photos[3], ["banned"], request_id="upload-1", meta={"user": "7"})
    record = wait_until(lambda: _found(b, "upload-1"), timeout=2.0)
    assert record.status == "done" and record.result is not None
    assert (record.result.sha256, record.result.decision, record.result.meta) == (
        result.sha256,
        result.decision,
        {"user": "7"},
    )
    with pytest.raises(NotFound) as error:
        b.client.get_check("never-made")
    assert error.value.reason == "CHECK_NOT_FOUND"


def _found(handle: ServerHandle, check_id: str) -> Any:
    try:
        return handle.client.get_check(check_id)
    except NotFound:
        return None


def _done(handle: ServerHandle, check_id: str) -> Any:
    found = _found(handle, check_id)
    return found if found is not None and found.status == "done" else None


def test_a_webhook_is_sent_once_though_two_nodes_ran_its_check(
    nodes: Nodes,
    photos: list[bytes],
    receiver: Receiver,  # noqa: F811
) -> None:
    a = nodes.start("a", ack_wait=2.0, cpu_slots=1, deferred_workers=1)
    a.client.create_list("banned")
    with a.running.service.cpu_slot():  # a holds the check past its ack wait: b takes it too, runs it, sends it
        queued = a.client.check(photos[0], ["banned"], defer=True, callback_url=receiver.url)
        wait_until(lambda: a.running.checks is not None and a.running.checks.pending == 1)
        b = nodes.start("b", ack_wait=2.0)
        b.client.create_list("banned")
        receiver.wait_for(1)
    # a runs it now as well, stores it with its delivery, and finds the webhook settled by b
    assert a.running.checks is not None
    outbox = a.running.checks.outbox
    settled = wait_until(lambda: (d := outbox.get(owned_key("", queued.id))) is not None and d.state != "pending" and d)
    assert (settled.state, settled.last_error, settled.attempts) == ("delivered", "sent by another node", 0)
    assert ran_here(a) == ran_here(b) == {queued.id}
    assert len(receiver.requests) == 1


def test_a_dead_claimers_webhook_is_taken_over_once_its_lease_ends(nodes: Nodes) -> None:
    key = owned_key("k1", "upload-3")
    a = ClusterClaims(nodes.changelog("a"), "a", lease=1.0)
    b = ClusterClaims(nodes.changelog("b"), "b", lease=1.0)
    assert a.claim(key).outcome == MINE  # a's last act before it died: it never settles
    busy = b.claim(key)
    assert busy.outcome == BUSY and busy.until > time.time()
    assert a.claim(key).outcome == MINE  # the holder renews its own claim
    time.sleep(1.1)
    assert b.claim(key).outcome == MINE
    b.settle(key, "delivered")
    assert (a.claim(key).outcome, a.claim(key).state) == (SETTLED, "delivered")


def test_the_flood_guard_counts_matches_on_every_node_together(nodes: Nodes, photos: list[bytes]) -> None:
    windows = {"flood_min_matches": 3, "flood_short_window": 60.0, "flood_long_window": 6000.0, "flood_factor": 5.0}
    a = nodes.start("a", **windows)
    b = nodes.start("b", **windows)
    for node in (a, b):  # the same list and entry on both (uid and seq alike, as replicas apply them)
        node.client.create_list("banned")
        node.client.add("banned", photos[0], id="common")
    decisions = [node.client.check(photos[0], ["banned"]).decision for node in (a, b)]
    assert decisions == ["reject", "reject"]  # two matches cluster-wide, one per node
    tripped = a.client.check(photos[0], ["banned"])  # the third in the cluster, a's second
    assert tripped.decision == "review" and [d.cause for d in tripped.downgrades] == ["flood_guard"]
    wait_until(lambda: b.client.get_list("banned").guarded, timeout=1.0)  # the guard reaches b within a second
    assert b.client.check(photos[0], ["banned"]).decision == "review"
    b.client.confirm_entry("banned", "common")  # lifted cluster-wide, the present rate taken as usual
    wait_until(lambda: not a.client.get_list("banned").guarded, timeout=1.0)
    assert [node.client.check(photos[0], ["banned"]).decision for node in (a, b, a)] == ["reject"] * 3


def test_nodes_on_different_servers_of_a_three_server_nats_cluster_share_checks_through_a_server_kill(
    tmp_path: Path, photos: list[bytes]
) -> None:
    with nats_cluster(tmp_path / "nats", 3) as cluster:
        nodes = Nodes(tmp_path, cluster.urls)
        try:
            a = nodes.start("a", urls=[cluster.urls[0]])
            b = nodes.start("b", urls=[cluster.urls[1]])
            for node in (a, b):
                node.client.create_list("banned")
                node.client.add("banned", photos[1], id="listed")
            retried(partial(a.client.check, photos[1], ["banned"], request_id="answered"))
            queued = [
                retried(partial(a.client.check, photo, ["banned"], defer=True, request_id=f"deferred-{number}"))
                for number, photo in enumerate(photos)
            ]
            cluster.servers[2].kill()  # one NATS server of three: every stream keeps a majority
            for check_id in ("answered", *(check.id for check in queued)):
                record = wait_until(partial(_done, b, check_id), timeout=60.0)
                assert record.result is not None
            listed = b.client.get_check(queued[1].id).result
            assert listed is not None and listed.matches[0].id == "listed"
        finally:
            nodes.close()

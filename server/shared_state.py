"""Node state that cluster mode shares between nodes (issue #19), behind one seam per piece.

Each piece has an interface that the single node's own behaviour satisfies, and a JetStream-backed one:

- `CheckBoard`, where stored checks are read: node-local, a node's own LMDB is the only copy (the board
  holds nothing); cluster-wide, every stored check is also put in a key-value map keyed by its owned key,
  kept for the check retention (the bucket's TTL), so `GetCheck` on any node finds a check run on another.
- `DeferredQueue`, where deferred checks wait: node-local, keys of checks held pending in LMDB (as
  before); cluster-wide, a JetStream work queue any node takes from, each order carrying its stored check
  and naming its picture in an object store (pictures may exceed NATS's 1 MiB message limit); an order
  not acknowledged within the ack wait (its taker died) is taken again by another node.
- `DeliveryClaims`, who sends a check's webhook: node-local, this node always; cluster-wide, the node
  holding the check's claim in a key-value map (taken by compare-and-set, with a lease: a dead
  claimer's delivery is taken over once its lease ends), and none once one node settled it.
- `SharedFlood`, the flood guard's counts and guards cluster-wide (node-local, the guard's own tables
  are all there is, so it has none): each entry's decayed match counts in a key-value map, updated by
  compare-and-set, so matches on every node add up; guards in another map that every node watches.

`node_state(changelog, node, ...)` picks one or the other: no change log, today's single node.
The values here are bytes the callers encode (checks as `server.checks` stores them): this module
knows nothing of LMDB or of what a check holds.
"""

from __future__ import annotations

import base64
import json
import logging
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import nats.js.errors
from nats.js import JetStreamContext, api

from lookalike.client.errors import LookalikeError
from lookalike.server.replication import ChangeLog, KeyValueMap, WorkItem, WorkQueue

log = logging.getLogger(__name__)

CHECKS = "CHECKS"
"""The key-value map of stored checks and the work queue of deferred ones."""
WEBHOOKS = "WEBHOOKS"
"""The key-value map of webhook claims."""
FLOOD_RATES, FLOOD_GUARDS = "FLOOD_RATES", "FLOOD_GUARDS"
"""The key-value maps of the flood guard's counts and guards, by list uid and entry seq."""
ORDER_ACK_WAIT_S = 60.0
"""How long a taken deferred check may run before another node takes it again (its taker presumed dead)."""
CLAIM_LEASE_S = 30.0
"""How long a webhook claim stands unrenewed; more than one attempt (--webhook-timeout) takes."""
CLAIMS_KEPT_S = 2 * 86400.0
"""Settled claims are kept this long at least (a check's webhook is given up within hours)."""


def shared_key(key: bytes) -> str:
    """A stored check's owned key as a JetStream key (letters, digits, - _ =)."""
    return base64.urlsafe_b64encode(key).decode()


# Stored checks ---------------------------------------------------------------------------------------


class CheckBoard(Protocol):
    """Where a stored check (its stored bytes, by owned key) can be read from any node."""

    shared: bool
    """Whether the board holds anything (else a node's own LMDB tables are all there is)."""

    def publish(self, key: bytes, raw: bytes) -> None:
        """Make a stored check (pending or finished) readable from every node."""

    def read(self, key: bytes) -> bytes | None:
        """The check stored under `key` by any node; None when the board has none."""

    def reserve(self, key: bytes, raw: bytes) -> bytes | None:
        """Store a pending check unless a check is stored under `key`: None when stored, else that check."""

    def withdraw(self, key: bytes) -> None:
        """Drop a reserved check whose order could not be queued (so a retry queues it)."""


class LocalBoard:
    """A single node: its LMDB tables are the only copy, so the board shares nothing."""

    shared = False

    def publish(self, key: bytes, raw: bytes) -> None:
        pass

    def read(self, key: bytes) -> bytes | None:
        return None

    def reserve(self, key: bytes, raw: bytes) -> bytes | None:
        return None

    def withdraw(self, key: bytes) -> None:
        pass


class ClusterBoard:
    """Stored checks in a key-value map whose bucket keeps each for the check retention (its TTL)."""

    shared = True

    def __init__(self, changelog: ChangeLog, retention: float) -> None:
        self.map = changelog.key_value(CHECKS)
        _create_bucket(changelog, self.map, retention)

    def publish(self, key: bytes, raw: bytes) -> None:
        self.map.put(shared_key(key), raw)

    def read(self, key: bytes) -> bytes | None:
        entry = self.map.get(shared_key(key))
        return None if entry is None else entry.value

    def reserve(self, key: bytes, raw: bytes) -> bytes | None:
        name = shared_key(key)
        while self.map.update(name, raw, 0) is None:
            entry = self.map.get(name)
            if entry is not None:
                return entry.value
        return None

    def withdraw(self, key: bytes) -> None:
        self.map.delete(shared_key(key))


def _create_bucket(changelog: ChangeLog, kv: KeyValueMap, ttl: float) -> None:
    """Create `kv`'s bucket with a TTL (`ChangeLog.key_value` makes ones that keep keys forever)."""

    async def create(js: JetStreamContext) -> None:
        try:
            await js.key_value(kv.bucket)
        except nats.js.errors.BucketNotFoundError:
            config = api.KeyValueConfig(
                bucket=kv.bucket, history=1, ttl=ttl, storage=api.StorageType.FILE, replicas=changelog.replicas
            )
            await js.create_key_value(config=config)

    changelog.connection.call(create, 10.0, f"create the key-value map {kv.bucket}")


# Deferred checks -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueuedCheck:
    """A deferred check taken to run: its key, and (cluster-wide) its stored check and picture; `done()`
    once its result is stored, so it is not handed out again."""

    key: bytes
    check: bytes | None = None
    """None: read it (and its picture) from this node's LMDB."""
    image: bytes | None = None
    done: Callable[[], None] = lambda: None


class DeferredQueue(Protocol):
    shared: bool
    """Whether orders carry their check and picture to any node (else they wait in this node's LMDB)."""

    def put(self, key: bytes, check: bytes, image: bytes | None) -> None:
        """Queue a deferred check; a check already queued under `key` is not queued again."""

    def take(self, wait: float) -> QueuedCheck | None:
        """The next check to run, waiting up to `wait` seconds; None when none came."""

    def waiting(self) -> int:
        """Deferred checks queued and not yet done, where this queue can tell (0: it cannot)."""


class LocalQueue:
    """A single node's deferred checks: their keys; checks and pictures are in its LMDB."""

    shared = False

    def __init__(self) -> None:
        self._keys: queue.Queue[bytes] = queue.Queue()

    def put(self, key: bytes, check: bytes, image: bytes | None) -> None:
        self._keys.put(key)

    def take(self, wait: float) -> QueuedCheck | None:
        try:
            return QueuedCheck(self._keys.get(timeout=wait))
        except queue.Empty:
            return None

    def waiting(self) -> int:
        return 0  # the ledger counts its own


class ClusterQueue:
    """Deferred checks on a JetStream work queue, their pictures in an object store until done."""

    shared = True

    def __init__(self, changelog: ChangeLog, ack_wait: float = ORDER_ACK_WAIT_S) -> None:
        self._connection = changelog.connection
        self._queue: WorkQueue = changelog.work_queue(CHECKS, ack_wait)
        self._pictures = f"{changelog.stream}_CHECK_PICTURES"
        self._replicas = changelog.replicas

    async def _store(self, js: JetStreamContext) -> nats.js.object_store.ObjectStore:
        try:
            return await js.object_store(self._pictures)
        except nats.js.errors.BucketNotFoundError:
            config = api.ObjectStoreConfig(storage=api.StorageType.FILE, replicas=self._replicas)
            return await js.create_object_store(self._pictures, config=config)

    def put(self, key: bytes, check: bytes, image: bytes | None) -> None:
        name = shared_key(key)
        if image is not None:
            self._connection.call(
                lambda js: self._put_picture(js, name, image), 30.0, "store a deferred check's picture"
            )
        order = json.dumps({"key": name, "check": check.decode(), "picture": image is not None}).encode()
        self._queue.put(order, dedup_id=name)

    async def _put_picture(self, js: JetStreamContext, name: str, image: bytes) -> None:
        await (await self._store(js)).put(name, image)

    def take(self, wait: float) -> QueuedCheck | None:
        item = self._queue.take(wait)
        if item is None:
            return None
        order = json.loads(item.data)
        name = str(order["key"])
        picture = name if order["picture"] else ""
        image = None
        if picture:
            image = self._connection.call(lambda js: self._get_picture(js, picture), 30.0, "read a deferred picture")
        check = str(order["check"]).encode()
        return QueuedCheck(base64.urlsafe_b64decode(name), check, image, lambda: self._done(item, picture))

    async def _get_picture(self, js: JetStreamContext, name: str) -> bytes:
        return bytes((await (await self._store(js)).get(name)).data or b"")

    def _done(self, item: WorkItem, picture: str) -> None:
        item.ack()
        if picture:
            try:
                self._connection.call(lambda js: self._drop_picture(js, picture), 10.0, "drop a deferred picture")
            except LookalikeError as error:
                log.warning("a finished deferred check's picture %s was not dropped: %s", picture, error.message)

    async def _drop_picture(self, js: JetStreamContext, name: str) -> None:
        await (await self._store(js)).delete(name)

    def waiting(self) -> int:
        async def count(js: JetStreamContext) -> int:
            try:
                return int((await js.stream_info(self._queue.stream)).state.messages)
            except nats.js.errors.NotFoundError:
                return 0

        return self._connection.call(count, 5.0, "count deferred checks")


# Webhook deliveries ----------------------------------------------------------------------------------

MINE, BUSY, SETTLED = "mine", "busy", "settled"


@dataclass(frozen=True)
class Claim:
    outcome: str
    """MINE: send it now; BUSY: another node holds it until `until`; SETTLED: another node finished it."""
    until: float = 0.0
    state: str = ""
    """How it was settled: delivered or failed."""


class DeliveryClaims(Protocol):
    """Which node sends a check's webhook, so that one node does, at least once."""

    def claim(self, key: bytes) -> Claim:
        """Claim (or renew) the delivery of the check stored under `key`, before an attempt."""

    def settle(self, key: bytes, state: str) -> None:
        """The delivery was finished here (`state`: delivered or failed): no other node sends it."""


class LocalClaims:
    """A single node sends every delivery in its outbox."""

    def claim(self, key: bytes) -> Claim:
        return Claim(MINE)

    def settle(self, key: bytes, state: str) -> None:
        pass


class ClusterClaims:
    """Claims in a key-value map: {"node", "until"} while sending, {"node", "state"} once settled."""

    def __init__(self, changelog: ChangeLog, node: str, lease: float = CLAIM_LEASE_S) -> None:
        self.node = node
        self.lease = lease
        self.map = changelog.key_value(WEBHOOKS)
        _create_bucket(changelog, self.map, CLAIMS_KEPT_S)

    def claim(self, key: bytes) -> Claim:
        name = shared_key(key)
        while True:
            now = time.time()
            entry = self.map.get(name)
            revision = 0
            if entry is not None:
                held = json.loads(entry.value)
                if held.get("state"):
                    return Claim(SETTLED, state=str(held["state"]))
                if held["node"] != self.node and held["until"] > now:
                    return Claim(BUSY, float(held["until"]))
                revision = entry.revision
            mine = json.dumps({"node": self.node, "until": now + self.lease}).encode()
            if self.map.update(name, mine, revision) is not None:
                return Claim(MINE)

    def settle(self, key: bytes, state: str) -> None:
        self.map.put(shared_key(key), json.dumps({"node": self.node, "state": state}).encode())


# The flood guard -------------------------------------------------------------------------------------


class SharedFlood:
    """The flood guard's counts and guards, cluster-wide; values are what `server.flood` encodes."""

    def __init__(self, changelog: ChangeLog) -> None:
        self.rates = changelog.key_value(FLOOD_RATES)
        self.guards = changelog.key_value(FLOOD_GUARDS)

    @staticmethod
    def key(uid: int, seq: int) -> str:
        return f"{uid}.{seq}"

    def update(self, uid: int, seq: int, change: Callable[[bytes | None], bytes]) -> bytes:
        """Set an entry's counts to `change(its counts now)` (None: none yet), by compare-and-set, so that
        updates made at once by several nodes all count; the counts written."""
        name = self.key(uid, seq)
        while True:
            entry = self.rates.get(name)
            value = change(None if entry is None else entry.value)
            if self.rates.update(name, value, 0 if entry is None else entry.revision) is not None:
                return value

    def put_guard(self, uid: int, seq: int, raw: bytes) -> None:
        self.guards.put(self.key(uid, seq), raw)

    def drop_guard(self, uid: int, seq: int) -> None:
        self.guards.delete(self.key(uid, seq))

    def forget(self, uid: int, seq: int) -> None:
        """Drop a removed entry's counts and guard."""
        self.rates.delete(self.key(uid, seq))
        self.drop_guard(uid, seq)

    def watch_guards(self, on_change: Callable[[int, int, bytes | None], None]) -> None:
        """Call `on_change(uid, seq, guard)` with every guard now, then with each change (None: lifted),
        on a thread of its own for as long as the change log is open."""

        def changed(name: str, raw: bytes | None) -> None:
            uid, _, seq = name.partition(".")
            on_change(int(uid), int(seq), raw)

        self.guards.watch(changed)


# The constructor -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeState:
    """What one node shares with the others (or, alone, keeps to itself)."""

    node: str
    checks: CheckBoard
    deferred: DeferredQueue
    webhooks: DeliveryClaims
    flood: SharedFlood | None
    """None: the flood guard counts on this node alone."""


def node_state(
    changelog: ChangeLog | None, node: str, retention: float, order_ack_wait: float = ORDER_ACK_WAIT_S
) -> NodeState:
    """Node-local state without a change log (a single node, as before); else shared through JetStream.
    `retention`: seconds stored checks are kept (--check-retention)."""
    if changelog is None:
        return NodeState(node, LocalBoard(), LocalQueue(), LocalClaims(), None)
    return NodeState(
        node,
        ClusterBoard(changelog, retention),
        ClusterQueue(changelog, order_ack_wait),
        ClusterClaims(changelog, node),
        SharedFlood(changelog),
    )

"""The cluster's change log: one JetStream stream every node appends to and applies in order.

`ChangeLog` is a synchronous facade over nats-py (see `connection.py`). Besides the stream it holds what
the cluster shares in JetStream: snapshots in an object store (so a new node starts from one plus the
stream's tail), leases in a key-value bucket (one node at a time takes snapshots), work queues and
key-value maps. Records are opaque bytes here; what they mean belongs to the caller.

Names in JetStream, all derived from the `stream` name (say LOOKALIKE): the stream LOOKALIKE with the
subjects LOOKALIKE.changes.>, the object store LOOKALIKE_SNAPSHOTS, the key-value bucket LOOKALIKE_LEASES,
and per name the work queue stream LOOKALIKE_WORK_<name> and the key-value bucket LOOKALIKE_KV_<name>.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import BinaryIO

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue

from lookalike.client.errors import InvalidArgument, LookalikeError
from lookalike.server.replication.connection import Connection, ConnectionDropped
from lookalike.server.replication.follower import Follower
from lookalike.server.replication.key_value import KeyValueMap, key_value_bucket
from lookalike.server.replication.snapshots import Snapshots
from lookalike.server.replication.work_queue import WorkQueue

log = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
"""Stream, bucket and queue names: what JetStream allows in all of them (no dots, spaces or wildcards)."""

LEASE_KEY_PATTERN = re.compile(r"^[-/_=.a-zA-Z0-9]{1,200}$")

DUPLICATE_WINDOW_S = 300.0
"""A retried append with the same id within this window returns the original sequence."""

ATTEMPT_S = 2.0
"""How long one publish waits for JetStream's ack before trying again with the same id."""


@dataclass(frozen=True)
class Lag:
    """How far a node's applied sequence is behind the stream's head."""

    messages: int
    seconds: float
    """Age of the oldest message not yet applied (0 when caught up)."""


class ChangeLog:
    """Appends to, follows and trims one replicated JetStream stream, and holds the cluster's shared state.

    Connecting (and reconnecting) goes on in the background forever: the constructor waits up to
    `connect_wait` seconds for the first connection and returns either way; until NATS is reachable
    every call raises `Unavailable` (LOG_UNAVAILABLE) within about `unavailable_after` seconds.
    `replicas`: copies JetStream keeps of every stream; by default 3 when the NATS server is part of a
    cluster (which then needs three JetStream servers: pass 1 for a smaller one), else 1. An existing
    stream keeps the settings it was created with.
    """

    def __init__(
        self,
        servers: Sequence[str],
        stream: str = "LOOKALIKE",
        *,
        node: str = "lookalike",
        replicas: int | None = None,
        duplicate_window: float = DUPLICATE_WINDOW_S,
        keep_snapshots: int = 3,
        unavailable_after: float = 1.0,
        connect_wait: float = 5.0,
    ) -> None:
        _check_name("stream", stream)
        if replicas not in (None, 1, 3, 5):
            raise InvalidArgument("replicas must be 1, 3 or 5 (JetStream needs a majority of an odd count)")
        self.stream = stream
        self.node = node
        self.subject = f"{stream}.changes.record"
        self._requested_replicas = replicas
        self.replicas = 1
        self._duplicate_window = duplicate_window
        self._leases: KeyValue | None = None
        self.connection = Connection(servers, name=node, setup=self._setup, unavailable_after=unavailable_after)
        self._snapshots = Snapshots(self.connection, f"{stream}_SNAPSHOTS", keep_snapshots, lambda: self.replicas)
        self.connection.wait_connected(connect_wait)

    async def _setup(self, js: JetStreamContext, clustered: bool) -> None:
        """Create the stream unless it exists (first connection only; see Connection)."""
        if self._requested_replicas is not None:
            self.replicas = self._requested_replicas
        else:
            self.replicas = 3 if clustered else 1
        try:
            info = await js.stream_info(self.stream)
            self.replicas = info.config.num_replicas or 1
            return
        except nats.js.errors.NotFoundError:
            pass
        await js.add_stream(
            api.StreamConfig(
                name=self.stream,
                subjects=[f"{self.stream}.changes.>"],
                retention=api.RetentionPolicy.LIMITS,  # nothing expires; trim_before() purges
                storage=api.StorageType.FILE,
                num_replicas=self.replicas,
                duplicate_window=self._duplicate_window,
                max_msgs=-1,
                max_bytes=-1,
                max_age=0,
                discard=api.DiscardPolicy.NEW,
                deny_delete=True,  # sequences stay contiguous: only purging a prefix removes messages
                allow_direct=True,  # any replica answers reads by sequence
            )
        )
        log.info("created stream %s with %d replicas", self.stream, self.replicas)

    # -- the log ----------------------------------------------------------------------------------------

    def append(self, record: bytes, dedup_id: str, timeout: float = 5.0) -> int:
        """Store `record` and return its stream sequence once JetStream acknowledged it (replicated).

        `dedup_id` identifies the change: appending it again within the duplicate window returns the
        first sequence and stores nothing. Unavailable (LOG_UNAVAILABLE) when NATS is unreachable for
        `unavailable_after` seconds or has no stream leader within `timeout`; the record may then have
        been stored or not, so retry with the same id.
        """
        if not dedup_id:
            raise InvalidArgument("append needs a de-duplication id (the change's request id)")
        return self.connection.run(self._append(record, dedup_id, timeout), timeout, "append to the change log")

    async def _append(self, record: bytes, dedup_id: str, timeout: float) -> int:
        what = "append to the change log"
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            wait = min(ATTEMPT_S, remaining)
            try:
                return await self.connection.attempt(
                    partial(self._publish, record=record, dedup_id=dedup_id, timeout=wait), remaining, what
                )
            except LookalikeError:
                raise
            except Exception as error:  # noqa: BLE001 - every NATS failure is retried or becomes a domain error
                if not _transient(error):
                    raise self.connection.translate(error, what) from error
                # Dropped, or no stream leader for now (an election): try again with the same id, which
                # another server of the cluster may take; JetStream stores it once.
                if deadline - time.monotonic() < 0.05:
                    raise self.connection.unavailable(what, f"no acknowledgement within {timeout:.1f} s") from error
                await asyncio.sleep(0.05)

    async def _publish(self, js: JetStreamContext, record: bytes, dedup_id: str, timeout: float) -> int:
        self.connection.check_payload(len(record), "append to the change log")
        headers = {api.Header.MSG_ID.value: dedup_id}
        acknowledgement = await js.publish(self.subject, record, timeout=timeout, stream=self.stream, headers=headers)
        return acknowledgement.seq

    def follow(
        self, after_seq: int, apply: Callable[[int, bytes], None], on_start: Callable[[], None] | None = None
    ) -> Follower:
        """Call `apply(seq, record)` for every record after `after_seq`, in order, on one thread, for as
        long as the follower runs (`stop()` ends it); it resumes by itself after disconnects. The caller
        stores the applied sequence with what `apply` writes and passes it as `after_seq` next time.
        `on_start` runs first on that thread (per-thread settings `apply` needs)."""
        if after_seq < 0:
            raise InvalidArgument("after_seq is a stream sequence: 0 to start at the beginning")

        def handle(seq: int, message: Msg) -> None:
            apply(seq, message.data)

        return Follower(
            self.connection, self.stream, handle, after_seq, name=f"follow-{self.stream}", on_start=on_start
        )

    def last_seq(self, timeout: float = 5.0) -> int:
        """The stream's last sequence (0 when empty)."""
        return self.connection.call(self._state, timeout, "read the change log's head").last_seq

    def kept(self, timeout: float = 5.0) -> tuple[int, int]:
        """The first and last sequence the stream still holds (first is last + 1 when it holds none)."""
        state = self.connection.call(self._state, timeout, "read the change log's bounds")
        return state.first_seq, state.last_seq

    async def _state(self, js: JetStreamContext) -> api.StreamState:
        return (await js.stream_info(self.stream)).state

    def lag(self, applied_seq: int, timeout: float = 5.0) -> Lag:
        """How far `applied_seq` is behind the head: messages, and the age of the first unapplied one."""
        return self.connection.call(lambda js: self._lag(js, applied_seq), timeout, "measure replication lag")

    async def _lag(self, js: JetStreamContext, applied_seq: int) -> Lag:
        state = await self._state(js)
        behind = max(0, state.last_seq - applied_seq)
        if not behind:
            return Lag(0, 0.0)
        try:
            oldest = await js.get_msg(self.stream, seq=max(applied_seq + 1, state.first_seq), direct=True)
        except nats.js.errors.NotFoundError:
            return Lag(behind, 0.0)
        stored = oldest.time or datetime.now(UTC)
        return Lag(behind, max(0.0, (datetime.now(UTC) - stored).total_seconds()))

    def trim_before(self, seq: int, timeout: float = 30.0) -> None:
        """Remove every record below `seq` (keep `seq` and after): once a snapshot covers them."""
        if seq < 1:
            raise InvalidArgument("trim_before needs a stream sequence of 1 or more")
        self.connection.call(lambda js: js.purge_stream(self.stream, seq=seq), timeout, "trim the change log")

    # -- snapshots --------------------------------------------------------------------------------------

    def put_snapshot(self, source: Path | BinaryIO, seq: int, timeout: float = 600.0) -> None:
        """Store a snapshot of the state after applying `seq`, streamed in chunks from a file or a binary
        reader (one with readinto); then drop all but the newest `keep_snapshots`."""
        self._snapshots.put(source, seq, timeout)

    def snapshots(self, timeout: float = 10.0) -> list[int]:
        """The sequences of the snapshots kept, oldest first: trim the log only below the oldest."""
        return self._snapshots.seqs(timeout)

    def latest_snapshot(self, directory: Path | None = None, timeout: float = 600.0) -> tuple[int, BinaryIO] | None:
        """The newest snapshot: its sequence and a reader at its start (a temporary file in `directory`,
        written a few chunks at a time and checked against the stored SHA-256; closing it deletes it).
        None when there is none."""
        return self._snapshots.latest(directory, timeout)

    # -- leases -----------------------------------------------------------------------------------------

    def try_lease(self, name: str, node: str, ttl: float, timeout: float = 5.0) -> bool:
        """Take or renew the lease `name` for `node` for `ttl` seconds (whole seconds, at least 1):
        True when `node` holds it now. Held by another node until its ttl passes without renewal."""
        if not LEASE_KEY_PATTERN.match(name):
            raise InvalidArgument("a lease name is letters, digits and - / _ = . only")
        if not node:
            raise InvalidArgument("a lease needs the name of the node taking it")
        seconds = max(1, math.ceil(ttl))
        return self.connection.call(
            lambda js: self._try_lease(js, name, node.encode(), seconds), timeout, f"take the lease {name}"
        )

    async def _try_lease(self, js: JetStreamContext, name: str, node: bytes, seconds: int) -> bool:
        if self._leases is None:
            self._leases = await key_value_bucket(js, f"{self.stream}_LEASES", self.replicas)
        leases = self._leases
        try:
            await leases.create(name, node, msg_ttl=seconds)
            return True
        except nats.js.errors.KeyWrongLastSequenceError:
            pass
        try:
            held = await leases.get(name)
        except nats.js.errors.KeyNotFoundError:
            return False  # expired just now: the next try takes it
        if held.value != node:
            return False
        try:  # renew: only if nobody replaced it since we read it
            headers = {api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE.value: str(held.revision)}
            await js.publish(f"$KV.{self.stream}_LEASES.{name}", node, headers=headers, msg_ttl=seconds)
            return True
        except nats.js.errors.APIError as error:
            if error.err_code in (10071, 10164):  # wrong last sequence: someone else got there first
                return False
            raise

    # -- work queues and key-value maps -----------------------------------------------------------------

    def work_queue(self, name: str, ack_wait: float = 30.0) -> WorkQueue:
        """The work queue `name`: each item is taken by one node and redelivered if not acknowledged
        within `ack_wait` seconds."""
        _check_name("work queue", name)
        stream, subject = f"{self.stream}_WORK_{name}", f"{self.stream}.work.{name}"
        return WorkQueue(self.connection, stream, subject, ack_wait, lambda: self.replicas)

    def key_value(self, name: str) -> KeyValueMap:
        """The cluster-wide key-value map `name` (latest value per key, with watch)."""
        _check_name("key-value map", name)
        return KeyValueMap(self.connection, f"{self.stream}_KV_{name}", lambda: self.replicas)

    def close(self) -> None:
        """Stop every follower and watch started here, and close the connection."""
        self.connection.close()

    def __enter__(self) -> ChangeLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _transient(error: Exception) -> bool:
    """A failure that passes by itself: the connection dropped, or the stream has no leader for now."""
    if isinstance(error, nats.js.errors.APIError):
        return error.code == 503
    return isinstance(error, ConnectionDropped | nats.errors.TimeoutError | nats.js.errors.NoStreamResponseError)


def _check_name(what: str, name: str) -> None:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise InvalidArgument(f"a {what} name is 1 to 64 letters, digits, - or _ (got {name!r})")

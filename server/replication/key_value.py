"""A cluster-wide key-value map on the JetStream key-value store: revocations, counters, small shared state.

Every node reads and writes the same map; `update` is a compare-and-set on the key's revision (for
counters several nodes bump), and `watch` hands each change to a callback on a thread of its own,
resuming after disconnects like the change log's follower (it is one, on the bucket's stream).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue

from lookalike.client.errors import InvalidArgument
from lookalike.server.replication.connection import Connection
from lookalike.server.replication.follower import Follower

KEY_PATTERN = re.compile(r"^[-/_=.a-zA-Z0-9]{1,512}$")
"""What JetStream accepts as a key (dots separate tokens; no spaces or wildcards)."""

DELETED = ("DEL", "PURGE")
"""Values of the KV-Operation header that mark a key deleted."""


@dataclass(frozen=True)
class Entry:
    value: bytes
    revision: int


async def key_value_bucket(js: JetStreamContext, bucket: str, replicas: int) -> KeyValue:
    """The bucket, created (file storage, latest value only) when missing."""
    try:
        return await js.key_value(bucket)
    except nats.js.errors.BucketNotFoundError:
        config = api.KeyValueConfig(bucket=bucket, history=1, storage=api.StorageType.FILE, replicas=replicas)
        return await js.create_key_value(config=config)


class KeyValueMap:
    """One key-value bucket; every call raises Unavailable (LOG_UNAVAILABLE) when NATS is unreachable."""

    def __init__(self, connection: Connection, bucket: str, replicas: Callable[[], int]) -> None:
        self._connection = connection
        self.bucket = bucket
        self._replicas = replicas
        self._kv: KeyValue | None = None

    async def _open(self, js: JetStreamContext) -> KeyValue:
        if self._kv is None:
            self._kv = await key_value_bucket(js, self.bucket, self._replicas())
        return self._kv

    def get(self, key: str, timeout: float = 5.0) -> Entry | None:
        """The key's value and revision; None when it is not set."""
        _check_key(key)
        return self._connection.call(lambda js: self._get(js, key), timeout, f"read {key} from {self.bucket}")

    async def _get(self, js: JetStreamContext, key: str) -> Entry | None:
        try:
            entry = await (await self._open(js)).get(key)
        except nats.js.errors.KeyNotFoundError:
            return None
        return Entry(entry.value or b"", entry.revision or 0)

    def put(self, key: str, value: bytes, timeout: float = 5.0) -> int:
        """Set the key, whatever it held; its new revision."""
        _check_key(key)
        return self._connection.call(lambda js: self._put(js, key, value), timeout, f"write {key} to {self.bucket}")

    async def _put(self, js: JetStreamContext, key: str, value: bytes) -> int:
        return await (await self._open(js)).put(key, value)

    def update(self, key: str, value: bytes, revision: int, timeout: float = 5.0) -> int | None:
        """Set the key only if it still has `revision` (0: only if it is not set); the new revision, or
        None when another write got there first (read it again and retry)."""
        _check_key(key)
        return self._connection.call(
            lambda js: self._update(js, key, value, revision), timeout, f"update {key} in {self.bucket}"
        )

    async def _update(self, js: JetStreamContext, key: str, value: bytes, revision: int) -> int | None:
        kv = await self._open(js)
        try:
            return await (kv.create(key, value) if revision == 0 else kv.update(key, value, last=revision))
        except nats.js.errors.KeyWrongLastSequenceError:
            return None

    def delete(self, key: str, timeout: float = 5.0) -> None:
        _check_key(key)
        self._connection.call(lambda js: self._delete(js, key), timeout, f"delete {key} from {self.bucket}")

    async def _delete(self, js: JetStreamContext, key: str) -> None:
        await (await self._open(js)).delete(key)

    def watch(self, on_change: Callable[[str, bytes | None], None]) -> Follower:
        """Call `on_change(key, value)` with every key's current value, then with every change as it
        happens (value None: deleted), on one thread, until the returned follower is stopped."""
        self._connection.call(self._open, 5.0, f"watch {self.bucket}")  # the bucket must exist to follow it
        prefix = f"$KV.{self.bucket}."

        def handle(_seq: int, message: Msg) -> None:
            deleted = (message.headers or {}).get("KV-Operation") in DELETED
            on_change(message.subject.removeprefix(prefix), None if deleted else message.data)

        return Follower(
            self._connection,
            f"KV_{self.bucket}",
            handle,
            filter_subject=f"{prefix}>",
            contiguous=False,
            last_per_subject=True,
            name=f"watch-{self.bucket}",
        )


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not KEY_PATTERN.match(key) or ".." in key or key[0] == "." or key[-1] == ".":
        raise InvalidArgument(f"a key is letters, digits and - / _ = . (not at either end), got {key!r}")

"""Snapshots of a node's state in the JetStream object store, so a new node starts from one plus the
change log's tail instead of the whole log.

Each snapshot is one object named after the stream sequence it covers. Uploads go through nats-py's
object store, one chunk in flight at a time. Downloads read the chunks through a pull consumer a few at a
time into a file (nats-py's own reader lets a push consumer run ahead of the disk, so its memory grows
with the object), and check the stored SHA-256 before handing the file over.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext, api
from nats.js.object_store import ObjectStore

from lookalike.client.errors import Internal, InvalidArgument
from lookalike.server.replication.connection import Connection

PREFIX = "snapshot-"

CHUNK = 512 * 1024
"""Bytes per object-store message (under NATS's default 1 MiB max payload)."""

READ_AHEAD = 8
"""Chunks requested at a time while downloading: what a download holds in memory at most."""

CHUNK_WAIT_S = 10.0
"""How long a download waits for the next chunks before giving up (NATS unreachable)."""


class Snapshots:
    """The snapshots in the object store `bucket`, newest `keep` kept."""

    def __init__(self, connection: Connection, bucket: str, keep: int, replicas: Callable[[], int]) -> None:
        if keep < 1:
            raise InvalidArgument("keep at least one snapshot")
        self._connection = connection
        self.bucket = bucket
        self.keep = keep
        self._replicas = replicas
        self._store: ObjectStore | None = None

    async def _open(self, js: JetStreamContext) -> ObjectStore:
        if self._store is None:
            try:
                self._store = await js.object_store(self.bucket)
            except nats.js.errors.BucketNotFoundError:
                config = api.ObjectStoreConfig(storage=api.StorageType.FILE, replicas=self._replicas())
                self._store = await js.create_object_store(self.bucket, config=config)
        return self._store

    def put(self, source: Path | BinaryIO, seq: int, timeout: float) -> None:
        if seq < 0:
            raise InvalidArgument("a snapshot's sequence is 0 or a stream sequence")
        if isinstance(source, Path):
            with source.open("rb") as reader:
                self.put(reader, seq, timeout)
            return
        self._connection.call(lambda js: self._put(js, source, seq), timeout, "store a snapshot")

    async def _put(self, js: JetStreamContext, reader: BinaryIO, seq: int) -> None:
        store = await self._open(js)
        name = f"{PREFIX}{seq:020d}"
        meta = api.ObjectMeta(name=name, options=api.ObjectMetaOptions(max_chunk_size=CHUNK))
        await store.put(name, reader, meta=meta)  # type: ignore[arg-type]  # nats-py reads any readinto()
        for old in (await self._seqs(js))[: -self.keep]:
            await store.delete(f"{PREFIX}{old:020d}")

    def seqs(self, timeout: float) -> list[int]:
        return self._connection.call(self._seqs, timeout, "list snapshots")

    async def _seqs(self, js: JetStreamContext) -> list[int]:
        try:
            objects = await (await self._open(js)).list(ignore_deletes=True)
        except nats.js.errors.NotFoundError:
            return []
        names = [info.name for info in objects if info.name and info.name.startswith(PREFIX)]
        return sorted(int(name.removeprefix(PREFIX)) for name in names)

    def latest(self, directory: Path | None, timeout: float) -> tuple[int, BinaryIO] | None:
        spool = tempfile.TemporaryFile(dir=directory)
        try:
            seq = self._connection.call(lambda js: self._latest(js, spool), timeout, "read a snapshot")
        except BaseException:
            spool.close()
            raise
        if seq is None:
            spool.close()
            return None
        spool.seek(0)
        return seq, spool

    async def _latest(self, js: JetStreamContext, spool: BinaryIO) -> int | None:
        seqs = await self._seqs(js)
        if not seqs:
            return None
        name = f"{PREFIX}{seqs[-1]:020d}"
        info = await (await self._open(js)).get_info(name)
        digest = await _download(js, f"OBJ_{self.bucket}", f"$O.{self.bucket}.C.{info.nuid}", info.chunks or 0, spool)
        if info.digest and digest != base64.urlsafe_b64decode(info.digest.removeprefix("SHA-256=")):
            raise Internal(
                f"snapshot {name} in {self.bucket} is corrupt: its SHA-256 does not match", "SNAPSHOT_CORRUPT"
            )
        return seqs[-1]


async def _download(js: JetStreamContext, stream: str, subject: str, chunks: int, spool: BinaryIO) -> bytes:
    """Write the `chunks` messages on `subject` to `spool` in order; their SHA-256."""
    digest = hashlib.sha256()
    if not chunks:
        return digest.digest()
    name = f"download-{uuid.uuid4().hex}"
    config = api.ConsumerConfig(
        name=name,
        ack_policy=api.AckPolicy.NONE,
        deliver_policy=api.DeliverPolicy.ALL,
        filter_subject=subject,
        mem_storage=True,
        num_replicas=1,
        inactive_threshold=30.0,
    )
    await js.add_consumer(stream, config=config)
    reader = await js.pull_subscribe_bind(name, stream=stream)
    loop = asyncio.get_running_loop()
    received = 0
    try:
        while received < chunks:
            for message in await reader.fetch(min(READ_AHEAD, chunks - received), timeout=CHUNK_WAIT_S):
                digest.update(message.data)
                await loop.run_in_executor(None, spool.write, message.data)
                received += 1
    finally:
        with contextlib.suppress(nats.errors.Error, TimeoutError):  # else it expires by itself
            await reader.unsubscribe()
            await js.delete_consumer(stream, name)
    return digest.digest()
